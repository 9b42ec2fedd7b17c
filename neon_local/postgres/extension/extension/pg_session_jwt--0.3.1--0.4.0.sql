-- 0.4.0 adds auth.uid() and auth.jwt(), aliases of auth.user_id() and auth.session(); inlined readers
-- like them (see the readers in pg_session_jwt--0.3.1.sql).

\echo Use "ALTER EXTENSION pg_session_jwt UPDATE TO '0.4.0'" to load this file. \quit

-- user_id() as a uuid when Rust's uuid::Uuid::parse_str takes it, else NULL: published as a field of
-- its own, so no reader parses it.
CREATE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('pg_session_jwt.jwt', true) OPERATOR(pg_catalog.=) pg_catalog.current_setting('pg_session_jwt.verified_jwt', true)
        THEN CASE WHEN pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_u,')
                  THEN pg_catalog.split_part(pg_catalog.current_setting('backtrace_functions'), ',', 3)::pg_catalog.uuid
                  WHEN pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_s,')
                    OR pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_n,') THEN NULL
                  ELSE _pg_session_jwt.uid() END
        ELSE _pg_session_jwt.uid()
    END
$$;

CREATE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('pg_session_jwt.jwt', true) OPERATOR(pg_catalog.=) pg_catalog.current_setting('pg_session_jwt.verified_jwt', true)
                 AND pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_')
        THEN pg_catalog.convert_from(pg_catalog.decode(pg_catalog.split_part(pg_catalog.current_setting('backtrace_functions'), ',', 6), 'hex'), 'UTF8')::pg_catalog.jsonb
        ELSE COALESCE(_pg_session_jwt.claims(), 'null'::pg_catalog.jsonb)
    END
$$;
