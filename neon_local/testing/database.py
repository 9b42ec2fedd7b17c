"""One test's database and each way to act on it: as a JWT user over HTTP, TCP or WebSocket, as the owner, at SQL level.

Two kinds: `Database`, a fresh clone per test (real commits, any number of sessions), and `RollbackDatabase`,
one shared database in a transaction rolled back after the test (about a millisecond; one session only).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import make_conninfo

from neon_local.postgres.cluster import SUPERUSER
from neon_local.testing import access
from neon_local.testing.clients import AsyncNeonConnection, HttpClient, NeonConnection, RestClient, SharedSession, aconnect, connect
from neon_local.testing.explain import Explainer, Identity
from neon_local.testing.identity import assert_policies, assert_policy, assert_rls_enabled, authenticate_as
from neon_local.testing.janitor import run_all
from neon_local.testing.server import NeonLocal
from neon_local.testing.tokens import NotAJwt, User, claims_of


class Database:
    """`name` is the database; `url` is what the app under test would get as DATABASE_URL (the owner, via the proxy).

    Every client takes the same identity: a user of neon_local.toml by name, a `User` (`neon_user(...)`),
    `sub=` for an ad-hoc user, `role=`, `claims={...}` for any claim, other keyword arguments as mint
    options (`expired=True`, `lifetime=`, ...) or extra claims, or `token=` for a token you minted.
    """

    mode = "clone"

    def __init__(self, name: str, server: NeonLocal) -> None:
        self.name = name
        self.server = server
        self.tokens = server.tokens
        self.explainer = Explainer(server.superuser_conninfo(name))
        self._opened: list[NeonConnection] = []
        self._superuser: NeonConnection | None = None

    def __repr__(self) -> str:
        return f"<Database {self.name} ({self.mode})>"

    @property
    def url(self) -> str:
        return self.server.owner_proxy_url(self.name)

    @property
    def direct_url(self) -> str:
        return self.server.direct_url(self.name)

    def user(self, user: str | User | None = None, *, sub: str | None = None, role: str | None = None,
             claims: Mapping[str, Any] | None = None) -> User:
        """The `User` these arguments name. "anonymous", when neon_local.toml has no such user, is Neon's
        anonymous role with no `sub`."""
        if isinstance(user, User):
            base = user
        elif user == "anonymous" and "anonymous" not in self.server.settings.users:
            base = User(role="anonymous")
        else:
            base = User(user)
        return User(base.name, sub=sub or base.sub, claims={**base.claims, **(claims or {})}, role=role or base.role)

    def http(self, user: str | User | None = None, *, sub: str | None = None, role: str | None = None,
             claims: Mapping[str, Any] | None = None, token: str | None = None, **options: Any) -> HttpClient:
        """SQL over HTTP (POST /sql) as this user: `.sql("select ...", *params)` returns rows as dicts."""
        who = self.user(user, sub=sub, role=role, claims=claims)
        token, identity = self.identity_for(who, token, options, "over HTTP (POST /sql)")
        connection_string = f"postgresql://{who.role}@{self.server.endpoints.host}/{self.name}"
        return HttpClient(self.server.endpoints.sql_url, connection_string, token, identity, self.explainer,
                          self.server.http)

    def rest(self, user: str | User | None = None, *, sub: str | None = None, role: str | None = None,
             claims: Mapping[str, Any] | None = None, token: str | None = None, **options: Any) -> RestClient:
        """Neon's Data API (`/<db>/rest/v1`) as this user; the token carries the `role` claim PostgREST switches to."""
        who = self.user(user, sub=sub, role=role, claims=claims)
        if token is None:
            who = User(who.name, sub=who.sub, claims={"role": who.role, **who.claims}, role=who.role)
        token, identity = self.identity_for(who, token, options, "over the Data API (/rest/v1)")
        return RestClient(f"{self.server.endpoints.http_url}/{quote(self.name, safe='')}/rest/v1", token, identity,
                          self.explainer, self.server.http)

    def connect(self, user: str | User | None = None, *, sub: str | None = None, role: str | None = None,
                claims: Mapping[str, Any] | None = None, token: str | None = None, **options: Any) -> NeonConnection:
        """psycopg through the TCP proxy with TLS and the JWT as password; autocommit; closed after the test."""
        who = self.user(user, sub=sub, role=role, claims=claims)
        token, identity = self.identity_for(who, token, options, "over the TCP proxy")
        return self._keep(connect(self.session_url("tcp", who.role, token), identity, self.explainer, autocommit=True))

    def ws(self, user: str | User | None = None, *, sub: str | None = None, role: str | None = None,
           claims: Mapping[str, Any] | None = None, token: str | None = None, **options: Any) -> NeonConnection:
        """psycopg over the WebSocket path (`/v2`, as the serverless driver's Pool uses it), the JWT as password."""
        who = self.user(user, sub=sub, role=role, claims=claims)
        token, identity = self.identity_for(who, token, options, "over WebSocket (/v2)")
        return self._keep(connect(self.session_url("ws", who.role, token), identity, self.explainer, autocommit=True))

    async def aconnect(self, user: str | User | None = None, *, sub: str | None = None, role: str | None = None,
                       claims: Mapping[str, Any] | None = None, token: str | None = None,
                       **options: Any) -> AsyncNeonConnection:
        """The async twin of `connect`; use `async with`, as the event loop is the test's to close it on."""
        who = self.user(user, sub=sub, role=role, claims=claims)
        token, identity = self.identity_for(who, token, options, "over the TCP proxy")
        return await aconnect(self.server.proxy_url(self.name, who.role, token), identity, self.explainer,
                              autocommit=True)

    def session_url(self, via: str, role: str, token: str) -> str:
        """Where a JWT session for `role` connects: "tcp" the proxy (TLS), "ws" the local WebSocket bridge."""
        if via == "ws":
            return make_conninfo(host="127.0.0.1", port=self.server.ws_port(), user=role, password=token,
                                 dbname=self.name, sslmode="disable", gssencmode="disable")
        return self.server.proxy_url(self.name, role, token)

    def owner(self) -> NeonConnection:
        """The owner on Postgres's socket, no proxy: for set-up and for checks that must see every row."""
        identity = Identity(self.server.settings.owner, None, "directly")
        return self._keep(connect(self.direct_url, identity, self.explainer, autocommit=True))

    @contextmanager
    def authenticate_as(self, user: str | User | None = None, *, sub: str | None = None, role: str | None = None,
                        claims: Mapping[str, Any] | None = None, **options: Any) -> Iterator[NeonConnection]:
        """At SQL level, in a transaction: the role and the same claims a minted token would carry."""
        who = self.user(user, sub=sub, role=role, claims=claims)
        with authenticate_as(self.superuser(), claims_of(who.token(self.tokens, **options)), who.role) as conn:
            yield conn

    def superuser(self) -> NeonConnection:
        """The superuser's session on this database (one per test), which `authenticate_as` acts on."""
        if self._superuser is None or self._superuser.closed:
            identity = Identity(SUPERUSER, None, "directly")
            self._superuser = self._keep(connect(self.server.superuser_conninfo(self.name), identity, self.explainer,
                                                 autocommit=True))
        return self._superuser

    def assert_rls_enabled(self, schema: str = "public", allow: Sequence[str] = ()) -> None:
        """Every table has RLS on, every view JWT roles can read is security_invoker, and no SECURITY DEFINER
        function is executable by a JWT role; `allow` names the views and functions meant to be."""
        __tracebackhide__ = True
        assert_rls_enabled(self.superuser(), schema, self.server.settings.jwt_roles, allow)

    def assert_no_lints(self, ignore: Sequence[str] = ()) -> None:
        """The advisor (`neon-local lint`) finds nothing on this database, but for the lints named in `ignore`."""
        __tracebackhide__ = True
        from neon_local.advisor.engine import assert_no_lints

        settings = self.server.settings
        assert_no_lints(self.superuser(), roles=settings.jwt_roles, users=settings.users, ignore=ignore)

    def assert_policies(self, table: str, names: Sequence[str]) -> None:
        """The table's policies are exactly these (pgTAP's policies_are)."""
        __tracebackhide__ = True
        assert_policies(self.superuser(), table, names)

    def assert_policy(self, table: str, name: str, **expected: Any) -> None:
        """One policy's shape: `cmd="SELECT"`, `roles=["authenticated"]`, `permissive=True`, `using=`, `with_check=`."""
        __tracebackhide__ = True
        assert_policy(self.superuser(), table, name, **expected)

    def assert_access(self, table: str, expected: Mapping[Any, Mapping[str, Any]], *, new_row: Any = None,
                      via: str | None = None) -> None:
        """What each user may do to `table`, checked with real statements rolled back (see docs/pytest.md)."""
        __tracebackhide__ = True
        access.assert_access(self, table, expected, new_row=new_row, via=via)

    def access_matrix(self, table: str, users: Sequence[str | User], *, new_row: Any = None,
                      via: str | None = None) -> access.AccessMatrix:
        """A table of what each user may do, to compare with a stored expectation (`assert matrix == EXPECTED`)."""
        return access.measure_matrix(self, table, users, new_row=new_row, via=via)

    def close(self) -> None:
        run_all([conn.close for conn in self._opened])

    def _keep(self, conn: NeonConnection) -> NeonConnection:
        self._opened.append(conn)
        return conn

    def identity_for(self, who: User, token: str | None, options: dict, path: str) -> tuple[str, Identity]:
        """The token to send (`token`, or one minted for `who`) and whom it shows as in refusal notes."""
        if token is None:
            token = who.token(self.tokens, **options)
        vouched = self.tokens.vouched(token)
        if vouched is not None:
            return token, Identity(who.role, vouched, path)
        try:
            return token, Identity(who.role, claims_of(token), path, "unverified")
        except NotAJwt:
            return token, Identity(who.role, None, path, "not a JWT")


class RollbackDatabase(Database):
    """The session's shared database, inside a transaction that the test's end rolls back.

    `owner()` and `authenticate_as(...)` share that one session (as the owner, and as a user in a savepoint),
    so they see each other's uncommitted rows. `commit()` and `rollback()` on it, and COMMIT/ROLLBACK sent as
    SQL, act on a savepoint, as pytest-django's TestCase does: code that commits still leaves no trace.
    HTTP, TCP and WebSocket clients, and an app given `url`, open sessions of their own, which cannot see the
    transaction and whose commits would stay for the next tests: they raise instead.
    """

    mode = "rollback"

    def __init__(self, name: str, server: NeonLocal, session: SharedSession) -> None:
        super().__init__(name, server)
        self._superuser: SharedSession = session
        session.begin_test(server.settings.owner)

    @property
    def url(self) -> str:
        raise self._own_session("neon_db.url")

    @property
    def direct_url(self) -> str:
        raise self._own_session("neon_db.direct_url")

    def owner(self) -> NeonConnection:
        return self._superuser

    def superuser(self) -> NeonConnection:
        return self._superuser

    def http(self, *args: Any, **kwargs: Any) -> HttpClient:
        raise self._own_session("neon_http / neon_db.http")

    def connect(self, *args: Any, **kwargs: Any) -> NeonConnection:
        raise self._own_session("neon_connect / neon_db.connect")

    def rest(self, *args: Any, **kwargs: Any) -> RestClient:
        raise self._own_session("neon_rest / neon_db.rest")

    def ws(self, *args: Any, **kwargs: Any) -> NeonConnection:
        raise self._own_session("neon_ws / neon_db.ws")

    async def aconnect(self, *args: Any, **kwargs: Any) -> AsyncNeonConnection:
        raise self._own_session("neon_db.aconnect")

    def close(self) -> None:
        self._superuser.end_test()

    @staticmethod
    def _own_session(client: str) -> RuntimeError:
        return RuntimeError(f"{client} opens a session of its own, which cannot see this test's rolled-back "
                            f"transaction: use neon_db.authenticate_as(...) here, or give the test a database of "
                            f"its own with @pytest.mark.neon_clone.")

