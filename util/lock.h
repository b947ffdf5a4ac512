/* lock: one gale job per folder. An exclusive flock on a lock file, held for the life of the
 * job and released by the kernel when the process dies however it dies; the file holds the
 * holder's pid and host, so a second job fails at once naming them. */
#ifndef GALE_UTIL_LOCK_H
#define GALE_UTIL_LOCK_H
#include "util/error.h"

typedef struct gale_lock {
    int fd;
    char *path;  /* NULL when not held (a zeroed gale_lock is one not held) */
} gale_lock;

/* Takes the lock file path (created when missing) for what ("gale train"), without waiting:
 * -1 with "PATH: in use by WHAT, pid N on host H" when another process holds it. */
int gale_lock_take(gale_lock *lock, const char *path, const char *what, gale_error *err);

/* Removes the lock file and releases it; a lock not held is left alone. */
void gale_lock_release(gale_lock *lock);
#endif
