/* test_file_cache: derived data kept on disk (data/file_cache.c). A body stored is loaded back
 * as it was; another version, another kind, a small input, a cut or damaged file read as none;
 * storing removes the same input's files of other versions, of the older naming and of killed
 * writers once they are a day unused, and keeps those used since, other inputs' and other
 * kinds' files, and whatever else is in the folder. */
#define _GNU_SOURCE
#include "data/file_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "util/file.h"

static char dir[4096]; /* XDG_CACHE_HOME/gale */

static void touch(const char *name, time_t age)
{
    char *path = gale_path_join(dir, name);
    gale_error err;
    CHECK_OK(gale_write_file_atomic(path, "x", 1, &err), err);
    struct timespec t[2] = {{time(NULL) - age, 0}, {time(NULL) - age, 0}};
    CHECK(utimensat(AT_FDCWD, path, t, 0) == 0);
    free(path);
}

static int exists(const char *name)
{
    char *path = gale_path_join(dir, name);
    int ok = access(path, F_OK) == 0;
    free(path);
    return ok;
}

static time_t age_of(const char *name)
{
    char *path = gale_path_join(dir, name);
    struct stat st;
    time_t age = stat(path, &st) == 0 ? time(NULL) - st.st_mtime : -1;
    free(path);
    return age;
}

/* The name file_cache gives to kind's file of key at version. */
static void name_of(char *out, size_t size, const char *kind, const file_cache_key *key, uint64_t version)
{
    snprintf(out, size, "%s-%016llx%016llx-v%016llx.bin", kind, (unsigned long long)key->hash[1],
             (unsigned long long)key->hash[0], (unsigned long long)version);
}

static int loads(const char *kind, uint64_t version, const file_cache_key *key, const uint8_t *want, size_t n)
{
    size_t len = 0;
    const uint8_t *body = file_cache_load(kind, version, key, &len);
    int same = body && len == n && memcmp(body, want, n) == 0;
    file_cache_free(body, len);
    return same;
}

int main(void)
{
    char root[] = "/tmp/gale-file-cache-XXXXXX";
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    setenv("XDG_CACHE_HOME", root, 1);
    snprintf(dir, sizeof dir, "%s/gale", root);

    size_t input_len = FILE_CACHE_MIN_BYTES, n = 100000;
    uint8_t *input = calloc(1, input_len), *body = malloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (uint8_t)(i * 131 + 7);
    file_cache_key key = file_cache_key_of(input, input_len);
    input[0] = 1;
    file_cache_key other = file_cache_key_of(input, input_len);
    CHECK(key.cached && other.cached);
    CHECK(!file_cache_key_of(input, input_len - 1).cached); /* small inputs are not kept */

    /* round trip; what does not match reads as none */
    CHECK(!loads("kind", 1, &key, body, n));
    file_cache_store("kind", 1, &key, body, n);
    CHECK(loads("kind", 1, &key, body, n));
    CHECK(!loads("kind", 2, &key, body, n));
    CHECK(!loads("other", 1, &key, body, n));
    CHECK(!loads("kind", 1, &other, body, n));
    char v1[128], v2[128], v3[128], legacy[128], tmp[160], other_v1[128], other_kind[128];
    name_of(v1, sizeof v1, "kind", &key, 1);
    char *path = gale_path_join(dir, v1);
    size_t len;
    char *bytes = gale_read_file(path, &len, NULL);
    CHECK(bytes && len == 64 + n);
    gale_error err;
    bytes[64 + n / 2] ^= 1; /* damaged */
    CHECK_OK(gale_write_file_atomic(path, bytes, len, &err), err);
    CHECK(!loads("kind", 1, &key, body, n));
    CHECK_OK(gale_write_file_atomic(path, bytes, len - 1, &err), err); /* cut short */
    CHECK(!loads("kind", 1, &key, body, n));
    free(bytes);
    free(path);

    /* a load marks its file used: an hour-old file is used now, a fresh one left alone */
    file_cache_store("kind", 1, &key, body, n);
    struct timespec old[2] = {{time(NULL) - 2 * 3600, 0}, {time(NULL) - 2 * 3600, 0}};
    path = gale_path_join(dir, v1);
    CHECK(utimensat(AT_FDCWD, path, old, 0) == 0);
    CHECK(loads("kind", 1, &key, body, n));
    CHECK_MSG(age_of(v1) >= 0 && age_of(v1) < 60, "a load marks its file used (age %lld s)", (long long)age_of(v1));
    free(path);

    /* storing version 3 prunes what is a day unused of the same kind and input */
    name_of(v2, sizeof v2, "kind", &key, 2);
    name_of(v3, sizeof v3, "kind", &key, 3);
    snprintf(legacy, sizeof legacy, "kind-%016llx%016llx.bin", (unsigned long long)key.hash[1],
             (unsigned long long)key.hash[0]);
    snprintf(tmp, sizeof tmp, "%s.tmp.12345", v3);
    name_of(other_v1, sizeof other_v1, "kind", &other, 1);
    name_of(other_kind, sizeof other_kind, "kinds", &key, 1);
    touch(v2, 2 * 24 * 3600);           /* another build's, unused for two days: removed */
    touch(legacy, 3 * 24 * 3600);       /* the older naming: removed */
    touch(tmp, 2 * 24 * 3600);          /* a killed writer's: removed */
    touch(other_v1, 9 * 24 * 3600);     /* another input's: kept */
    touch(other_kind, 9 * 24 * 3600);   /* another kind whose name starts alike: kept */
    touch("notes.txt", 9 * 24 * 3600);  /* not a cache file: kept */
    path = gale_path_join(dir, v1);
    CHECK(utimensat(AT_FDCWD, path, old, 0) == 0); /* used two hours ago: kept */
    free(path);
    file_cache_store("kind", 3, &key, body, n);
    CHECK(loads("kind", 3, &key, body, n));
    CHECK_MSG(!exists(v2), "another version unused for two days is removed");
    CHECK_MSG(!exists(legacy), "the older naming's file is removed");
    CHECK_MSG(!exists(tmp), "a killed writer's temporary file is removed");
    CHECK_MSG(exists(v1), "a version used two hours ago is kept");
    CHECK(loads("kind", 1, &key, body, n));
    CHECK_MSG(exists(other_v1), "another input's file is kept");
    CHECK_MSG(exists(other_kind), "another kind's file is kept");
    CHECK_MSG(exists("notes.txt"), "a file that is not the cache's is kept");

    /* a folder that cannot be written keeps nothing and fails nothing */
    setenv("XDG_CACHE_HOME", "/dev/null/none", 1);
    file_cache_store("kind", 1, &key, body, n);
    CHECK(!loads("kind", 1, &key, body, n));

    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    CHECK(system(cmd) == 0);
    free(input);
    free(body);
    return check_report("file_cache");
}
