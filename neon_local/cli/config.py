"""`neon-local config ...` and `neon-local users ...`: edit neon_local.toml in place, comments and order kept.

tomlkit round-trips the user's file (comments, blank lines, key order); every change is checked by
settings.read_config_file before the file is replaced (cli/config_file.py), so an invalid value is refused
with the key and what it accepts, and nothing is written.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import click
import tomlkit
import tomlkit.exceptions
from click.core import ParameterSource
from tomlkit.items import AoT, Table

from neon_local.cli.common import project_options
from neon_local.cli.config_file import config_path, parse_claims, restart_hint, write_config
from neon_local.settings import CONFIG_FILENAME, DEFAULT_USERS, SCALARS, ConfigError, Settings, find_config_file, load_settings

_SCALARS = {s.name: s for s in SCALARS}


def _settings() -> Settings:
    return click.get_current_context().obj


def _document(path: Path) -> tomlkit.TOMLDocument:
    if not path.exists():
        return tomlkit.document()
    try:
        return tomlkit.parse(path.read_text())
    except tomlkit.exceptions.ParseError as exc:
        raise click.ClickException(f"{path} is not valid TOML: {exc}. Fix that line by hand.") from None


def _dump(doc: tomlkit.TOMLDocument) -> str:
    # A removed table leaves the blank line that preceded it at the end of the file.
    text = tomlkit.dumps(doc).rstrip("\n")
    return text + "\n" if text else ""


def _key_path(key: str) -> list[str]:
    parts = key.split(".")
    if not all(parts):
        raise click.BadParameter(f"{key!r} is not a key: use a setting name, or dotted names for a table (users.alice.email)", param_hint="KEY")
    if parts[0] == "jwks":
        raise click.UsageError("providers are [[jwks]] tables: edit them with `neon-local providers add` and `providers remove`.")
    return parts


def _typed(parts: list[str], text: str) -> Any:
    """VALUE as the TOML type its key takes. A value of the wrong kind is kept as text, so that the
    validation that follows names the key and what it accepts."""
    scalar = _SCALARS.get(parts[0]) if len(parts) == 1 else None
    if scalar is None:
        if parts == ["roles"]:
            return [r.strip() for r in text.split(",") if r.strip()]
        try:  # a table's value: a TOML literal if it is one (42, true, ["a"]), else a string
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return text
    if scalar.type is int:
        try:
            return int(text)
        except ValueError:
            return text
    if scalar.type is bool:
        return {"true": True, "yes": True, "on": True, "1": True,
                "false": False, "no": False, "off": False, "0": False}.get(text.strip().lower(), text)
    if scalar.type is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _lookup(doc: tomlkit.TOMLDocument, parts: list[str]) -> Any:
    node: Any = doc
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def _plain(value: Any) -> Any:
    """A setting's value as JSON can carry it."""
    if hasattr(value, "unwrap"):
        value = value.unwrap()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _show(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "(not set)"
    return tomlkit.item(value).as_string()


def _source(name: str, raw: dict) -> str:
    scalar = _SCALARS[name]
    ctx = click.get_current_context()
    if name in ctx.params and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
        return f"flag {scalar.flag}"
    if scalar.env in os.environ:
        return f"env {scalar.env}"
    return "file" if name in raw else "default"


@click.group("config")
def config():
    """Read and change settings in neon_local.toml (comments and order are kept; each change is validated)."""


@config.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object: setting -> {value, source}.")
@project_options
def config_list(as_json: bool) -> None:
    """Every setting with its value in effect and where it comes from (default, file, env or flag)."""
    settings = _settings()
    path = config_path(settings)
    raw = tomllib.loads(path.read_text()) if path.exists() else {}
    rows = {s.name: {"value": _plain(getattr(settings, s.name)), "source": _source(s.name, raw)} for s in SCALARS}
    if as_json:
        click.echo(json.dumps({"config_file": str(path), "settings": rows}, indent=2))
        return
    click.echo(f"# {path}{'' if path.exists() else ' (does not exist yet)'}")
    width = max(len(name) for name in rows)
    for name, row in rows.items():
        click.echo(f"{name:<{width}} = {_show(row['value']):<30} # {row['source']}")


@config.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the value as JSON.")
@project_options
def config_get(key: str, as_json: bool) -> None:
    """Print one value: a setting as in effect, or a dotted key from the file (users.alice.email)."""
    settings = _settings()
    parts = _key_path(key)
    if len(parts) == 1 and key in _SCALARS:
        value = _plain(getattr(settings, key))
    else:
        try:
            value = _plain(_lookup(_document(config_path(settings)), parts))
        except KeyError:
            raise click.ClickException(f"{key} is not set in {config_path(settings)}. Settings: {', '.join(_SCALARS)}.") from None
    if as_json:
        click.echo(json.dumps(value))
    elif isinstance(value, list):
        click.echo(",".join(map(str, value)))
    elif isinstance(value, bool):
        click.echo(str(value).lower())
    elif isinstance(value, dict):
        click.echo(tomlkit.dumps(value).rstrip())
    else:
        click.echo("" if value is None else value)


_CONFIG_OPTION = click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                              help="Path to neon_local.toml (default: the nearest one up from here) [env NEON_LOCAL_CONFIG].")


def _file_to_edit(config_file: Path | None) -> tuple[Path, Settings | None]:
    """The file `set` and `unset` change, found even when its content is invalid (so they can repair it);
    the settings too when it loads."""
    try:
        settings = load_settings(config_file=config_file)
    except ConfigError:
        if config_file is None and os.environ.get("NEON_LOCAL_CONFIG"):
            config_file = Path(os.environ["NEON_LOCAL_CONFIG"])
        return config_file or find_config_file(Path.cwd()) or Path.cwd() / CONFIG_FILENAME, None
    return config_path(settings), settings


@config.command("set")
@click.argument("key")
@click.argument("value")
@_CONFIG_OPTION
def config_set(key: str, value: str, config_file: Path | None) -> None:
    """Set KEY to VALUE in neon_local.toml (creating the file if needed); lists are comma-separated."""
    parts = _key_path(key)
    path, settings = _file_to_edit(config_file)
    doc = _document(path)
    table: Any = doc
    for depth, part in enumerate(parts[:-1]):
        if part not in table:
            table[part] = tomlkit.table(is_super_table=depth == 0 and len(parts) > 2)
        table = table[part]
        if not isinstance(table, dict):
            raise click.ClickException(f"{'.'.join(parts[:depth + 1])} is a value, not a table; cannot set {key}.")
    if table is doc:
        doc = _with_setting(doc, parts[-1], _typed(parts, value))
        table = doc
    else:
        table[parts[-1]] = _typed(parts, value)
    write_config(path, _dump(doc))
    click.echo(f"{key} = {_show(table[parts[-1]])} in {path}")
    if settings:
        restart_hint(settings)


def _with_setting(doc: tomlkit.TOMLDocument, key: str, value: Any) -> tomlkit.TOMLDocument:
    """`doc` with top-level `key` set. A new setting goes after the last one there is, not after whatever
    comment precedes the first table (where tomlkit would put it). tomlkit has no public insert-after,
    so the document is rebuilt item by item; parsed=True keeps tomlkit from adding blank lines."""
    plain = [i for i, (k, item) in enumerate(doc.body) if k is not None and not isinstance(item, (Table, AoT))]
    if key in doc or not plain:
        doc[key] = value
        return doc
    rebuilt = tomlkit.TOMLDocument(parsed=True)
    for i, (k, item) in enumerate(doc.body):
        if k is None:
            rebuilt.add(item)
        else:
            rebuilt.append(k, item)
        if i == plain[-1]:
            rebuilt.append(key, value)
    rebuilt.parsing(False)
    return rebuilt


@config.command("unset")
@click.argument("key")
@_CONFIG_OPTION
def config_unset(key: str, config_file: Path | None) -> None:
    """Remove KEY from neon_local.toml, so its default (or env/flag) applies again."""
    parts = _key_path(key)
    path, settings = _file_to_edit(config_file)
    doc = _document(path)
    try:
        parent = _lookup(doc, parts[:-1]) if len(parts) > 1 else doc
        if parts[-1] not in parent:
            raise KeyError(parts[-1])
    except KeyError:
        click.echo(f"{key} is not set in {path}; nothing to change.")
        return
    del parent[parts[-1]]
    write_config(path, _dump(doc))
    click.echo(f"removed {key} from {path}")
    if settings:
        restart_hint(settings)


@click.group("users")
def users():
    """Test users ([users.NAME] tables): the identities `neon-local token NAME` signs for."""


def _users_table(doc: tomlkit.TOMLDocument) -> tuple[Table, bool]:
    """The document's [users] table; without one, the built-in alice and bob are written out first,
    since a file that names any user replaces them. The flag says whether that happened."""
    if "users" in doc:
        return doc["users"], False
    table = tomlkit.table(is_super_table=True)
    for name, claims in DEFAULT_USERS.items():
        table[name] = dict(claims)
    doc["users"] = table
    return doc["users"], True


def _no_nulls(value: Any, where: str) -> None:
    if value is None:
        raise click.BadParameter(f"{where} is null, which TOML cannot hold; leave the claim out instead", param_hint="--claim")
    if isinstance(value, dict):
        for name, item in value.items():
            _no_nulls(item, f"{where}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_nulls(item, f"{where}[{index}]")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object: user -> claims.")
@project_options
def users_list(as_json: bool) -> None:
    """Show each test user and their claims."""
    known = {name: dict(claims) for name, claims in _settings().users.items()}
    if as_json:
        click.echo(json.dumps(known, indent=2))
        return
    for name, claims in known.items():
        sub = claims.pop("sub")
        click.echo(f"{name:12} sub={sub}  {json.dumps(claims)}")


@users.command("add")
@click.argument("name")
@click.option("--sub", help="Subject claim (default: user_NAME).")
@click.option("--claim", "pairs", multiple=True, metavar="NAME=VALUE",
              help="A claim; VALUE is JSON if it parses (42, true, [1]), else a string. Repeatable.")
@click.option("--claims", "claims_json", metavar="JSON", help="Claims from a JSON object.")
@project_options
def users_add(name: str, sub: str | None, pairs: tuple[str, ...], claims_json: str | None) -> None:
    """Add test user NAME as a [users.NAME] table in neon_local.toml."""
    settings = _settings()
    claims = parse_claims(claims_json, pairs)
    _no_nulls(claims, "claim")
    claims = {"sub": sub or claims.pop("sub", None) or f"user_{name}"} | {k: v for k, v in claims.items() if k != "sub"}
    path = config_path(settings)
    doc = _document(path)
    table, wrote_defaults = _users_table(doc)
    if name in table:
        raise click.ClickException(f"test user {name!r} exists already; `neon-local users remove {name}` first.")
    table[name] = claims
    write_config(path, _dump(doc))
    if wrote_defaults:
        click.echo(f"wrote the built-in users ({', '.join(DEFAULT_USERS)}) to {path} too, so they stay.")
    click.echo(f"added test user {name} (sub {claims['sub']}) to {path}")
    restart_hint(settings)


@users.command("remove")
@click.argument("name")
@project_options
def users_remove(name: str) -> None:
    """Remove test user NAME from neon_local.toml."""
    settings = _settings()
    if name not in settings.users:
        raise click.ClickException(f"no test user {name!r} (known: {', '.join(settings.users) or 'none'}).")
    path = config_path(settings)
    doc = _document(path)
    table, wrote_defaults = _users_table(doc)
    del table[name]
    write_config(path, _dump(doc))
    if wrote_defaults:
        click.echo(f"wrote the other built-in users to {path}, so they stay.")
    click.echo(f"removed test user {name} from {path}")
    restart_hint(settings)
