// The real @supabase/postgrest-js, @neondatabase/postgrest-js and @neondatabase/neon-js createClient against neon-local's Data API.
// Env: REST_URL (…/<db>/rest/v1), ALICE, BOB (tokens from the built-in issuer). Prints one JSON object.
import { PostgrestClient } from '@supabase/postgrest-js';
import { NeonPostgrestClient } from '@neondatabase/postgrest-js';
import { createClient } from '@neondatabase/neon-js';

const env = process.env;
const clients = {
  supabase: (token) => new PostgrestClient(env.REST_URL, { headers: { Authorization: `Bearer ${token}` } }),
  neon: (token) => new NeonPostgrestClient({ dataApiUrl: env.REST_URL, options: { global: { headers: { Authorization: `Bearer ${token}` } } } }),
  // neon-js with an external token provider (no Neon Auth service): its fetch injects the Bearer token.
  neonjs: (token) => createClient({ dataApi: { url: env.REST_URL, getToken: async () => token } }),
};
const err = (e) => (e ? { code: e.code, message: e.message, details: e.details ?? null, hint: e.hint ?? null } : null);
const out = {};

for (const [name, make] of Object.entries(clients)) {
  const alice = make(env.ALICE);
  const bob = make(env.BOB);
  const r = {};
  r.alice = (await alice.from('todos').select('task').order('id')).data.map((t) => t.task);
  r.bob = (await bob.from('todos').select('task').order('id')).data.map((t) => t.task);
  const inserted = await alice.from('todos').insert({ task: `${name} new` }).select('id, task, user_id').single();
  r.insert = { status: inserted.status, task: inserted.data.task, user_id: inserted.data.user_id };
  r.bob_cannot_see = (await bob.from('todos').select('id').eq('id', inserted.data.id)).data;
  const bobUpdate = await bob.from('todos').update({ done: true }).eq('id', inserted.data.id).select();
  r.bob_update = { status: bobUpdate.status, data: bobUpdate.data };
  const update = await alice.from('todos').update({ done: true }).eq('id', inserted.data.id).select('done');
  r.update = { status: update.status, data: update.data };
  const counted = await alice.from('todos').select('*', { count: 'exact', head: true });
  r.count = { status: counted.status, count: counted.count };
  const page = await alice.from('todos').select('task', { count: 'exact' }).order('id').range(0, 0);
  r.page = { status: page.status, count: page.count, data: page.data };
  const filters = await alice.from('todos').select('task').in('task', ['a1', 'a2']).neq('task', 'a2').ilike('task', 'A%').not('done', 'is', null);
  r.filters = filters.data;
  const either = await alice.from('todos').select('task').or('task.eq.a1,task.eq.a2').order('task', { ascending: false });
  r.or = either.data;
  r.maybe_none = (await alice.from('todos').select('task').eq('task', 'nope').maybeSingle()).data;
  const single_none = await alice.from('todos').select('task').eq('task', 'nope').single();
  r.single_none = { status: single_none.status, error: err(single_none.error) };
  const upsert = await alice.from('todos').upsert({ id: inserted.data.id, task: `${name} upserted` }).select('task');
  r.upsert = { status: upsert.status, data: upsert.data };
  const embedded = await alice.from('todos').select('task, lists(name)').eq('task', 'a1');
  r.embedded = embedded.data;
  const rpc = await alice.rpc('my_todo_count');
  r.rpc = { status: rpc.status, data: rpc.data };
  const rpcGet = await alice.rpc('add', { a: 2, b: 3 }, { get: true });
  r.rpc_get = rpcGet.data;
  const bad = await alice.from('todos').select('nosuch');
  r.bad_column = { status: bad.status, error: err(bad.error) };
  const fk = await alice.from('todos').insert({ task: 'fk', list_id: 99 });
  r.foreign_key = { status: fk.status, error: err(fk.error) };
  const missing = await alice.from('nosuch').select();
  r.missing_table = { status: missing.status, error: err(missing.error) };
  const deleted = await alice.from('todos').delete().eq('id', inserted.data.id).select('task');
  r.delete = { status: deleted.status, data: deleted.data };
  out[name] = r;
}
console.log(JSON.stringify(out));
