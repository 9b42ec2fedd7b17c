// node-postgres over TCP with TLS verified against neon-local's CA: a JWT role, the owner, a refused token.
import fs from 'node:fs';
import pg from 'pg';

const ssl = { ca: fs.readFileSync(process.env.CA, 'utf8') };

async function run(url, who) {
  const client = new pg.Client({ connectionString: url.replace(/\?.*$/, ''), ssl });
  await client.connect();
  try {
    const { rows } = await client.query(`select ${who} as user, (select count(*)::int from todos) as rows`);
    return rows[0];
  } finally {
    await client.end();
  }
}

const out = {};
out.jwt = await run(process.env.JWT_URL, 'auth.user_id()');
out.owner = await run(process.env.OWNER_URL, 'current_user');
try {
  await run(process.env.BAD_URL, 'auth.user_id()');
  out.bad = 'connected';
} catch (err) {
  out.bad = err.message;
  out.bad_exp = Number(/exp=(\d+)/.exec(err.message)?.[1]);
}
console.log(JSON.stringify(out));
