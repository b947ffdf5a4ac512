/* error: failure messages and allocation that cannot return NULL. */
#include "util/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gale_fail(gale_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int gale_fail_errno(gale_error *err, const char *fmt, ...)
{
    int saved = errno;
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof err->msg)
            snprintf(err->msg + n, sizeof err->msg - (size_t)n, ": %s", strerror(saved));
    }
    return -1;
}

void gale_error_prefix(gale_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n + 2 < sizeof err->msg) {
        /* prefix, ": ", then as much of the old message as still fits */
        size_t room = sizeof err->msg - (size_t)n - 2;
        memcpy(err->msg + n, ": ", 2);
        size_t len = strnlen(old, room - 1);
        memcpy(err->msg + n + 2, old, len);
        err->msg[n + 2 + len] = 0;
    }
}

static void out_of_memory(size_t n)
{
    fprintf(stderr, "gale: out of memory allocating %zu bytes\n", n);
    abort();
}

void *gale_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        out_of_memory(n);
    return p;
}

void *gale_xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        out_of_memory(count * size);
    return p;
}

void *gale_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        out_of_memory(n);
    return q;
}

char *gale_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = gale_xmalloc(n);
    memcpy(p, s, n);
    return p;
}
