/* hash: SHA-256 (Nettle) for identifying tokenizers, shards and checkpoints. */
#ifndef GALE_UTIL_HASH_H
#define GALE_UTIL_HASH_H

#include <stddef.h>

#include "util/error.h"

/* Writes the 64 lowercase hex digits and a NUL into hex. */
void gale_sha256_hex(const void *data, size_t len, char hex[65]);
int gale_sha256_file_hex(const char *path, char hex[65], gale_error *err);

#endif
