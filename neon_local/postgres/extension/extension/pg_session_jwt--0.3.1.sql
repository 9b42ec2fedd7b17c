-- pg_session_jwt 0.3.1 in SQL: a stand-in for neondatabase/pg_session_jwt (Rust/pgrx) that neon-local
-- can load into any Postgres 14+, with no compiled module and no pgcrypto.
--
-- The auth.* functions keep the real signatures, volatility, strictness, parallel labels, return values
-- and error texts. What differs is how a token is proved genuine. The real extension checks an Ed25519
-- signature against the per-connection key that Neon's proxy sends as the startup GUC
-- pg_session_jwt.jwk. Here the proxy signs with HMAC-SHA256 under a key derived from a per-instance
-- secret (PGDATA/neon_local_session.key) and this backend's identity (pid and start time), so a token
-- is only good on the connection it was minted for. The jwk GUC still selects the mode and is
-- shape-checked, but carries nothing secret: custom GUCs are user-settable here.
--
-- The per-backend state the extension keeps in backend memory (last jti, last validated token) lives in
-- an unlogged table in the private schema _pg_session_jwt, which no role but the bootstrap superuser
-- can reach; SECURITY DEFINER entry points in auth are the only way in. Unlike backend memory it is
-- transactional: a ROLLBACK also forgets a token accepted in that transaction. Which row is this
-- backend's is settled by its pid and start time from the activity statistics; that answer is then
-- remembered in a superuser-only setting (see remembered_backend()), so cached reads skip the statistics.

\echo Use "CREATE EXTENSION pg_session_jwt" to load this file. \quit

CREATE SCHEMA IF NOT EXISTS auth;

-- Deliberately not IF NOT EXISTS: a schema planted under this name must make CREATE EXTENSION fail.
CREATE SCHEMA _pg_session_jwt;

-- One row per live backend, keyed by pid. backend_start tells this backend's row from a stale one left
-- by an earlier backend with the same pid. Unlogged: the state must not outlive the backends anyway.
CREATE UNLOGGED TABLE _pg_session_jwt.backend (
    pid integer PRIMARY KEY,
    backend_start text NOT NULL,
    ipad bytea NOT NULL,                        -- HMAC pads of this connection's key, derived once
    opad bytea NOT NULL,
    jwk_loaded boolean NOT NULL DEFAULT false,  -- the extension parses the JWK once per backend
    last_jti bigint NOT NULL DEFAULT 0,
    cached_jwt text,                            -- the last validated token and its payload
    cached_payload jsonb
);

-- Pure helpers. No search_path of their own: they only run inside the entry points below, which pin it.

-- base64url without padding (RFC 7515 §2), the encoding of every JWT segment.
CREATE FUNCTION _pg_session_jwt.b64url_encode(data bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT pg_catalog.rtrim(pg_catalog.translate(pg_catalog.encode(data, 'base64'), '+/' || pg_catalog.chr(10), '-_'), '=')
$$;

-- NULL unless s is unpadded base64url, as base64ct's Base64UrlUnpadded demands.
CREATE FUNCTION _pg_session_jwt.b64url_decode(s text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE WHEN s ~ '^[A-Za-z0-9_-]*$' AND pg_catalog.length(s) % 4 <> 1 THEN
        pg_catalog.decode(pg_catalog.translate(s, '-_', '+/') || pg_catalog.repeat('=', (4 - pg_catalog.length(s) % 4) % 4), 'base64')
    END
$$;

-- An HMAC-SHA256 key block (RFC 2104): the key zero-filled to 64 bytes, each byte XORed with fill
-- (0x36 for the inner pad, 0x5c for the outer). Keys here are 32 bytes, so none needs hashing first.
-- One XOR of two 512-bit strings; bit_send() gives the bits back as bytes after a 4-byte length.
CREATE FUNCTION _pg_session_jwt.hmac_pad(key bytea, fill integer) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT pg_catalog.substr(pg_catalog.bit_send(
        ('x' || pg_catalog.rpad(pg_catalog.encode(key, 'hex'), 128, '0'))::pg_catalog.bit(512)
        OPERATOR(pg_catalog.#) ('x' || pg_catalog.repeat(pg_catalog.lpad(pg_catalog.to_hex(fill & 255), 2, '0'), 64))::pg_catalog.bit(512)), 5)
$$;

CREATE FUNCTION _pg_session_jwt.hmac(ipad bytea, opad bytea, message bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT pg_catalog.sha256(opad || pg_catalog.sha256(ipad || message))
$$;

-- The value as a bigint if it is a JSON integer in i64 range (serde_json's as_i64), else NULL.
CREATE FUNCTION _pg_session_jwt.json_int(v jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(v) = 'number' AND v::text ~ '^-?[0-9]+$' AND pg_catalog.length(pg_catalog.ltrim(v::text, '-')) <= 19 THEN
        CASE WHEN v::text::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 THEN v::text::bigint END
    END
$$;

-- text parsed as JSON, or NULL when it is NULL or not JSON: the PostgREST fallback never raises.
-- pg_input_is_valid (PG16+) avoids the subtransaction of an EXCEPTION block, which a parallel worker
-- cannot start; before 16 the fallback therefore fails inside parallel plans.
CREATE FUNCTION _pg_session_jwt.parse_json(s text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::integer >= 160000 THEN
        RETURN CASE WHEN pg_catalog.pg_input_is_valid(s, 'jsonb') THEN s::jsonb END;
    END IF;
    BEGIN
        RETURN s::jsonb;
    EXCEPTION WHEN data_exception THEN
        RETURN NULL;
    END;
END
$$;

-- This backend's pid and start time (epoch seconds as text, exactly as the proxy's BIND_QUERY reads
-- them). A parallel worker answers for its leader, whose session it serves: only a worker looks twice.
CREATE FUNCTION _pg_session_jwt.current_backend() RETURNS TABLE (pid integer, backend_start text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(me.leader_pid, me.pid),
           CASE WHEN me.leader_pid IS NULL THEN extract(epoch FROM me.backend_start)::text
                ELSE (SELECT extract(epoch FROM l.backend_start)::text
                      FROM pg_catalog.pg_stat_get_activity(me.leader_pid) AS l) END
    FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS me
$$;

-- Finding this backend's row means asking the activity statistics who this backend is (above), which
-- costs more than everything else on a read. So once a VOLATILE entry point has asked, it remembers the
-- answer for the rest of the session in session_preload_libraries, as 'pg_session_jwt:<pid>:<start>'.
-- That setting is a stand-in for backend memory because:
--  * only a superuser can set it (PGC_SUSET; no role here is granted SET on it), and the only code that
--    sets it is loaded_state() below, running as the superuser that owns this extension, with the
--    answer current_backend() just gave in this very backend. A session cannot write it, not even
--    through startup options, ALTER ROLE/DATABASE SET or a function's SET clause, and cannot read it;
--  * it is per backend: it starts out empty (or as the server configured it) in every new backend,
--    so a row left by an earlier backend with the same pid is never reached through it;
--  * parallel workers receive the leader's value, which names the leader, as current_backend() does;
--  * RESET ALL or DISCARD ALL (which Neon's pool runs between requests) only empty it: the next call
--    asks the statistics again. A ROLLBACK undoes it together with the row it was set beside;
--  * it is read once per backend, at backend start, so changing it later loads nothing.
-- Anything not in that exact form (e.g. a list the server was configured with) is ignored. No regular
-- expression: matching one costs more here than the rest of a cached read.
CREATE FUNCTION _pg_session_jwt.remembered_backend(setting text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.cardinality(setting) = 3 AND setting[1] = 'pg_session_jwt'
                 AND pg_catalog.length(setting[2]) BETWEEN 1 AND 9 AND pg_catalog.ltrim(setting[2], '0123456789') = ''
                THEN setting[2:3] END
$$;

CREATE FUNCTION _pg_session_jwt.remembered_backend() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT _pg_session_jwt.remembered_backend(
        pg_catalog.string_to_array(pg_catalog.current_setting('session_preload_libraries'), ':'))
$$;

-- Everything that reads or writes the state table is SECURITY DEFINER with a pinned search_path.

-- A fresh row for this backend, given its pid and start time as current_backend() reports them:
-- K_conn = HMAC(secret, "<pid>:<backend_start>"), the key the proxy signs this connection's tokens with.
-- It replaces any row an earlier backend with the same pid left. The caller has checked the JWK.
CREATE FUNCTION _pg_session_jwt.new_state(me_pid integer, me_start text) RETURNS _pg_session_jwt.backend
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secret_hex text := pg_catalog.btrim(pg_catalog.pg_read_file('neon_local_session.key', 0, 1024, true),
                                        ' ' || pg_catalog.chr(10) || pg_catalog.chr(13));
    secret bytea;
    conn_key bytea;
    state _pg_session_jwt.backend;
BEGIN
    IF secret_hex IS NULL OR secret_hex !~ '^[0-9a-fA-F]{64}$' THEN
        RAISE EXCEPTION 'neon_local_session.key in the data directory must hold 32 random bytes as hex'
            USING ERRCODE = 'F0000',
                  HINT = 'neon-local writes it when it creates the cluster (neon_local.postgres.session_jwt.write_secret).';
    END IF;
    secret := pg_catalog.decode(secret_hex, 'hex');
    -- Housekeeping, done by one new backend in eight (the rows it drops are never trusted anyway, see
    -- above): drop the rows of backends that have exited. The DELETE must see backends through a stats
    -- snapshot taken after its own MVCC snapshot, or a backend that started in between would look exited
    -- while its row is already visible. Every pid is positive: "pid > 0" only lets the planner walk the
    -- primary key instead of reading every page of a table that churned (each token accepted updates a row).
    IF pg_catalog.random() < 0.125 THEN
        PERFORM pg_catalog.pg_stat_clear_snapshot();
        DELETE FROM _pg_session_jwt.backend AS b
        WHERE b.pid > 0
          AND b.pid <> ALL (ARRAY(SELECT pg_catalog.pg_stat_get_backend_pid(i) FROM pg_catalog.pg_stat_get_backend_idset() AS i));
    END IF;
    conn_key := _pg_session_jwt.hmac(_pg_session_jwt.hmac_pad(secret, 54), _pg_session_jwt.hmac_pad(secret, 92),
                                     pg_catalog.convert_to(me_pid || ':' || me_start, 'UTF8'));
    INSERT INTO _pg_session_jwt.backend AS b (pid, backend_start, ipad, opad, jwk_loaded)
    VALUES (me_pid, me_start, _pg_session_jwt.hmac_pad(conn_key, 54), _pg_session_jwt.hmac_pad(conn_key, 92), true)
    ON CONFLICT (pid) DO UPDATE
        SET backend_start = excluded.backend_start, ipad = excluded.ipad, opad = excluded.opad, jwk_loaded = true,
            last_jti = 0, cached_jwt = NULL, cached_payload = NULL
    RETURNING * INTO state;
    RETURN state;
END
$$;

-- This backend's state with the JWK loaded: the extension's get_jwk_guc(), which auth.init() forces.
-- Like its OnceCell, the GUC's shape is checked on first use only. The row is found through the
-- remembered identity when there is one (see remembered_backend()), else by asking the statistics,
-- after which the identity is remembered. A parallel worker never sets it: it cannot, and its
-- leader's value is already what it has.
CREATE FUNCTION _pg_session_jwt.loaded_state() RETURNS _pg_session_jwt.backend
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    jwk_text text := pg_catalog.current_setting('pg_session_jwt.jwk', true);
    known text[] := _pg_session_jwt.remembered_backend();
    me_pid integer;
    me_start text;
    found_row boolean;
    jwk jsonb;
    problem text;
    state _pg_session_jwt.backend;
BEGIN
    IF jwk_text IS NULL THEN
        RAISE EXCEPTION 'Missing runtime parameter: pg_session_jwt.jwk' USING ERRCODE = '02000';
    END IF;
    IF known IS NOT NULL THEN
        SELECT b.* INTO state FROM _pg_session_jwt.backend AS b WHERE b.pid = known[1]::integer AND b.backend_start = known[2];
        IF FOUND AND state.jwk_loaded THEN
            RETURN state;
        END IF;
    END IF;
    SELECT c.pid, c.backend_start INTO me_pid, me_start FROM _pg_session_jwt.current_backend() AS c;
    SELECT b.* INTO state FROM _pg_session_jwt.backend AS b WHERE b.pid = me_pid AND b.backend_start = me_start;
    found_row := FOUND;
    IF NOT found_row OR NOT state.jwk_loaded THEN
        -- parse_json() inline where PG16+ has pg_input_is_valid (PL/pgSQL plans a statement when it first
        -- runs it, so older servers never see the name), which spares a new backend a function to compile.
        IF pg_catalog.current_setting('server_version_num')::integer >= 160000 THEN
            jwk := CASE WHEN pg_catalog.pg_input_is_valid(jwk_text, 'jsonb') THEN jwk_text::jsonb END;
        ELSE
            jwk := _pg_session_jwt.parse_json(jwk_text);
        END IF;
        problem := CASE
            WHEN pg_catalog.jsonb_typeof(jwk) IS DISTINCT FROM 'object' THEN 'expected a JSON object'
            WHEN jwk -> 'kty' IS DISTINCT FROM '"OKP"' THEN 'kty must be "OKP"'
            WHEN jwk -> 'crv' IS DISTINCT FROM '"Ed25519"' THEN 'crv must be "Ed25519"'
            -- 43 characters ending in one that leaves the last 2 bits zero: 32 bytes, canonically encoded
            WHEN pg_catalog.jsonb_typeof(jwk -> 'x') IS DISTINCT FROM 'string'
              OR (jwk ->> 'x') !~ '^[A-Za-z0-9_-]*[AEIMQUYcgkosw048]$' OR pg_catalog.length(jwk ->> 'x') <> 43 THEN 'x must be 32 bytes in base64url'
        END;
        IF problem IS NOT NULL THEN
            -- The extension's message still says ES256, though it has wanted Ed25519 since 0.2.0.
            RAISE EXCEPTION 'pg_session_jwt.jwk requires an ES256 JWK' USING ERRCODE = '42804', DETAIL = problem;
        END IF;
        IF found_row THEN
            UPDATE _pg_session_jwt.backend AS b SET jwk_loaded = true WHERE b.pid = state.pid;
            state.jwk_loaded := true;
        ELSE
            state := _pg_session_jwt.new_state(me_pid, me_start);
        END IF;
    END IF;
    IF me_pid = pg_catalog.pg_backend_pid() THEN
        PERFORM pg_catalog.set_config('session_preload_libraries', 'pg_session_jwt:' || me_pid || ':' || me_start, false);
    END IF;
    RETURN state;
END
$$;

-- The extension's validate_jwt() for a non-empty token: the cached payload if it is the last token
-- validated on this backend (no re-check, as there), else verify it and remember it.
CREATE FUNCTION _pg_session_jwt.verify(jwt text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    state _pg_session_jwt.backend := _pg_session_jwt.loaded_state();
    first_dot integer;
    last_dot integer;
    signature text;
    expected text;
    raw bytea;
    payload jsonb;
    jti bigint;
    nbf bigint;
    exp bigint;
    now_epoch numeric := extract(epoch FROM pg_catalog.now());  -- transaction start, as pgrx's now()
BEGIN
    IF state.cached_jwt = jwt THEN
        RETURN state.cached_payload;
    END IF;

    -- The signed part ends at the last dot and the payload starts after the first; the header is never read.
    -- (strpos rather than a regular expression with groups, which costs several times as much.)
    first_dot := pg_catalog.strpos(jwt, '.');
    last_dot := pg_catalog.length(jwt) + 1 - pg_catalog.strpos(pg_catalog.reverse(jwt), '.');
    IF first_dot = 0 OR last_dot <= first_dot THEN
        RAISE EXCEPTION 'invalid JWT encoding' USING ERRCODE = '42804';
    END IF;
    signature := pg_catalog.substr(jwt, last_dot + 1);
    -- Bounded repetitions ({0,43}) make the regex engine build a state per count: lengths are checked apart.
    IF signature !~ '^[A-Za-z0-9_-]*$' OR pg_catalog.length(signature) > 43 OR pg_catalog.length(signature) % 4 = 1 THEN
        RAISE EXCEPTION 'invalid JWT signature encoding' USING ERRCODE = '42804';
    END IF;
    expected := _pg_session_jwt.b64url_encode(_pg_session_jwt.hmac(state.ipad, state.opad,
                    pg_catalog.convert_to(pg_catalog.substr(jwt, 1, last_dot - 1), 'UTF8')));
    -- Comparing digests keeps the comparison's timing independent of how much of the MAC was guessed.
    IF pg_catalog.sha256(pg_catalog.convert_to(signature, 'UTF8')) <> pg_catalog.sha256(pg_catalog.convert_to(expected, 'UTF8')) THEN
        RAISE EXCEPTION 'invalid JWT signature' USING ERRCODE = '23514';
    END IF;

    raw := _pg_session_jwt.b64url_decode(pg_catalog.substr(jwt, first_dot + 1, last_dot - first_dot - 1));
    IF raw IS NULL THEN
        RAISE EXCEPTION 'could not decode JWT component' USING ERRCODE = '42804', DETAIL = 'invalid Base64 encoding';
    END IF;
    BEGIN
        payload := pg_catalog.convert_from(raw, 'UTF8')::jsonb;
    EXCEPTION WHEN data_exception THEN  -- not UTF-8, or not JSON
        RAISE EXCEPTION 'could not parse JWT component' USING ERRCODE = '42804', DETAIL = SQLERRM;
    END;
    IF pg_catalog.jsonb_typeof(payload) <> 'object' THEN
        RAISE EXCEPTION 'could not parse JWT component' USING ERRCODE = '42804',
            DETAIL = pg_catalog.format('invalid type: %s, expected a map', pg_catalog.jsonb_typeof(payload));
    END IF;

    jti := _pg_session_jwt.json_int(payload -> 'jti');
    IF jti IS NULL THEN
        RAISE EXCEPTION 'JWT payload must contain a valid ''jti'' (JWT ID)' USING ERRCODE = '42804';
    END IF;
    IF jti <= state.last_jti THEN
        RAISE EXCEPTION 'Token ID must be strictly monotonically increasing.' USING ERRCODE = '23514';
    END IF;

    -- 60 s leeway either way: the extension's CLOCK_SKEW_LEEWAY (since 0.3.1).
    IF payload ? 'nbf' THEN
        nbf := _pg_session_jwt.json_int(payload -> 'nbf');
        IF nbf IS NULL THEN
            RAISE EXCEPTION '''nbf'' (Not Before) must be an integer representing seconds since unix epoch'
                USING ERRCODE = '42804';
        END IF;
        IF now_epoch + 60 < nbf THEN
            RAISE EXCEPTION 'Token used before it is ready' USING ERRCODE = '23514', DETAIL = 'nbf=' || nbf;
        END IF;
    END IF;
    IF payload ? 'exp' THEN
        exp := _pg_session_jwt.json_int(payload -> 'exp');
        IF exp IS NULL THEN
            RAISE EXCEPTION '''exp'' (Expiration) must be an integer representing seconds since unix epoch'
                USING ERRCODE = '42804';
        END IF;
        IF exp + 60 < now_epoch THEN
            RAISE EXCEPTION 'Token used after it has expired' USING ERRCODE = '23514', DETAIL = 'exp=' || exp;
        END IF;
    END IF;

    UPDATE _pg_session_jwt.backend AS b SET last_jti = jti, cached_jwt = jwt, cached_payload = payload
    WHERE b.pid = state.pid;
    RETURN payload;
END
$$;

-- The claims for the current mode: with a JWK, the validated payload (NULL without a token); without,
-- request.jwt.claims as any JSON value (NULL if unset or invalid). STABLE, and it only reads on a cache
-- hit, so it runs in parallel workers; verify() (VOLATILE) is called only when there is news to record.
CREATE FUNCTION _pg_session_jwt.claims() RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    jwt text := pg_catalog.current_setting('pg_session_jwt.jwt', true);
    known text[];
    me_pid integer;
    me_start text;
    payload jsonb;
BEGIN
    IF pg_catalog.current_setting('pg_session_jwt.jwk', true) IS NULL THEN
        RETURN _pg_session_jwt.parse_json(pg_catalog.current_setting('request.jwt.claims', true));
    END IF;
    -- A custom GUC can only be reset to '', never back to NULL, so '' means "no token" here.
    IF jwt IS NULL OR jwt = '' THEN
        RETURN NULL;
    END IF;
    -- Who this backend is: remembered (see remembered_backend()), or else asked of the statistics
    -- (e.g. after RESET ALL; a parallel worker asks for its leader).
    known := _pg_session_jwt.remembered_backend();
    IF known IS NOT NULL THEN
        me_pid := known[1]::integer;
        me_start := known[2];
    ELSE
        SELECT c.pid, c.backend_start INTO me_pid, me_start FROM _pg_session_jwt.current_backend() AS c;
    END IF;
    SELECT b.cached_payload INTO payload
    FROM _pg_session_jwt.backend AS b
    WHERE b.pid = me_pid AND b.backend_start = me_start AND b.cached_jwt = jwt;
    IF FOUND THEN
        RETURN payload;
    END IF;
    RETURN _pg_session_jwt.verify(jwt);
END
$$;

-- Nobody but the owner may call into the private schema directly (it has no USAGE grants either).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA _pg_session_jwt FROM PUBLIC;

-- The API. SECURITY DEFINER because only the owner can reach _pg_session_jwt.

CREATE FUNCTION auth.init() RETURNS void
LANGUAGE sql STRICT VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT FROM _pg_session_jwt.loaded_state();
$$;

-- A session-level SET, as the extension's SPI "SET pg_session_jwt.jwt = ...": it outlives COMMIT and
-- is undone by ROLLBACK, as is the SET when validation fails.
CREATE FUNCTION auth.jwt_session_init(jwt text) RETURNS void
LANGUAGE sql STRICT VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.set_config('pg_session_jwt.jwt', jwt, false);
    SELECT FROM _pg_session_jwt.verify(jwt);
$$;

CREATE FUNCTION auth.session() RETURNS jsonb
LANGUAGE sql STRICT STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(_pg_session_jwt.claims(), 'null'::jsonb);
$$;

-- sub if it is a string. Any other sub is an error for a verified token, and ignored in the fallback.
CREATE FUNCTION auth.user_id() RETURNS text
LANGUAGE plpgsql STRICT STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    sub jsonb := _pg_session_jwt.claims() -> 'sub';
BEGIN
    IF pg_catalog.jsonb_typeof(sub) = 'string' THEN
        RETURN sub #>> '{}';
    END IF;
    IF sub IS NOT NULL AND pg_catalog.current_setting('pg_session_jwt.jwk', true) IS NOT NULL THEN
        RAISE EXCEPTION 'invalid subject claim in the JWT' USING ERRCODE = '42804';
    END IF;
    RETURN NULL;
END
$$;
