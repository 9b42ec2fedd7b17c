-- pg_session_jwt 0.3.1 in C: the functions are neon_local_session_jwt's (found through dynamic_library_path,
-- named without $libdir so that stub_upgrade can run this file outside CREATE EXTENSION). The state (the
-- connection key, last jti, the last accepted token and its claims) lives in backend memory, out of any
-- session's reach; see the header of session_jwt.c. Attributes are the SQL stub's (readers not STRICT).

\echo Use "CREATE EXTENSION pg_session_jwt" to load this file. \quit

CREATE SCHEMA IF NOT EXISTS auth;

-- Empty, and deliberately not IF NOT EXISTS: a schema planted under this name must make CREATE EXTENSION
-- fail, and a data directory can switch between this build and the SQL stub's (see stub_upgrade).
CREATE SCHEMA _pg_session_jwt;

CREATE FUNCTION auth.init() RETURNS void
LANGUAGE c STRICT VOLATILE
AS 'neon_local_session_jwt', 'pgsjwt_init';

CREATE FUNCTION auth.jwt_session_init(jwt text) RETURNS void
LANGUAGE c STRICT VOLATILE
AS 'neon_local_session_jwt', 'pgsjwt_jwt_session_init';

CREATE FUNCTION auth.session() RETURNS jsonb
LANGUAGE c STABLE PARALLEL SAFE
AS 'neon_local_session_jwt', 'pgsjwt_session';

CREATE FUNCTION auth.user_id() RETURNS text
LANGUAGE c STABLE PARALLEL SAFE
AS 'neon_local_session_jwt', 'pgsjwt_user_id';
