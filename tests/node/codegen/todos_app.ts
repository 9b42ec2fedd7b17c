// The module `neon-local codegen` writes for fixtures/todos/queries, used as an app would: its functions over
// the real driver as alice and bob, and its query/mutation options with query-core's QueryClient.
// Env: SQL_URL (the /sql endpoint), JWT_URL (the authenticated role's URL), ALICE and BOB (tokens).
// Prints one JSON object for tests/test_codegen.py to assert on.
import { neon, neonConfig } from '@neondatabase/serverless';
import { MutationObserver, QueryClient } from '@tanstack/query-core';
import * as db from './queries.js';

declare const process: { env: Record<string, string> }; // no @types/node needed

neonConfig.fetchEndpoint = process.env.SQL_URL;
const as = (token: string) => neon(process.env.JWT_URL, { authToken: async () => token });
const alice = as(process.env.ALICE);
const bob = as(process.env.BOB);
const out: Record<string, unknown> = {};

const first = await db.createTodo(alice, { task: 'alice 1' });
await db.createTodo(alice, { task: 'alice 2' });
const bobs = await db.createTodo(bob, { task: 'bob 1' });
if (!first || !bobs) throw new Error('INSERT ... RETURNING returned no row');
// The generated types say what the driver hands back; these lines only compile if they agree.
const id: string = first.id;
const insertedAt: Date = first.inserted_at;
out.created = { idType: typeof id, insertedAtIsDate: insertedAt instanceof Date, userId: first.user_id };

out.alice = (await db.listTodos(alice, { done: false })).map((row) => row.task);
out.bob = (await db.listTodos(bob, { done: false })).map((row) => row.task);
out.bobReadsAlicesTodo = await db.getTodo(bob, { id: first.id });
await db.completeTodo(bob, { id: first.id }); // RLS: matches no row of bob's
out.aliceCountAfterBobsUpdate = await db.countTodos(alice);

// Query options and mutation invalidation, with alice's own cache.
const client = new QueryClient();
const open = db.listTodosQueryOptions(alice, { done: false });
out.queryKey = open.queryKey;
out.cached = (await client.fetchQuery(open)).map((row) => row.task);
const complete = new MutationObserver(client, db.completeTodoMutationOptions(alice, client));
await complete.mutate({ id: first.id });
out.invalidatedAfterMutation = client.getQueryState(open.queryKey)?.isInvalidated ?? null;
out.refetched = (await client.fetchQuery(open)).map((row) => row.task);
// Keys do not name the user: each user gets their own QueryClient (clear it on sign-out).
const bobsClient = new QueryClient();
out.bobsCache = (await bobsClient.fetchQuery(db.listTodosQueryOptions(bob, { done: false }))).map((row) => row.task);

out.bobDeletesCompleted = await db.deleteCompleted(bob);
out.aliceDeletesCompleted = await db.deleteCompleted(alice);
out.aliceLeft = (await db.listTodos(alice, { done: false })).map((row) => row.task);
console.log(JSON.stringify(out));
