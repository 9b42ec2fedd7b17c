"""One fresh database for one test, and each way to act on it: as a JWT user over HTTP or TCP, as the owner, at SQL level."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from neon_local.postgres.cluster import SUPERUSER
from neon_local.testing.clients import AsyncNeonConnection, HttpClient, NeonConnection, aconnect, connect
from neon_local.testing.explain import Explainer, Identity
from neon_local.testing.identity import assert_rls_enabled, authenticate_as
from neon_local.testing.janitor import run_all
from neon_local.testing.server import NeonLocal
from neon_local.testing.tokens import TokenFactory, claims_of


class Database:
    """`name` is the database; `url` is what the app under test would get as DATABASE_URL (the owner, via the proxy).

    Users are the names of neon_local.toml's [users.NAME] tables; other keyword arguments are extra claims,
    and `token=` uses a token you minted (an expired one, say) as it is.
    """

    def __init__(self, name: str, server: NeonLocal, tokens: TokenFactory) -> None:
        self.name = name
        self.server = server
        self.tokens = tokens
        self.explainer = Explainer(server.superuser_conninfo(name))
        self._opened: list[NeonConnection] = []
        self._superuser: NeonConnection | None = None

    def __repr__(self) -> str:
        return f"<Database {self.name}>"

    @property
    def url(self) -> str:
        return self.server.owner_proxy_url(self.name)

    @property
    def direct_url(self) -> str:
        return self.server.direct_url(self.name)

    def http(self, user: str | None = None, *, role: str = "authenticated", token: str | None = None,
             **claims: Any) -> HttpClient:
        """SQL over HTTP (POST /sql) as this user: `.sql("select ...", *params)` returns rows as dicts."""
        token, identity = self._identity(user, role, token, claims, "over HTTP (POST /sql)")
        connection_string = f"postgresql://{role}@{self.server.endpoints.host}/{self.name}"
        return HttpClient(self.server.endpoints.sql_url, connection_string, token, identity, self.explainer,
                          self.server.http)

    def connect(self, user: str | None = None, *, role: str = "authenticated", token: str | None = None,
                **claims: Any) -> NeonConnection:
        """psycopg through the TCP proxy with TLS and the JWT as password; closed after the test."""
        token, identity = self._identity(user, role, token, claims, "over the TCP proxy")
        conn = connect(self.server.proxy_url(self.name, role, token), identity, self.explainer, autocommit=True)
        self._opened.append(conn)
        return conn

    async def aconnect(self, user: str | None = None, *, role: str = "authenticated", token: str | None = None,
                       **claims: Any) -> AsyncNeonConnection:
        """The async twin of `connect`; use `async with`, as the event loop is the test's to close it on."""
        token, identity = self._identity(user, role, token, claims, "over the TCP proxy")
        return await aconnect(self.server.proxy_url(self.name, role, token), identity, self.explainer, autocommit=True)

    def owner(self) -> NeonConnection:
        """The owner on Postgres's socket, no proxy: for set-up and for checks that must see every row."""
        identity = Identity(self.server.settings.owner, None, "directly")
        conn = connect(self.direct_url, identity, self.explainer, autocommit=True)
        self._opened.append(conn)
        return conn

    @contextmanager
    def authenticate_as(self, user: str | None = None, *, role: str = "authenticated",
                        **claims: Any) -> Iterator[NeonConnection]:
        """At SQL level, in a transaction: the role and the same claims a minted token would carry."""
        if self._superuser is None:
            identity = Identity(SUPERUSER, None, "directly")
            self._superuser = connect(self.server.superuser_conninfo(self.name), identity, self.explainer, autocommit=True)
            self._opened.append(self._superuser)
        with authenticate_as(self._superuser, self.tokens.claims(user, **claims), role) as conn:
            yield conn

    def assert_rls_enabled(self, schema: str = "public") -> None:
        __tracebackhide__ = True
        with NeonConnection.connect(self.server.superuser_conninfo(self.name)) as conn:
            assert_rls_enabled(conn, schema)

    def close(self) -> None:
        run_all([conn.close for conn in self._opened])

    def _identity(self, user, role, token, claims, path) -> tuple[str, Identity]:
        token = token or self.tokens(user, **claims)
        return token, Identity(role, claims_of(token), path)
