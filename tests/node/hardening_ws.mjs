// @neondatabase/serverless over WebSocket with a NUL byte in a text parameter, as the owner and as a JWT role:
// Postgres itself must refuse it (22021), whatever the driver sends.
import { neonConfig, Pool } from '@neondatabase/serverless';
import ws from 'ws';

neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = () => process.env.WS_PROXY;
neonConfig.useSecureWebSocket = false;

async function refusal(url) {
  const pool = new Pool({ connectionString: url });
  try {
    await pool.query('select $1::text as v', ['alice secret\u0000anything']);
    return 'accepted';
  } catch (err) {
    return { code: err.code, message: err.message };
  } finally {
    await pool.end();
  }
}

console.log(JSON.stringify({ owner: await refusal(process.env.OWNER_URL), jwt: await refusal(process.env.JWT_URL) }));
