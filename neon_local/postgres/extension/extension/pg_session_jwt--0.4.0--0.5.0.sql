-- 0.5.0 adds auth.organization() and auth.organization_id(), which read the Neon Auth organization
-- claim "o" ({"id", "slug", "role"}); inlined readers like the others (see pg_session_jwt--0.3.1.sql).

\echo Use "ALTER EXTENSION pg_session_jwt UPDATE TO '0.5.0'" to load this file. \quit

-- The "o" claim if it is a JSON object, else NULL.
CREATE FUNCTION auth.organization() RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('pg_session_jwt.jwt', true) OPERATOR(pg_catalog.=) pg_catalog.current_setting('pg_session_jwt.verified_jwt', true)
                 AND pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_')
        THEN CASE WHEN pg_catalog.split_part(pg_catalog.current_setting('backtrace_functions'), ',', 4) OPERATOR(pg_catalog.<>) ''
                  THEN pg_catalog.convert_from(pg_catalog.decode(pg_catalog.split_part(pg_catalog.current_setting('backtrace_functions'), ',', 4), 'hex'), 'UTF8')::pg_catalog.jsonb
             END
        ELSE _pg_session_jwt.organization()
    END
$$;

-- o.id as a uuid if it is a string that parses as one (as auth.uid() does), else NULL.
CREATE FUNCTION auth.organization_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('pg_session_jwt.jwt', true) OPERATOR(pg_catalog.=) pg_catalog.current_setting('pg_session_jwt.verified_jwt', true)
                 AND pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_')
        THEN CASE WHEN pg_catalog.split_part(pg_catalog.current_setting('backtrace_functions'), ',', 5) OPERATOR(pg_catalog.<>) ''
                  THEN pg_catalog.split_part(pg_catalog.current_setting('backtrace_functions'), ',', 5)::pg_catalog.uuid
             END
        ELSE _pg_session_jwt.organization_id()
    END
$$;
