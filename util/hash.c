/* hash: SHA-256 through OpenSSL's EVP interface. */
#include "util/hash.h"

#include <openssl/evp.h>
#include <stdio.h>

static void to_hex(const unsigned char *md, char hex[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

void gale_sha256_hex(const void *data, size_t len, char hex[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    to_hex(md, hex);
}

int gale_sha256_file_hex(const char *path, char hex[65], gale_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return gale_fail_errno(err, "%s", path);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        EVP_DigestUpdate(ctx, buf, n);
    int bad = ferror(f);
    fclose(f);
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    if (bad)
        return gale_fail(err, "%s: read error", path);
    to_hex(md, hex);
    return 0;
}
