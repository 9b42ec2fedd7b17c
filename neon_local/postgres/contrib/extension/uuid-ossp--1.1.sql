-- neon-local's uuid-ossp 1.1: the same functions and signatures as PostgreSQL's, implemented by neon_local_contrib.
\echo Use CREATE EXTENSION "uuid-ossp" to load this file. \quit

-- The RFC 4122 namespace UUIDs and the nil UUID.
CREATE FUNCTION uuid_nil() RETURNS uuid
    AS $$SELECT '00000000-0000-0000-0000-000000000000'::uuid$$ LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION uuid_ns_dns() RETURNS uuid
    AS $$SELECT '6ba7b810-9dad-11d1-80b4-00c04fd430c8'::uuid$$ LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION uuid_ns_url() RETURNS uuid
    AS $$SELECT '6ba7b811-9dad-11d1-80b4-00c04fd430c8'::uuid$$ LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION uuid_ns_oid() RETURNS uuid
    AS $$SELECT '6ba7b812-9dad-11d1-80b4-00c04fd430c8'::uuid$$ LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION uuid_ns_x500() RETURNS uuid
    AS $$SELECT '6ba7b814-9dad-11d1-80b4-00c04fd430c8'::uuid$$ LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE;

-- Generators.
CREATE FUNCTION uuid_generate_v1() RETURNS uuid
    AS 'MODULE_PATHNAME', 'nl_uuid_v1' LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
CREATE FUNCTION uuid_generate_v1mc() RETURNS uuid
    AS 'MODULE_PATHNAME', 'nl_uuid_v1mc' LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
CREATE FUNCTION uuid_generate_v3(namespace uuid, name text) RETURNS uuid
    AS 'MODULE_PATHNAME', 'nl_uuid_v3' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION uuid_generate_v4() RETURNS uuid
    AS 'SELECT pg_catalog.gen_random_uuid()' LANGUAGE SQL VOLATILE STRICT PARALLEL SAFE;
CREATE FUNCTION uuid_generate_v5(namespace uuid, name text) RETURNS uuid
    AS 'MODULE_PATHNAME', 'nl_uuid_v5' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
