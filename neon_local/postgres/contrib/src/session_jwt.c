/*
 * pg_session_jwt's auth.* functions in C: neon-local's compiled stand-in for neondatabase/pg_session_jwt,
 * used in place of the SQL stub (neon_local/postgres/extension/extension) when this module was built for
 * the server. The SQL surface, the token format and the per-connection keys are the SQL stub's; read the
 * header of its pg_session_jwt--0.3.1.sql first.
 *
 * What changes is where the state lives: in backend memory, as in the real extension, so no session can
 * read or write it and a reader costs two setting lookups and a string comparison. The state is:
 *  - the connection key, K_conn = HMAC-SHA256(secret, "<pid>:<backend_start>"), derived once per backend
 *    when the startup JWK is first loaded (a parallel worker derives its leader's);
 *  - the last accepted jti and the last accepted token with its claims, parsed once. A reader whose
 *    pg_session_jwt.jwt is not that token validates it first, as the extension's validate_jwt() does.
 * The jti and the cached token follow the transaction, as the SQL stub's table row did (the extension
 * keeps them across a ROLLBACK): a rolled-back (sub)transaction also forgets the tokens it accepted, so
 * the token a ROLLBACK brings back into pg_session_jwt.jwt keeps reading as before.
 *
 * A parallel worker has none of its leader's memory, so each backend also publishes its last jti and a
 * digest of its last accepted token in a shared memory slot of its own (a named DSM segment, one slot per
 * backend, written only by its owner): a worker takes the leader's token as accepted, and checks any
 * other against the leader's jti, as the SQL stub's workers read their leader's row. The real extension's
 * workers start from nothing; neon-local's keep the replay guard.
 */
#include "postgres.h"

#include <ctype.h>
#include <string.h>

#include "access/parallel.h"
#include "access/xact.h"
#include "common/hmac.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/miscnodes.h"
#include "storage/dsm_registry.h"
#include "storage/fd.h"
#include "storage/procnumber.h"
#include "storage/spin.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

PG_MODULE_MAGIC;

#define SECRET_FILE "neon_local_session.key"
#define MAC_LEN 32
#define MAC_B64_LEN 43				/* unpadded base64url of 32 bytes */
#define LEEWAY_SECONDS 60			/* the extension's CLOCK_SKEW_LEEWAY */

typedef enum SubKind
{
	SUB_ABSENT,
	SUB_STRING,
	SUB_OTHER					/* not a string: auth.user_id() raises (with a JWK) */
} SubKind;

/* One claims object and what the readers report from it, in a memory context of its own. */
typedef struct Claims
{
	MemoryContext context;
	char	   *token;			/* the token they came from; NULL in the fallback */
	uint8		digest[MAC_LEN];	/* HMAC(K_conn, token), what the shared slot shows of it */
	Jsonb	   *claims;
	SubKind		sub_kind;
	text	   *sub;
	bool		has_uid;
	pg_uuid_t	uid;
	Jsonb	   *organization;	/* "o" if an object, else NULL */
	bool		has_organization_id;
	pg_uuid_t	organization_id;
} Claims;

typedef struct State
{
	int64		last_jti;
	Claims	   *verified;
} State;

/* The state as it was when a (sub)transaction first changed it, restored if that one aborts. */
typedef struct SavedState
{
	State		state;
	int			level;
	struct SavedState *below;
} SavedState;

static State current;
static SavedState *saved;
static bool callbacks_registered;

static bool jwk_loaded;
static uint8 conn_key[MAC_LEN];

static Claims *fallback;		/* request.jwt.claims as last parsed */
static char *fallback_text;

/* What a backend shows its parallel workers of its state; pid and started tell it from an earlier
 * backend's that had the same ProcNumber. */
typedef struct SharedSlot
{
	slock_t		mutex;
	int			pid;
	TimestampTz started;
	int64		last_jti;
	bool		has_token;
	uint8		digest[MAC_LEN];
} SharedSlot;

static SharedSlot *slots;		/* MaxBackends of them */

static void publish(void);

PG_FUNCTION_INFO_V1(pgsjwt_init);
PG_FUNCTION_INFO_V1(pgsjwt_jwt_session_init);
PG_FUNCTION_INFO_V1(pgsjwt_session);
PG_FUNCTION_INFO_V1(pgsjwt_user_id);
PG_FUNCTION_INFO_V1(pgsjwt_uid);
PG_FUNCTION_INFO_V1(pgsjwt_organization);
PG_FUNCTION_INFO_V1(pgsjwt_organization_id);

/* --- Helpers ------------------------------------------------------------------------------------ */

static const char b64url_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int
b64url_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

static bool
is_b64url(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (b64url_value((unsigned char) s[i]) < 0)
			return false;
	return true;
}

/* 43 characters for 32 bytes. */
static void
b64url_encode_mac(const uint8 *mac, char *out)
{
	int			o = 0;
	uint32		buf = 0;
	int			bits = 0;

	for (int i = 0; i < MAC_LEN; i++)
	{
		buf = (buf << 8) | mac[i];
		bits += 8;
		while (bits >= 6)
		{
			bits -= 6;
			out[o++] = b64url_chars[(buf >> bits) & 63];
		}
	}
	if (bits > 0)
		out[o++] = b64url_chars[(buf << (6 - bits)) & 63];
	out[o] = '\0';
}

/*
 * Unpadded base64url (len % 4 != 1, checked by the caller) into out, which has room for len * 3 / 4
 * bytes; leftover bits of the last character are ignored, as Postgres' decode(..., 'base64') does.
 */
static size_t
b64url_decode(const char *s, size_t len, char *out)
{
	uint32		buf = 0;
	int			bits = 0;
	size_t		o = 0;

	for (size_t i = 0; i < len; i++)
	{
		buf = (buf << 6) | (uint32) b64url_value((unsigned char) s[i]);
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			out[o++] = (char) ((buf >> bits) & 0xFF);
		}
	}
	return o;
}

static void
hmac_sha256(const uint8 *key, size_t key_len, const char *message, size_t len, uint8 *out)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);

	if (ctx == NULL || pg_hmac_init(ctx, key, key_len) < 0 || pg_hmac_update(ctx, (const uint8 *) message, len) < 0 ||
		pg_hmac_final(ctx, out, MAC_LEN) < 0)
	{
		const char *reason = ctx ? pg_hmac_error(ctx) : "out of memory";

		pg_hmac_free(ctx);
		elog(ERROR, "could not compute HMAC-SHA256: %s", reason);
	}
	pg_hmac_free(ctx);
}

static bool
hex_digits(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		if (!isxdigit((unsigned char) s[i]))
			return false;
	return true;
}

static int
hex_value(char c)
{
	return isdigit((unsigned char) c) ? c - '0' : (pg_ascii_tolower((unsigned char) c) - 'a' + 10);
}

/*
 * s as a uuid if Rust's uuid::Uuid::parse_str takes it: 32 hex digits, hyphenated 8-4-4-4-12,
 * {hyphenated} or urn:uuid:hyphenated, in any hex case.
 */
static bool
parse_uuid(const char *s, size_t len, pg_uuid_t *out)
{
	char		digits[32];
	int			n = 0;

	if (len == 45 && strncmp(s, "urn:uuid:", 9) == 0)
		return parse_uuid(s + 9, 36, out);
	if (len == 38 && s[0] == '{' && s[37] == '}')
		return parse_uuid(s + 1, 36, out);
	if (len == 32)
	{
		if (!hex_digits(s, 32))
			return false;
		memcpy(digits, s, 32);
	}
	else if (len == 36)
	{
		for (size_t i = 0; i < 36; i++)
		{
			if (i == 8 || i == 13 || i == 18 || i == 23)
			{
				if (s[i] != '-')
					return false;
			}
			else if (!isxdigit((unsigned char) s[i]))
				return false;
			else
				digits[n++] = s[i];
		}
	}
	else
		return false;
	for (int i = 0; i < UUID_LEN; i++)
		out->data[i] = (unsigned char) (hex_value(digits[2 * i]) << 4 | hex_value(digits[2 * i + 1]));
	return true;
}

/* The value as an int64 if it is a JSON integer in i64 range (serde_json's as_i64); jsonb keeps a number's scale. */
static bool
json_int(JsonbValue *v, int64 *out)
{
	bool		have_error = false;

	if (v == NULL || v->type != jbvNumeric)
		return false;
	if (DatumGetInt32(DirectFunctionCall1(numeric_scale, NumericGetDatum(v->val.numeric))) != 0)
		return false;
	*out = numeric_int8_opt_error(v->val.numeric, &have_error);
	return !have_error;
}

static JsonbValue *
member(JsonbContainer *object, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(object, JB_FOBJECT, &k);
}

/* Claims and what the readers report from them, in a new context under TopMemoryContext. */
static Claims *
make_claims(Jsonb *jsonb, const char *token, const uint8 *digest)
{
	MemoryContext context = AllocSetContextCreate(TopMemoryContext, "pg_session_jwt claims", ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(context);
	Claims	   *c = palloc0(sizeof(Claims));

	c->context = context;
	c->token = token ? pstrdup(token) : NULL;
	if (digest != NULL)
		memcpy(c->digest, digest, MAC_LEN);
	c->claims = palloc(VARSIZE(jsonb));
	memcpy(c->claims, jsonb, VARSIZE(jsonb));
	c->sub_kind = SUB_ABSENT;
	if (JB_ROOT_IS_OBJECT(c->claims))
	{
		JsonbValue *sub = member(&c->claims->root, "sub");
		JsonbValue *o = member(&c->claims->root, "o");

		if (sub != NULL && sub->type == jbvString)
		{
			c->sub_kind = SUB_STRING;
			c->sub = cstring_to_text_with_len(sub->val.string.val, sub->val.string.len);
			c->has_uid = parse_uuid(sub->val.string.val, sub->val.string.len, &c->uid);
		}
		else if (sub != NULL)
			c->sub_kind = SUB_OTHER;
		if (o != NULL && o->type == jbvBinary && JsonContainerIsObject(o->val.binary.data))
		{
			JsonbValue *id = member(o->val.binary.data, "id");

			c->organization = JsonbValueToJsonb(o);
			if (id != NULL && id->type == jbvString)
				c->has_organization_id = parse_uuid(id->val.string.val, id->val.string.len, &c->organization_id);
		}
	}
	MemoryContextSwitchTo(old);
	return c;
}

/* text parsed as jsonb, or NULL with the parser's message in *problem. */
static Jsonb *
parse_jsonb(const char *text, char **problem)
{
	ErrorSaveContext escontext = {T_ErrorSaveContext};
	Datum		result;

	escontext.details_wanted = true;
	if (DirectInputFunctionCallSafe(jsonb_in, (char *) text, InvalidOid, -1, (Node *) &escontext, &result))
		return DatumGetJsonbP(result);
	*problem = escontext.error_data ? escontext.error_data->message : "invalid input syntax for type json";
	return NULL;
}

/* --- The transactional state ---------------------------------------------------------------------- */

static bool
referenced(Claims *c)
{
	if (c == NULL || c == current.verified)
		return true;
	for (SavedState *s = saved; s != NULL; s = s->below)
		if (s->state.verified == c)
			return true;
	return false;
}

static void
release(Claims *c)
{
	if (!referenced(c))
		MemoryContextDelete(c->context);
}

static void
pop_saved(void)
{
	SavedState *top = saved;

	saved = top->below;
	release(top->state.verified);
	pfree(top);
}

/* Back to the state as it was when the (sub)transaction at `level` first changed it. */
static void
restore(int level)
{
	bool		changed = false;

	while (saved != NULL && saved->level >= level)
	{
		Claims	   *abandoned = current.verified;

		current = saved->state;
		pop_saved();
		release(abandoned);
		changed = true;
	}
	if (changed)
		publish();
}

static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			restore(1);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			while (saved != NULL)
				pop_saved();
			break;
		default:
			break;
	}
}

static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_ABORT_SUB)
		restore(level);
	else if (event == SUBXACT_EVENT_COMMIT_SUB && saved != NULL && saved->level == level)
	{
		/* the parent now owns the change: it keeps the older of the two saved states */
		if (saved->below != NULL && saved->below->level == level - 1)
			pop_saved();
		else
			saved->level = level - 1;
	}
}

static void
init_slots(void *ptr)
{
	SharedSlot *all = ptr;

	memset(all, 0, sizeof(SharedSlot) * MaxBackends);
	for (int i = 0; i < MaxBackends; i++)
		SpinLockInit(&all[i].mutex);
}

static SharedSlot *
slot_of(ProcNumber number)
{
	bool		found;

	if (slots == NULL)
		slots = GetNamedDSMSegment("neon_local_session_jwt", sizeof(SharedSlot) * MaxBackends, init_slots, &found);
	if (number < 0 || number >= MaxBackends)
		elog(ERROR, "pg_session_jwt: backend number %d out of range", number);
	return &slots[number];
}

/* This backend's state, for its parallel workers (whose own state is theirs alone). */
static void
publish(void)
{
	SharedSlot *slot;

	if (IsParallelWorker())
		return;
	slot = slot_of(MyProcNumber);
	SpinLockAcquire(&slot->mutex);
	slot->pid = MyProcPid;
	slot->started = MyStartTimestamp;
	slot->last_jti = current.last_jti;
	slot->has_token = current.verified != NULL;
	if (current.verified != NULL)
		memcpy(slot->digest, current.verified->digest, MAC_LEN);
	SpinLockRelease(&slot->mutex);
}

/* Accept a token: `claims` becomes the verified one, `jti` the last. */
static void
accept_token(Claims *claims, int64 jti)
{
	int			level = GetCurrentTransactionNestLevel();
	Claims	   *replaced = current.verified;

	if (!callbacks_registered)
	{
		RegisterXactCallback(xact_callback, NULL);
		RegisterSubXactCallback(subxact_callback, NULL);
		callbacks_registered = true;
	}
	if (saved == NULL || saved->level < level)
	{
		SavedState *s = MemoryContextAlloc(TopMemoryContext, sizeof(SavedState));

		s->state = current;
		s->level = level;
		s->below = saved;
		saved = s;
	}
	current.verified = claims;
	current.last_jti = jti;
	release(replaced);
	publish();
}

/* --- The connection key and the JWK ----------------------------------------------------------------- */

/* "<pid>:<backend_start>" of the session this process serves (a parallel worker serves its leader's), the
 * start time as extract(epoch FROM backend_start)::text, exactly as the proxy's BIND_QUERY reads it. */
static void
session_backend(int *pid, TimestampTz *started)
{
	*pid = MyProcPid;
	*started = MyStartTimestamp;
	if (ParallelLeaderProcNumber != INVALID_PROC_NUMBER)
	{
		PgBackendStatus *leader = pgstat_get_beentry_by_proc_number(ParallelLeaderProcNumber);

		if (leader == NULL)
			elog(ERROR, "pg_session_jwt: the parallel leader's activity entry is gone");
		*pid = leader->st_procpid;
		*started = leader->st_proc_start_timestamp;
	}
}

static char *
backend_identity(void)
{
	int			pid;
	TimestampTz started;
	Datum		epoch;

	session_backend(&pid, &started);
	epoch = DirectFunctionCall2(extract_timestamptz, CStringGetTextDatum("epoch"), TimestampTzGetDatum(started));
	return psprintf("%d:%s", pid, DatumGetCString(DirectFunctionCall1(numeric_out, epoch)));
}

/* In a parallel worker: the leader's last jti (into *last_jti), and whether `digest` is its last accepted token's. */
static bool
leaders_token(const uint8 *digest, int64 *last_jti)
{
	int			pid;
	TimestampTz started;
	SharedSlot *slot = slot_of(ParallelLeaderProcNumber);
	SharedSlot	copy;

	session_backend(&pid, &started);
	SpinLockAcquire(&slot->mutex);
	copy = *slot;
	SpinLockRelease(&slot->mutex);
	if (copy.pid != pid || copy.started != started)	/* the leader has accepted nothing yet */
		return false;
	*last_jti = copy.last_jti;
	return copy.has_token && memcmp(copy.digest, digest, MAC_LEN) == 0;
}

static void
derive_conn_key(void)
{
	char		text[1025];
	size_t		len = 0;
	FILE	   *file = AllocateFile(SECRET_FILE, PG_BINARY_R);
	char	   *start;
	uint8		secret[32];
	char	   *identity;

	if (file != NULL)
	{
		len = fread(text, 1, sizeof(text) - 1, file);
		FreeFile(file);
	}
	text[len] = '\0';
	start = text;
	while (*start == ' ' || *start == '\n' || *start == '\r')
		start++;
	len = strlen(start);
	while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\n' || start[len - 1] == '\r'))
		len--;
	if (file == NULL || len != 64 || !hex_digits(start, 64))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("neon_local_session.key in the data directory must hold 32 random bytes as hex"),
				 errhint("neon-local writes it when it creates the cluster (neon_local.postgres.session_jwt.write_secret).")));
	for (int i = 0; i < 32; i++)
		secret[i] = (uint8) (hex_value(start[2 * i]) << 4 | hex_value(start[2 * i + 1]));
	identity = backend_identity();
	hmac_sha256(secret, sizeof(secret), identity, strlen(identity), conn_key);
	explicit_bzero(secret, sizeof(secret));
	explicit_bzero(text, sizeof(text));
	pfree(identity);
}

/* What is wrong with the JWK as an Ed25519 public key, or NULL. */
static const char *
jwk_problem(const char *jwk_text)
{
	char	   *ignored;
	Jsonb	   *jwk = parse_jsonb(jwk_text, &ignored);
	JsonbValue *v;

	if (jwk == NULL || !JB_ROOT_IS_OBJECT(jwk))
		return "expected a JSON object";
	v = member(&jwk->root, "kty");
	if (v == NULL || v->type != jbvString || v->val.string.len != 3 || memcmp(v->val.string.val, "OKP", 3) != 0)
		return "kty must be \"OKP\"";
	v = member(&jwk->root, "crv");
	if (v == NULL || v->type != jbvString || v->val.string.len != 7 || memcmp(v->val.string.val, "Ed25519", 7) != 0)
		return "crv must be \"Ed25519\"";
	v = member(&jwk->root, "x");
	/* 43 characters ending in one that leaves the last 2 bits zero: 32 bytes, canonically encoded */
	if (v == NULL || v->type != jbvString || v->val.string.len != 43 || !is_b64url(v->val.string.val, 43) ||
		b64url_value((unsigned char) v->val.string.val[42]) % 4 != 0)
		return "x must be 32 bytes in base64url";
	return NULL;
}

/* The extension's get_jwk_guc(): the JWK is checked, and the key derived, on first use only. */
static void
load_jwk(const char *jwk_text)
{
	const char *problem;

	if (jwk_loaded)
		return;
	if (jwk_text == NULL)
		ereport(ERROR, (errcode(ERRCODE_NO_DATA), errmsg("Missing runtime parameter: pg_session_jwt.jwk")));
	problem = jwk_problem(jwk_text);
	if (problem != NULL)
		/* The extension's message still says ES256, though it has wanted Ed25519 since 0.2.0. */
		ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH), errmsg("pg_session_jwt.jwk requires an ES256 JWK"),
						errdetail("%s", problem)));
	derive_conn_key();
	jwk_loaded = true;
}

/* --- Validation ----------------------------------------------------------------------------------- */

static pg_noreturn void
encoding_error(const char *message)
{
	ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH), errmsg("%s", message)));
}

/* A time claim, present: its value, which must be an integer. */
static int64
time_claim(JsonbValue *v, const char *message)
{
	int64		value;

	if (!json_int(v, &value))
		encoding_error(message);
	return value;
}

/* The extension's validate_jwt() for a non-empty token: the cached claims if it is the last token accepted,
 * else check it in full and accept it. */
static Claims *
verify(const char *jwt)
{
	size_t		len = strlen(jwt);
	const char *first_dot;
	const char *last_dot;
	const char *signature;
	size_t		signature_len;
	uint8		mac[MAC_LEN];
	char		expected[MAC_B64_LEN + 1];
	int			diff = 0;
	const char *segment;
	size_t		segment_len;
	char	   *decoded;
	size_t		decoded_len;
	char	   *problem = NULL;	/* set by parse_jsonb() when it fails; NULL quiets gcc */
	Jsonb	   *payload;
	JsonbValue *v;
	int64		jti;
	int64		last_jti = current.last_jti;
	uint8		digest[MAC_LEN];
	bool		leaders = false;
	int64		now_us;
	Claims	   *claims;

	load_jwk(GetConfigOption("pg_session_jwt.jwk", true, false));
	if (current.verified != NULL && strcmp(jwt, current.verified->token) == 0)
		return current.verified;
	hmac_sha256(conn_key, MAC_LEN, jwt, len, digest);
	if (IsParallelWorker())
		leaders = leaders_token(digest, &last_jti);

	first_dot = strchr(jwt, '.');
	last_dot = strrchr(jwt, '.');
	if (first_dot == NULL || last_dot == first_dot)
		encoding_error("invalid JWT encoding");
	signature = last_dot + 1;
	signature_len = len - (signature - jwt);
	if (!is_b64url(signature, signature_len) || signature_len > MAC_B64_LEN || signature_len % 4 == 1)
		encoding_error("invalid JWT signature encoding");
	hmac_sha256(conn_key, MAC_LEN, jwt, last_dot - jwt, mac);
	b64url_encode_mac(mac, expected);
	for (int i = 0; i < MAC_B64_LEN; i++)	/* the time taken does not depend on how much of it was guessed */
		diff |= expected[i] ^ ((size_t) i < signature_len ? signature[i] : 0);
	if (diff != 0 || signature_len != MAC_B64_LEN)
		ereport(ERROR, (errcode(ERRCODE_CHECK_VIOLATION), errmsg("invalid JWT signature")));

	segment = first_dot + 1;
	segment_len = last_dot - segment;
	if (!is_b64url(segment, segment_len) || segment_len % 4 == 1)
		ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH), errmsg("could not decode JWT component"),
						errdetail("invalid Base64 encoding")));
	decoded = palloc(segment_len * 3 / 4 + 1);
	decoded_len = b64url_decode(segment, segment_len, decoded);
	decoded[decoded_len] = '\0';
	if (!pg_verify_mbstr(PG_UTF8, decoded, decoded_len, true))
		ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH), errmsg("could not parse JWT component"),
						errdetail("invalid byte sequence for encoding \"UTF8\"")));
	payload = parse_jsonb(pg_any_to_server(decoded, decoded_len, PG_UTF8), &problem);
	if (payload == NULL)
		ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH), errmsg("could not parse JWT component"), errdetail("%s", problem)));
	if (!JB_ROOT_IS_OBJECT(payload))
		ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH), errmsg("could not parse JWT component"),
						errdetail("invalid type: %s, expected a map",
								  TextDatumGetCString(DirectFunctionCall1(jsonb_typeof, JsonbPGetDatum(payload))))));

	if (leaders)				/* the leader's cache hit: no re-check, as there */
	{
		claims = make_claims(payload, jwt, digest);
		accept_token(claims, last_jti);
		return claims;
	}
	if (!json_int(member(&payload->root, "jti"), &jti))
		encoding_error("JWT payload must contain a valid 'jti' (JWT ID)");
	if (jti <= last_jti)
		ereport(ERROR, (errcode(ERRCODE_CHECK_VIOLATION), errmsg("Token ID must be strictly monotonically increasing.")));

	/* 60 s leeway either way, from the transaction start (pgrx's now()); in microseconds, as int128 */
	now_us = GetCurrentTransactionStartTimestamp() + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
	if ((v = member(&payload->root, "nbf")) != NULL)
	{
		int64		nbf = time_claim(v, "'nbf' (Not Before) must be an integer representing seconds since unix epoch");

		if ((int128) now_us + (int128) LEEWAY_SECONDS * USECS_PER_SEC < (int128) nbf * USECS_PER_SEC)
			ereport(ERROR, (errcode(ERRCODE_CHECK_VIOLATION), errmsg("Token used before it is ready"),
							errdetail("nbf=" INT64_FORMAT, nbf)));
	}
	if ((v = member(&payload->root, "exp")) != NULL)
	{
		int64		exp = time_claim(v, "'exp' (Expiration) must be an integer representing seconds since unix epoch");

		if (((int128) exp + LEEWAY_SECONDS) * USECS_PER_SEC < (int128) now_us)
			ereport(ERROR, (errcode(ERRCODE_CHECK_VIOLATION), errmsg("Token used after it has expired"),
							errdetail("exp=" INT64_FORMAT, exp)));
	}

	claims = make_claims(payload, jwt, digest);
	accept_token(claims, jti);
	return claims;
}

/* --- What the readers read ------------------------------------------------------------------------- */

/*
 * The claims for the current mode: with a JWK, the validated token's (NULL without a token; a custom GUC
 * can only be reset to '', so '' means no token); without, request.jwt.claims as any JSON value (NULL if
 * unset or not JSON), the PostgREST fallback, which never raises.
 */
static Claims *
current_claims(bool *with_jwk)
{
	const char *jwt;
	const char *text;
	char	   *problem;
	Jsonb	   *parsed;

	*with_jwk = GetConfigOption("pg_session_jwt.jwk", true, false) != NULL;
	if (*with_jwk)
	{
		jwt = GetConfigOption("pg_session_jwt.jwt", true, false);
		if (jwt == NULL || jwt[0] == '\0')
			return NULL;
		if (current.verified != NULL && strcmp(jwt, current.verified->token) == 0)
			return current.verified;
		return verify(jwt);
	}
	text = GetConfigOption("request.jwt.claims", true, false);
	if (text == NULL)
		return NULL;
	if (fallback_text != NULL && strcmp(text, fallback_text) == 0)
		return fallback;
	parsed = parse_jsonb(text, &problem);
	if (fallback != NULL)
		MemoryContextDelete(fallback->context);
	if (fallback_text != NULL)
		pfree(fallback_text);
	fallback = NULL;
	fallback_text = NULL;
	if (parsed != NULL)
		fallback = make_claims(parsed, NULL, NULL);
	fallback_text = MemoryContextStrdup(TopMemoryContext, text);
	return fallback;
}

static Jsonb *
copy_jsonb(const Jsonb *jsonb)
{
	Jsonb	   *copy = palloc(VARSIZE(jsonb));

	memcpy(copy, jsonb, VARSIZE(jsonb));
	return copy;
}

static Claims *
subject_claims(void)
{
	bool		with_jwk;
	Claims	   *c = current_claims(&with_jwk);

	if (c != NULL && c->sub_kind == SUB_OTHER && with_jwk)
		ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH), errmsg("invalid subject claim in the JWT")));
	return c;
}

Datum
pgsjwt_init(PG_FUNCTION_ARGS)
{
	load_jwk(GetConfigOption("pg_session_jwt.jwk", true, false));
	PG_RETURN_VOID();
}

/* A session-level SET, as the extension's SPI "SET pg_session_jwt.jwt = ...": it outlives COMMIT and is
 * undone by ROLLBACK, as is the SET when validation fails. */
Datum
pgsjwt_jwt_session_init(PG_FUNCTION_ARGS)
{
	text	   *jwt = PG_GETARG_TEXT_PP(0);

	DirectFunctionCall3(set_config_by_name, CStringGetTextDatum("pg_session_jwt.jwt"), PointerGetDatum(jwt),
						BoolGetDatum(false));
	verify(text_to_cstring(jwt));
	PG_RETURN_VOID();
}

Datum
pgsjwt_session(PG_FUNCTION_ARGS)
{
	bool		with_jwk;
	Claims	   *c = current_claims(&with_jwk);

	if (c == NULL)				/* JSON null, not SQL NULL, as the extension's tests insist */
		PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum("null")));
	PG_RETURN_JSONB_P(copy_jsonb(c->claims));
}

Datum
pgsjwt_user_id(PG_FUNCTION_ARGS)
{
	Claims	   *c = subject_claims();

	if (c == NULL || c->sub_kind != SUB_STRING)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(DatumGetTextPCopy(PointerGetDatum(c->sub)));
}

Datum
pgsjwt_uid(PG_FUNCTION_ARGS)
{
	Claims	   *c = subject_claims();
	pg_uuid_t  *uid;

	if (c == NULL || !c->has_uid)
		PG_RETURN_NULL();
	uid = palloc(sizeof(pg_uuid_t));
	*uid = c->uid;
	PG_RETURN_UUID_P(uid);
}

Datum
pgsjwt_organization(PG_FUNCTION_ARGS)
{
	bool		with_jwk;
	Claims	   *c = current_claims(&with_jwk);

	if (c == NULL || c->organization == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(copy_jsonb(c->organization));
}

Datum
pgsjwt_organization_id(PG_FUNCTION_ARGS)
{
	bool		with_jwk;
	Claims	   *c = current_claims(&with_jwk);
	pg_uuid_t  *id;

	if (c == NULL || !c->has_organization_id)
		PG_RETURN_NULL();
	id = palloc(sizeof(pg_uuid_t));
	*id = c->organization_id;
	PG_RETURN_UUID_P(id);
}
