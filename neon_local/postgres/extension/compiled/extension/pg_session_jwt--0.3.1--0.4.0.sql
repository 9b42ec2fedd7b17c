-- 0.4.0 adds auth.uid() and auth.jwt(), aliases of auth.user_id() (as a uuid) and auth.session().

\echo Use "ALTER EXTENSION pg_session_jwt UPDATE TO '0.4.0'" to load this file. \quit

CREATE FUNCTION auth.uid() RETURNS uuid
LANGUAGE c STABLE PARALLEL SAFE
AS 'neon_local_session_jwt', 'pgsjwt_uid';

CREATE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE c STABLE PARALLEL SAFE
AS 'neon_local_session_jwt', 'pgsjwt_session';
