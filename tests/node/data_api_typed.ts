// Compiled with tsc --strict against the Database type `neon-local data-api types --lang ts` writes.
import { PostgrestClient } from '@supabase/postgrest-js';
import { createClient } from '@neondatabase/neon-js';
import type { Database } from './data_api_types.generated.js';

const db = new PostgrestClient<Database>('http://127.0.0.1:4444/neondb/rest/v1');
// neon-js as the README's quick start makes it, typed as its `createClient<Database>(...)` line says.
const neon = createClient<Database>({ dataApi: { url: 'http://127.0.0.1:4444/neondb/rest/v1', getToken: async () => 'jwt' } });

export async function typedNeon(): Promise<number[]> {
  const { data } = await neon.from('todos').select('id, task').eq('done', false);
  await neon.from('todos').insert({ task: 'typed' });
  return (data ?? []).map((row) => row.id);
}

export async function typed(): Promise<string[]> {
  const { data } = await db.from('todos').select('id, task, done, lists(name)').eq('done', false);
  const tasks: string[] = (data ?? []).map((row) => row.task);
  const ids: number[] = (data ?? []).map((row) => row.id);
  const list: string | null | undefined = data?.[0]?.lists?.name;
  await db.from('todos').insert({ task: 'typed' });
  await db.from('todos').update({ done: true }).eq('id', ids[0]);
  const sum = await db.rpc('add', { a: 1, b: 2 });
  const three: number | null = sum.data;
  return [...tasks, String(list), String(three)];
}
