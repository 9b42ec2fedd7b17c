"""The Data API against the reference's test cases (neon-data-api.md §6), over real HTTP and real Postgres.

Each case is (id, method, path, options, expected status, check); paths are relative to /<db>/rest/v1
unless `from_root`. The id starts with the reference's case number: READS run in any order, WRITES in
theirs; case 36 alone is a function of its own (it adds a foreign key for the time of the test).
The fixture (tests/data_api_support.py) follows the reference: authors, books with RLS, reviews, extra.notes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from data_api_support import DB, rest  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

OBJECT = {"Accept": "application/vnd.pgrst.object+json"}


def rows(n):
    return lambda r: len(r.json()) == n


def ids(*expected):
    return lambda r: sorted(row["id"] for row in r.json()) == list(expected)


def error(code, starts=""):
    return lambda r: r.json()["code"] == code and r.json()["message"].startswith(starts) and set(r.json()) == {
        "code", "details", "hint", "message"}


def header(name, value):
    return lambda r: r.headers.get(name) == value


def both(*checks):
    return lambda r: all(check(r) for check in checks)


PREFLIGHT = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,prefer"}

READS = [
    ("1 all rows", "GET", "/books", {}, 200, both(rows(4), header("Content-Range", "0-3/*"))),
    ("2 no token: anonymous role", "GET", "/books", {"token": None}, 200, ids(3)),
    ("3 expired", "GET", "/books", {"token": lambda rest: rest.token(expired=True)}, 401,
     error(None, "JWT token has expired (exp=")),
    ("3b unknown key", "GET", "/books", {"token": lambda rest: rest.stranger_token()}, 401, error(None, "jwk not found")),
    ("3c not a jwt", "GET", "/books", {"token": "not.a.jwt"}, 401, error(None)),
    ("3d not bearer", "GET", "/books", {"token": None, "headers": {"Authorization": "Basic abc"}}, 401,
     error(None, "missing authentication credentials")),
    ("4 token without role: anonymous", "GET", "/books", {"role": None}, 200, ids(3)),
    ("5 unknown role", "GET", "/books", {"role": "nosuch"}, 401, error("22023", 'role "nosuch" does not exist')),
    ("6 preflight", "OPTIONS", "/books", {"token": None, "headers": PREFLIGHT}, 200,
     both(lambda r: r.content == b"", header("Access-Control-Allow-Origin", "*"),
          header("Access-Control-Allow-Headers", "authorization,prefer, Authorization"),
          lambda r: "PATCH" in r.headers["Access-Control-Allow-Methods"],
          lambda r: "Access-Control-Allow-Private-Network" not in r.headers)),  # not asked for
    ("7 unknown table", "GET", "/nosuch", {}, 404, error("PGRST205", "Could not find the table 'public.nosuch'")),
    ("7b perhaps you meant", "GET", "/book", {}, 404, lambda r: r.json()["hint"] == "Perhaps you meant the table 'public.books'"),
    ("8 outside the prefix", "GET", f"/{DB}/rest/v2/books", {"from_root": True}, 404, error("PGRST125")),
    ("9 select and eq", "GET", "/books?select=id,title&id=eq.1", {}, 200, lambda r: r.json() == [{"id": 1, "title": "Harry One"}]),
    ("9b alias", "GET", "/books?select=t:title&id=eq.1", {}, 200, lambda r: r.json() == [{"t": "Harry One"}]),
    ("10 cast", "GET", "/books?select=id,year::text&id=eq.3", {}, 200, lambda r: r.json() == [{"id": 3, "year": "1990"}]),
    ("11 json path", "GET", "/books?select=id,color:meta->>color&meta->>color=eq.red&order=id", {}, 200,
     lambda r: r.json() == [{"id": 1, "color": "red"}, {"id": 4, "color": "red"}]),
    ("11b json path key", "GET", "/books?select=meta->>color&id=eq.2", {}, 200, lambda r: r.json() == [{"color": "blue"}]),
    ("11c json number compare", "GET", "/books?select=id&meta->n=gt.2", {}, 200, ids(4)),
    ("12 in", "GET", "/books?id=in.(1,3)", {}, 200, ids(1, 3)),
    ("12b in empty", "GET", "/books?id=in.()", {}, 200, rows(0)),
    ("13 is null", "GET", "/books?year=is.null", {}, 200, ids(4)),
    ("13b not is null", "GET", "/books?year=not.is.null", {}, 200, ids(1, 2, 3)),
    ("14 ilike", "GET", "/books?title=ilike.*harry*", {}, 200, ids(1)),
    ("14b like", "GET", "/books?title=like.*cond", {}, 200, ids(2)),
    ("15 array contains", "GET", "/books?tags=cs.{sci-fi}", {}, 200, ids(1, 3)),
    ("15b jsonb contains", "GET", '/books?meta=cs.{"color":"red"}', {}, 200, ids(1, 4)),
    ("15c overlap", "GET", "/books?tags=ov.{drama,magic}", {}, 200, ids(1, 2)),
    ("16 or", "GET", "/books?or=(year.lt.1995,title.eq.Second)", {}, 200, ids(2, 3)),
    ("17 not.or", "GET", "/books?not.or=(year.lt.1995,year.gt.2004)", {}, 200, ids(1)),
    ("17b nested and", "GET", "/books?or=(id.eq.4,and(year.gt.2000,title.like.H*))", {}, 200, ids(1, 4)),
    ("18 bad operator", "GET", "/books?year=noop.5", {}, 400, error("PGRST100", '"failed to parse filter (noop.5)"')),
    ("19 unknown column", "GET", "/books?nosuchcol=eq.1", {}, 400, error("42703")),
    ("20 bad value", "GET", "/books?id=eq.abc", {}, 400, error("22P02")),
    ("21 order nulls last", "GET", "/books?select=id&order=year.desc.nullslast,id", {}, 200,
     lambda r: [x["id"] for x in r.json()] == [2, 1, 3, 4]),
    ("21b order nulls first", "GET", "/books?select=id&order=year.asc.nullsfirst", {}, 200,
     lambda r: [x["id"] for x in r.json()] == [4, 3, 1, 2]),
    ("22 limit offset", "GET", "/books?select=id&order=id&limit=2&offset=1", {}, 200,
     both(ids(2, 3), header("Content-Range", "1-2/*"))),
    ("23 count exact", "GET", "/books?limit=2", {"headers": {"Prefer": "count=exact"}}, 206, header("Content-Range", "0-1/4")),
    ("24 offset past the end", "GET", "/books?offset=10", {"headers": {"Prefer": "count=exact"}}, 416,
     lambda r: r.json()["code"] == "PGRST103" and r.json()["details"] == "An offset of 10 was requested, but there are only 4 rows."),
    ("25 head", "HEAD", "/books", {"headers": {"Prefer": "count=exact"}}, 200,
     both(header("Content-Range", "0-3/4"), lambda r: r.content == b"")),
    ("26 single object", "GET", "/books?id=eq.1", {"headers": OBJECT}, 200,
     both(lambda r: r.json()["id"] == 1, lambda r: r.headers["Content-Type"].startswith("application/vnd.pgrst.object+json"))),
    ("27 single object, no row", "GET", "/books?id=eq.99", {"headers": OBJECT}, 406,
     lambda r: r.json()["code"] == "PGRST116" and r.json()["details"] == "The result contains 0 rows"),
    ("28 csv", "GET", "/books?select=id,title&order=id", {"headers": {"Accept": "text/csv"}}, 200,
     both(lambda r: r.text.splitlines()[0] == "id,title", lambda r: r.headers["Content-Type"].startswith("text/csv"))),
    ("29 unknown media type", "GET", "/books", {"headers": {"Accept": "application/xml"}}, 406, error("PGRST107")),
    ("range header", "GET", "/books?select=id&order=id", {"headers": {"Range": "1-2"}}, 200, ids(2, 3)),
    ("fts", "GET", "/books?select=id&title=fts(english).second", {}, 200, ids(2)),
    ("like any", "GET", "/books?select=id&title=like(any).{H*,O*}", {}, 200, ids(1, 3)),
    ("isdistinct", "GET", "/books?select=id&year=isdistinct.2001", {}, 200, ids(2, 3, 4)),
    # the other operators of issue 10 item 3 (slots: 1 [1,5) 'Alpha beta', 2 [5,10) 'gamma delta', 3 [20,30) 'Alpha')
    ("op neq", "GET", "/slots?select=id&id=neq.1", {}, 200, ids(2, 3)),
    ("op gt", "GET", "/slots?select=id&id=gt.2", {}, 200, ids(3)),
    ("op gte", "GET", "/slots?select=id&id=gte.2", {}, 200, ids(2, 3)),
    ("op lt", "GET", "/slots?select=id&id=lt.2", {}, 200, ids(1)),
    ("op lte", "GET", "/slots?select=id&id=lte.2", {}, 200, ids(1, 2)),
    ("op match", "GET", "/slots?select=id&label=match.^Al", {}, 200, ids(1, 3)),
    ("op imatch", "GET", "/slots?select=id&label=imatch.^al", {}, 200, ids(1, 3)),
    ("op not.in", "GET", "/slots?select=id&id=not.in.(1,3)", {}, 200, ids(2)),
    ("op cd", "GET", "/books?select=id&tags=cd.{sci-fi}", {}, 200, ids(3, 4)),
    ("op sl", "GET", "/slots?select=id&during=sl.[10,20)", {}, 200, ids(1, 2)),
    ("op sr", "GET", "/slots?select=id&during=sr.[6,8)", {}, 200, ids(3)),
    ("op nxl", "GET", "/slots?select=id&during=nxl.[5,10)", {}, 200, ids(1, 2)),
    ("op nxr", "GET", "/slots?select=id&during=nxr.[5,10)", {}, 200, ids(2, 3)),
    ("op adj", "GET", "/slots?select=id&during=adj.[10,20)", {}, 200, ids(2, 3)),
    ("op plfts", "GET", "/slots?select=id&label=plfts.alpha", {}, 200, ids(1, 3)),
    ("op phfts", "GET", "/slots?select=id&label=phfts(english).alpha%20beta", {}, 200, ids(1)),
    ("op wfts", "GET", "/slots?select=id&label=wfts.alpha%20-beta", {}, 200, ids(3)),
    ("max rows from limit 0", "GET", "/books?limit=0", {}, 200, both(rows(0), header("Content-Range", "*/*"))),
    # embedding
    ("30 many-to-one", "GET", "/books?select=title,authors(name)&id=eq.1", {}, 200,
     lambda r: r.json() == [{"title": "Harry One", "authors": {"name": "Ann"}}]),
    ("31 one-to-many", "GET", "/authors?select=name,books(title)&order=id&books.order=id", {}, 200,
     lambda r: r.json()[0]["books"] == [{"title": "Harry One"}, {"title": "Second"}] and r.json()[2]["books"] == []),
    ("32 inner", "GET", "/authors?select=name,books!inner(title)&books.year=lt.2000", {}, 200,
     lambda r: r.json() == [{"name": "Bo", "books": [{"title": "Old"}]}]),
    ("33 embedded order and limit", "GET", "/authors?select=name,books(title)&books.order=title.desc&books.limit=1&order=id", {}, 200,
     lambda r: [len(a["books"]) for a in r.json()] == [1, 1, 0] and r.json()[0]["books"][0]["title"] == "Second"),
    ("34 spread", "GET", "/books?select=title,...authors(author_name:name)&id=eq.1", {}, 200,
     lambda r: r.json() == [{"title": "Harry One", "author_name": "Ann"}]),
    ("35 unknown relationship", "GET", "/books?select=title,nosuch(*)", {}, 400, error("PGRST200")),
    ("37 count()", "GET", "/books?select=count()", {}, 200, lambda r: r.json() == [{"count": 4}]),
    ("37b grouped count", "GET", "/books?select=author_id,count()&order=author_id", {}, 200,
     lambda r: r.json() == [{"author_id": 1, "count": 2}, {"author_id": 2, "count": 2}]),
    ("38 filter on an embed not selected", "GET", "/books?select=title&authors.name=eq.Ann", {}, 400, error("PGRST108")),
    ("many-to-many", "GET", "/books?select=id,tags(label)&id=eq.1&tags.order=id", {}, 200,
     lambda r: r.json() == [{"id": 1, "tags": [{"label": "fun"}, {"label": "long"}]}]),
    ("nested", "GET", "/authors?select=name,books(title,reviews(stars))&id=eq.1&books.order=id&books.reviews.order=stars", {}, 200,
     lambda r: r.json()[0]["books"][0]["reviews"] == [{"stars": 3}, {"stars": 5}]),
    ("embed null filter", "GET", "/authors?select=name,books(id)&books=is.null", {}, 200,
     lambda r: r.json() == [{"name": "Cy", "books": []}]),
    ("hint by column", "GET", "/books?select=title,authors!author_id(name)&id=eq.1", {}, 200,
     lambda r: r.json()[0]["authors"] == {"name": "Ann"}),
    ("view to table", "GET", "/recent_books?select=title,authors(name)&order=id", {}, 200,
     lambda r: r.json() == [{"title": "Harry One", "authors": {"name": "Ann"}}, {"title": "Second", "authors": {"name": "Ann"}}]),
    ("table to view", "GET", "/authors?select=name,recent_books(title)&id=eq.1&recent_books.order=id", {}, 200,
     lambda r: r.json() == [{"name": "Ann", "recent_books": [{"title": "Harry One"}, {"title": "Second"}]}]),
    ("related order", "GET", "/books?select=id,authors(name)&order=authors(name).desc,id", {}, 200,
     lambda r: [x["id"] for x in r.json()] == [3, 4, 1, 2]),
    # permissions, RPC, profiles, GUCs
    ("51 no privilege", "GET", "/secrets", {}, 403, error("42501", "permission denied for table secrets")),
    ("51b no privilege, no token: 401 as PostgREST", "GET", "/secrets", {"token": None}, 401, error("42501")),
    ("51c no privilege, anonymous role's token: 403", "GET", "/secrets", {"role": "anonymous"}, 403, error("42501")),
    ("53 rpc post", "POST", "/rpc/add", {"json": {"a": 1, "b": 2}}, 200, lambda r: r.json() == 3),
    ("53b rpc get", "GET", "/rpc/add?a=1&b=2", {}, 200, lambda r: r.json() == 3),
    ("54 table-returning rpc", "GET", "/rpc/books_by?author=1&select=title&order=title.desc", {}, 200,
     lambda r: r.json() == [{"title": "Second"}, {"title": "Harry One"}]),
    ("55 void", "POST", "/rpc/touch", {"json": {"b": 1}}, 204, lambda r: r.content == b""),
    ("55b volatile over GET", "GET", "/rpc/touch?b=1", {}, 405, error("25006")),
    ("56 unknown function", "POST", "/rpc/nosuch", {"json": {}}, 404, error("PGRST202")),
    ("56b patch on rpc", "PATCH", "/rpc/add", {"json": {}}, 405, error("PGRST101", "Cannot use the PATCH method on RPC")),
    ("57 raise", "POST", "/rpc/fail", {}, 400, lambda r: r.json()["code"] == "P0001" and r.json()["message"] == "nope"),
    ("57b PT402", "POST", "/rpc/pay", {}, 402, lambda r: r.json()["message"] == "Payment Required"),
    ("58 profile", "GET", "/notes", {"headers": {"Accept-Profile": "extra"}}, 200,
     both(lambda r: r.json() == [{"id": 1, "body": "extra note"}], header("Content-Profile", "extra"))),
    ("58b unknown profile", "GET", "/notes", {"headers": {"Accept-Profile": "private"}}, 406,
     lambda r: r.json()["code"] == "PGRST106" and r.json()["hint"] == "Only the following schemas are exposed: public, extra"),
    ("59 claims, role and auth.user_id()", "GET", "/rpc/whoami", {}, 200,
     lambda r: (r.json()["sub"], r.json()["user"], r.json()["uid"]) == ("u1", "authenticated", "u1")),
    ("60 response.status and headers", "POST", "/rpc/teapot", {}, 418, header("X-A", "1")),
]


async def send(rest, method, path, options):
    options = dict(options)
    role = options.pop("role", "authenticated")
    token = options.pop("token", "default")
    if token == "default":
        token = rest.token(role=role)
    elif callable(token):
        token = token(rest)
    if options.pop("from_root", False):
        sent = {**options.pop("headers", {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        return await rest.client.request(method, f"http://127.0.0.1:{rest.port}{path}", headers=sent, **options)
    return await rest.request(method, path, token=token, **options)


@pytest.mark.parametrize("case", READS, ids=[c[0] for c in READS])
async def test_reads_rpc_and_embedding(rest, case):
    _, method, path, options, status, check = case
    response = await send(rest, method, path, options)
    assert response.status_code == status, response.text
    assert check(response), response.text


@pytest.mark.parametrize("origin, allowed", [("http://localhost:3000", True), ("https://evil.example", False)])
async def test_private_network_access_only_for_admitted_origins(rest, origin, allowed):
    response = await rest.client.options(rest.url + "/books", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Private-Network": "true"})
    assert response.status_code == 200
    assert (response.headers.get("Access-Control-Allow-Private-Network") == "true") is allowed


async def test_ambiguous_embed(rest):
    """Case 36, the one outside the tables: it adds a second foreign key for the time of the test."""
    async with await rest.admin() as conn:
        await conn.execute("alter table books add column editor_id int references authors")
    try:
        response = await rest.request("GET", "/books?select=*,authors(*)")
        assert response.status_code == 300, response.text
        body = response.json()
        assert body["code"] == "PGRST201" and "'authors!books_editor_id_fkey'" in body["hint"]
        hinted = await rest.request("GET", "/books?select=id,authors!books_author_id_fkey(name)&id=eq.1")
        assert hinted.json() == [{"id": 1, "authors": {"name": "Ann"}}]
    finally:
        async with await rest.admin() as conn:
            await conn.execute("alter table books drop column editor_id")


async def test_new_table_is_found_without_a_restart(rest):
    await rest.request("GET", "/books")
    async with await rest.admin() as conn:
        await conn.execute("create table fresh (id int primary key); grant select on fresh to authenticated;"
                           "insert into fresh values (7)")
    response = await rest.request("GET", "/fresh")
    assert response.status_code == 200 and response.json() == [{"id": 7}]


RETURN = {"Prefer": "return=representation"}

# Writes change the fixture, so they run in this order, each step seeing what the ones before it left;
# the last steps put the fixture back as the reads expect it. The default token is u1's (role authenticated).
WRITES = [
    ("39 minimal insert, owner from auth.user_id()", "POST", "/books", {"json": {"title": "N", "author_id": 1}}, 201,
     both(lambda r: r.content == b"", header("Content-Range", "*/*"))),
    ("40 representation with select", "POST", "/books?select=title,owner", {"json": {"title": "R", "author_id": 1},
     "headers": RETURN}, 201, lambda r: r.json() == [{"title": "R", "owner": "u1"}]),
    ("41 bulk with columns", "POST", '/books?columns="title","author_id"&select=title',
     {"json": [{"title": "B1", "author_id": 1}, {"title": "B2"}], "headers": RETURN}, 201,
     lambda r: [x["title"] for x in r.json()] == ["B1", "B2"]),
    ("headers-only: Location from the primary key", "POST", "/reviews", {"json": {"book_id": 2, "reviewer": "a b&c", "stars": 1},
     "headers": {"Prefer": "return=headers-only"}}, 201,
     both(header("Location", "/reviews?book_id=eq.2&reviewer=eq.a+b%26c"), lambda r: r.content == b"",
          lambda r: r.headers["Preference-Applied"] == "return=headers-only")),
    ("headers-only, two rows: no Location", "POST", "/reviews", {"json": [{"book_id": 2, "reviewer": "x"}, {"book_id": 2,
     "reviewer": "y"}], "headers": {"Prefer": "return=headers-only"}}, 201, lambda r: "Location" not in r.headers),
    ("minimal: no Location", "POST", "/reviews", {"json": {"book_id": 2, "reviewer": "z"}}, 201,
     lambda r: "Location" not in r.headers),
    ("count on an update", "PATCH", "/reviews?book_id=eq.2", {"json": {"stars": 2}, "headers": {"Prefer": "count=exact"}}, 204,
     header("Content-Range", "0-3/4")),
    ("count on an insert", "POST", "/reviews", {"json": {"book_id": 2, "reviewer": "w"}, "headers": {"Prefer": "count=exact"}},
     201, header("Content-Range", "*/1")),
    ("count on a delete", "DELETE", "/reviews?book_id=eq.2", {"headers": {"Prefer": "count=exact"}}, 204,
     header("Content-Range", "*/5")),
    ("a delete without count", "DELETE", "/reviews?book_id=eq.2", {}, 204, header("Content-Range", "*/*")),
    ("42 unknown column", "POST", "/books", {"json": {"nosuch": 1}}, 400, error("PGRST204")),
    ("42b invalid json", "POST", "/books", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400,
     lambda r: r.json() == {"code": "PGRST102", "details": None, "hint": None, "message": "Empty or invalid json"}),
    ("42c keys must match", "POST", "/books", {"json": [{"title": "a"}, {"year": 1}]}, 400,
     error("PGRST102", "All object keys must match")),
    ("43 not null", "POST", "/books", {"json": {"title": None}}, 400, error("23502")),
    ("44 foreign key", "POST", "/books", {"json": {"title": "x", "author_id": 99}}, 409, error("23503")),
    ("44b duplicate key", "POST", "/reviews", {"json": {"book_id": 1, "reviewer": "r", "stars": 1}}, 409, error("23505")),
    ("45 RLS refuses a row for another owner", "POST", "/books", {"json": {"title": "x", "owner": "u2"}}, 403,
     error("42501", 'new row violates row-level security policy for table "books"')),
    ("46 merge-duplicates: 201 as Neon", "POST", "/reviews?on_conflict=book_id,reviewer",
     {"json": {"book_id": 1, "reviewer": "r", "stars": 4}, "headers": {"Prefer": "resolution=merge-duplicates,return=representation"}},
     201, both(lambda r: r.json() == [{"book_id": 1, "reviewer": "r", "stars": 4}],
               lambda r: "resolution=merge-duplicates" in r.headers["Preference-Applied"])),
    ("47 ignore-duplicates", "POST", "/reviews", {"json": {"book_id": 1, "reviewer": "r", "stars": 1},
     "headers": {"Prefer": "resolution=ignore-duplicates,return=representation"}}, 201, lambda r: r.json() == []),
    ("47b the existing row is unchanged", "GET", "/reviews?book_id=eq.1&reviewer=eq.r&select=stars", {}, 200,
     lambda r: r.json() == [{"stars": 4}]),
    ("48 update, minimal", "PATCH", "/books?title=eq.N", {"json": {"title": "Z"}}, 204, lambda r: r.content == b""),
    ("48b update, representation", "PATCH", "/books?title=eq.Z&select=title", {"json": {"year": 1}, "headers": RETURN}, 200,
     lambda r: r.json() == [{"title": "Z"}]),
    ("49 RLS hides u2's row from u1's update: 204", "PATCH", "/books?id=eq.3", {"json": {"title": "Z"}}, 204,
     lambda r: r.content == b""),
    ("49b nothing changed", "GET", "/books?id=eq.3&select=title", {}, 200, lambda r: r.json() == [{"title": "Old"}]),
    ("50 delete, representation", "DELETE", "/books?title=in.(Z,R,B1,B2)&select=title", {"headers": RETURN}, 200,
     lambda r: sorted(x["title"] for x in r.json()) == ["B1", "B2", "R", "Z"]),
    ("50b delete, minimal", "DELETE", "/books?id=eq.99", {}, 204, lambda r: r.content == b""),
    ("single object after a write", "POST", "/books?select=title", {"json": {"title": "S"}, "headers": {**RETURN, **OBJECT}},
     201, lambda r: r.json() == {"title": "S"}),
    ("single object, cleaned up", "DELETE", "/books?title=eq.S", {}, 204, lambda r: r.content == b""),
    ("PUT inserts", "PUT", "/reviews?book_id=eq.2&reviewer=eq.p", {"json": {"book_id": 2, "reviewer": "p", "stars": 2},
     "headers": RETURN}, 200, lambda r: r.json() == [{"book_id": 2, "reviewer": "p", "stars": 2}]),
    ("PUT updates", "PUT", "/reviews?book_id=eq.2&reviewer=eq.p", {"json": {"book_id": 2, "reviewer": "p", "stars": 5}}, 204,
     lambda r: r.content == b""),
    ("PUT updated", "GET", "/reviews?book_id=eq.2&select=stars", {}, 200, lambda r: r.json() == [{"stars": 5}]),
    ("52 PUT body key differs from the URL's", "PUT", "/reviews?book_id=eq.2&reviewer=eq.p",
     {"json": {"book_id": 2, "reviewer": "q", "stars": 1}}, 400, error("PGRST115")),
    ("52b PUT without the whole key", "PUT", "/reviews?book_id=eq.2", {"json": {"book_id": 2, "reviewer": "p"}}, 405,
     error("PGRST105")),
    ("52c PUT with limit", "PUT", "/reviews?book_id=eq.2&reviewer=eq.p&limit=1", {"json": {"book_id": 2, "reviewer": "p"}},
     400, error("PGRST114")),
    ("restore: PUT row gone", "DELETE", "/reviews?book_id=eq.2", {}, 204, lambda r: r.content == b""),
    ("restore: review stars", "PATCH", "/reviews?book_id=eq.1&reviewer=eq.r", {"json": {"stars": 5}}, 204,
     lambda r: r.content == b""),
]


async def test_writes_in_order(rest):
    for case in WRITES:
        name, method, path, options, status, check = case
        response = await send(rest, method, path, options)
        assert response.status_code == status, f"{name}: {response.text}"
        assert check(response), f"{name}: {response.text}"


async def test_error_body_never_carries_sql_from_the_input(rest):
    response = await rest.request("GET", '/books?select=id&title=eq.x\'; drop table books; --')
    assert response.status_code == 200 and response.json() == []
    quoted = await rest.request("GET", '/books?select="id""; drop table books; --"')
    assert quoted.status_code == 400 and quoted.json()["code"] in ("42703", "PGRST100")
    assert (await rest.request("GET", "/books?select=id")).status_code == 200


async def test_data_api_compat_neon_answers_as_neons_rest_broker(rest, settings, cluster, tmp_path):  # rest: the fixture database
    """data_api_compat = "neon": each of its differences from the default (PostgREST's), over HTTP."""
    from data_api_support import serve_rest
    async with serve_rest(settings.with_overrides(data_api_compat="neon"), cluster, tmp_path) as neon:
        response = await neon.request("GET", "/books?id=eq.abc")
        assert set(response.json()) == {"code", "detail", "hint", "message"}
        assert response.headers["Content-Type"] == "application/json"  # no charset
        paid = await neon.request("POST", "/rpc/pay")
        assert paid.status_code == 402 and paid.json()["message"] == "Postgres error" and paid.json()["code"] is None
        assert (await neon.request("GET", "/secrets", token=None)).status_code == 403  # 42501 without a token
        hidden = await neon.request("PATCH", "/books?id=eq.3", json={"title": "Z"})  # RLS hides u2's row from u1
        assert (hidden.status_code, hidden.content) == (404, b"")
        shown = await neon.request("PATCH", "/books?id=eq.3&select=title", json={"title": "Z"}, headers=RETURN)
        assert (shown.status_code, shown.json()) == (404, [])
        assert (await neon.request("PATCH", "/books?id=eq.3", json={})).status_code == 204  # no columns: no 404
        inserted = await neon.request("POST", "/reviews", json={"book_id": 2, "reviewer": "neon"},
                                      headers={"Prefer": "return=headers-only, count=exact"})
        assert inserted.status_code == 201 and "Location" not in inserted.headers
        assert "Preference-Applied" not in inserted.headers
        upserted = await neon.request("POST", "/reviews", json={"book_id": 2, "reviewer": "neon", "stars": 3},
                                      headers={"Prefer": "resolution=merge-duplicates, return=representation"})
        assert upserted.headers["Preference-Applied"] == "resolution=merge-duplicates"
        assert upserted.headers["Content-Type"] == "application/json"
        assert (await neon.request("DELETE", "/reviews?reviewer=eq.neon")).status_code == 204


async def test_data_api_compat_postgrest_answers_as_postgrest(rest):
    """The default side of the same requests (the WRITES cases check Location and the 204 for a hidden row)."""
    response = await rest.request("GET", "/books?id=eq.abc")
    assert set(response.json()) == {"code", "details", "hint", "message"}
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    shown = await rest.request("PATCH", "/books?id=eq.3&select=title", json={"title": "Z"}, headers=RETURN)
    assert (shown.status_code, shown.json()) == (200, [])
    inserted = await rest.request("POST", "/reviews", json={"book_id": 2, "reviewer": "pgrst"},
                                  headers={"Prefer": "return=headers-only, count=exact"})
    assert inserted.headers["Preference-Applied"] == "return=headers-only, count=exact"
    assert inserted.headers["Location"] == "/reviews?book_id=eq.2&reviewer=eq.pgrst"
    assert (await rest.request("DELETE", "/reviews?reviewer=eq.pgrst")).status_code == 204


@pytest.mark.parametrize("path, code, message", [("/", "PGRST126", "Root endpoint metadata is disabled"),
                                                 ("/openapi.json", None, "Entry 'openapi.json' not found")])
async def test_openapi_mode_disabled_serves_no_document(rest, settings, cluster, tmp_path, path, code, message):
    from data_api_support import serve_rest
    async with serve_rest(settings.with_overrides(data_api_openapi_mode="disabled"), cluster, tmp_path) as closed:
        response = await closed.request("GET", path)
        assert response.status_code == 404 and (response.json()["code"], response.json()["message"]) == (code, message)
        assert (await closed.request("GET", "/books?select=id&id=eq.1")).status_code == 200


async def test_nothing_carries_from_one_request_to_the_next(rest):
    """Role, claims, search_path, session settings and temp tables stay with their request on pooled connections,
    with two users interleaved under concurrency."""
    tokens = {"u1": rest.token("u1"), "u2": rest.token("u2"), "anon": rest.token("nobody", role="anonymous")}

    async def one(i):
        who = ("u1", "u2", "anon")[i % 3]
        if i % 5 == 0:
            leaked = await rest.request("POST", "/rpc/leak", token=tokens[who])
            assert leaked.status_code == 204, leaked.text
        profile = {"Accept-Profile": "extra"} if i % 4 == 0 else {}
        seen = await rest.request("GET", "/rpc/peek", token=tokens[who], headers=profile)
        assert seen.status_code == 200, seen.text
        return who, profile, seen.json()

    for who, profile, seen in await asyncio.gather(*(one(i) for i in range(60))):
        expected_user = "anonymous" if who == "anon" else "authenticated"
        assert seen["leak"] in (None, "") and seen["temp"] is False
        assert seen["user"] == expected_user and seen["uid"] == ("nobody" if who == "anon" else who)
        assert seen["path"] == ('"extra"' if profile else '"public"')


@pytest.mark.parametrize("method, function, read_only", [("GET", "gucs", "on"), ("POST", "gucs", "on"),
                                                           ("POST", "gucs_volatile", "off")])
async def test_each_request_sets_neons_gucs_in_one_read_committed_transaction(rest, method, function, read_only):
    """request.method/path/headers/get/cookies as Neon sets them; READ ONLY for GET and non-volatile RPC."""
    options = {"params": {"tag": "a"}} if method == "GET" else {"json": {"tag": "a"}}
    response = await rest.request(method, f"/rpc/{function}", headers={"X-App": "web"}, **options)
    assert response.status_code == 200, response.text
    query = "?tag=a" if method == "GET" else ""
    assert response.json() == {"method": method, "path": f"/{DB}/rest/v1/rpc/{function}{query}", "app": "web",
                               "authorization": True, "get": {"tag": "a"} if method == "GET" else {}, "cookies": "{}",
                               "read_only": read_only, "isolation": "read committed"}


async def test_the_set_up_neon_makes_when_the_data_api_is_enabled(rest):
    """authenticator: LOGIN, NOINHERIT, a member of each JWT role; schema pgrst with pre_config() it may run."""
    await rest.request("GET", "/books")  # the set-up runs before a database's first request
    async with await rest.admin() as conn:
        row = await (await conn.execute(
            "select rolcanlogin, rolinherit, pg_has_role('authenticator', 'authenticated', 'member'),"
            " pg_has_role('authenticator', 'anonymous', 'member'), has_schema_privilege('authenticator', 'pgrst', 'usage'),"
            " has_function_privilege('authenticator', 'pgrst.pre_config()', 'execute')"
            " from pg_roles where rolname = 'authenticator'")).fetchone()
        assert row == (True, False, True, True, True, True)
        async with conn.transaction():
            await conn.execute("select pgrst.pre_config()")
            config = await (await conn.execute(
                "select current_setting('pgrst.db_schemas'), current_setting('pgrst.db_anon_role'),"
                " current_setting('pgrst.db_aggregates_enabled'), current_setting('pgrst.jwt_role_claim_key')")).fetchone()
        assert config == ("public", "anonymous", "true", ".role")


async def test_openapi_document(rest):
    for path in ("/", "/openapi.json"):
        response = await rest.request("GET", path)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/openapi+json")
        doc = response.json()
        assert doc["swagger"] == "2.0" and doc["basePath"] == f"/{DB}/rest/v1"
        assert {"/books", "/authors", "/rpc/add", "/rpc/books_by"} <= set(doc["paths"])
        assert "get" in doc["paths"]["/rpc/add"] and "get" not in doc["paths"]["/rpc/touch"]
        books = doc["definitions"]["books"]
        assert books["required"] == ["title"]
        assert books["properties"]["id"]["type"] == "integer" and "Primary Key" in books["properties"]["id"]["description"]
        assert books["properties"]["tags"] == {"format": "text[]", "type": "array", "items": {"type": "string"}}
        assert "Foreign Key to `authors.id`" in books["properties"]["author_id"]["description"]
    extra = await rest.request("GET", "/", headers={"Accept-Profile": "extra"})
    assert set(extra.json()["definitions"]) == {"notes"}


async def test_missing_default_fills_absent_keys_with_defaults(rest):
    u1 = rest.token("u1")
    rows = [{"title": "D1", "year": 1}, {"title": "D2"}]
    nulls = await rest.request("POST", "/books?select=title,owner&order=title", token=u1, json=rows[1:],
                               headers={"Prefer": "return=representation"})
    assert nulls.json() == [{"title": "D2", "owner": "u1"}]  # only the keys given are written
    defaults = await rest.request("POST", '/books?columns="title","year","owner"&select=title,year,owner', token=u1, json=rows,
                                  headers={"Prefer": "return=representation, missing=default"})
    assert defaults.status_code == 201, defaults.text
    assert defaults.json() == [{"title": "D1", "year": 1, "owner": "u1"}, {"title": "D2", "year": None, "owner": "u1"}]
    assert "missing=default" in defaults.headers["Preference-Applied"]
    without = await rest.request("POST", '/books?columns="title","owner"', token=u1, json=[{"title": "D3"}])
    assert without.status_code == 403  # owner null: the insert policy refuses it
    await rest.request("DELETE", "/books?title=in.(D1,D2)", token=u1)


async def test_a_database_dropped_and_made_again_or_losing_schema_pgrst(rest, settings):
    async def make(with_row: int) -> None:
        async with await rest.admin() as conn:
            await conn.execute("drop database if exists rest_again with (force)")
            await conn.execute(f'create database rest_again owner "{settings.owner}"')
        async with await psycopg.AsyncConnection.connect(rest.admin_conninfo.replace(DB, "rest_again"), autocommit=True) as conn:
            await conn.execute(f"create table t (id int); insert into t values ({with_row}); grant select on t to anonymous")

    url = f"http://127.0.0.1:{rest.port}/rest_again/rest/v1/t"
    await make(1)
    assert (await rest.client.get(url)).json() == [{"id": 1}]
    async with await psycopg.AsyncConnection.connect(rest.admin_conninfo.replace(DB, "rest_again"), autocommit=True) as conn:
        await conn.execute("create table t2 (id int); grant select on t2 to anonymous")  # the first DDL after set-up
    assert (await rest.client.get(url + "2")).json() == []
    await make(2)
    assert (await rest.client.get(url)).json() == [{"id": 2}]
    async with await psycopg.AsyncConnection.connect(rest.admin_conninfo.replace(DB, "rest_again"), autocommit=True) as conn:
        await conn.execute("drop schema pgrst cascade")
    assert (await rest.client.get(url)).json() == [{"id": 2}]
    async with await rest.admin() as conn:
        await conn.execute("drop database rest_again with (force)")
    gone = await rest.client.get(url)
    assert gone.status_code == 404 and "does not exist" in gone.json()["message"]


@pytest.mark.parametrize("path", ["/a%00b/rest/v1/t", "/" + "d" * 200 + "/rest/v1/t", "/%C3%A9t%C3%A9/rest/v1/t",
                                  "//rest/v1/t", "/rest_test/rest/v1/books/extra", "/rest_test/rest/v1/rpc/a/b",
                                  "/rest_test/rest/v1/%22books%22", "/rest_test/restful"])
async def test_hostile_paths_get_a_json_error_not_a_500(rest, path):
    response = await rest.client.get(f"http://127.0.0.1:{rest.port}{path}",
                                     headers={"Authorization": f"Bearer {rest.token()}"})
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"code", "details", "hint", "message"}


async def _once_reloaded(rest, path: str, done: Callable[[Any], bool]) -> Any:
    """The JSON of GET `path` once `done` holds of it, or after 5 s: the listener hears NOTIFY asynchronously."""
    for _ in range(100):
        body = (await rest.request("GET", path)).json()
        if done(body):
            break
        await asyncio.sleep(0.05)
    return body


async def test_notify_pgrst_reloads_the_schema_cache(rest):
    """A config change has no DDL to notice: NOTIFY pgrst, 'reload config' makes the next request read it."""
    assert (await rest.request("GET", "/books?select=id&order=id")).status_code == 200
    async with await rest.admin() as conn:
        await conn.execute(f"alter role authenticator in database {DB} set pgrst.db_max_rows = '1'")
    try:
        async with await rest.admin() as conn:
            await conn.execute("notify pgrst, 'reload config'")
        assert len(await _once_reloaded(rest, "/books?select=id", lambda rows: len(rows) == 1)) == 1
    finally:
        async with await rest.admin() as conn:
            await conn.execute(f"alter role authenticator in database {DB} reset pgrst.db_max_rows")
            await conn.execute("notify pgrst, 'reload config'")


async def test_the_owner_overrides_pgrst_settings_on_authenticator(rest, settings, cluster):
    """As on Neon, the owner (not only the superuser) runs ALTER ROLE authenticator SET pgrst.<key>; it holds
    ADMIN OPTION on authenticator through neon_superuser, none of its privileges (PostgreSQL 16+: before, ADMIN
    OPTION came with membership, so the owner may not)."""
    owner = cluster.conninfo(settings.owner, DB, password=settings.owner_password)
    async with await psycopg.AsyncConnection.connect(owner, autocommit=True) as conn:
        assert (await (await conn.execute("select pg_has_role('authenticator', 'usage')")).fetchone()) == (False,)
        if cluster.binaries.major < 16:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("alter role authenticator set pgrst.db_max_rows = '1'")
            return
        assert (await (await conn.execute("select pg_has_role('authenticator', 'set')")).fetchone()) == (False,)
        await conn.execute("alter role authenticator set pgrst.db_max_rows = '1'")
        try:
            await conn.execute("notify pgrst, 'reload config'")
            assert len(await _once_reloaded(rest, "/books?select=id", lambda rows: len(rows) == 1)) == 1
        finally:
            await conn.execute("alter role authenticator reset pgrst.db_max_rows")
            await conn.execute("notify pgrst, 'reload config'")
    await _once_reloaded(rest, "/books?select=id", lambda rows: len(rows) > 1)


async def test_extra_search_path_and_cors_origins_from_pgrst_settings(rest):
    """pgrst.db_extra_search_path joins search_path; pgrst.server_cors_allowed_origins echoes a listed origin
    and leaves the header out for others (unset: `*`), as Neon's rest broker reads them."""
    settings = {"db_extra_search_path": "extra", "server_cors_allowed_origins": "https://app.example"}

    async def configure(sql: str) -> None:
        async with await rest.admin() as conn:
            for key, value in settings.items():
                await conn.execute(sql.format(db=DB, key=key, value=value))
            await conn.execute("notify pgrst, 'reload config'")

    await configure("alter role authenticator in database {db} set pgrst.{key} = '{value}'")
    try:
        assert (await _once_reloaded(rest, "/rpc/peek", lambda peek: peek["path"] != '"public"'))["path"] == (
            '"public", "extra"')
        listed = await rest.request("GET", "/books?select=id", headers={"Origin": "https://app.example"})
        assert listed.headers["Access-Control-Allow-Origin"] == "https://app.example"
        other = await rest.request("GET", "/books?select=id", headers={"Origin": "https://other.example"})
        assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
    finally:
        await configure("alter role authenticator in database {db} reset pgrst.{key}")
    await _once_reloaded(rest, "/rpc/peek", lambda peek: peek["path"] == '"public"')
    anywhere = await rest.request("GET", "/books?select=id", headers={"Origin": "https://other.example"})
    assert anywhere.headers["Access-Control-Allow-Origin"] == "*"
