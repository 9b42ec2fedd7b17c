// One /sql request as the app would make it, for the console's request log test: SQL_URL, DB_URL, JWT from the env.
import { neon, neonConfig } from '@neondatabase/serverless';

neonConfig.fetchEndpoint = process.env.SQL_URL;
const sql = neon(process.env.DB_URL, { authToken: async () => process.env.JWT });
const rows = await sql`select task from todos where task = ${'walk the dog'} -- from node`;
console.log(JSON.stringify({ rows }));
