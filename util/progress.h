/* progress: a one-line progress meter on stderr for long passes over data: items per
 * second, MB per second and, when the total size is known, percent and ETA. On a terminal
 * the line is rewritten in place (\r) a few times a second; otherwise one log line is
 * printed every `log_every` seconds, so batch logs stay readable. */
#ifndef GALE_UTIL_PROGRESS_H
#define GALE_UTIL_PROGRESS_H

#include <stdint.h>

typedef struct gale_progress {
    const char *label;        /* "read", "tokenize"... */
    const char *item_name;    /* "docs" */
    uint64_t total_bytes;     /* 0: unknown */
    int enabled, tty;
    double log_every;         /* seconds between log lines when not a terminal */
    double start, last_print;
    uint64_t items, bytes;
} gale_progress;

/* mode: -1 auto (on when stderr is a terminal, log lines otherwise), 0 off, 1 on. */
void progress_start(gale_progress *p, const char *label, const char *item_name, uint64_t total_bytes, int mode);

/* Sets the counts reached so far and prints when it is time to. */
void progress_update(gale_progress *p, uint64_t items, uint64_t bytes);

/* Prints the final line (and ends the terminal line). */
void progress_finish(gale_progress *p);

/* Seconds since an arbitrary fixed point (monotonic clock). */
double progress_now(void);

#endif
