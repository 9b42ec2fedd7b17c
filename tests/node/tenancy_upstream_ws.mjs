// [tenancy] mode "upstream" over neon-local's WebSocket with @neondatabase/serverless: each token's session,
// concurrently, in connection strings that may name another tenant's database; a session that is refused
// reports its error (message and SQLSTATE) instead.
import { neonConfig, Client } from '@neondatabase/serverless';
import ws from 'ws';

neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = () => process.env.WS_PROXY;
neonConfig.useSecureWebSocket = false;

async function session(tenant, url, body) {
  const client = new Client(url);
  client.on('error', () => {});  // a refused session also emits it; the rejected promise reports it below
  try {
    await client.connect();  // the driver pipelines the startup: a refusal may only surface at the first query
    await client.query('insert into notes (body) values ($1)', [body]);
    const { rows } = await client.query(
      'select current_database() as db, inet_server_port() as port, array_agg(body order by body) as bodies from notes');
    return { tenant, ...rows[0] };
  } catch (error) {
    return { tenant, error: error.message, code: error.code };
  } finally {
    await client.end().catch(() => {});
  }
}

const urls = JSON.parse(process.env.URLS);  // [[tenant, url], ...]
console.log(JSON.stringify(await Promise.all(urls.map(([tenant, url], i) => session(tenant, url, `ws-${tenant}-${i}`)))));
