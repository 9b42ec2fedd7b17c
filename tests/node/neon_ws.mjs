// @neondatabase/serverless over neon-local's WebSocket: Pool and Client, a JWT role and the owner,
// with pipelineConnect at its default ('password'), so the startup, password and first query go together.
import { neonConfig, Pool, Client } from '@neondatabase/serverless';
import ws from 'ws';

neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = () => process.env.WS_PROXY;
neonConfig.useSecureWebSocket = false;

const JWT_SQL = 'select auth.user_id() as uid, (select count(*)::int from todos) as n';
const OWNER_SQL = 'select current_user as uid, (select count(*)::int from todos) as n';

async function viaPool(url, sql) {
  const pool = new Pool({ connectionString: url });
  try {
    return (await pool.query(sql)).rows[0];
  } finally {
    await pool.end();
  }
}

async function viaClient(url, sql) {
  const client = new Client(url);
  await client.connect();
  try {
    return (await client.query(sql)).rows[0];
  } finally {
    await client.end();
  }
}

const out = {
  pipelineConnect: neonConfig.pipelineConnect,
  pool_jwt: await viaPool(process.env.JWT_URL, JWT_SQL),
  client_jwt: await viaClient(process.env.JWT_URL, JWT_SQL),
  pool_owner: await viaPool(process.env.OWNER_URL, OWNER_SQL),
  client_owner: await viaClient(process.env.OWNER_URL, OWNER_SQL),
};
try {
  await viaClient(process.env.BAD_URL, JWT_SQL);
  out.bad = 'connected';
} catch (err) {
  out.bad = err.message;
}
console.log(JSON.stringify(out));
