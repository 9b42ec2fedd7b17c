-- Back to 0.4.0: drop the organization helpers.

\echo Use "ALTER EXTENSION pg_session_jwt UPDATE TO '0.4.0'" to load this file. \quit

DROP FUNCTION IF EXISTS auth.organization_id();
DROP FUNCTION IF EXISTS auth.organization();
