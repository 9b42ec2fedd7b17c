"""The Neon Data API offline: PostgREST-v13-compatible REST at `/<db>/rest/v1/...` on the HTTP port.

- `grammar`: the query string, `Prefer`/`Accept`/profile headers and bodies → a request model (sans-io);
- `schema`: the schema cache (tables, columns, keys, relationships, functions), per database;
- `sql`: the model → one parameterised main query (every identifier quoted, every value a bind parameter);
- `handler`: HTTP routing, the JWT, the pooled `authenticator` session and the response;
- `setup`: the Postgres objects Neon creates when the Data API is enabled.
"""
