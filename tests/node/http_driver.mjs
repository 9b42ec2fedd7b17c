// @neondatabase/serverless over neon-local's /sql, checked against node-postgres talking to plain Postgres.
// Env: SQL_URL (the /sql endpoint), OWNER_URL, JWT_URL, ALICE, BOB (tokens), PG_SOCKET, PG_PORT, PG_USER, PG_DB.
// Prints one JSON object: what each check saw, for the Python test to assert on.
import { isDeepStrictEqual } from 'node:util';
import { neon, neonConfig, NeonDbError } from '@neondatabase/serverless';
import pg from 'pg';

neonConfig.fetchEndpoint = process.env.SQL_URL;
const env = process.env;
const out = {};

const direct = new pg.Client({ host: env.PG_SOCKET, port: Number(env.PG_PORT), user: env.PG_USER, database: env.PG_DB });
await direct.connect();

// Each user sees only their rows (the Drizzle crudPolicy on `notes`).
const rowsFor = (token) => neon(env.JWT_URL, { authToken: async () => token });
out.alice = (await rowsFor(env.ALICE)`select body from notes order by id`).map((r) => r.body);
out.bob = (await rowsFor(env.BOB)`select body from notes order by id`).map((r) => r.body);
out.anonymous_without_token = await neon(env.JWT_URL.replace('authenticated', 'anonymous'))`select 1`
  .then(() => 'ok', (err) => err.message);

// sql.transaction with isolation options, on the JWT path.
const alice = rowsFor(env.ALICE);
const [who, mode] = await alice.transaction(
  [alice`select auth.user_id() as uid`, alice`select current_setting('transaction_isolation') as iso, current_setting('transaction_read_only') as ro`],
  { isolationLevel: 'Serializable', readOnly: true, deferrable: true },
);
out.transaction = { uid: who[0].uid, iso: mode[0].iso, ro: mode[0].ro };
out.empty_transaction = await alice.transaction([]);

// Parameter and result types: the same JavaScript values as node-postgres on plain Postgres.
const owner = neon(env.OWNER_URL, { fullResults: true });
const typed = [
  ['select 9007199254740993::int8 as big, 1.5::numeric as num, true as yes, false as no, null::int as nothing', []],
  ["select '{\"a\":[1,2,{\"b\":null}]}'::jsonb as jb, '[1, 2.50]'::json as js, 42::int2 as small, 1.25::float4 as f4, 'NaN'::float8 as nan", []],
  ["select '{1,2,3}'::int[] as ints, '{{a,b},{NULL,\"c d\"}}'::text[] as texts, '{}'::int[] as empty, array[true,false] as bools, '{\"{}\",\"[1]\"}'::jsonb[] as jbs", []],
  ["select '\\x414243'::bytea as bytes, '2024-01-02 03:04:05.678+00'::timestamptz as tstz, '2024-01-02 03:04:05'::timestamp as ts, '2024-01-02'::date as d, '1 day 02:03:04'::interval as iv", []],
  ['select $1::int8 as p8, $2::numeric as pn, $3::bool as pb, $4::jsonb as pj, $5::text[] as pa, $6::bytea as pbytes, $7::timestamptz as pts, $8::text as pnull',
    [1234567890123456789n, '3.14159', true, { k: ['v', 1] }, ['x', 'y z', null], Buffer.from('ABC'), new Date('2024-05-06T07:08:09.123Z'), null]],
  ['select $1 as untyped', ['42']],
  ["select 'a'::varchar(5) as v, 'x'::char(3) as c, gen_random_uuid() is not null as u, pg_sleep(0) as void", []],
];
// Values compared by what they hold: the driver bundles its own Buffer and pg-types, so prototypes differ.
const canonical = (value) => JSON.stringify(value, function replacer(key, v) {
  const raw = this[key];
  if (typeof raw === 'bigint') return { bigint: raw.toString() };
  if (raw instanceof Date) return { date: raw.toISOString() };
  if (raw instanceof Uint8Array) return { bytes: Buffer.from(raw).toString('hex') };
  if (raw && typeof raw === 'object' && !Array.isArray(raw) && raw.constructor && raw.constructor.name !== 'Object') {
    return { [raw.constructor.name]: { ...raw } };
  }
  return v;
});
out.types = [];
for (const [text, params] of typed) {
  const viaHttp = await owner.query(text, params);
  const viaPg = await direct.query(text, params);
  const fieldKeys = ['name', 'tableID', 'columnID', 'dataTypeID', 'dataTypeSize', 'dataTypeModifier', 'format'];
  const pick = (f) => Object.fromEntries(fieldKeys.map((k) => [k, f[k]]));
  out.types.push({
    text,
    rows_equal: canonical(viaHttp.rows) === canonical(viaPg.rows),
    canonical: canonical(viaHttp.rows),
    fields_equal: isDeepStrictEqual(viaHttp.fields.map(pick), viaPg.fields.map(pick)),
    command_equal: viaHttp.command === viaPg.command && viaHttp.rowCount === viaPg.rowCount,
    http: JSON.parse(canonical(viaHttp.rows)),
  });
}

// A Uint8Array without a cast reaches Postgres as bytea hex text (the driver's own test).
out.untyped_bytes = (await owner.query('select $1 as b', [new Uint8Array([65, 66, 67])])).rows[0].b;

// Errors from bad SQL carry the same fields as node-postgres reports.
const errorKeys = ['message', 'severity', 'code', 'detail', 'hint', 'position', 'internalPosition', 'internalQuery',
  'where', 'schema', 'table', 'column', 'dataType', 'constraint', 'file', 'line', 'routine'];
const failing = [
  'select nope from pg_class',
  'select 1/0',
  "do $$ begin perform nope; end $$",
  "select 'x'::int",
];
out.errors = [];
for (const text of failing) {
  const httpErr = await owner.query(text).catch((e) => e);
  const pgErr = await direct.query(text).catch((e) => e);
  const fields = (e) => Object.fromEntries(errorKeys.map((k) => [k, e[k] ?? null]));
  out.errors.push({
    text,
    neon_error: httpErr instanceof NeonDbError,
    equal: isDeepStrictEqual(fields(httpErr), fields(pgErr)),
    http: fields(httpErr),
    pg: fields(pgErr),
  });
}

await direct.end();
console.log(JSON.stringify(out));
