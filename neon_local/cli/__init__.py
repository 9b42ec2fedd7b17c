"""The `neon-local` command: parse flags into Settings, call the library, print for people."""

from __future__ import annotations

import click

from neon_local import __version__
from neon_local.cli import auth, server


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="neon-local")
def main() -> None:
    """Neon's RLS stack on your laptop: Postgres with pg_session_jwt, a JWT issuer, and Neon's proxy."""


for command in [*server.COMMANDS, *auth.COMMANDS]:
    main.add_command(command)
