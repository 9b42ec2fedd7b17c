-- 0.4.0 adds auth.uid() and auth.jwt(), aliases of auth.user_id() and auth.session().

\echo Use "ALTER EXTENSION pg_session_jwt UPDATE TO '0.4.0'" to load this file. \quit

-- s as a uuid if Rust's uuid::Uuid::parse_str accepts it, else NULL. That is narrower than Postgres'
-- uuid input: simple (32 hex digits), hyphenated 8-4-4-4-12, {braced} or urn:uuid: hyphenated only.
CREATE FUNCTION _pg_session_jwt.parse_uuid(s text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE WHEN h ~ '^[0-9A-Fa-f]{32}$' AND h = s OR h ~ '^[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$'
        THEN h::uuid
    END
    FROM (SELECT CASE WHEN s LIKE '{%}' THEN pg_catalog.substr(s, 2, pg_catalog.length(s) - 2)
                      WHEN s LIKE 'urn:uuid:%' THEN pg_catalog.substr(s, 10)
                      ELSE s END) AS unwrapped (h)
$$;
REVOKE ALL ON FUNCTION _pg_session_jwt.parse_uuid(text) FROM PUBLIC;

CREATE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STRICT STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT _pg_session_jwt.parse_uuid(auth.user_id());
$$;

CREATE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STRICT STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(_pg_session_jwt.claims(), 'null'::jsonb);
$$;
