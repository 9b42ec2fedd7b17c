// Must NOT compile: the generated types know task is a string and todos has no column "nosuch".
import { PostgrestClient } from '@supabase/postgrest-js';
import { createClient } from '@neondatabase/neon-js';
import type { Database } from './data_api_types.generated.js';

const db = new PostgrestClient<Database>('http://127.0.0.1:4444/neondb/rest/v1');
const neon = createClient<Database>({ dataApi: { url: 'http://127.0.0.1:4444/neondb/rest/v1', getToken: async () => 'jwt' } });

export async function wrongNeon(): Promise<void> {
  await neon.from('todos').insert({ nosuch_neon: 1 });
}

export async function wrong(): Promise<number> {
  const { data } = await db.from('todos').select('task');
  await db.from('todos').insert({ nosuch: 1 });
  const n: number = data![0].task;
  return n;
}
