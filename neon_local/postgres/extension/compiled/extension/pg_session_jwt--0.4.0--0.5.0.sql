-- 0.5.0 adds auth.organization() and auth.organization_id(), which read the Neon Auth organization claim
-- "o" ({"id", "slug", "role"}).

\echo Use "ALTER EXTENSION pg_session_jwt UPDATE TO '0.5.0'" to load this file. \quit

CREATE FUNCTION auth.organization() RETURNS jsonb
LANGUAGE c STABLE PARALLEL SAFE
AS 'neon_local_session_jwt', 'pgsjwt_organization';

CREATE FUNCTION auth.organization_id() RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE
AS 'neon_local_session_jwt', 'pgsjwt_organization_id';
