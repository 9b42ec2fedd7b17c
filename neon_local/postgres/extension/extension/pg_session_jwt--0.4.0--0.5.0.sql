-- 0.5.0 adds auth.organization() and auth.organization_id(), which read the Neon Auth organization
-- claim "o" ({"id", "slug", "role"}). Neither is STRICT, as in the extension.

\echo Use "ALTER EXTENSION pg_session_jwt UPDATE TO '0.5.0'" to load this file. \quit

-- The "o" claim if it is a JSON object, else NULL.
CREATE FUNCTION auth.organization() RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(o) = 'object' THEN o END
    FROM (SELECT _pg_session_jwt.claims() -> 'o') AS claim (o);
$$;

-- o.id as a uuid if it is a string that parses as one (as auth.uid() does), else NULL.
CREATE FUNCTION auth.organization_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(id) = 'string' THEN _pg_session_jwt.parse_uuid(id #>> '{}') END
    FROM (SELECT auth.organization() -> 'id') AS claim (id);
$$;
