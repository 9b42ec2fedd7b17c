"""`neon-local doctor`: check what `up` needs, one line per check (OK, WARN or FAIL) with the fix.

It changes nothing except creating the cache directory, as `up` would; exit code 1 on any FAIL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import platform
import pwd
import shutil
import ssl
import stat
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from neon_local.cli.auth import mint_by_running_emulator, mint_options
from neon_local.cli.common import project_options
from neon_local.postgres.binaries import BinariesNotFound, PgBinaries, find_binaries
from neon_local.postgres.cache import cache_dir
from neon_local.settings import SCALARS, Provider, Settings
from neon_local.state import read_state

# A clock before this (2025-01-01) is wrong: tokens and certificates made now would look expired or future.
EARLIEST_PLAUSIBLE = 1735689600
# Neon's proxy allows 30 s of clock skew on exp/nbf; beyond it tokens from the issuer are refused.
SKEW_LEEWAY = 30


@dataclass
class Check:
    check: str
    status: str  # OK, WARN or FAIL
    message: str
    fix: str = ""


def ok(check: str, message: str) -> Check:
    return Check(check, "OK", message)


def warn(check: str, message: str, fix: str = "") -> Check:
    return Check(check, "WARN", message, fix)


def failed(check: str, message: str, fix: str = "") -> Check:
    return Check(check, "FAIL", message, fix)


def check_python() -> Check:
    where = f"Python {platform.python_version()} on {platform.system()} {platform.machine()}"
    if sys.version_info < (3, 11):  # noqa: UP036 (doctor reports on whatever interpreter runs it, e.g. from a source tree)
        return failed("python", where, "neon-local needs Python 3.11 or newer")
    if platform.system() != "Linux":
        return warn("python", f"{where}: neon-local is tested on Linux",
                    "status, down and psql find a running instance through /proc; on this system use the foreground `up`")
    return ok("python", where)


def check_postgres(settings: Settings) -> tuple[Check, PgBinaries | None]:
    try:
        binaries = find_binaries(settings.pg_bin)
    except BinariesNotFound as exc:
        return failed("postgres", "no usable Postgres", str(exc)), None
    missing = [tool for tool in ("postgres", "initdb", "pg_ctl") if not binaries.tool(tool).is_file()]
    if missing:
        return failed("postgres", f"{binaries.describe()} lacks {', '.join(missing)}",
                      "point pg_bin at a full server install (`neon-local config set pg_bin DIR`)"), binaries
    return ok("postgres", binaries.describe()), binaries


def check_template(binaries: PgBinaries | None) -> Check:
    if binaries is None:
        return warn("template", "not checked: no Postgres binaries")
    try:
        templates = cache_dir() / "templates"
    except OSError as exc:
        return failed("template", f"cannot create the cache directory: {exc}",
                      "make it writable, or point NEON_LOCAL_CACHE_DIR at a directory you own")
    found = sorted(templates.glob(f"pg{binaries.version}-*"))
    for template in found:
        try:
            valid = (template / "PG_VERSION").read_text().strip() == str(binaries.major) and (template / "global" / "pg_control").is_file()
        except OSError:
            valid = False
        if not valid:
            return failed("template", f"{template} is not a complete cluster",
                          f"delete it (rm -rf {template}); the next `up` builds it again")
    if not found:
        return warn("template", f"none cached for PostgreSQL {binaries.version} in {templates}",
                    "the first `up` builds one (initdb + bootstrap, a few seconds); later data dirs are copies")
    return ok("template", f"{len(found)} cached for PostgreSQL {binaries.version} in {templates}")


def _listeners(port: int) -> list[str]:
    """Who listens on TCP `port`: "pid N (command)" for each process whose socket we can see."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"pid {proc.name} ({command[:70]})")
        except OSError:  # gone, or another user's process that we may not look into
            continue
    return found


def check_port(settings: Settings, setting: str, state: dict | None) -> Check:
    from neon_local.ports import PortInUse, bind

    port = getattr(settings, setting)
    flag = next(s.flag for s in SCALARS if s.name == setting)
    if port == 0:
        return ok(setting, "0: a free port is picked at start (`neon-local status` shows it)")
    if state and state.get(setting) == port:
        return ok(setting, f"{port} is served by this project's neon-local (pid {state['pid']})")
    try:
        bind(settings.host, port, setting).close()
    except PortInUse as exc:
        listeners = _listeners(port)
        taken = f"{port} on {settings.host} is taken" + (f" by {', '.join(listeners)}" if listeners else "")
        if "no such local address" in str(exc):
            return failed(setting, f"{settings.host} is not an address of this machine", "`neon-local config set host 127.0.0.1`")
        return failed(setting, taken, f"stop it, or choose another port: `neon-local config set {setting} PORT` or {flag} PORT (0 picks a free one)")
    except OSError as exc:
        return failed(setting, f"cannot listen on {settings.host}:{port}: {exc.strerror}", "choose another host or port")
    return ok(setting, f"{port} on {settings.host} is free")


def _postgres_uid() -> tuple[int, str]:
    """The user Postgres runs as: `nobody` when we are root (cluster.RunAs), else ourselves."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, "nobody"
    return os.geteuid(), pwd.getpwuid(os.geteuid()).pw_name


def check_data_dir(settings: Settings) -> Check:
    data_dir = settings.resolved_data_dir
    fix = f"fix its permissions, or use another: `neon-local config set data_dir DIR` (now {data_dir})"
    if data_dir.exists() and not data_dir.is_dir():
        return failed("data dir", f"{data_dir} is not a directory", "move it away, or use another: `neon-local config set data_dir DIR`")
    existing = data_dir
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return failed("data dir", f"{existing} is not writable by you", fix)
    pgdata = data_dir / "pgdata"
    if pgdata.is_dir():
        info = pgdata.stat()
        uid, user = _postgres_uid()
        if info.st_uid != uid:
            return failed("data dir", f"{pgdata} belongs to uid {info.st_uid}, but Postgres runs as {user} (uid {uid})",
                          f"chown -R {user} {pgdata}")
        if stat.S_IMODE(info.st_mode) & 0o027:
            return failed("data dir", f"{pgdata} has mode {stat.S_IMODE(info.st_mode):04o}; Postgres refuses anything but 0700 or 0750",
                          f"chmod 700 {pgdata}")
        return ok("data dir", f"{data_dir} (cluster in pgdata/, owned by {user})")
    return ok("data dir", f"{data_dir} ({'exists' if data_dir.exists() else 'created by the first `up`'}; no cluster yet)")


def check_root(euid: int | None = None) -> Check:
    """As root, Postgres runs as `nobody` via setpriv and the caches must be reachable by it (cluster.RunAs)."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return ok("root", f"not root: Postgres runs as you (uid {euid})")
    if shutil.which("setpriv") is None:
        return failed("root", "running as root needs setpriv to start Postgres as nobody", "install util-linux (apt-get install util-linux)")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return failed("root", "running as root needs a `nobody` user to run Postgres", "useradd --system --no-create-home nobody")
    cache = Path(os.environ.get("NEON_LOCAL_CACHE_DIR") or "/var/cache/neon-local")
    for directory in [cache, *cache.parents]:
        if directory.exists() and not stat.S_IMODE(directory.stat().st_mode) & 0o001:
            return failed("root", f"nobody cannot enter {directory}, which holds the cache {cache}",
                          f"chmod o+x {directory}, or point NEON_LOCAL_CACHE_DIR elsewhere")
    return ok("root", f"root: Postgres runs as nobody via setpriv; caches in {cache}")


def _system_trusts(der: bytes) -> bool:
    paths = ssl.get_default_verify_paths()
    for bundle in filter(None, (paths.cafile, paths.openssl_cafile)):
        try:
            text = Path(bundle).read_text(errors="replace")
        except OSError:
            continue
        for block in text.split("-----BEGIN CERTIFICATE-----")[1:]:
            body = block.split("-----END CERTIFICATE-----")[0]
            try:
                if base64.b64decode("".join(body.split())) == der:
                    return True
            except binascii.Error:
                continue
    return False


def check_tls(settings: Settings) -> Check:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = settings.resolved_data_dir / "tls" / "ca.crt"
    renew = f"delete {ca.parent}; the next `up` makes a new CA (clients that pinned the old one must take the new one)"
    if not ca.exists():
        return warn("tls", f"no CA yet at {ca}", "the first `up` creates it; clients verify with sslrootcert=" + str(ca))
    try:
        cert = x509.load_pem_x509_certificate(ca.read_bytes())
    except (OSError, ValueError) as exc:
        return failed("tls", f"cannot read the CA {ca}: {exc}", renew)
    now = datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        return failed("tls", f"the CA is valid from {cert.not_valid_before_utc:%Y-%m-%d}, after this machine's clock ({now:%Y-%m-%d})",
                      "set the clock")
    if now > cert.not_valid_after_utc:
        return failed("tls", f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}", renew)
    if _system_trusts(cert.public_bytes(Encoding.DER)):
        return ok("tls", f"CA {ca}, trusted by this system")
    return ok("tls", f"CA {ca}, not in the system's trust store: clients verify with sslrootcert={ca} (sslmode=require does not verify)")


def check_provider(settings: Settings, provider: Provider) -> Check:
    from neon_local.auth.keys import PublicKeySet
    from neon_local.auth.providers import FetchError, Limits, ProviderCache, fetch_jwks

    name = f"provider {provider.id}"
    if provider.jwks_file is not None:
        path = provider.jwks_file if provider.jwks_file.is_absolute() else settings.project_dir / provider.jwks_file
        try:
            count = len(PublicKeySet.from_jwks(json.loads(path.read_text())).keys)
        except (OSError, ValueError) as exc:
            return failed(name, f"cannot use {path}: {exc}", "fix the file, or `neon-local providers remove " + provider.id + "`")
        if not count:
            return failed(name, f"{path} has no signing key Neon accepts", "use ES256 or RS256 keys with a kid")
        return ok(name, f"{path}: {count} keys")
    cached = ProviderCache(settings).status(provider)
    try:
        document = asyncio.run(fetch_jwks(provider.jwks_url or "", Limits(retries=0), provider.id))
        count = len(PublicKeySet.from_jwks(document).keys)
    except (FetchError, ValueError) as exc:
        if cached["keys"]:
            when = datetime.fromtimestamp(cached["fetched_at"], UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            return warn(name, f"unreachable ({exc}); its tokens verify with the {cached['keys']} keys cached at {when}",
                        "fine offline; keys the provider rotates in meanwhile are unknown until it is reachable")
        return failed(name, f"unreachable and never cached ({exc}): its tokens will be refused",
                      "check jwks_url and the network, then run `neon-local up` once while online")
    if not count:
        return failed(name, f"{provider.jwks_url} has no signing key Neon accepts", "Neon accepts ES256 and RS256 keys with a kid")
    return ok(name, f"{provider.jwks_url}: reachable, {count} keys")


def check_clock(settings: Settings, state: dict | None) -> Check:
    now = time.time()
    shown = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if now < EARLIEST_PLAUSIBLE:
        return failed("clock", f"this machine's clock says {shown}: tokens and certificates made now look wrong elsewhere",
                      "set the clock (e.g. timedatectl set-ntp true)")
    if not state:
        return ok("clock", f"{shown}; the skew against the issuer is checked while neon-local runs")
    before = time.time()
    token = mint_by_running_emulator(state, mint_options(settings, None, "neon-local-doctor", {}, lifetime=60))
    after = time.time()
    if token is None:
        return warn("clock", f"{shown}; the running issuer did not answer", "see `neon-local status` and its log")
    payload = token.split(".")[1]
    iat = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iat"]
    skew = 0 if int(before) <= iat <= after else (iat - after if iat > after else iat - before)
    if abs(skew) > SKEW_LEEWAY:
        return failed("clock", f"the issuer's iat is {skew:+.0f} s from this machine's clock (Neon allows {SKEW_LEEWAY} s)",
                      "run both on one clock: set the time where neon-local runs (timedatectl set-ntp true)")
    if abs(skew) > 5:
        return warn("clock", f"the issuer's iat is {skew:+.0f} s from this machine's clock", "tokens pass within 30 s; sync the clocks")
    return ok("clock", f"{shown}; the issuer's iat agrees ({skew:+.0f} s)")


def run_checks(settings: Settings) -> list[Check]:
    state = read_state(settings.resolved_data_dir)
    postgres, binaries = check_postgres(settings)
    checks = [check_python(), postgres, check_template(binaries)]
    checks += [check_port(settings, "http_port", state), check_port(settings, "pg_port", state)]
    checks += [check_data_dir(settings), check_root(), check_tls(settings)]
    checks += [check_provider(settings, p) for p in settings.providers if not p.builtin]
    checks.append(check_clock(settings, state))
    return checks


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object: {ok, checks: [{check, status, message, fix}]}.")
@project_options
def doctor(settings: Settings, as_json: bool) -> None:
    """Check what `up` needs (Python, Postgres, template cache, ports, data dir, root, TLS, providers, clock);
    each line says OK, WARN or FAIL and the fix. Exit code 1 on any FAIL."""
    checks = run_checks(settings)
    healthy = not any(c.status == "FAIL" for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": healthy, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        colors = {"OK": "green", "WARN": "yellow", "FAIL": "red"}
        for c in checks:
            line = click.style(f"{c.status:<4}", fg=colors[c.status]) + f"  {c.check:<16} {c.message}"
            click.echo(line + (f"  -> fix: {c.fix}" if c.fix else ""))
    if not healthy:
        sys.exit(1)
