/* file: whole-file reads and crash-safe writes. */
#define _GNU_SOURCE
#include "util/file.h"

#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

char *gale_read_file(const char *path, size_t *len, gale_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        gale_fail_errno(err, "%s", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = gale_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap)
            buf = gale_xrealloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f), saved = errno; /* "Is a directory", an I/O error: the reason, not just the fact */
    fclose(f);
    if (bad) {
        free(buf);
        errno = saved;
        gale_fail_errno(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

int gale_map_file(const char *path, gale_mapped_file *f, gale_error *err)
{
    *f = (gale_mapped_file){0};
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map != MAP_FAILED) {
            close(fd);
            *f = (gale_mapped_file){map, (size_t)st.st_size, 1};
            return 0;
        }
    }
    if (fd >= 0)
        close(fd);
    f->data = gale_read_file(path, &f->len, err);
    return f->data ? 0 : -1;
}

void gale_unmap_file(gale_mapped_file *f)
{
    if (f->mapped)
        munmap((void *)f->data, f->len);
    else
        free((void *)f->data);
    *f = (gale_mapped_file){0};
}

int gale_fsync_path(const char *path, gale_error *err)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return gale_fail_errno(err, "%s", path);
    int rc = fsync(fd);
    close(fd);
    /* Some file systems refuse fsync on a folder; that is not a lost write. */
    if (rc != 0 && errno != EINVAL && errno != EBADF)
        return gale_fail_errno(err, "fsync %s", path);
    return 0;
}

static int fsync_parent(const char *path, gale_error *err)
{
    char *copy = gale_xstrdup(path);
    int rc = gale_fsync_path(dirname(copy), err);
    free(copy);
    return rc;
}

int gale_rename_durable(const char *from, const char *to, gale_error *err)
{
    if (rename(from, to) != 0)
        return gale_fail_errno(err, "rename %s to %s", from, to);
    return fsync_parent(to, err);
}

int gale_write_file_atomic(const char *path, const void *data, size_t len, gale_error *err)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return gale_fail_errno(err, "%s", tmp);
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            gale_fail_errno(err, "write %s", tmp);
            close(fd);
            unlink(tmp);
            return -1;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        gale_fail_errno(err, "write %s", tmp);
        unlink(tmp);
        return -1;
    }
    if (gale_rename_durable(tmp, path, err) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int gale_mkdir_p(const char *path, gale_error *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return gale_fail(err, "%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return gale_fail_errno(err, "mkdir %s", buf);
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return gale_fail_errno(err, "mkdir %s", buf);
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return gale_fail(err, "%s: exists and is not a folder", path);
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

int gale_remove_tree(const char *path, gale_error *err)
{
    if (!path[0] || strcmp(path, "/") == 0)
        return gale_fail(err, "refusing to remove '%s'", path);
    if (!gale_path_exists(path))
        return 0;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return gale_fail_errno(err, "remove %s", path);
    return 0;
}

int gale_path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

char *gale_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *s = gale_xmalloc(a + b + 2);
    memcpy(s, dir, a);
    size_t n = a;
    if (a && dir[a - 1] != '/')
        s[n++] = '/';
    memcpy(s + n, name, b + 1);
    return s;
}

int gale_write_json_atomic(const char *path, const json_t *j, size_t flags, gale_error *err)
{
    char *text = json_dumps(j, flags);
    if (!text)
        return gale_fail(err, "%s: the JSON could not be written out (out of memory)", path);
    size_t len = strlen(text);
    text = gale_xrealloc(text, len + 2);
    text[len++] = '\n';
    int rc = gale_write_file_atomic(path, text, len, err);
    free(text);
    return rc;
}
