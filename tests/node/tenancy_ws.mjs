// Tenancy over neon-local's WebSocket with @neondatabase/serverless: each tenant's token, in connection
// strings that name the other tenant's database, inserts and reads concurrently; the claim picks the database.
import { neonConfig, Client } from '@neondatabase/serverless';
import ws from 'ws';

neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = () => process.env.WS_PROXY;
neonConfig.useSecureWebSocket = false;

async function session(url, body) {
  const client = new Client(url);
  await client.connect();
  try {
    await client.query('insert into notes (body) values ($1)', [body]);
    return (await client.query('select current_database() as db, array_agg(body order by body) as bodies from notes')).rows[0];
  } finally {
    await client.end();
  }
}

const urls = JSON.parse(process.env.URLS);  // [[tenant, url], ...]
const results = await Promise.all(urls.map(([tenant, url], i) => session(url, `ws-${tenant}-${i}`)));
console.log(JSON.stringify(results.map((r, i) => ({ tenant: urls[i][0], db: r.db, bodies: r.bodies }))));
