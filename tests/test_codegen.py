"""`neon-local codegen` against a running emulator: the todos sample and tricky statements compile with
tsc --strict, the generated module runs with the real driver and query-core as alice and bob, a migration's
change shows in the generated types, and bad input is a clear error with file and line, nothing half-written."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from http_support import NODE_DIR
from neon_local.codegen.generate import generate
from neon_local.limits.store import read_list
from test_cli import neon_local

FIXTURE = Path(__file__).parent.parent / "fixtures" / "todos"
README = Path(__file__).parent.parent / "README.md"
TSC = NODE_DIR / "node_modules" / ".bin" / "tsc"

TRICKY_SCHEMA = """
create type mood as enum ('happy', 'sad', 'it''s ok');
create domain positive as integer check (value > 0);
create table people (id serial primary key, name text not null, nick text, mood mood not null default 'happy',
  moods mood[], tags text[] not null default '{}', scores int[], prefs jsonb not null default '{}', meta json,
  balance numeric, big bigint, ratio float8, born date, seen timestamp, age positive, raw bytea, span interval);
create table pets (id serial primary key, owner_id int not null references people, name text not null);
create table snap (id int primary key, label text not null);
"""

TRICKY_QUERIES = """\
-- name: PeopleWithPets :many
SELECT p.name, pets.name AS pet FROM people p LEFT JOIN pets ON pets.owner_id = p.id;

-- name: PetsWithPeople :many
SELECT p.name AS person, pets.name FROM people p RIGHT JOIN pets ON pets.owner_id = p.id;

-- name: PetCounts :many
-- nonnull: pets
SELECT p.id, count(pets.id) AS pets, max(pets.name) AS last, p.id + 1 AS next
FROM people p LEFT JOIN pets ON pets.owner_id = p.id GROUP BY p.id;

-- name: Everything :one
SELECT * FROM people WHERE id = @id;

-- name: ByMood :many
SELECT id FROM people WHERE mood = @mood AND tags && sqlc.arg(tags) AND age > @age AND moods @> @moods
  AND nick IS NOT DISTINCT FROM sqlc.narg(nick);

-- name: RecentPets :many
WITH recent AS (SELECT * FROM pets ORDER BY id DESC LIMIT 10)
SELECT people.name AS owner, recent.name FROM recent JOIN people ON people.id = recent.owner_id;

-- name: PetNames :many
SELECT name FROM pets;

-- name: AddPerson :one
INSERT INTO people (name, mood, prefs, born) VALUES (@name, @mood, @prefs, @born)
RETURNING id, name, mood, prefs;

-- name: AdoptPet :one
-- param: owner
-- param: name
WITH adopted AS (INSERT INTO pets (owner_id, name) VALUES ($1, $2) RETURNING *)
SELECT adopted.id, people.name AS owner FROM adopted JOIN people ON people.id = adopted.owner_id;

-- name: ShoutNicks :execrows
UPDATE people SET nick = upper(name);
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """A running emulator (`neon-local up -d`) in a copy of the todos app, migrated, with the tricky schema."""
    project = tmp_path_factory.mktemp("codegen")
    shutil.copy(FIXTURE / "neon_local.toml", project)
    shutil.copytree(FIXTURE / "queries", project / "queries")
    up = neon_local("up", "--detach", "--http-port", "0", "--pg-port", "0", cwd=project)
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads(neon_local("status", "--json", cwd=project).stdout)
        with psycopg.connect(state["urls"]["owner"], autocommit=True) as conn:
            conn.execute((FIXTURE / "migrations" / "0000_todos.sql").read_text())
            conn.execute(TRICKY_SCHEMA)
        yield project, state
    finally:
        neon_local("down", cwd=project)


def _owner(state):
    return psycopg.connect(state["urls"]["owner"], autocommit=True)


def _generate(state, folder: Path, files: dict[str, str]) -> str:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    with _owner(state) as conn:
        return generate(conn, folder)[0]


def _interface(text: str, name: str) -> str:
    start = text.index(f"export interface {name} {{")
    return text[start:text.index("}\n", start) + 1]


NODE = ("--module", "nodenext", "--moduleResolution", "nodenext")
BUNDLER = ("--jsx", "react-jsx", "--module", "esnext", "--moduleResolution", "bundler")  # a React app's imports


def _compile(folder: Path, *files: str, out_dir: str | None = None, modules: tuple[str, ...] = NODE) -> subprocess.CompletedProcess:
    """tsc --strict over files in `folder`, which gets tests/node's node_modules as its own."""
    if not (folder / "node_modules").exists():
        os.symlink(NODE_DIR / "node_modules", folder / "node_modules")
        (folder / "package.json").write_text('{"type": "module"}\n')
    emit = ["--outDir", out_dir] if out_dir else ["--noEmit"]
    args = [str(TSC), "--strict", *emit, "--target", "es2022", *modules, *files]
    return subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=300)


def test_tricky_statements_types(emulator, tmp_path):
    _, state = emulator
    text = _generate(state, tmp_path / "queries", {"tricky.sql": TRICKY_QUERIES})
    assert _interface(text, "PeopleWithPetsRow") == "export interface PeopleWithPetsRow {\n  name: string;\n  pet: string | null;\n}"
    assert _interface(text, "PetsWithPeopleRow") == "export interface PetsWithPeopleRow {\n  person: string | null;\n  name: string;\n}"
    assert _interface(text, "PetCountsRow") == (  # count made non-null by `-- nonnull:`; other expressions nullable
        "export interface PetCountsRow {\n  id: number;\n  pets: string;\n  last: string | null;\n  next: number | null;\n}")
    assert _interface(text, "EverythingRow") == """export interface EverythingRow {
  id: number;
  name: string;
  nick: string | null;
  mood: 'happy' | 'sad' | 'it\\'s ok';
  moods: string | null;
  tags: string[];
  scores: number[] | null;
  prefs: Json;
  meta: Json | null;
  balance: string | null;
  big: string | null;
  ratio: number | null;
  born: Date | null;
  seen: Date | null;
  age: number | null;
  raw: Uint8Array | null;
  span: Interval | null;
}"""
    assert _interface(text, "ByMoodParams") == (
        "export interface ByMoodParams {\n  mood: 'happy' | 'sad' | 'it\\'s ok';\n  tags: string[];\n  age: number;\n"
        "  moods: Array<'happy' | 'sad' | 'it\\'s ok'>;\n  nick: string | null;\n}")
    assert _interface(text, "RecentPetsRow") == "export interface RecentPetsRow {\n  owner: string;\n  name: string;\n}"
    assert _interface(text, "AddPersonParams") == (
        "export interface AddPersonParams {\n  name: string;\n  mood: 'happy' | 'sad' | 'it\\'s ok';\n  prefs: Json;\n"
        "  born: Date | string;\n}")
    assert "export async function shoutNicks(sql: Sql): Promise<number> {" in text
    # a mutation invalidates exactly the queries reading what it writes
    adopt = text[text.index("export function adoptPetMutationOptions"):text.index("export function useAdoptPet")]
    assert [line.split("'")[3] for line in adopt.splitlines() if "invalidateQueries" in line] == \
        ["peopleWithPets", "petsWithPeople", "petCounts", "recentPets", "petNames"]
    add = text[text.index("export function addPersonMutationOptions"):text.index("export function useAddPerson")]
    assert "'everything'" in add and "'petNames'" not in add
    assert "any" not in text.replace("many", "")


def _invalidated(text: str, name: str) -> list[str]:
    """The query names a generated mutation's onSuccess invalidates."""
    options = text[text.index(f"export function {name}MutationOptions"):]
    options = options[:options.index("\n}\n")]
    return [line.split("'")[3] for line in options.splitlines() if "invalidateQueries" in line]


def test_a_query_through_a_view_is_invalidated_by_writes_to_its_tables(emulator, tmp_path):
    _, state = emulator
    with _owner(state) as conn:
        conn.execute("create view pet_view as select id, name, owner_id from pets; "
                     "create view pet_view_names as select name from pet_view")
    text = _generate(state, tmp_path / "queries", {"views.sql": """\
-- name: ViewPets :many
SELECT name FROM pet_view;

-- name: ViewOfView :many
SELECT name FROM pet_view_names;

-- name: TablePets :many
SELECT name FROM pets;

-- name: People :many
SELECT name FROM people;

-- name: AddPet :exec
INSERT INTO pets (owner_id, name) VALUES (@owner, @name);

-- name: RenameInView :exec
UPDATE pet_view SET name = @name WHERE id = @id;
"""})
    assert _invalidated(text, "addPet") == ["viewPets", "viewOfView", "tablePets"]
    assert _invalidated(text, "renameInView") == ["viewPets", "viewOfView", "tablePets"]
    assert "// ViewOfView :many (views.sql:4) reads pet_view, pet_view_names, pets\n" in text


def test_generated_module_compiles_and_its_types_catch_mistakes(emulator, tmp_path):
    _project, state = emulator
    (tmp_path / "queries.ts").write_text(_generate(state, tmp_path / "queries", {"tricky.sql": TRICKY_QUERIES}))
    (tmp_path / "use.ts").write_text("""\
import { neon } from '@neondatabase/serverless';
import { QueryClient } from '@tanstack/react-query';
import * as db from './queries.js';
const sql = neon('postgresql://authenticated@localhost/neondb', { authToken: async () => 'token' });
const rows = await db.peopleWithPets(sql);
const name: string = rows[0]!.name;
const pet: string | null = rows[0]!.pet;
const person = await db.everything(sql, { id: 1 });
const tags: string[] | undefined = person?.tags;
const counted: number = await db.shoutNicks(sql);
const options = db.byMoodQueryOptions(sql, { mood: 'sad', tags: ['a'], age: 3, moods: ['happy'], nick: null });
const key: readonly ['neon', 'byMood', db.ByMoodParams] = options.queryKey;
const mutation = db.addPersonMutationOptions(sql, new QueryClient());
void mutation.mutationFn({ name: 'x', mood: 'happy', prefs: { a: [1, null] }, born: new Date() });
void [name, pet, tags, counted, key, db.useEverything, db.useSuspenseRecentPets, db.useAdoptPet];
""")
    good = _compile(tmp_path, "queries.ts", "use.ts")
    assert good.returncode == 0, good.stdout + good.stderr
    (tmp_path / "wrong.ts").write_text("""\
import { neon } from '@neondatabase/serverless';
import * as db from './queries.js';
const sql = neon('postgresql://authenticated@localhost/neondb', { authToken: async () => 'token' });
const rows = await db.peopleWithPets(sql);
const pet: string = rows[0]!.pet;
void db.byMood(sql, { mood: 'angry', tags: [], age: 1, moods: [], nick: 'x' });
void pet;
""")
    wrong = _compile(tmp_path, "queries.ts", "wrong.ts")
    assert wrong.returncode != 0
    assert "wrong.ts(5,7): error TS2322: Type 'string | null' is not assignable to type 'string'." in wrong.stdout
    assert "wrong.ts(6,23): error TS2322: Type '\"angry\"' is not assignable to type" in wrong.stdout


JSON_QUERIES = """\
-- name: KeepPrefs :one
INSERT INTO people (name, prefs, meta) VALUES ('json', @prefs, sqlc.narg(meta)) RETURNING prefs, meta;

-- name: EchoDocs :one
-- nonnull: docs
SELECT sqlc.arg(docs)::jsonb[] AS docs;
"""


def test_the_readme_component_compiles_against_the_sample(emulator, tmp_path):
    """The README's React component, over the module generated for fixtures/todos, passes tsc --strict."""
    _, state = emulator
    db = tmp_path / "db"
    db.mkdir()
    (db / "queries.ts").write_text(_generate(state, tmp_path / "queries", {"todos.sql": (FIXTURE / "queries" / "todos.sql").read_text()}))
    section = README.read_text().split("### Typed queries and React Query hooks", 1)[1]
    component = section.split("```tsx\n", 1)[1].split("```", 1)[0]
    (tmp_path / "Todos.tsx").write_text("declare const process: { env: Record<string, string | undefined> };\n"
                                        "declare function getToken(): Promise<string>;\n" + component)
    compiled = _compile(tmp_path, "Todos.tsx", modules=BUNDLER)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


def test_json_parameters_reach_postgres_as_json(emulator, tmp_path):
    """The driver would send a top-level array as a Postgres array literal and a string as raw text; the
    generated function sends JSON text, so every value its `Json` type admits arrives as that JSON value."""
    _, state = emulator
    (tmp_path / "queries.ts").write_text(_generate(state, tmp_path / "queries", {"json.sql": JSON_QUERIES}))
    assert _interface((tmp_path / "queries.ts").read_text(), "KeepPrefsParams") == (
        "export interface KeepPrefsParams {\n  prefs: Json;\n  meta: Json | null;\n}")
    assert _interface((tmp_path / "queries.ts").read_text(), "EchoDocsRow") == "export interface EchoDocsRow {\n  docs: Json[];\n}"
    (tmp_path / "json.ts").write_text("""\
import { neon, neonConfig } from '@neondatabase/serverless';
import * as db from './queries.js';
declare const process: { env: Record<string, string> };
neonConfig.fetchEndpoint = process.env.SQL_URL;
const sql = neon(process.env.OWNER_URL);
const values: db.Json[] = [[1, null, 'a'], 'text', { a: [1, { b: null }] }, 3, true, null, []];
const out = [];
for (const value of values) {
  const row = await db.keepPrefs(sql, { prefs: value, meta: value });
  out.push([row?.prefs, row?.meta]);
}
const missing = await db.keepPrefs(sql, { prefs: {}, meta: null });
out.push([missing?.prefs, missing?.meta]);
const echoed = await db.echoDocs(sql, { docs: values });
out.push(echoed?.docs ?? 'no row');
console.log(JSON.stringify(out));
""")
    compiled = _compile(tmp_path, "queries.ts", "json.ts", out_dir="dist")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    env = {**os.environ, "SQL_URL": state["urls"]["sql"], "OWNER_URL": state["urls"]["owner"]}
    run = subprocess.run(["node", "dist/json.js"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [
        [[1, None, "a"], [1, None, "a"]], ["text", "text"], [{"a": [1, {"b": None}]}] * 2, [3, 3], [True, True],
        [None, None],  # JSON null in the NOT NULL column; sqlc.narg's null is SQL NULL, read back as null too
        [[], []], [{}, None], [[1, None, "a"], "text", {"a": [1, {"b": None}]}, 3, True, None, []]]


def test_a_migration_changes_the_generated_types(emulator, tmp_path):
    _, state = emulator
    files = {"snap.sql": "-- name: Snap :many\nSELECT id, label FROM snap;\n"}
    before = _interface(_generate(state, tmp_path / "queries", files), "SnapRow")
    with _owner(state) as conn:
        conn.execute("alter table snap alter column label drop not null, alter column id type bigint")
    after = _interface(_generate(state, tmp_path / "queries", files), "SnapRow")
    assert before == "export interface SnapRow {\n  id: number;\n  label: string;\n}"
    assert after == "export interface SnapRow {\n  id: string;\n  label: string | null;\n}"


def _codegen(project: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    queries = project / "bad_queries"
    shutil.rmtree(queries, ignore_errors=True)
    queries.mkdir()
    for name, text in files.items():
        (queries / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return neon_local("codegen", "--queries", "bad_queries", "--out", "src/db/bad.ts", cwd=project)


@pytest.mark.parametrize("files, error", [
    ({"q.sql": "-- helpers\nSELECT 1;\n-- name: One :one\nSELECT 1 AS one;\n"},
     "bad_queries/q.sql:2: a statement without a `-- name: Name :kind` comment above it."),
    ({"q.sql": "-- name: Two :many\nSELECT 1 AS one;\nSELECT 2 AS two;\n"},
     "bad_queries/q.sql:3: Two holds 2 statements; give each its own `-- name:` comment."),
    ({"a.sql": "-- name: Same :one\nSELECT 1 AS one;\n", "b.sql": "\n-- name: Same :one\nSELECT 2 AS two;\n"},
     "bad_queries/b.sql:2: the name Same is already used at bad_queries/a.sql:1."),
    ({"q.sql": "-- name: Missing :many\nSELECT id,\n  nosuch\nFROM todos;\n"},
     'bad_queries/q.sql:3: Missing does not describe: column "nosuch" does not exist'),
    ({"q.sql": "-- name: NoTable :many\nSELECT * FROM nosuch;\n"},
     'bad_queries/q.sql:2: NoTable does not describe: relation "nosuch" does not exist'),
    ({"q.sql": "-- name: Typo :many\nSELEC 1;\n"}, 'bad_queries/q.sql:2: Typo: syntax error at or near "SELEC"'),
    ({"q.sql": "-- name: NoKind\nSELECT 1 AS one;\n"}, "bad_queries/q.sql:1: NoKind needs a kind after its name"),
    ({"q.sql": "-- name: Dup :many\nSELECT id, id FROM todos;\n"},
     "bad_queries/q.sql:1: Dup returns two columns named 'id'; give one an alias (as ...)."),
    ({"q.sql": "-- name: Nn :many\n-- nonnull: totl\nSELECT count(*) AS total FROM todos;\n"},
     "bad_queries/q.sql:1: `-- nonnull: totl`: Nn returns no column 'totl'."),
    ({"q.sql": "-- name: Delete :exec\nDELETE FROM todos;\n"}, "bad_queries/q.sql:1: Delete would be the function delete()"),
    ({"notes.txt": "not SQL"}, "bad_queries: no .sql files here"),
    ({"q.sql": b"-- name: Cafe :one\nSELECT 'caf\xe9' AS x;\n"}, "bad_queries/q.sql: not UTF-8 text"),
])
def test_bad_input_names_file_and_line_and_writes_nothing(emulator, files, error):
    project, _ = emulator
    out = project / "src" / "db" / "bad.ts"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("// the previous module\n")
    result = _codegen(project, files)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {error}"), result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_text() == "// the previous module\n"
    assert [p.name for p in out.parent.iterdir()] == ["bad.ts"]  # no temporary file left


def test_folder_and_module_from_settings(emulator):
    project, _ = emulator
    (project / "sql").mkdir()
    (project / "sql" / "one.sql").write_text("-- name: One :one\nSELECT 1 AS one;\n")
    result = neon_local("codegen", cwd=project / "sql", env={"NEON_LOCAL_CODEGEN_QUERIES": "sql", "NEON_LOCAL_CODEGEN_OUT": "web/db.ts"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Wrote {project.resolve() / 'web' / 'db.ts'}: 1 query and 0 mutations from ./.\n"
    assert "export async function one(sql: Sql): Promise<OneRow | null>" in (project / "web" / "db.ts").read_text()


def test_without_a_running_emulator(tmp_path):
    (tmp_path / "queries").mkdir()
    result = neon_local("codegen", cwd=tmp_path)
    assert result.returncode == 1 and "neon-local is not running" in result.stderr


def _refused_as(state, token: str, statement: str) -> bool:
    with psycopg.connect(state["urls"]["authenticated"], password=token, autocommit=True) as conn:
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def test_sample_app_runs_as_alice_and_bob(emulator):
    """The CLI writes the todos module and approves its statements in the allow-list; compiled with tsc --strict
    and run with Node under `allowlist mode enforce`, it works, and each user sees only their rows."""
    project, state = emulator
    result = neon_local("codegen", "--emit-allowlist", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("Wrote src/db/queries.ts: 3 queries and 3 mutations from queries/.\n"
                             f"Approved 6 statements in {project.resolve() / 'neon_local.allowlist.toml'} for authenticated.\n")
    assert neon_local("allowlist", "mode", "enforce", cwd=project).returncode == 0
    alice = neon_local("token", "alice", cwd=project).stdout.strip()
    for _ in range(300):  # the emulator reloads the file within a second
        if _refused_as(state, alice, "select 'not generated'"):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the emulator never enforced the allow-list")
    app = project / "src" / "db"
    shutil.copy(NODE_DIR / "codegen" / "todos_app.ts", app)
    compiled = _compile(app, "queries.ts", "todos_app.ts", out_dir="dist")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    env = {**os.environ, "SQL_URL": state["urls"]["sql"], "JWT_URL": state["urls"]["authenticated"],
           "ALICE": alice,
           "BOB": neon_local("token", "bob", cwd=project).stdout.strip()}
    run = subprocess.run(["node", "dist/todos_app.js"], cwd=app, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["created"] == {"idType": "string", "insertedAtIsDate": True, "userId": "user_alice"}
    assert seen["alice"] == ["alice 1", "alice 2"] and seen["bob"] == ["bob 1"]
    assert seen["bobReadsAlicesTodo"] is None
    assert seen["aliceCountAfterBobsUpdate"] == {"total": "2", "done": "0"}
    assert seen["queryKey"] == ["neon", "listTodos", {"done": False}]
    assert seen["cached"] == ["alice 1", "alice 2"]
    assert seen["invalidatedAfterMutation"] is True and seen["refetched"] == ["alice 2"]
    assert seen["bobsCache"] == ["bob 1"]
    assert seen["bobDeletesCompleted"] == 0 and seen["aliceDeletesCompleted"] == 1
    assert seen["aliceLeft"] == ["alice 2"]


@contextlib.contextmanager
def _watching(project: Path, *args: str) -> Iterator[queue.Queue]:
    """`neon-local codegen --watch ARGS` in `project`: its stdout lines, then None if it ends; stopped on exit."""
    process = subprocess.Popen([sys.executable, "-m", "neon_local", "codegen", "--watch", *args],
                               cwd=project, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, process.stdout), lines.put(None)], daemon=True).start()
    try:
        yield lines
    finally:
        process.terminate()
        process.wait(timeout=30)


def _until(lines: queue.Queue, wanted: str) -> list[str]:
    """Lines read until one containing `wanted` (a watcher that exits or hangs for a minute fails the test)."""
    seen = []
    while not seen or wanted not in seen[-1]:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"no line with {wanted!r} after {seen}") from None
        if line is None:
            raise AssertionError(f"the watcher exited before a line with {wanted!r}, after {seen}")
        seen.append(line.rstrip("\n"))
    return seen


def test_watch_regenerates_on_sql_and_schema_changes(emulator):
    project, state = emulator
    with _owner(state) as conn:
        conn.execute("create table watched (id int primary key, note text not null)")
    queries = project / "watch_queries"
    queries.mkdir()
    (queries / "notes.sql").write_text("-- name: NoteIds :many\nSELECT id FROM watched;\n")
    out = project / "src" / "db" / "watch.ts"
    with _watching(project, "--queries", "watch_queries", "--out", "src/db/watch.ts") as lines:
        assert _until(lines, "Watching")[-1] == "Watching watch_queries/*.sql and the schema; Ctrl-C stops."
        # rewritten in place as an editor saves: several events, coalesced into one regeneration
        (queries / "notes.sql").write_text("-- name: NoteIds :many\nSELECT id FROM watched;\n"
                                           "\n-- name: Notes :many\nSELECT id, note FROM watched;\n")
        added = _until(lines, "NotesRow.note")
        assert added[-4].endswith("the SQL files changed; wrote src/db/watch.ts")
        assert added[-3:] == ["  + Notes :many", "  + NotesRow.id: number", "  + NotesRow.note: string"]
        assert "export interface NotesRow" in out.read_text()
        with _owner(state) as conn:
            conn.execute("alter table watched alter column note drop not null")
        # nothing regenerates in between: not the save's later events, nor the watcher's own reading of the files
        schema = _until(lines, "NotesRow.note")
        assert schema[0].endswith("the schema changed; wrote src/db/watch.ts")
        assert schema[1:] == ["  ~ NotesRow.note: string -> string | null"]
        assert "  note: string | null;" in out.read_text()
        (queries / "notes.sql").write_text("-- name: Broken :many\nSELECT nosuch FROM watched;\n")
        assert "Broken does not describe" in _until(lines, "left as it was")[-1]
        assert "export interface NotesRow" in out.read_text()


def test_watch_starts_on_a_broken_file_and_writes_the_module_once_it_is_fixed(emulator):
    project, _ = emulator
    queries = project / "broken_queries"
    queries.mkdir()
    (queries / "tasks.sql").write_text("-- name: Tasks :many\nSELECT nosuch FROM todos;\n")
    out = project / "src" / "db" / "fixed.ts"
    with _watching(project, "--queries", "broken_queries", "--out", "src/db/fixed.ts") as lines:
        started = _until(lines, "Watching")
        assert started[0].startswith("error: broken_queries/tasks.sql:2: Tasks does not describe")
        assert started[0].endswith("(src/db/fixed.ts left as it was)") and not out.exists()
        (queries / "tasks.sql").write_text("-- name: Tasks :many\nSELECT task FROM todos;\n")
        fixed = _until(lines, "TasksRow.task")
        assert fixed[-3].endswith("the SQL files changed; wrote src/db/fixed.ts")
        assert fixed[-2:] == ["  + Tasks :many", "  + TasksRow.task: string"]
        assert "export async function tasks(" in out.read_text()


def test_watch_with_emit_allowlist_approves_what_it_regenerates(emulator):
    project, _ = emulator
    queries = project / "approved_queries"
    queries.mkdir()
    (queries / "tasks.sql").write_text("-- name: FirstTask :one\nSELECT task FROM todos ORDER BY id LIMIT 1;\n")
    with _watching(project, "--emit-allowlist", "--queries", "approved_queries", "--out", "src/db/approved.ts") as lines:
        assert _until(lines, "Approved")[-1].startswith("Approved 1 statements in ")
        _until(lines, "Watching")
        with (queries / "tasks.sql").open("a") as file:
            file.write("\n-- name: LastTask :one\nSELECT task FROM todos ORDER BY id DESC LIMIT 1;\n")
        assert _until(lines, "Approved")[-1] == (
            f"Approved 2 statements in {project.resolve() / 'neon_local.allowlist.toml'} for authenticated.")
    notes = [entry.note for entry in read_list(project / "neon_local.allowlist.toml").statements.values()]
    assert "neon-local codegen: LastTask (tasks.sql:4)" in notes
