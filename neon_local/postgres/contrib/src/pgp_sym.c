/*
 * pgcrypto's symmetric OpenPGP functions (pgp_sym_encrypt/decrypt and their _bytea forms), written for neon-local
 * after RFC 4880: a symmetric-key session key packet (string-to-key from the password), then an integrity-protected
 * data packet (CFB with a zero IV over a random prefix, the data and an SHA-1 "MDC") holding a literal data packet,
 * optionally compressed. Ciphers come from the system's OpenSSL, hashes from the server, compression from zlib.
 * Options, defaults and error texts follow pgcrypto's. Built only where OpenSSL's and zlib's headers exist
 * (setup.py defines NL_WITH_PGP); elsewhere the functions say they are not provided.
 */
#include "postgres.h"

#include "fmgr.h"

#include "neon_local_contrib.h"

PG_FUNCTION_INFO_V1(nl_pgp_sym_encrypt_text);
PG_FUNCTION_INFO_V1(nl_pgp_sym_encrypt_bytea);
PG_FUNCTION_INFO_V1(nl_pgp_sym_decrypt_text);
PG_FUNCTION_INFO_V1(nl_pgp_sym_decrypt_bytea);

#ifndef NL_WITH_PGP

Datum
nl_pgp_sym_encrypt_text(PG_FUNCTION_ARGS)
{
	return nl_not_provided(fcinfo);
}

Datum
nl_pgp_sym_encrypt_bytea(PG_FUNCTION_ARGS)
{
	return nl_not_provided(fcinfo);
}

Datum
nl_pgp_sym_decrypt_text(PG_FUNCTION_ARGS)
{
	return nl_not_provided(fcinfo);
}

Datum
nl_pgp_sym_decrypt_bytea(PG_FUNCTION_ARGS)
{
	return nl_not_provided(fcinfo);
}

#else

#include <ctype.h>

#include <openssl/evp.h>
#include <zlib.h>

#include "common/sha1.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "varatt.h"

/* OpenPGP identifiers (RFC 4880 section 9). */
#define CIPHER_3DES 2
#define CIPHER_AES128 7
#define CIPHER_AES192 8
#define CIPHER_AES256 9
#define DIGEST_MD5 1
#define DIGEST_SHA1 2
#define COMPRESS_NONE 0
#define COMPRESS_ZIP 1
#define COMPRESS_ZLIB 2
#define TAG_SESSION_KEY 3
#define TAG_COMPRESSED 8
#define TAG_ENCRYPTED_NO_MDC 9
#define TAG_LITERAL 11
#define TAG_ENCRYPTED_MDC 18
#define TAG_MDC 19
#define MDC_LENGTH (2 + SHA1_DIGEST_LENGTH)
#define MAX_KEY 32

typedef struct
{
	int			cipher;
	int			s2k_cipher;		/* -1: the same as cipher */
	int			s2k_mode;
	int			s2k_count;		/* -1: a random count, as pgcrypto picks */
	int			s2k_digest;
	int			compress;
	int			compress_level;
	bool		convert_crlf;
	bool		unicode;
	bool		session_key;
} Options;

static void
pgp_error(const char *message)
{
	ereport(ERROR, (errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION), errmsg("%s", message)));
}

static void
corrupt(void)
{
	pgp_error("Wrong key or corrupt data");
}

static void
not_provided(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s is not available in neon-local's pgcrypto", what),
			 errhint("Use aes128, aes192, aes256 or 3des with integrity protection (the defaults), or start neon-local "
					 "with --pg-bin pointing at a PostgreSQL that has the contrib modules.")));
}

/* ---------- ciphers, keys ---------- */

static const EVP_CIPHER *
evp_cipher(int cipher)
{
	switch (cipher)
	{
		case CIPHER_AES128:
			return EVP_aes_128_cfb128();
		case CIPHER_AES192:
			return EVP_aes_192_cfb128();
		case CIPHER_AES256:
			return EVP_aes_256_cfb128();
		case CIPHER_3DES:
			return EVP_des_ede3_cfb64();
		case 1:					/* IDEA */
		case 3:					/* CAST5 */
		case 4:					/* Blowfish */
			not_provided("this cipher");
	}
	corrupt();
	return NULL;
}

/* OpenPGP's CFB for integrity-protected data: plain CFB with an all-zero IV. */
static void
cfb(int cipher, const uint8 *key, const uint8 *in, int length, uint8 *out, bool encrypt)
{
	const EVP_CIPHER *kind = evp_cipher(cipher);
	uint8		iv[EVP_MAX_IV_LENGTH] = {0};
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int			written = 0;
	bool		ok = ctx != NULL
		&& EVP_CipherInit_ex(ctx, kind, NULL, key, iv, encrypt ? 1 : 0) == 1
		&& (length == 0 || EVP_CipherUpdate(ctx, out, &written, in, length) == 1);

	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
		elog(ERROR, "OpenSSL could not run the cipher");
}

static int
key_length(int cipher)
{
	return EVP_CIPHER_key_length(evp_cipher(cipher));
}

static int
block_length(int cipher)
{
	return EVP_CIPHER_iv_length(evp_cipher(cipher));
}

static int
s2k_count_decode(uint8 c)
{
	return (16 + (c & 15)) << ((c >> 4) + 6);
}

static pg_cryptohash_type
hash_type(int digest, int *length)
{
	switch (digest)
	{
		case DIGEST_MD5:
			*length = 16;
			return PG_MD5;
		case DIGEST_SHA1:
			*length = 20;
			return PG_SHA1;
		case 8:
			*length = 32;
			return PG_SHA256;
		case 9:
			*length = 48;
			return PG_SHA384;
		case 10:
			*length = 64;
			return PG_SHA512;
		case 11:
			*length = 28;
			return PG_SHA224;
	}
	corrupt();
	return PG_MD5;
}

/*
 * String-to-key (RFC 4880 section 3.7.1): the key is the hash of the salt and password (repeated to `count` bytes in
 * the iterated mode); longer keys concatenate further hashes, each preceded by one more zero byte.
 */
static void
string_to_key(int mode, int digest, const uint8 *salt, int count, const char *password, int password_length,
			  uint8 *key, int length)
{
	int			digest_length;
	pg_cryptohash_type type = hash_type(digest, &digest_length);
	int			unit = (mode == 0 ? 0 : 8) + password_length;
	int			total = mode == 3 ? Max(count, unit) : unit;
	uint8	   *material = palloc(Max(unit, 1));
	uint8		zeros[MAX_KEY / 16 + 1] = {0};

	if (mode != 0)
		memcpy(material, salt, 8);
	memcpy(material + (mode == 0 ? 0 : 8), password, password_length);
	for (int done = 0, round = 0; done < length; round++)
	{
		int			pieces = 1 + total / Max(unit, 1) + 1;
		const uint8 **parts = palloc(sizeof(uint8 *) * pieces);
		size_t	   *lengths = palloc(sizeof(size_t) * pieces);
		int			n = 0;
		uint8		hash[64];

		parts[n] = zeros;
		lengths[n++] = round;
		for (int fed = 0; fed < total; fed += unit)
		{
			parts[n] = material;
			lengths[n++] = Min(unit, total - fed);
		}
		nl_hash_into(type, parts, lengths, n, hash, digest_length);
		memcpy(key + done, hash, Min(digest_length, length - done));
		done += digest_length;
	}
}

/* ---------- packets ---------- */

static void
append_packet(StringInfo out, int tag, const char *body, int length)
{
	appendStringInfoChar(out, 0xC0 | tag);
	if (length < 192)
		appendStringInfoChar(out, length);
	else if (length < 8384)
	{
		appendStringInfoChar(out, ((length - 192) >> 8) + 192);
		appendStringInfoChar(out, (length - 192) & 0xFF);
	}
	else
	{
		appendStringInfoChar(out, 0xFF);
		for (int shift = 24; shift >= 0; shift -= 8)
			appendStringInfoChar(out, (length >> shift) & 0xFF);
	}
	appendBinaryStringInfo(out, body, length);
}

typedef struct
{
	const uint8 *at;
	const uint8 *end;
} Reader;

static uint32
read_bytes(Reader *r, int n)
{
	uint32		value = 0;

	if (r->end - r->at < n)
		corrupt();
	while (n-- > 0)
		value = (value << 8) | *r->at++;
	return value;
}

/* Reads one packet (either header format, partial body lengths joined) into `body`; returns its tag, or -1 at the end. */
static int
read_packet(Reader *r, StringInfo body)
{
	int			header,
				tag;

	if (r->at >= r->end)
		return -1;
	header = read_bytes(r, 1);
	if (!(header & 0x80))
		corrupt();
	resetStringInfo(body);
	if (header & 0x40)
	{
		tag = header & 0x3F;
		for (;;)
		{
			int			first = read_bytes(r, 1);
			uint32		length;
			bool		partial = false;

			if (first < 192)
				length = first;
			else if (first < 224)
				length = ((first - 192) << 8) + read_bytes(r, 1) + 192;
			else if (first == 255)
				length = read_bytes(r, 4);
			else
			{
				length = 1U << (first & 0x1F);
				partial = true;
			}
			if (length > (uint32) (r->end - r->at))
				corrupt();
			appendBinaryStringInfo(body, (const char *) r->at, length);
			r->at += length;
			if (!partial)
				return tag;
		}
	}
	tag = (header >> 2) & 0x0F;
	{
		int			kind = header & 3;
		uint32		length = kind == 3 ? (uint32) (r->end - r->at) : read_bytes(r, 1 << kind);

		if (length > (uint32) (r->end - r->at))
			corrupt();
		appendBinaryStringInfo(body, (const char *) r->at, length);
		r->at += length;
	}
	return tag;
}

/* ---------- compression ---------- */

static void
deflate_into(StringInfo out, const char *data, int length, int algorithm, int level)
{
	z_stream	z = {0};
	int			status;

	if (deflateInit2(&z, level, Z_DEFLATED, algorithm == COMPRESS_ZIP ? -15 : 15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		elog(ERROR, "zlib could not start compressing");
	enlargeStringInfo(out, deflateBound(&z, length));
	z.next_in = (Bytef *) data;
	z.avail_in = length;
	z.next_out = (Bytef *) out->data + out->len;
	z.avail_out = out->maxlen - out->len - 1;
	status = deflate(&z, Z_FINISH);
	out->len += z.total_out;
	deflateEnd(&z);
	if (status != Z_STREAM_END)
		elog(ERROR, "zlib could not compress");
}

static void
inflate_into(StringInfo out, const char *data, int length, int algorithm)
{
	z_stream	z = {0};
	int			status = Z_OK;

	if (algorithm != COMPRESS_ZIP && algorithm != COMPRESS_ZLIB)
		not_provided("this compression algorithm");
	if (inflateInit2(&z, algorithm == COMPRESS_ZIP ? -15 : 15) != Z_OK)
		elog(ERROR, "zlib could not start decompressing");
	z.next_in = (Bytef *) data;
	z.avail_in = length;
	while (status != Z_STREAM_END)
	{
		enlargeStringInfo(out, Max(length, 1024));	/* errors out past 1 GB */
		z.next_out = (Bytef *) out->data + out->len;
		z.avail_out = out->maxlen - out->len - 1;
		status = inflate(&z, Z_NO_FLUSH);
		out->len = out->maxlen - 1 - z.avail_out;
		if (status != Z_OK && status != Z_STREAM_END)
		{
			inflateEnd(&z);
			corrupt();
		}
		if (status == Z_OK && z.avail_in == 0 && z.avail_out > 0)
			break;				/* input ended without the stream's end: accept what was there, as pgcrypto does */
	}
	inflateEnd(&z);
}

/* ---------- options ---------- */

static int
int_option(const char *value, int low, int high)
{
	char	   *end;
	long		number = strtol(value, &end, 10);

	if (*value == '\0' || *end != '\0' || number < low || number > high)
		pgp_error("Illegal argument to function");
	return (int) number;
}

static int
cipher_option(const char *value)
{
	if (strcmp(value, "aes") == 0 || strcmp(value, "aes128") == 0)
		return CIPHER_AES128;
	if (strcmp(value, "aes192") == 0)
		return CIPHER_AES192;
	if (strcmp(value, "aes256") == 0)
		return CIPHER_AES256;
	if (strcmp(value, "3des") == 0)
		return CIPHER_3DES;
	if (strcmp(value, "bf") == 0 || strcmp(value, "cast5") == 0)
		not_provided(value);
	pgp_error("Unsupported cipher algorithm");
	return 0;
}

/* "key=value, key=value" as pgcrypto reads it. */
static Options
parse_options(FunctionCallInfo fcinfo, int position)
{
	Options		o = {CIPHER_AES128, -1, 3, -1, DIGEST_SHA1, COMPRESS_NONE, 6, false, false, false};
	char	   *spec;
	char	   *item;
	char	   *save;

	if (PG_NARGS() <= position)
		return o;
	spec = text_to_cstring(PG_GETARG_TEXT_PP(position));
	for (item = strtok_r(spec, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save))
	{
		char	   *key = item,
				   *value = strchr(item, '='),
				   *end;

		if (value == NULL)
			pgp_error("Illegal argument to function");
		*value++ = '\0';
		while (isspace((unsigned char) *key))
			key++;
		for (end = value - 2; end >= key && isspace((unsigned char) *end); end--)
			*end = '\0';
		while (isspace((unsigned char) *value))
			value++;
		for (end = value + strlen(value) - 1; end >= value && isspace((unsigned char) *end); end--)
			*end = '\0';

		if (strcmp(key, "cipher-algo") == 0)
			o.cipher = cipher_option(value);
		else if (strcmp(key, "s2k-cipher-algo") == 0)
			o.s2k_cipher = cipher_option(value);
		else if (strcmp(key, "compress-algo") == 0)
			o.compress = int_option(value, 0, 2);
		else if (strcmp(key, "compress-level") == 0)
			o.compress_level = int_option(value, 0, 9);
		else if (strcmp(key, "convert-crlf") == 0)
			o.convert_crlf = int_option(value, 0, 1);
		else if (strcmp(key, "disable-mdc") == 0)
		{
			if (int_option(value, 0, 1))
				not_provided("disable-mdc=1");
		}
		else if (strcmp(key, "sess-key") == 0)
			o.session_key = int_option(value, 0, 1);
		else if (strcmp(key, "s2k-mode") == 0)
		{
			o.s2k_mode = int_option(value, 0, 3);
			if (o.s2k_mode == 2)
				pgp_error("Illegal argument to function");
		}
		else if (strcmp(key, "s2k-count") == 0)
			o.s2k_count = int_option(value, 1024, 65011712);
		else if (strcmp(key, "s2k-digest-algo") == 0)
		{
			if (strcmp(value, "md5") == 0)
				o.s2k_digest = DIGEST_MD5;
			else if (strcmp(value, "sha1") == 0)
				o.s2k_digest = DIGEST_SHA1;
			else
				pgp_error("Unsupported digest algorithm");
		}
		else if (strcmp(key, "unicode-mode") == 0)
			o.unicode = int_option(value, 0, 1);
		else
			pgp_error("Illegal argument to function");
	}
	return o;
}

/* ---------- encrypt ---------- */

static bytea *
encrypt(const char *data, int length, bool is_text, const char *password, int password_length, Options o)
{
	int			s2k_cipher = o.session_key && o.s2k_cipher >= 0 ? o.s2k_cipher : o.cipher;
	int			block = block_length(o.cipher);
	uint8		salt[8];
	uint8		count_byte = 0;
	uint8		s2k_key[MAX_KEY];
	uint8		key[MAX_KEY];
	StringInfoData literal,
				inner,
				plain,
				out,
				session;
	uint8		mdc[SHA1_DIGEST_LENGTH];
	bytea	   *result;

	/* The literal data packet: format, no file name, no date, then the data (text lines end in CRLF if asked). */
	initStringInfo(&literal);
	appendStringInfoChar(&literal, is_text ? (o.unicode ? 'u' : 't') : 'b');
	appendBinaryStringInfo(&literal, "\0\0\0\0\0", 5);
	for (int i = 0; i < length; i++)
	{
		if (is_text && o.convert_crlf && data[i] == '\n')
			appendStringInfoChar(&literal, '\r');
		appendStringInfoChar(&literal, data[i]);
	}
	initStringInfo(&inner);
	append_packet(&inner, TAG_LITERAL, literal.data, literal.len);
	if (o.compress != COMPRESS_NONE)
	{
		StringInfoData compressed;

		initStringInfo(&compressed);
		appendStringInfoChar(&compressed, o.compress);
		deflate_into(&compressed, inner.data, inner.len, o.compress, o.compress_level);
		resetStringInfo(&inner);
		append_packet(&inner, TAG_COMPRESSED, compressed.data, compressed.len);
	}

	/* Keys: from the password, or a random session key that the password's key encrypts. */
	nl_random_fill(salt, sizeof(salt));
	if (o.s2k_mode == 3)
	{
		if (o.s2k_count < 0)
		{
			nl_random_fill(&count_byte, 1);
			count_byte = 0x60 + (count_byte & 0x1F);	/* 65536 to 253952 bytes, as pgcrypto */
		}
		else
			while (s2k_count_decode(count_byte) < o.s2k_count)
				count_byte++;
	}
	string_to_key(o.s2k_mode, o.s2k_digest, salt, s2k_count_decode(count_byte), password, password_length,
				  s2k_key, key_length(s2k_cipher));
	initStringInfo(&session);
	appendStringInfoChar(&session, 4);
	appendStringInfoChar(&session, s2k_cipher);
	appendStringInfoChar(&session, o.s2k_mode);
	appendStringInfoChar(&session, o.s2k_digest);
	if (o.s2k_mode != 0)
		appendBinaryStringInfo(&session, (char *) salt, 8);
	if (o.s2k_mode == 3)
		appendStringInfoChar(&session, count_byte);
	if (o.session_key)
	{
		uint8		plain_key[1 + MAX_KEY];
		uint8		sealed[1 + MAX_KEY];

		plain_key[0] = o.cipher;
		nl_random_fill(plain_key + 1, key_length(o.cipher));
		memcpy(key, plain_key + 1, key_length(o.cipher));
		cfb(s2k_cipher, s2k_key, plain_key, 1 + key_length(o.cipher), sealed, true);
		appendBinaryStringInfo(&session, (char *) sealed, 1 + key_length(o.cipher));
	}
	else
		memcpy(key, s2k_key, key_length(o.cipher));

	/* Integrity-protected data: random prefix with its last two bytes repeated, the packets, then the MDC. */
	initStringInfo(&plain);
	enlargeStringInfo(&plain, block + 2);
	nl_random_fill(plain.data, block);
	plain.data[block] = plain.data[block - 2];
	plain.data[block + 1] = plain.data[block - 1];
	plain.len = block + 2;
	appendBinaryStringInfo(&plain, inner.data, inner.len);
	appendBinaryStringInfo(&plain, "\xD3\x14", 2);
	{
		const uint8 *parts[] = {(uint8 *) plain.data};
		size_t		lengths[] = {plain.len};

		nl_hash_into(PG_SHA1, parts, lengths, 1, mdc, sizeof(mdc));
	}
	appendBinaryStringInfo(&plain, (char *) mdc, sizeof(mdc));

	initStringInfo(&out);
	append_packet(&out, TAG_SESSION_KEY, session.data, session.len);
	{
		StringInfoData sealed;

		initStringInfo(&sealed);
		enlargeStringInfo(&sealed, plain.len + 1);
		sealed.data[0] = 1;
		cfb(o.cipher, key, (uint8 *) plain.data, plain.len, (uint8 *) sealed.data + 1, true);
		sealed.len = plain.len + 1;
		append_packet(&out, TAG_ENCRYPTED_MDC, sealed.data, sealed.len);
	}
	explicit_bzero(key, sizeof(key));
	explicit_bzero(s2k_key, sizeof(s2k_key));
	explicit_bzero(plain.data, plain.len);
	result = nl_new_bytea(out.len);
	memcpy(VARDATA(result), out.data, out.len);
	return result;
}

/* ---------- decrypt ---------- */

/* The literal data inside decrypted packets (possibly compressed); sets *format to its format byte. */
static void
literal_data(const char *data, int length, StringInfo out, char *format)
{
	Reader		r = {(const uint8 *) data, (const uint8 *) data + length};
	StringInfoData body;
	int			tag;

	initStringInfo(&body);
	while ((tag = read_packet(&r, &body)) >= 0)
	{
		if (tag == TAG_COMPRESSED)
		{
			StringInfoData expanded;

			if (body.len < 1)
				corrupt();
			initStringInfo(&expanded);
			inflate_into(&expanded, body.data + 1, body.len - 1, (uint8) body.data[0]);
			literal_data(expanded.data, expanded.len, out, format);
			return;
		}
		if (tag == TAG_LITERAL)
		{
			int			name_length;

			if (body.len < 2 || body.len < 2 + (name_length = (uint8) body.data[1]) + 4)
				corrupt();
			*format = body.data[0];
			appendBinaryStringInfo(out, body.data + 2 + name_length + 4, body.len - 2 - name_length - 4);
			return;
		}
	}
	corrupt();
}

static void
decrypt(bytea *message, const char *password, int password_length, StringInfo out, char *format)
{
	Reader		r = {(uint8 *) VARDATA_ANY(message), (uint8 *) VARDATA_ANY(message) + VARSIZE_ANY_EXHDR(message)};
	StringInfoData session,
				body;
	uint8		key[MAX_KEY];
	int			cipher;
	int			tag;

	initStringInfo(&session);
	initStringInfo(&body);
	if (read_packet(&r, &session) != TAG_SESSION_KEY || session.len < 4 || session.data[0] != 4)
		corrupt();
	{
		Reader		s = {(uint8 *) session.data + 1, (uint8 *) session.data + session.len};
		int			s2k_cipher = read_bytes(&s, 1),
					mode = read_bytes(&s, 1),
					digest = read_bytes(&s, 1),
					count = 0;
		const uint8 *salt = s.at;
		uint8		s2k_key[MAX_KEY];

		if (mode == 1 || mode == 3)
			s.at += 8;
		if (mode == 3)
			count = s2k_count_decode(read_bytes(&s, 1));
		if (s.at > s.end || (mode != 0 && mode != 1 && mode != 3))
			corrupt();
		string_to_key(mode, digest, salt, count, password, password_length, s2k_key, key_length(s2k_cipher));
		if (s.at == s.end)
		{
			cipher = s2k_cipher;
			memcpy(key, s2k_key, key_length(cipher));
		}
		else
		{
			int			sealed_length = s.end - s.at;
			uint8		opened[1 + MAX_KEY];

			if (sealed_length > 1 + MAX_KEY)
				corrupt();
			cfb(s2k_cipher, s2k_key, s.at, sealed_length, opened, false);
			cipher = opened[0];
			/* a wrong password opens to a random cipher id: report it as pgcrypto does */
			if ((cipher != CIPHER_3DES && (cipher < CIPHER_AES128 || cipher > CIPHER_AES256)) ||
				sealed_length != 1 + key_length(cipher))
				corrupt();
			memcpy(key, opened + 1, key_length(cipher));
		}
	}
	while ((tag = read_packet(&r, &body)) == TAG_SESSION_KEY)
		;						/* further ways to the same key: the first one is enough */
	if (tag == TAG_ENCRYPTED_NO_MDC)
		not_provided("data without integrity protection (disable-mdc=1)");
	if (tag != TAG_ENCRYPTED_MDC || body.len < 1 || body.data[0] != 1)
		corrupt();
	{
		int			block = block_length(cipher);
		int			length = body.len - 1;
		uint8	   *plain = palloc(Max(length, 1));
		uint8		mdc[SHA1_DIGEST_LENGTH];
		const uint8 *parts[] = {plain};
		size_t		lengths[] = {0};

		if (length < block + 2 + MDC_LENGTH)
			corrupt();
		cfb(cipher, key, (uint8 *) body.data + 1, length, plain, false);
		explicit_bzero(key, sizeof(key));
		if (plain[block - 2] != plain[block] || plain[block - 1] != plain[block + 1])
			corrupt();
		lengths[0] = length - SHA1_DIGEST_LENGTH;
		nl_hash_into(PG_SHA1, parts, lengths, 1, mdc, sizeof(mdc));
		if (plain[length - MDC_LENGTH] != 0xD3 || plain[length - MDC_LENGTH + 1] != 0x14 ||
			memcmp(mdc, plain + length - SHA1_DIGEST_LENGTH, SHA1_DIGEST_LENGTH) != 0)
			corrupt();
		literal_data((char *) plain + block + 2, length - block - 2 - MDC_LENGTH, out, format);
	}
}

static void
remove_cr_before_lf(StringInfo data)
{
	int			kept = 0;

	for (int i = 0; i < data->len; i++)
		if (!(data->data[i] == '\r' && i + 1 < data->len && data->data[i + 1] == '\n'))
			data->data[kept++] = data->data[i];
	data->len = kept;
}

Datum
nl_pgp_sym_encrypt_text(PG_FUNCTION_ARGS)
{
	text	   *data = PG_GETARG_TEXT_PP(0);
	text	   *password = PG_GETARG_TEXT_PP(1);

	PG_RETURN_BYTEA_P(encrypt(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), true,
							  VARDATA_ANY(password), VARSIZE_ANY_EXHDR(password), parse_options(fcinfo, 2)));
}

Datum
nl_pgp_sym_encrypt_bytea(PG_FUNCTION_ARGS)
{
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	text	   *password = PG_GETARG_TEXT_PP(1);

	PG_RETURN_BYTEA_P(encrypt(VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), false,
							  VARDATA_ANY(password), VARSIZE_ANY_EXHDR(password), parse_options(fcinfo, 2)));
}

static void
decrypt_call(FunctionCallInfo fcinfo, StringInfo out, char *format)
{
	text	   *password = PG_GETARG_TEXT_PP(1);
	Options		o = parse_options(fcinfo, 2);

	initStringInfo(out);
	decrypt(PG_GETARG_BYTEA_PP(0), VARDATA_ANY(password), VARSIZE_ANY_EXHDR(password), out, format);
	if (o.convert_crlf)
		remove_cr_before_lf(out);
}

Datum
nl_pgp_sym_decrypt_text(PG_FUNCTION_ARGS)
{
	StringInfoData out;
	char		format = 0;

	decrypt_call(fcinfo, &out, &format);
	if (format != 't' && format != 'u')
		pgp_error("Not text data");
	pg_verifymbstr(out.data, out.len, false);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}

Datum
nl_pgp_sym_decrypt_bytea(PG_FUNCTION_ARGS)
{
	StringInfoData out;
	char		format = 0;
	bytea	   *result;

	decrypt_call(fcinfo, &out, &format);
	result = nl_new_bytea(out.len);
	memcpy(VARDATA(result), out.data, out.len);
	PG_RETURN_BYTEA_P(result);
}

#endif
