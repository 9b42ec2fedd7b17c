/* What the parts of neon-local's PostgreSQL module share (see neon_local_contrib.c). */
#ifndef NEON_LOCAL_CONTRIB_H
#define NEON_LOCAL_CONTRIB_H

#include "common/cryptohash.h"
#include "fmgr.h"

extern void nl_hash_into(pg_cryptohash_type type, const uint8 *parts[], const size_t lengths[], int count,
						 uint8 *out, size_t out_length);
extern void nl_random_fill(void *buffer, size_t length);
extern bytea *nl_new_bytea(int length);
extern Datum nl_not_provided(PG_FUNCTION_ARGS);

#endif
