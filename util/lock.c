/* lock: flock on a file holding "pid host"; the file is removed while still locked, and a
 * lock taken on a file that was removed meanwhile is taken again on the new one. */
#define _GNU_SOURCE
#include "util/lock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the holder wrote: "pid host", or a note when it has not written it yet. */
static void read_holder(int fd, char *out, size_t cap)
{
    char buf[256];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    buf[strcspn(buf, "\n")] = 0;
    int pid = 0;
    char host[200] = "";
    if (sscanf(buf, "%d %199s", &pid, host) == 2)
        snprintf(out, cap, "pid %d on host %s", pid, host);
    else
        snprintf(out, cap, "a process that has not written its pid yet");
}

int gale_lock_take(gale_lock *lock, const char *path, const char *what, gale_error *err)
{
    lock->fd = -1;
    lock->path = NULL;
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            return gale_fail_errno(err, "%s: cannot create the lock file", path);
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            char holder[256];
            read_holder(fd, holder, sizeof holder);
            close(fd);
            if (e == EWOULDBLOCK)
                return gale_fail(err, "%s: in use by another %s, %s (one job per folder)", path, what, holder);
            errno = e;
            return gale_fail_errno(err, "%s: cannot lock", path);
        }
        /* the holder before us may have removed the file between our open and flock */
        struct stat held, named;
        if (fstat(fd, &held) != 0 || stat(path, &named) != 0 || held.st_dev != named.st_dev ||
            held.st_ino != named.st_ino) {
            close(fd);
            continue;
        }
        char host[256] = "unknown";
        gethostname(host, sizeof host - 1);
        char text[320];
        int n = snprintf(text, sizeof text, "%ld %s\n", (long)getpid(), host);
        if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n) {
            int e = errno;
            close(fd);
            errno = e;
            return gale_fail_errno(err, "%s: cannot write the lock file", path);
        }
        lock->fd = fd;
        lock->path = gale_xstrdup(path);
        return 0;
    }
    return gale_fail(err, "%s: the lock file keeps being replaced by other jobs", path);
}

void gale_lock_release(gale_lock *lock)
{
    if (!lock->path)
        return;
    unlink(lock->path);
    close(lock->fd);
    free(lock->path);
    lock->fd = -1;
    lock->path = NULL;
}
