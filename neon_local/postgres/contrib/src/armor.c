/*
 * pgcrypto's armor() and dearmor(), written for neon-local after RFC 4880 section 6: OpenPGP's ASCII armor is a
 * "-----BEGIN PGP MESSAGE-----" line, optional "Key: Value" header lines, an empty line, the data in base64 lines
 * of 76 characters, "=" and the base64 of a CRC-24 of the data, then the END line. Base64 is the server's own.
 * Layout, leniency when reading (any armor type, junk around it, CRLF, spaces in the base64) and error texts
 * follow pgcrypto's.
 */
#include "postgres.h"

#include <ctype.h>

#include "catalog/pg_type_d.h"
#include "common/base64.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "varatt.h"

#include "neon_local_contrib.h"

#define LINE_DATA_BYTES 57		/* 76 base64 characters */
#define CRC24_INIT 0xB704CEL
#define CRC24_POLY 0x1864CFBL

static uint32
crc24(const uint8 *data, int length)
{
	uint32		crc = CRC24_INIT;

	for (int i = 0; i < length; i++)
	{
		crc ^= (uint32) data[i] << 16;
		for (int bit = 0; bit < 8; bit++)
		{
			crc <<= 1;
			if (crc & 0x1000000)
				crc ^= CRC24_POLY;
		}
	}
	return crc & 0xFFFFFF;
}

static void
append_base64(StringInfo out, const uint8 *data, int length)
{
	int			size = pg_b64_enc_len(length);
	int			written;

	enlargeStringInfo(out, size + 1);
	written = pg_b64_encode(data, length, out->data + out->len, size);
	if (written < 0)
		elog(ERROR, "could not encode base64");
	out->len += written;
	out->data[out->len] = '\0';
}

static void
header_error(int code, const char *message)
{
	ereport(ERROR, (errcode(code), errmsg("%s", message)));
}

/* The header keys and values, checked as pgcrypto checks them; returns how many. */
static int
headers(ArrayType *keys, ArrayType *values, Datum **key_items, Datum **value_items)
{
	bool	   *key_nulls,
			   *value_nulls;
	int			key_count,
				value_count;

	if (ARR_NDIM(keys) > 1 || ARR_NDIM(values) > 1)
		header_error(ERRCODE_ARRAY_SUBSCRIPT_ERROR, "wrong number of array subscripts");
	deconstruct_array_builtin(keys, TEXTOID, key_items, &key_nulls, &key_count);
	deconstruct_array_builtin(values, TEXTOID, value_items, &value_nulls, &value_count);
	if (key_count != value_count)
		header_error(ERRCODE_ARRAY_SUBSCRIPT_ERROR, "mismatched array dimensions");
	for (int i = 0; i < key_count; i++)
	{
		char	   *key,
				   *value;

		if (key_nulls[i])
			header_error(ERRCODE_NULL_VALUE_NOT_ALLOWED, "null value not allowed for header key");
		if (value_nulls[i])
			header_error(ERRCODE_NULL_VALUE_NOT_ALLOWED, "null value not allowed for header value");
		key = TextDatumGetCString((*key_items)[i]);
		value = TextDatumGetCString((*value_items)[i]);
		if (strchr(key, '\n') != NULL)
			header_error(ERRCODE_INVALID_PARAMETER_VALUE, "header key must not contain newlines");
		if (strstr(key, ": ") != NULL)
			header_error(ERRCODE_INVALID_PARAMETER_VALUE, "header key must not contain \": \"");
		if (strchr(value, '\n') != NULL)
			header_error(ERRCODE_INVALID_PARAMETER_VALUE, "header value must not contain newlines");
	}
	return key_count;
}

PG_FUNCTION_INFO_V1(nl_armor);
Datum
nl_armor(PG_FUNCTION_ARGS)
{
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	const uint8 *bytes = (uint8 *) VARDATA_ANY(data);
	int			length = VARSIZE_ANY_EXHDR(data);
	uint32		crc = crc24(bytes, length);
	uint8		crc_bytes[3] = {crc >> 16, crc >> 8, crc};
	StringInfoData out;

	initStringInfo(&out);
	appendStringInfoString(&out, "-----BEGIN PGP MESSAGE-----\n");
	if (PG_NARGS() > 1)
	{
		Datum	   *keys,
				   *values;
		int			count = headers(PG_GETARG_ARRAYTYPE_P(1), PG_GETARG_ARRAYTYPE_P(2), &keys, &values);

		for (int i = 0; i < count; i++)
			appendStringInfo(&out, "%s: %s\n", TextDatumGetCString(keys[i]), TextDatumGetCString(values[i]));
	}
	appendStringInfoChar(&out, '\n');
	for (int at = 0; at < length; at += LINE_DATA_BYTES)
	{
		append_base64(&out, bytes + at, Min(LINE_DATA_BYTES, length - at));
		appendStringInfoChar(&out, '\n');
	}
	appendStringInfoChar(&out, '=');
	append_base64(&out, crc_bytes, 3);
	appendStringInfoString(&out, "\n-----END PGP MESSAGE-----\n");
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}

static void
corrupt_armor(void)
{
	ereport(ERROR, (errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION), errmsg("Corrupt ascii-armor")));
}

/* The next line of text (without its CR LF or LF); false at the end. */
static bool
next_line(const char **at, const char *end, const char **line, int *length)
{
	const char *newline;

	if (*at >= end)
		return false;
	*line = *at;
	newline = memchr(*at, '\n', end - *at);
	*at = newline ? newline + 1 : end;
	*length = (newline ? newline : end) - *line;
	if (*length > 0 && (*line)[*length - 1] == '\r')
		(*length)--;
	return true;
}

static bool
starts_with(const char *line, int length, const char *prefix)
{
	return length >= (int) strlen(prefix) && strncmp(line, prefix, strlen(prefix)) == 0;
}

static void
decode_base64_into(StringInfo out, const char *text, int length)
{
	int			size = pg_b64_dec_len(length);
	int			written;

	enlargeStringInfo(out, size + 1);
	written = pg_b64_decode(text, length, (uint8 *) out->data + out->len, size);
	if (written < 0)
		corrupt_armor();
	out->len += written;
}

PG_FUNCTION_INFO_V1(nl_dearmor);
Datum
nl_dearmor(PG_FUNCTION_ARGS)
{
	text	   *armored = PG_GETARG_TEXT_PP(0);
	const char *at = VARDATA_ANY(armored);
	const char *end = at + VARSIZE_ANY_EXHDR(armored);
	const char *line;
	int			length;
	StringInfoData body,
				data,
				crc_bytes;
	bytea	   *result;

	/* The BEGIN line, then header lines up to an empty one. */
	do
	{
		if (!next_line(&at, end, &line, &length))
			corrupt_armor();
	} while (!starts_with(line, length, "-----BEGIN PGP "));
	do
	{
		if (!next_line(&at, end, &line, &length))
			corrupt_armor();
	} while (length > 0);

	/* Base64 lines (spaces inside ignored) up to the "=" checksum line, which the END line must follow. */
	initStringInfo(&body);
	for (;;)
	{
		if (!next_line(&at, end, &line, &length))
			corrupt_armor();
		if (length > 0 && line[0] == '=')
			break;
		for (int i = 0; i < length; i++)
			if (!isspace((unsigned char) line[i]))
				appendStringInfoChar(&body, line[i]);
	}
	initStringInfo(&crc_bytes);
	decode_base64_into(&crc_bytes, line + 1, length - 1);
	if (crc_bytes.len != 3 || !next_line(&at, end, &line, &length) || !starts_with(line, length, "-----END PGP "))
		corrupt_armor();
	initStringInfo(&data);
	decode_base64_into(&data, body.data, body.len);
	if (crc24((uint8 *) data.data, data.len) !=
		(((uint32) (uint8) crc_bytes.data[0] << 16) | ((uint32) (uint8) crc_bytes.data[1] << 8) | (uint8) crc_bytes.data[2]))
		corrupt_armor();
	result = nl_new_bytea(data.len);
	memcpy(VARDATA(result), data.data, data.len);
	PG_RETURN_BYTEA_P(result);
}
