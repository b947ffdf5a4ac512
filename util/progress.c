/* progress: rate and ETA lines on stderr. */
#include "util/progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

double progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void progress_start(gale_progress *p, const char *label, const char *item_name, uint64_t total_bytes, int mode)
{
    p->label = label;
    p->item_name = item_name;
    p->total_bytes = total_bytes;
    p->tty = isatty(STDERR_FILENO);
    p->enabled = mode != 0;
    /* forced on without a terminal: log lines, as often as a terminal would refresh */
    p->log_every = mode == 1 && !p->tty ? 1.0 : 10.0;
    p->start = p->last_print = progress_now();
    p->items = p->bytes = 0;
}

static void print_line(gale_progress *p, double now, int final)
{
    double dt = now - p->start > 1e-9 ? now - p->start : 1e-9;
    double mb = (double)p->bytes / 1e6;
    char eta[48] = "";
    if (p->total_bytes && !final && p->bytes > 0) {
        double left = dt * (double)(p->total_bytes - (p->bytes < p->total_bytes ? p->bytes : p->total_bytes)) /
                      (double)p->bytes;
        snprintf(eta, sizeof eta, " %5.1f%% ETA %.0fs", 100.0 * (double)p->bytes / (double)p->total_bytes, left);
    }
    fprintf(stderr, "%s%s: %llu %s (%.0f/s), %.1f MB (%.1f MB/s)%s, %.1fs%s", p->tty ? "\r" : "", p->label,
            (unsigned long long)p->items, p->item_name, (double)p->items / dt, mb, mb / dt, eta, dt,
            p->tty && !final ? "\033[K" : "\n");
    fflush(stderr);
}

void progress_update(gale_progress *p, uint64_t items, uint64_t bytes)
{
    p->items = items;
    p->bytes = bytes;
    if (!p->enabled)
        return;
    double now = progress_now();
    if (now - p->last_print >= (p->tty ? 0.25 : p->log_every)) {
        p->last_print = now;
        print_line(p, now, 0);
    }
}

void progress_finish(gale_progress *p)
{
    if (p->enabled)
        print_line(p, progress_now(), 1);
}
