"""Databases for one test session: a template built once from the app's migrations, a clone per test, all dropped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import psycopg
from psycopg import sql

from neon_local.postgres.bootstrap import grant_role, jwt_role_statements
from neon_local.postgres.cluster import SUPERUSER
from neon_local.testing.clients import SharedSession, connect
from neon_local.testing.explain import Explainer, Identity
from neon_local.testing.migrations import Step, Target, apply
from neon_local.testing.server import NeonLocal

log = logging.getLogger(__name__)


def run_all(actions: list[Callable[[], object]], pending: BaseException | None = None) -> None:
    """Run every cleanup action even when one fails; log later failures and raise the first.

    `pending` is an error already on its way up (a failed set-up): it stays the one raised.
    """
    first = pending
    for action in actions:
        try:
            action()
        except Exception as exc:
            if first is None:
                first = exc
            else:
                log.exception("neon-local: a further cleanup step failed too")
    if first is not None:
        raise first


class Janitor:
    """Creates, clones and drops this session's databases on the superuser's private socket.

    Names carry a per-session prefix, so xdist workers and parallel runs sharing one emulator never clash.
    """

    def __init__(self, server: NeonLocal, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self.template: str | None = None
        self.template_seconds = 0.0
        self.clone_seconds: list[float] = []
        self.rollback_seconds: list[float] = []  # rollback mode: a test's begin and end, measured by the fixture
        self._shared: SharedSession | None = None
        self._shared_name: str | None = None
        self._live: set[str] = set()
        self._count = 0
        self._admin = psycopg.connect(server.superuser_conninfo(), autocommit=True)

    def build_template(self, steps: list[Step]) -> str:
        """Create the template, shape it like neondb, run the steps; no client stays connected afterwards."""
        began = time.perf_counter()
        name = f"{self.prefix}_tpl"
        self._create(name, None)
        self.template = name
        self._shape_like_neondb(name)
        server = self.server
        apply(steps, Target(name, server.direct_url(name), server.owner_proxy_url(name), server.tls_ca,
                            server.settings.project_dir))
        # A command may have used the proxy, whose pool keeps backends open; CREATE DATABASE ... TEMPLATE refuses
        # to copy a database anyone is connected to, so lock it and end those sessions.
        self._admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        self._admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,))
        self.template_seconds = time.perf_counter() - began
        return name

    def clone(self) -> str:
        began = time.perf_counter()
        self._count += 1
        name = f"{self.prefix}_{self._count}"
        self._create(name, self.template)
        self.clone_seconds.append(time.perf_counter() - began)
        return name

    def shared(self) -> tuple[str, SharedSession]:
        """Rollback mode's database (cloned once) and its one session, reopened if a test broke it."""
        if self._shared_name is None:
            self._shared_name = f"{self.prefix}_shared"
            self._create(self._shared_name, self.template)
        if self._shared is None or self._shared.closed or self._shared.broken:
            conninfo = self.server.superuser_conninfo(self._shared_name)
            self._shared = cast(SharedSession, connect(conninfo, Identity(SUPERUSER, None, "directly"), Explainer(conninfo),
                                                       cls=SharedSession, autocommit=False))
        return self._shared_name, self._shared

    def drop(self, name: str) -> None:
        self._live.discard(name)
        self._admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def close(self) -> None:
        """Drop what is left (clones of failed set-ups, then the template) and disconnect."""
        shared = [self._shared.end_session] if self._shared is not None else []
        run_all([*shared, *(lambda n=n: self.drop(n) for n in sorted(self._live)), self._admin.close])

    def _create(self, name: str, template: str | None) -> None:
        owner = sql.Identifier(self.server.settings.owner)
        query = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), owner)
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self._live.add(name)
        self._admin.execute(query)

    def _shape_like_neondb(self, name: str) -> None:
        """Neon's grants and pg_session_jwt, by the same code that shapes neondb at start-up."""
        settings, conninfo = self.server.settings, self.server.superuser_conninfo(name)

        async def shape() -> None:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                for role in settings.jwt_roles:
                    await grant_role(conn, role, settings.owner)
                    for statement in jwt_role_statements(role, settings.owner, settings.session_jwt_version):
                        await conn.execute(statement)

        # asyncio.run needs a thread with no running loop, which pytest-asyncio's thread may not be.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, shape()).result()
