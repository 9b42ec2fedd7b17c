"""What each user may do to a table, measured with real statements that are rolled back, and why.

Each user gets one session on the chosen path (the TCP proxy with their JWT by default; the WebSocket
path; or SQL level, on the superuser's session). There, each command runs once in a transaction (a
savepoint at SQL level) that is rolled back: SELECT counts the rows the user sees, UPDATE sets one
column to itself and DELETE deletes, counting the rows they may change, INSERT inserts `new_row`.
A statement refused with SQLSTATE 42501 is "refused"; any other error is shown as itself.

When an outcome is not the expected one, the table's policies for that role and command are evaluated
one by one on the same rows, as the superuser with the user's claims, to name the one that decided it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from neon_local.postgres.cluster import SUPERUSER
from neon_local.testing.clients import connect
from neon_local.testing.explain import claims_read, describe_policy, find_table, policies_for
from neon_local.testing.identity import authenticate_as
from neon_local.testing.tokens import User, claims_of


class Acting(Protocol):
    """What the probe needs of a test database (`neon_local.testing.database.Database`, which imports this module)."""

    name: str
    mode: str
    tokens: Any
    explainer: Any

    def user(self, user: str | User | None = None) -> User: ...
    def superuser(self) -> psycopg.Connection[Any]: ...
    def session_url(self, via: str, role: str, token: str) -> str: ...
    def identity_for(self, who: User, token: str | None, options: dict, path: str) -> tuple: ...

COMMANDS = ("select", "insert", "update", "delete")
PATHS = {"tcp": "over the TCP proxy", "ws": "over WebSocket (/v2)", "sql": "at SQL level (authenticate_as)"}
ALLOWED, REFUSED = "allowed", "refused"


@dataclass(frozen=True)
class Outcome:
    """What one statement did: `rows` it saw or changed, or the refusal (42501), or another error."""

    rows: int | None = None
    refused: str | None = None
    error: str | None = None  # "SQLSTATE: message"

    def cell(self, command: str) -> str:
        if self.refused is not None:
            return REFUSED
        if self.error is not None:
            return "error:" + self.error.split(":", 1)[0]
        return ALLOWED if command == "insert" else str(self.rows)

    def matches(self, expected: Any, command: str) -> bool:
        if isinstance(expected, bool):
            return (self.refused is None and self.error is None) if expected else self.refused is not None
        if isinstance(expected, int):
            return self.rows == expected
        return self.cell(command) == str(expected)

    def describe(self, command: str) -> str:
        if self.refused is not None:
            return f"refused ({self.refused})"
        if self.error is not None:
            return f"error {self.error}"
        return ALLOWED if command == "insert" else f"{self.rows} row(s)"


def expected_text(expected: Any, command: str) -> str:
    if isinstance(expected, bool):
        return ALLOWED if expected else REFUSED
    if isinstance(expected, int):
        return f"{expected} row(s)"
    return str(expected)


@dataclass(frozen=True)
class Subject:
    """One user of a check: how reports name it, the `User`, its token and the claims Postgres will see."""

    label: str
    user: User
    token: str

    @property
    def claims(self) -> dict[str, Any]:
        return claims_of(self.token)


class Probe:
    """Runs the four commands on one table as each user, and explains an outcome from the policies."""

    def __init__(self, db: Acting, table: str, new_row: Any, via: str | None) -> None:
        self.db = db
        conn = db.superuser()
        found = find_table(conn, table)
        if found is None:
            raise AssertionError(f"no table {table} in {db.name} (as the search path finds it)")
        self.schema, self.relname = found
        self.where = f"{self.schema}.{self.relname}"
        self.ident = sql.Identifier(self.schema, self.relname)
        self.new_row = new_row
        self.via = via or ("sql" if db.mode == "rollback" else "tcp")
        if self.via not in PATHS:
            raise ValueError(f"via must be one of {', '.join(PATHS)}, not {self.via!r}")
        if db.mode == "rollback" and self.via != "sql":
            raise ValueError("in rollback mode only via='sql' sees the test's rows: other paths open their own session")
        self._column = self._updatable_column(conn)

    def subject(self, who: str | User) -> Subject:
        user = self.db.user(who)
        return Subject(who if isinstance(who, str) else user.label, user, user.token(self.db.tokens))

    def measure(self, subject: Subject, commands: Sequence[str]) -> dict[str, Outcome]:
        with self._session(subject) as conn:
            cursor = psycopg.Cursor(conn, row_factory=tuple_row)  # no refusal notes: refusals are expected here
            return {command: self._run(conn, cursor, command, subject) for command in commands}

    def explain(self, subject: Subject, command: str, expected: Any, got: Outcome) -> list[str]:
        """Lines naming the policy (or grant) that decided `got` where `expected` was wanted."""
        if got.refused is not None and "permission denied" in got.refused:
            return [f"    deciding: the grant, not a policy: {subject.user.role} lacks {command.upper()} on {self.where}"]
        if got.error is not None:
            return []
        commands = [command.upper()] + (["SELECT"] if command == "update" else [])
        policies = policies_for(self.db.superuser(), self.schema, self.relname, subject.user.role, commands)
        if not policies:
            return [f"    deciding: no {command.upper()} policy applies to {subject.user.role}, so row-level "
                    f"security refuses every row"]
        try:
            verdicts = self._verdicts(subject, command, policies)
        except psycopg.Error as exc:
            return [f"    (the policies could not be evaluated one by one: {exc.diag.message_primary or exc})"]
        lines = [f"    deciding: {describe_policy(*policy)} {verdict}"
                 for policy, verdict in self._deciding(command, expected, got, policies, verdicts)]
        read = claims_read(" ".join(t for p in policies for t in p[3:] if t), subject.claims)
        if read:
            lines.append(f"    with {subject.label}'s claims {' and '.join(read)}")
        return lines

    @contextmanager
    def _session(self, subject: Subject) -> Iterator[psycopg.Connection[Any]]:
        if self.via == "sql":
            with authenticate_as(self.db.superuser(), subject.claims, subject.user.role) as conn:
                yield conn
            return
        url = self.db.session_url(self.via, subject.user.role, subject.token)
        identity = self.db.identity_for(subject.user, subject.token, {}, PATHS[self.via])[1]
        conn = connect(url, identity, self.db.explainer, autocommit=True)
        try:
            yield conn
        finally:
            conn.close()

    def _run(self, conn: psycopg.Connection[Any], cursor: psycopg.Cursor[Any], command: str, subject: Subject) -> Outcome:
        statement, params = self._statement(command, subject)
        try:
            with conn.transaction(force_rollback=True):
                cursor.execute(statement, params)
                rows = cast(tuple, cursor.fetchone())[0] if command == "select" else cursor.rowcount
            return Outcome(rows=rows)
        except psycopg.Error as exc:
            message = exc.diag.message_primary or str(exc)
            if exc.sqlstate == "42501":
                return Outcome(refused=message)
            return Outcome(error=f"{exc.sqlstate}: {message}")

    def _statement(self, command: str, subject: Subject) -> tuple[sql.Composed, Sequence[Any]]:
        if command == "select":
            return sql.SQL("SELECT count(*) FROM {}").format(self.ident), ()
        if command == "delete":
            return sql.SQL("DELETE FROM {}").format(self.ident), ()
        if command == "update":
            if self._column is None:
                raise ValueError(f"{self.where} has no column an UPDATE may set")
            column = sql.Identifier(self._column)
            return sql.SQL("UPDATE {} SET {} = {}").format(self.ident, column, column), ()
        row = self._row(subject)
        return (sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self.ident, sql.SQL(", ").join(map(sql.Identifier, row)), sql.SQL(", ").join(sql.Placeholder() * len(row))),
            [_adapted(v) for v in row.values()])

    def _row(self, subject: Subject) -> dict[str, Any]:
        row = self.new_row(subject.user) if callable(self.new_row) else self.new_row
        if not isinstance(row, Mapping) or not row:
            raise ValueError("checking INSERT needs new_row={column: value, ...} (or a function of the User giving it): "
                             "the row each user tries to insert")
        return dict(row)

    def _updatable_column(self, conn: psycopg.Connection[Any]) -> str | None:
        found = conn.cursor(row_factory=tuple_row).execute(
            "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0 and not attisdropped"
            " and attidentity <> 'a' and attgenerated = '' order by attnum limit 1",
            (self.ident.as_string(conn),)).fetchone()
        return found[0] if found else None

    def _verdicts(self, subject: Subject, command: str, policies: list[tuple]) -> list[Verdict]:
        """Per policy, evaluated on the table's rows with the user's claims (as the superuser, rolled back):
        whether new_row passes its WITH CHECK (INSERT); how many rows a permissive policy of the command admits;
        how many of the rows those admit a restrictive policy (or, for UPDATE, a SELECT policy) holds back."""
        conn = self.db.superuser()
        cursor = psycopg.Cursor(conn, row_factory=tuple_row)
        with conn.transaction(force_rollback=True):
            cursor.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(SUPERUSER)))
            cursor.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(subject.claims),))
            alias = sql.Identifier(self.relname)
            if command == "insert":
                statement, params = self._statement("insert", subject)
                checks = [sql.SQL("coalesce(({}), false)").format(sql.SQL(p[4] or p[3] or "true")) for p in policies]
                cursor.execute(sql.SQL("WITH {} AS ({} RETURNING *) SELECT {} FROM {}").format(
                    alias, statement, sql.SQL(", ").join(checks), alias), params)
                return [Verdict("passes" if ok else "fails", int(ok), f"{'passes' if ok else 'fails'} WITH CHECK for "
                                f"this new row") for ok in cast(tuple, cursor.fetchone())]
            admitting = [_admits(p, command) for p in policies]
            passes = [sql.SQL("coalesce(({}), false)").format(sql.SQL(p[3] or "true")) for p in policies]
            any_admits = sql.SQL(" OR ").join(q for q, a in zip(passes, admitting) if a) if any(admitting) else sql.SQL("false")
            counts = [sql.SQL("count(*) FILTER (WHERE {})").format(q) if a else
                      sql.SQL("count(*) FILTER (WHERE ({}) AND NOT {})").format(any_admits, q)
                      for q, a in zip(passes, admitting)]
            cursor.execute(sql.SQL("SELECT {}, count(*) FILTER (WHERE {}), count(*) FROM {} AS {}").format(
                sql.SQL(", ").join(counts), any_admits, self.ident, alias))
            *numbers, admitted, total = cast(tuple, cursor.fetchone())
        return [Verdict("admits", n, f"admits {n} of {total} row(s) for {subject.label}") if a else
                Verdict("holds back", n, f"holds back {n} of the {admitted} row(s) the {command.upper()} policies admit "
                                         f"for {subject.label}")
                for n, a in zip(numbers, admitting)]

    @staticmethod
    def _deciding(command: str, expected: Any, got: Outcome, policies: list[tuple],
                  verdicts: list[Verdict]) -> list[tuple[tuple, str]]:
        """The policies that made `got` differ from `expected`: those letting too much through, or holding too much back."""
        pairs = list(zip(policies, verdicts))
        if command == "insert":
            own = [(p, v) for p, v in pairs if p[2] in ("INSERT", "ALL")]
            if got.refused is None:  # allowed where refused was wanted: the permissive ones that let it in
                chosen = [(p, v) for p, v in own if p[1] == "PERMISSIVE" and v.kind == "passes"]
            else:
                chosen = ([(p, v) for p, v in own if p[1] == "RESTRICTIVE" and v.kind == "fails"]
                          or [(p, v) for p, v in own if p[1] == "PERMISSIVE"])
            return [(p, v.text) for p, v in chosen or own]
        admitting = [(p, v) for p, v in pairs if v.kind == "admits"]
        want = expected if isinstance(expected, int) and not isinstance(expected, bool) else None
        if want is not None and got.rows is not None and got.rows > want:
            chosen = [(p, v) for p, v in admitting if v.count > want] or admitting
        else:
            chosen = [(p, v) for p, v in pairs if v.kind == "holds back" and v.count] or admitting
        return [(p, v.text) for p, v in chosen or pairs]


@dataclass(frozen=True)
class Verdict:
    kind: str  # "admits" / "holds back" (row counts), "passes" / "fails" (a new row's WITH CHECK)
    count: int
    text: str


def _admits(policy: tuple, command: str) -> bool:
    """A permissive policy of the command itself lets rows in; the others (restrictive ones, and SELECT policies
    filtering an UPDATE) can only hold rows back."""
    return policy[1] == "PERMISSIVE" and policy[2] in (command.upper(), "ALL")


def _adapted(value: Any) -> Any:
    """A dict or list for a json/jsonb/array column goes as JSON text; Postgres casts it by the column's type."""
    return json.dumps(value) if isinstance(value, dict) else value


def _commands_of(expectation: Mapping[str, Any], label: str) -> dict[str, Any]:
    wanted = {command.lower(): value for command, value in expectation.items()}
    unknown = set(wanted) - set(COMMANDS)
    if unknown:
        raise ValueError(f"{label}: unknown command(s) {sorted(unknown)}; use {', '.join(COMMANDS)}")
    return wanted


def assert_access(db: Acting, table: str, expected: Mapping[Any, Mapping[str, Any]], *, new_row: Any = None,
                  via: str | None = None) -> None:
    """`expected` maps each user (a neon_local.toml name, "anonymous", or a `User`) to {command: expectation}:
    a row count, True (allowed) or False (refused)."""
    __tracebackhide__ = True
    probe = Probe(db, table, new_row, via)
    problems: list[str] = []
    for who, expectation in expected.items():
        subject = probe.subject(who)
        wanted = _commands_of(expectation, subject.label)
        got = probe.measure(subject, [c for c in COMMANDS if c in wanted])
        for command, want in wanted.items():
            if not got[command].matches(want, command):
                problems.append(f"  {subject.label} ({subject.user.role}) {command.upper()}: expected "
                                f"{expected_text(want, command)}, got {got[command].describe(command)}")
                problems += probe.explain(subject, command, want, got[command])
    if problems:
        raise AssertionError(f"access to {probe.where} is not as expected ({PATHS[probe.via]}, each statement "
                             f"rolled back):\n" + "\n".join(problems))


class AccessMatrix:
    """What each user may do to a table, as a small text table; compare it with the text you expect:

        assert neon_db.access_matrix("todos", ["alice", "anonymous"], new_row={"task": "x"}) == '''
            public.todos  select  insert   update  delete
            alice         2       allowed  2       2
            anonymous     0       refused  0       0
        '''

    Cells: a row count, `allowed`, `refused`, or `error:SQLSTATE`. Whitespace does not matter. On a
    difference, pytest shows each changed cell with the policy that decided it.
    """

    def __init__(self, probe: Probe, subjects: list[Subject], commands: list[str],
                 cells: dict[tuple[str, str], Outcome]) -> None:
        self.table = probe.where
        self.commands = commands
        self.users = [s.label for s in subjects]
        self.cells = cells
        self._probe = probe
        self._subjects = {s.label: s for s in subjects}

    def rows(self) -> list[list[str]]:
        return [[self.table, *self.commands]] + [[user, *(self.cells[user, c].cell(c) for c in self.commands)]
                                                   for user in self.users]

    def __str__(self) -> str:
        rows = self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)

    def __repr__(self) -> str:
        return f"<AccessMatrix\n{self}\n>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AccessMatrix):
            other = str(other)
        if not isinstance(other, str):
            return NotImplemented
        return _parse(other) == self.rows()

    __hash__ = None  # type: ignore[assignment]

    def explain_difference(self, expected: str) -> list[str]:
        """What pytest shows for a failed `matrix == expected`."""
        return [f"access matrix of {self.table} differs from the expectation ({PATHS[self._probe.via]}):",
                *self.differences(expected), "measured:", *("  " + line for line in str(self).splitlines())]

    def differences(self, expected: str) -> list[str]:
        """Each cell that differs from `expected`, with the deciding policy."""
        want = {(row[0], self.commands[i]): cell for row in _parse(expected)[1:] for i, cell in enumerate(row[1:])
                if i < len(self.commands)}
        header = _parse(expected)[:1]
        lines = []
        if header and header[0] != [self.table, *self.commands]:
            lines.append(f"  header: expected {' '.join(header[0])!r}, got {' '.join([self.table, *self.commands])!r}")
        for user in sorted(set(self.users) ^ {u for u, _ in want}):
            lines.append(f"  user {user}: {'not expected' if user in self.users else 'expected but not measured'}")
        for user in self.users:  # one line per user, then each deciding policy once: pytest cuts long diffs
            subject = self._subjects[user]
            cells: list[str] = []
            explained: list[str] = []
            for command in self.commands:
                cell = want.get((user, command))
                got = self.cells[user, command]
                if cell is not None and got.cell(command) != cell:
                    cells.append(f"{command.upper()}: expected {cell}, got {got.describe(command)}")
                    want_value = int(cell) if cell.isdigit() else cell == ALLOWED
                    explained += [line for line in self._probe.explain(subject, command, want_value, got)
                                  if line not in explained]
            if cells:
                lines.append(f"  {user} ({subject.user.role}) " + "; ".join(cells))
                lines += sorted(explained, key=lambda line: line.lstrip().startswith("with "))  # claims last
        return lines


def _parse(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines() if line.strip()]


def measure_matrix(db: Acting, table: str, users: Sequence[str | User], *, new_row: Any = None,
                   via: str | None = None) -> AccessMatrix:
    probe = Probe(db, table, new_row, via)
    commands = [c for c in COMMANDS if c != "insert" or new_row is not None]
    subjects = [probe.subject(who) for who in users]
    cells = {}
    for subject in subjects:
        for command, outcome in probe.measure(subject, commands).items():
            cells[subject.label, command] = outcome
    return AccessMatrix(probe, subjects, commands, cells)
