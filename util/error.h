/* error: how every gale function reports failure. A function that can fail takes a
 * `gale_error *` last, fills it with a message that names the file, line or key at fault,
 * and returns -1 (or NULL). Callers add context with gale_error_prefix and print it once. */
#ifndef GALE_UTIL_ERROR_H
#define GALE_UTIL_ERROR_H

#include <stddef.h>

typedef struct gale_error {
    char msg[2048];
} gale_error;

/* Formats the message into err (when err is not NULL) and returns -1. */
int gale_fail(gale_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Puts "prefix: " in front of the message already in err. */
void gale_error_prefix(gale_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like gale_fail, with ": strerror(errno)" appended. */
int gale_fail_errno(gale_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Allocation that never returns NULL: out of memory aborts with a message. */
void *gale_xmalloc(size_t n);
void *gale_xcalloc(size_t count, size_t size);
void *gale_xrealloc(void *p, size_t n);
char *gale_xstrdup(const char *s);

#endif
