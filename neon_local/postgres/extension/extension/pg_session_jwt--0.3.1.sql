-- pg_session_jwt 0.3.1 in SQL: a stand-in for neondatabase/pg_session_jwt (Rust/pgrx) that neon-local
-- can load into any Postgres 14+, with no compiled module and no pgcrypto.
--
-- The auth.* functions keep the real signatures, volatility, parallel labels, return values and error
-- texts. What differs is how a token is proved genuine. The real extension checks an Ed25519
-- signature against the per-connection key that Neon's proxy sends as the startup GUC
-- pg_session_jwt.jwk. Here the proxy signs with HMAC-SHA256 under a key derived from a per-instance
-- secret (PGDATA/neon_local_session.key) and this backend's identity (pid and start time), so a token
-- is only good on the connection it was minted for. The jwk GUC still selects the mode and is
-- shape-checked, but carries nothing secret: custom GUCs are user-settable here.
--
-- Reading the claims must cost what the compiled extension costs (RLS policies call auth.user_id()
-- once per row), so the readers are SQL functions the planner inlines into the calling query. An
-- inlined function runs with the caller's rights and cannot keep a secret, so the verified claims
-- live where any session can read them but only a superuser can write them: see "The verified
-- claims" below. Verification itself (HMAC, jti, exp/nbf) runs once per token, in jwt_session_init.
--
-- The per-backend state the extension keeps in backend memory (last jti, last validated token) lives in
-- an unlogged table in the private schema _pg_session_jwt, which no role but the bootstrap superuser
-- can read or write; SECURITY DEFINER entry points are the only way in. Unlike backend memory it is
-- transactional: a ROLLBACK also forgets a token accepted in that transaction. A backend's row is
-- keyed by its pid and carries the startup JWK it was made under (see current_state()), so finding
-- it costs one primary-key lookup, also after RESET ALL or DISCARD ALL.

\echo Use "CREATE EXTENSION pg_session_jwt" to load this file. \quit

CREATE SCHEMA IF NOT EXISTS auth;

-- Deliberately not IF NOT EXISTS: a schema planted under this name must make CREATE EXTENSION fail.
CREATE SCHEMA _pg_session_jwt;

-- One row per live backend, keyed by pid. backend_start and jwk tell this backend's row from a stale
-- one left by an earlier backend with the same pid. Unlogged: the state must not outlive the backends.
CREATE UNLOGGED TABLE _pg_session_jwt.backend (
    pid integer PRIMARY KEY,
    backend_start text NOT NULL,
    jwk text NOT NULL,                          -- the startup pg_session_jwt.jwk this row was made under
    ipad bytea NOT NULL,                        -- HMAC pads of this connection's key, derived once
    opad bytea NOT NULL,
    jwk_loaded boolean NOT NULL DEFAULT false,  -- the extension parses the JWK once per backend
    last_jti bigint NOT NULL DEFAULT 0,
    -- The last validated token, as its SHA-256: the payload is read again from the token itself on the
    -- rare cache hit. Every token accepted rewrites the row, and a narrow row keeps that write (and the
    -- row versions it leaves until pruning) cheap: the token and its payload made it ~5x wider.
    cached_digest bytea
);

-- Pure helpers. No search_path of their own: they only run inside the entry points below, which pin it.

-- base64url without padding (RFC 7515 §2), the encoding of every JWT segment. replace(), not
-- translate(): translate() looks each character up in its lists, ~10 us for a token's payload.
CREATE FUNCTION _pg_session_jwt.b64url_encode(data bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT pg_catalog.rtrim(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
        pg_catalog.encode(data, 'base64'), '+', '-'), '/', '_'), pg_catalog.chr(10), ''), '=')
$$;

-- NULL unless s is unpadded base64url, as base64ct's Base64UrlUnpadded demands. (Helpers with a CASE
-- are not STRICT, so that the planner inlines them into their callers.) Past the pattern s is ASCII, so
-- its length is its octet_length, which needs no walk over the characters.
CREATE FUNCTION _pg_session_jwt.b64url_decode(s text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN s ~ '^[A-Za-z0-9_-]*$' AND pg_catalog.octet_length(s) % 4 <> 1 THEN
        pg_catalog.decode(pg_catalog.replace(pg_catalog.replace(s, '-', '+'), '_', '/')
                          || pg_catalog.repeat('=', (4 - pg_catalog.octet_length(s) % 4) % 4), 'base64')
    END
$$;

-- The payload of a token this backend has validated (so it is unpadded base64url of a JSON object).
-- STABLE like convert_from(), so that it is inlined.
CREATE FUNCTION _pg_session_jwt.payload_of(jwt text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.convert_from(_pg_session_jwt.b64url_decode(pg_catalog.split_part(jwt, '.', 2)), 'UTF8')::jsonb
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

-- The value as a bigint if it is a JSON integer in i64 range (serde_json's as_i64), else NULL. Few
-- nodes, as verify() inlines it up to three times (see parse_uuid()); jsonb keeps a number's scale.
CREATE FUNCTION _pg_session_jwt.json_int(v jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(v) = 'number' THEN
        CASE WHEN pg_catalog.scale(v::numeric) = 0 AND v::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
             THEN v::numeric::bigint END
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

-- s as a uuid if Rust's uuid::Uuid::parse_str accepts it, else NULL. That is narrower than Postgres'
-- uuid input: simple (32 hex digits), hyphenated 8-4-4-4-12, {braced} or urn:uuid: hyphenated only.
-- Every hex digit made 0, the shape says the form, and s appears in few places: publish() inlines this
-- twice, and the executable form of an inlined expression is built again in each transaction at a cost
-- that grows with its size (the earlier CASE, a check per form and s in each, was a third of
-- jwt_session_init). Postgres' uuid input takes the forms but urn:uuid:, whose 'd' the mask turns to 0.
CREATE FUNCTION _pg_session_jwt.parse_uuid(s text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE pg_catalog.translate(s, '123456789abcdefABCDEF', '000000000000000000000')
        WHEN '00000000000000000000000000000000' THEN s::uuid
        WHEN '00000000-0000-0000-0000-000000000000' THEN s::uuid
        WHEN '{00000000-0000-0000-0000-000000000000}' THEN s::uuid
        WHEN 'urn:uui0:00000000-0000-0000-0000-000000000000' THEN
            CASE WHEN pg_catalog.starts_with(s, 'urn:uuid:') THEN pg_catalog.substr(s, 10)::uuid END
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

-- What reads or writes the state table runs as the extension's owner with a pinned search_path: the
-- entry points (auth.*, and the slow ways the readers fall back on) are SECURITY DEFINER with
-- search_path = pg_catalog, pg_temp, and the internal functions they call, which nobody else may
-- execute, run in that context (no SECURITY DEFINER of their own, which would cost a settings
-- switch per call).

-- A fresh row for this backend, given its pid and start time as current_backend() reports them and the
-- JWK it is loading: K_conn = HMAC(secret, "<pid>:<backend_start>"), the key the proxy signs this
-- connection's tokens with. It replaces any row an earlier backend with the same pid left. The caller
-- has checked the JWK.
CREATE FUNCTION _pg_session_jwt.new_state(me_pid integer, me_start text, me_jwk text) RETURNS _pg_session_jwt.backend
LANGUAGE plpgsql VOLATILE
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
    -- current_state()): drop the rows of backends that have exited. The DELETE must see backends through
    -- a stats snapshot taken after its own MVCC snapshot, or a backend that started in between would look
    -- exited while its row is already visible. Every pid is positive: "pid > 0" only lets the planner walk
    -- the primary key instead of reading every page of a table that churned (each token accepted updates a row).
    IF pg_catalog.random() < 0.125 THEN
        PERFORM pg_catalog.pg_stat_clear_snapshot();
        DELETE FROM _pg_session_jwt.backend AS b
        WHERE b.pid > 0
          AND b.pid <> ALL (ARRAY(SELECT pg_catalog.pg_stat_get_backend_pid(i) FROM pg_catalog.pg_stat_get_backend_idset() AS i));
    END IF;
    conn_key := _pg_session_jwt.hmac(_pg_session_jwt.hmac_pad(secret, 54), _pg_session_jwt.hmac_pad(secret, 92),
                                     pg_catalog.convert_to(me_pid || ':' || me_start, 'UTF8'));
    INSERT INTO _pg_session_jwt.backend AS b (pid, backend_start, jwk, ipad, opad, jwk_loaded)
    VALUES (me_pid, me_start, me_jwk, _pg_session_jwt.hmac_pad(conn_key, 54), _pg_session_jwt.hmac_pad(conn_key, 92), true)
    ON CONFLICT (pid) DO UPDATE
        SET backend_start = excluded.backend_start, jwk = excluded.jwk, ipad = excluded.ipad, opad = excluded.opad,
            jwk_loaded = true, last_jti = 0, cached_digest = NULL
    RETURNING * INTO state;
    RETURN state;
END
$$;

-- This backend's row, found with one primary-key lookup: the row under this pid, provided it was made
-- under the JWK this session has. The proxy makes a fresh key for each connection, so a row an earlier
-- backend left under the same pid never matches, unless the session SETs the JWK to that backend's key;
-- the row then holds that connection's key and jti, for which the session has no token it could not
-- already use. A row of NULLs when nothing matches (a new backend, a parallel worker, a JWK SET at run
-- time): the caller then asks the statistics. RESET ALL and DISCARD ALL change nothing here, since
-- they bring a startup setting back to its startup value.
CREATE FUNCTION _pg_session_jwt.current_state() RETURNS _pg_session_jwt.backend
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT b.* FROM _pg_session_jwt.backend AS b
    WHERE b.pid = pg_catalog.pg_backend_pid() AND b.jwk = pg_catalog.current_setting('pg_session_jwt.jwk', true) AND b.jwk_loaded
$$;

-- This backend's state with the JWK loaded: the extension's get_jwk_guc(), which auth.init() forces.
-- Like its OnceCell, the GUC's shape is checked on first use only. Past current_state(), who this
-- backend is comes from the activity statistics (and is then recorded with the JWK in its row).
CREATE FUNCTION _pg_session_jwt.loaded_state() RETURNS _pg_session_jwt.backend
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    jwk_text text := pg_catalog.current_setting('pg_session_jwt.jwk', true);
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
    state := _pg_session_jwt.current_state();
    IF state.pid IS NOT NULL THEN
        RETURN state;
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
            UPDATE _pg_session_jwt.backend AS b SET jwk_loaded = true, jwk = jwk_text WHERE b.pid = state.pid;
            state.jwk_loaded := true;
        ELSE
            state := _pg_session_jwt.new_state(me_pid, me_start, jwk_text);
        END IF;
    END IF;
    RETURN state;
END
$$;

-- The verified claims. Once a token is verified, what auth.* reports about it is published where the
-- inlined readers find it with a few string operations and no lookup:
--  * pg_session_jwt.verified_jwt holds the token. Readers use the published claims only while it
--    equals pg_session_jwt.jwt, so a session that changes or resets the token gets the new one
--    validated on first read, as in the extension. Any session can SET it, which gains nothing: the
--    claims it unlocks are the ones this session already proved.
--  * backtrace_functions holds the claims. It is a built-in setting that every role can read and
--    only a superuser can set (PGC_SUSET, and nobody is granted SET on it): no SET, set_config,
--    startup option, ALTER ROLE/DATABASE SET or function SET clause of a session can write it. The
--    only code that does is publish() below, run by this superuser-owned extension right after a
--    verification. Its real job (naming C functions whose errors get a backtrace in the log) is
--    unaffected: the list it holds names no C function. Its check hook accepts only letters, digits,
--    '_' and separators, hence hex. Like the token's SET it is per session, rolls back with the
--    transaction, reaches parallel workers, and goes with RESET ALL and DISCARD ALL.
-- The value: "pgsessionjwt_<k>,<sub>,<uid>,<o>,<o.id>,<claims>", every field hex (an empty one is
-- NULL), where <k> says what sub is: u (a string that auth.uid() reads as a uuid), s (another string),
-- n (absent), e (not a string: auth.user_id() raises). The short fields come first, so a reader scans
-- little more than it needs. publish() inlines it (else Postgres calls it, ~13 us per token) as long as it
-- is STABLE like convert_to() and each argument that is an expression appears once in the body.
CREATE FUNCTION _pg_session_jwt.published_claims(payload jsonb, uid uuid, organization_id uuid) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT 'pgsessionjwt_' || CASE WHEN payload -> 'sub' IS NULL THEN 'n,,'
                                   WHEN pg_catalog.jsonb_typeof(payload -> 'sub') <> 'string' THEN 'e,,'
                                   ELSE coalesce('u,' || pg_catalog.encode(pg_catalog.convert_to(payload ->> 'sub', 'UTF8'), 'hex')
                                                      || ',' || pg_catalog.replace(uid::text, '-', ''),
                                                 's,' || pg_catalog.encode(pg_catalog.convert_to(payload ->> 'sub', 'UTF8'), 'hex') || ',') END
        || ',' || CASE WHEN pg_catalog.jsonb_typeof(payload -> 'o') = 'object'
                       THEN pg_catalog.encode(pg_catalog.convert_to((payload -> 'o')::text, 'UTF8'), 'hex') ELSE '' END
        || ',' || coalesce(pg_catalog.replace(organization_id::text, '-', ''), '')
        || ',' || pg_catalog.encode(pg_catalog.convert_to(payload::text, 'UTF8'), 'hex')
$$;

-- Publish a verified token and its claims: one expression (the two settings' new values joined), so
-- that the planner inlines it into verify() rather than paying a function call per request.
CREATE FUNCTION _pg_session_jwt.publish(jwt text, payload jsonb) RETURNS text
LANGUAGE sql VOLATILE
AS $$
    SELECT pg_catalog.set_config('pg_session_jwt.verified_jwt', jwt, false)
        || pg_catalog.set_config('backtrace_functions', _pg_session_jwt.published_claims(payload,
               CASE WHEN pg_catalog.jsonb_typeof(payload -> 'sub') = 'string' THEN _pg_session_jwt.parse_uuid(payload ->> 'sub') END,
               CASE WHEN pg_catalog.jsonb_typeof(payload -> 'o' -> 'id') = 'string' THEN _pg_session_jwt.parse_uuid(payload -> 'o' ->> 'id') END),
           false)
$$;

-- The extension's validate_jwt() for a non-empty token: the cached payload if it is the last token
-- validated on this backend (no re-check, as there), else verify it and remember it. Either way the
-- token and its claims are then published for the inlined readers.
-- PL/pgSQL prepares each expression anew in every transaction, and each request is one: this costs
-- about as much per statement on the way as for the work itself, hence few statements and branches
-- that the usual token never enters.
CREATE FUNCTION _pg_session_jwt.verify(jwt text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    state _pg_session_jwt.backend;
    -- The signed part ends at the last dot and the payload starts after the first; the header is never read.
    -- Positions are bytes, cut from the token as bytea: character positions in a UTF-8 text cost a
    -- walk over the whole token for each strpos(), substr() or reverse().
    token bytea := pg_catalog.convert_to(jwt, 'UTF8');
    first_dot integer := pg_catalog.position(token, '\x2e'::bytea);  -- POSITION('.' IN token)
    signature text := pg_catalog.split_part(jwt, '.', -1);
    last_dot integer := pg_catalog.octet_length(jwt) - pg_catalog.octet_length(signature);  -- 0 without a dot
    digest bytea := pg_catalog.sha256(token);
    payload jsonb;
    jti bigint;
    nbf bigint;
    exp bigint;
BEGIN
    -- current_state(), written out: this runs once per request.
    SELECT b.* INTO state FROM _pg_session_jwt.backend AS b
    WHERE b.pid = pg_catalog.pg_backend_pid() AND b.jwk = pg_catalog.current_setting('pg_session_jwt.jwk', true) AND b.jwk_loaded;
    IF NOT FOUND THEN
        state := _pg_session_jwt.loaded_state();
    END IF;
    IF state.cached_digest = digest THEN
        payload := _pg_session_jwt.payload_of(jwt);
        PERFORM _pg_session_jwt.publish(jwt, payload);
        RETURN payload;
    END IF;

    IF first_dot = 0 OR last_dot <= first_dot THEN
        RAISE EXCEPTION 'invalid JWT encoding' USING ERRCODE = '42804';
    END IF;
    -- Bounded repetitions ({0,43}) make the regex engine build a state per count: lengths are checked apart.
    IF signature !~ '^[A-Za-z0-9_-]*$' OR pg_catalog.length(signature) > 43 OR pg_catalog.length(signature) % 4 = 1 THEN
        RAISE EXCEPTION 'invalid JWT signature encoding' USING ERRCODE = '42804';
    END IF;
    -- Comparing digests keeps the comparison's timing independent of how much of the MAC was guessed.
    IF pg_catalog.sha256(pg_catalog.convert_to(signature, 'UTF8')) <> pg_catalog.sha256(pg_catalog.convert_to(
           _pg_session_jwt.b64url_encode(_pg_session_jwt.hmac(state.ipad, state.opad,
               pg_catalog.substr(token, 1, last_dot - 1))), 'UTF8')) THEN
        RAISE EXCEPTION 'invalid JWT signature' USING ERRCODE = '23514';
    END IF;

    BEGIN
        -- NULL when the payload is not unpadded base64url
        payload := pg_catalog.convert_from(_pg_session_jwt.b64url_decode(
                       pg_catalog.convert_from(pg_catalog.substr(token, first_dot + 1, last_dot - first_dot - 1), 'UTF8')), 'UTF8')::jsonb;
    EXCEPTION WHEN data_exception THEN  -- not UTF-8, or not JSON
        RAISE EXCEPTION 'could not parse JWT component' USING ERRCODE = '42804', DETAIL = SQLERRM;
    END;
    IF pg_catalog.jsonb_typeof(payload) IS DISTINCT FROM 'object' THEN
        IF payload IS NULL THEN
            RAISE EXCEPTION 'could not decode JWT component' USING ERRCODE = '42804', DETAIL = 'invalid Base64 encoding';
        END IF;
        RAISE EXCEPTION 'could not parse JWT component' USING ERRCODE = '42804',
            DETAIL = pg_catalog.format('invalid type: %s, expected a map', pg_catalog.jsonb_typeof(payload));
    END IF;

    jti := _pg_session_jwt.json_int(payload -> 'jti');
    IF jti IS NULL OR jti <= state.last_jti THEN
        IF jti IS NULL THEN
            RAISE EXCEPTION 'JWT payload must contain a valid ''jti'' (JWT ID)' USING ERRCODE = '42804';
        END IF;
        RAISE EXCEPTION 'Token ID must be strictly monotonically increasing.' USING ERRCODE = '23514';
    END IF;

    -- 60 s leeway either way (the extension's CLOCK_SKEW_LEEWAY, since 0.3.1), from the transaction
    -- start, as pgrx's now().
    IF payload ? 'nbf' THEN
        nbf := _pg_session_jwt.json_int(payload -> 'nbf');
        IF nbf IS NULL THEN
            RAISE EXCEPTION '''nbf'' (Not Before) must be an integer representing seconds since unix epoch'
                USING ERRCODE = '42804';
        END IF;
        IF extract(epoch FROM pg_catalog.now()) + 60 < nbf THEN
            RAISE EXCEPTION 'Token used before it is ready' USING ERRCODE = '23514', DETAIL = 'nbf=' || nbf;
        END IF;
    END IF;
    IF payload ? 'exp' THEN
        exp := _pg_session_jwt.json_int(payload -> 'exp');
        IF exp IS NULL THEN
            RAISE EXCEPTION '''exp'' (Expiration) must be an integer representing seconds since unix epoch'
                USING ERRCODE = '42804';
        END IF;
        IF exp + 60 < extract(epoch FROM pg_catalog.now()) THEN
            RAISE EXCEPTION 'Token used after it has expired' USING ERRCODE = '23514', DETAIL = 'exp=' || exp;
        END IF;
    END IF;

    UPDATE _pg_session_jwt.backend AS b SET last_jti = jti, cached_digest = digest
    WHERE b.pid = state.pid;
    PERFORM _pg_session_jwt.publish(jwt, payload);
    RETURN payload;
END
$$;

-- The claims for the current mode, the slow way: with a JWK, the validated payload (NULL without a
-- token); without, request.jwt.claims as any JSON value (NULL if unset or invalid). The inlined readers
-- come here when nothing verified is published for the current token (the fallback; a token the
-- session SET, changed or reset itself; after RESET ALL). STABLE, and it only reads on a cache hit, so
-- it runs in parallel workers; verify() (VOLATILE) is called only when there is news to record.
CREATE FUNCTION _pg_session_jwt.claims() RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    jwt text := pg_catalog.current_setting('pg_session_jwt.jwt', true);
    me_pid integer;
    me_start text;
BEGIN
    IF pg_catalog.current_setting('pg_session_jwt.jwk', true) IS NULL THEN
        RETURN _pg_session_jwt.parse_json(pg_catalog.current_setting('request.jwt.claims', true));
    END IF;
    -- A custom GUC can only be reset to '', never back to NULL, so '' means "no token" here.
    IF jwt IS NULL OR jwt = '' THEN
        RETURN NULL;
    END IF;
    IF (_pg_session_jwt.current_state()).cached_digest = pg_catalog.sha256(pg_catalog.convert_to(jwt, 'UTF8')) THEN
        RETURN _pg_session_jwt.payload_of(jwt);
    END IF;
    -- A parallel worker reads its leader's row, found through the statistics.
    SELECT c.pid, c.backend_start INTO me_pid, me_start FROM _pg_session_jwt.current_backend() AS c;
    IF me_pid <> pg_catalog.pg_backend_pid() THEN
        PERFORM FROM _pg_session_jwt.backend AS b
        WHERE b.pid = me_pid AND b.backend_start = me_start AND b.cached_digest = pg_catalog.sha256(pg_catalog.convert_to(jwt, 'UTF8'));
        IF FOUND THEN
            RETURN _pg_session_jwt.payload_of(jwt);
        END IF;
    END IF;
    RETURN _pg_session_jwt.verify(jwt);
END
$$;

-- auth.user_id() the slow way: sub if it is a string. Any other sub is an error for a verified token,
-- and ignored in the fallback.
CREATE FUNCTION _pg_session_jwt.user_id() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
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

-- The slow ways of the readers that later versions add (see the update scripts).
CREATE FUNCTION _pg_session_jwt.uid() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT _pg_session_jwt.parse_uuid(_pg_session_jwt.user_id());
$$;

-- The "o" claim if it is a JSON object, else NULL.
CREATE FUNCTION _pg_session_jwt.organization() RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(o) = 'object' THEN o END
    FROM (SELECT _pg_session_jwt.claims() -> 'o') AS claim (o);
$$;

-- o.id as a uuid if it is a string that parses as one (as auth.uid() does), else NULL.
CREATE FUNCTION _pg_session_jwt.organization_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(id) = 'string' THEN _pg_session_jwt.parse_uuid(id #>> '{}') END
    FROM (SELECT _pg_session_jwt.organization() -> 'id') AS claim (id);
$$;

-- Nobody but the owner may touch what the private schema holds. The schema's name is usable by all,
-- because the inlined readers run as their caller and fall back on the slow ways above, the only
-- functions in it that anyone else may execute (all SECURITY DEFINER).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA _pg_session_jwt FROM PUBLIC;
GRANT USAGE ON SCHEMA _pg_session_jwt TO PUBLIC;
GRANT EXECUTE ON FUNCTION _pg_session_jwt.claims(), _pg_session_jwt.user_id(), _pg_session_jwt.uid(),
                          _pg_session_jwt.organization(), _pg_session_jwt.organization_id() TO PUBLIC;

-- The API.

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

-- The readers: each one SQL expression that the planner inlines into the calling query, at the cost
-- of a few string operations per call, like the compiled extension's. Inlining needs LANGUAGE sql, no
-- SECURITY DEFINER, no SET clause, and, as no CASE is strict, no STRICT: the extension declares these
-- STRICT, which for a function without arguments changes nothing else. Every name is
-- schema-qualified, operators included, because an inlined body is resolved with the caller's
-- search_path. The published claims count while the token is the one they were published for (see
-- published_claims()); in every other case the slow way decides.

CREATE FUNCTION auth.session() RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('pg_session_jwt.jwt', true) OPERATOR(pg_catalog.=) pg_catalog.current_setting('pg_session_jwt.verified_jwt', true)
                 AND pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_')
        THEN pg_catalog.convert_from(pg_catalog.decode(pg_catalog.split_part(pg_catalog.current_setting('backtrace_functions'), ',', 6), 'hex'), 'UTF8')::pg_catalog.jsonb
        ELSE COALESCE(_pg_session_jwt.claims(), 'null'::pg_catalog.jsonb)
    END
$$;

CREATE FUNCTION auth.user_id() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('pg_session_jwt.jwt', true) OPERATOR(pg_catalog.=) pg_catalog.current_setting('pg_session_jwt.verified_jwt', true)
        THEN CASE WHEN pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_u,')
                    OR pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_s,')
                  THEN pg_catalog.convert_from(pg_catalog.decode(pg_catalog.split_part(pg_catalog.current_setting('backtrace_functions'), ',', 2), 'hex'), 'UTF8')
                  WHEN pg_catalog.starts_with(pg_catalog.current_setting('backtrace_functions'), 'pgsessionjwt_n,') THEN NULL
                  ELSE _pg_session_jwt.user_id() END
        ELSE _pg_session_jwt.user_id()
    END
$$;
