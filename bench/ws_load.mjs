// Query throughput of a Node driver's Pool: MODE=ws is @neondatabase/serverless over neon-local's
// WebSocket, MODE=pg is node-postgres straight to Postgres' Unix socket. CLIENTS workers each run
// pool.query in a loop for SECONDS once every connection is open; prints {"queries", "seconds", "errors"}.
// The packages come from tests/node (NODE_PROJECT is its package.json), which `make install` fills.
import { createRequire } from 'node:module';

const require = createRequire(process.env.NODE_PROJECT);
const clients = Number(process.env.CLIENTS);
const seconds = Number(process.env.SECONDS);
const SQL = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1';

function makePool() {
  if (process.env.MODE === 'ws') {
    const { neonConfig, Pool } = require('@neondatabase/serverless');
    neonConfig.webSocketConstructor = require('ws');
    neonConfig.wsProxy = () => process.env.WS_PROXY;
    neonConfig.useSecureWebSocket = false;
    // The driver's default holds each write for a 0 ms timer (>= 1 ms in Node) to coalesce it: off to show the rest.
    if (process.env.COALESCE_WRITES === 'false') neonConfig.coalesceWrites = false;
    return new Pool({ connectionString: process.env.URL, max: clients });
  }
  const { Pool } = require('pg');
  return new Pool({ ...JSON.parse(process.env.PG_CONFIG), max: clients });
}

const pool = makePool();
// Open every connection before the clock starts, as pgbench does.
const opened = await Promise.all(Array.from({ length: clients }, () => pool.connect()));
opened.forEach((client) => client.release());

let queries = 0;
let errors = 0;
const started = performance.now();
const until = started + seconds * 1000;
await Promise.all(Array.from({ length: clients }, async () => {
  while (performance.now() < until) {
    try {
      await pool.query(SQL, [1 + Math.floor(Math.random() * 100000)]);
      queries += 1;
    } catch (err) {
      errors += 1;
      if (errors === 1) console.error(err.message);
    }
  }
}));
const elapsed = (performance.now() - started) / 1000;
await pool.end();
console.log(JSON.stringify({ queries, seconds: elapsed, errors }));
