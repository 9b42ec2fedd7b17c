-- Back to 0.3.1: drop the 0.4.0 aliases.

\echo Use "ALTER EXTENSION pg_session_jwt UPDATE TO '0.3.1'" to load this file. \quit

DROP FUNCTION IF EXISTS auth.uid();
DROP FUNCTION IF EXISTS auth.jwt();
