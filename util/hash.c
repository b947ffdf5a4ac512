/* hash: SHA-256 through Nettle (GnuTLS's crypto library: small, so that loading it costs a
 * process almost nothing, where OpenSSL's libcrypto cost gale tokenize 0.7 ms at start). */
#include "util/hash.h"

#include <nettle/sha2.h>
#include <stdio.h>

static void to_hex(const uint8_t *md, char hex[65])
{
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

void gale_sha256_hex(const void *data, size_t len, char hex[65])
{
    struct sha256_ctx ctx;
    uint8_t md[SHA256_DIGEST_SIZE];
    sha256_init(&ctx);
    sha256_update(&ctx, len, data);
    sha256_digest(&ctx, sizeof md, md);
    to_hex(md, hex);
}

int gale_sha256_file_hex(const char *path, char hex[65], gale_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return gale_fail_errno(err, "%s", path);
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    uint8_t buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        sha256_update(&ctx, n, buf);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return gale_fail(err, "%s: read error", path);
    uint8_t md[SHA256_DIGEST_SIZE];
    sha256_digest(&ctx, sizeof md, md);
    to_hex(md, hex);
    return 0;
}
