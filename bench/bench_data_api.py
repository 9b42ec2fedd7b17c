"""Data API: GET /<db>/rest/v1 requests per second with a JWT, beside POST /sql running the SQL each request generates.

16 concurrent clients, one RLS-filtered row (`select=id,body&id=eq.7` as user_7), and the same with a
to-one embed one level deep. Both endpoints are neon-local's (`bench.common.emulator`, on uvloop in this
process); the load comes from a separate process speaking raw HTTP/1.1 keep-alive. The baseline is /sql
given the Data API's own main query (its text and parameters, taken from the builder), in the same
rounds. Medians of ROUNDS rounds, range beside. Goals: >= 0.8x of /sql, >= 0.5x with the embed.
"""

from __future__ import annotations

from pathlib import Path

from bench.bench_http import CLIENTS, SECONDS, SETUP_SQL, WARMUP_SECONDS, jwt_connection_string
from bench.common import ROUNDS, emulator, http_load, load_errors, post_sql, ratio, run_async, show, spread

EMBED_SQL = """
create table bench_owners (user_id text primary key, name text);
insert into bench_owners select 'user_' || g, 'owner ' || g from generate_series(1, 10) g;
alter table bench_notes add constraint bench_notes_owner_fkey foreign key (user_id) references bench_owners;
alter table bench_owners enable row level security;
create policy owners_read on bench_owners for select to authenticated using (true);
grant select on bench_owners to authenticated;
"""
PLAIN = "/bench_notes?select=id,body&id=eq.7"
EMBED = "/bench_notes?select=id,body,bench_owners(name)&id=eq.7"


async def _generated_sql(api, dbname: str, path: str) -> tuple[str, list]:
    """The main query the Data API runs for `path`, from its own builder."""
    from urllib.parse import parse_qsl

    from neon_local.data_api.grammar import parse_query
    from neon_local.data_api.sql import Builder

    cached = await api._schema(dbname)
    table_name, _, query = path.lstrip("/").partition("?")
    builder = Builder(cached.schema, parse_query(parse_qsl(query)))
    plan = builder.read(cached.schema.table("public", table_name), False, False)
    return plan.sql, plan.params


async def _bench(directory: Path) -> list[dict]:
    rows = []
    async with emulator(directory, SETUP_SQL + EMBED_SQL) as emu:
        port, dbname = emu.endpoints.http_port, emu.settings.database
        token = emu.services.issuer.mint(sub="user_7", claims={"role": "authenticated"}, lifetime=3600)
        for label, path, goal in (("one row", PLAIN, 0.8), ("one row + to-one embed", EMBED, 0.5)):
            sql, params = await _generated_sql(emu.services.data_api, dbname, path)
            rest = (f"GET /{dbname}/rest/v1{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Authorization: Bearer {token}\r\n\r\n").encode()
            over_sql = post_sql(port, sql, params, jwt_connection_string(emu), token)
            await http_load(port, [rest], CLIENTS, WARMUP_SECONDS)
            await http_load(port, [over_sql], CLIENTS, WARMUP_SECONDS)
            rests, sqls = [], []
            for _ in range(ROUNDS):
                rests.append(await http_load(port, [rest], CLIENTS, SECONDS))
                sqls.append(await http_load(port, [over_sql], CLIENTS, SECONDS))
            rest_rps, sql_rps = [r["per_second"] for r in rests], [r["per_second"] for r in sqls]
            rows.append({"what": f"POST /sql, the Data API's SQL ({label})", "per second": spread(sql_rps),
                         "p50 (ms)": spread([r["p50_ms"] for r in sqls], 2), "p99 (ms)": spread([r["p99_ms"] for r in sqls], 2),
                         "vs /sql": "1.00x", "notes": load_errors(sqls)})
            rows.append({"what": f"GET /rest/v1{path}", "per second": spread(rest_rps),
                         "p50 (ms)": spread([r["p50_ms"] for r in rests], 2), "p99 (ms)": spread([r["p99_ms"] for r in rests], 2),
                         "vs /sql": ratio(rest_rps, sql_rps), "notes": f"{load_errors(rests)}; target >= {goal}x"})
    return rows


def run() -> list[dict]:
    return run_async("bench-data-api-", _bench)


if __name__ == "__main__":
    show(run())
