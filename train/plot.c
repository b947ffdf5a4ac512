/* plot: metrics.jsonl → series → gnuplot (PNG) or a hand-drawn SVG. */
#define _GNU_SOURCE
#include "train/plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "train/metrics.h"
#include "util/file.h"
#include "util/vec.h"

typedef struct series {
    double *x, *y;
    size_t n;
} series;

typedef struct curves {
    series loss, val_loss, lr;
} curves;

static void series_push(series *s, double x, double y)
{
    s->x = gale_xrealloc(s->x, (s->n + 1) * sizeof *s->x);
    s->y = gale_xrealloc(s->y, (s->n + 1) * sizeof *s->y);
    s->x[s->n] = x;
    s->y[s->n++] = y;
}

static void series_free(series *s)
{
    free(s->x);
    free(s->y);
}

static int read_curves(const char *path, curves *c, gale_error *err)
{
    json_t *records = metrics_read(path, err);
    if (!records)
        return -1;
    size_t i;
    json_t *r;
    json_array_foreach(records, i, r)
    {
        json_t *step = json_object_get(r, "step");
        if (!json_is_number(step))
            continue;
        double x = json_number_value(step);
        json_t *loss = json_object_get(r, "loss"), *val = json_object_get(r, "val_loss"),
               *lr = json_object_get(r, "lr");
        if (json_is_number(loss))
            series_push(&c->loss, x, json_number_value(loss));
        if (json_is_number(val))
            series_push(&c->val_loss, x, json_number_value(val));
        if (json_is_number(lr))
            series_push(&c->lr, x, json_number_value(lr));
    }
    json_decref(records);
    if (c->loss.n == 0)
        return gale_fail(err, "%s: no training steps recorded yet", path);
    return 0;
}

static int gnuplot_available(void)
{
    return system("command -v gnuplot >/dev/null 2>&1") == 0;
}

static void write_block(FILE *f, const char *name, const series *s)
{
    fprintf(f, "$%s << EOD\n", name);
    for (size_t i = 0; i < s->n; i++)
        fprintf(f, "%.10g %.10g\n", s->x[i], s->y[i]);
    fprintf(f, "EOD\n");
}

/* A gnuplot single-quoted string: a quote is doubled. */
static void put_quoted(FILE *g, const char *s)
{
    fputc('\'', g);
    for (; *s; s++)
        fputs(*s == '\'' ? "''" : (char[2]){*s, 0}, g);
    fputc('\'', g);
}

static int plot_gnuplot(const curves *c, const char *title, const char *out, gale_error *err)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    FILE *g = popen("gnuplot 2>&1", "w");
    if (!g)
        return gale_fail_errno(err, "starting gnuplot");
    write_block(g, "loss", &c->loss);
    write_block(g, "val", &c->val_loss);
    write_block(g, "lr", &c->lr);
    fprintf(g, "set terminal pngcairo size 1000,800 font ',10'\nset output ");
    put_quoted(g, tmp);
    fprintf(g, "\nset multiplot layout 2,1 title ");
    put_quoted(g, title);
    fprintf(g, "\nset grid\nset xlabel 'step'\n");
    fprintf(g, "set ylabel 'loss'\nplot $loss with lines lw 1.5 title 'train loss'%s\n",
            c->val_loss.n ? ", $val with linespoints lw 2 pt 7 title 'val loss'" : "");
    fprintf(g, "set ylabel 'learning rate'\nset format y '%%.1e'\nplot $lr with lines lw 1.5 lc rgb '#2a7f3f' "
               "title 'lr'\nunset multiplot\nset output\n");
    int status = pclose(g);
    if (status != 0 || !gale_path_exists(tmp)) {
        unlink(tmp);
        return gale_fail(err, "gnuplot failed (status %d) drawing %s", status, out);
    }
    return gale_rename_durable(tmp, out, err);
}

/* ---- SVG: two panels, each a polyline per series over labelled axes ---- */

#define SVG_W 1000
#define PANEL_H 380
#define MARGIN_L 90
#define MARGIN_R 30
#define MARGIN_T 40
#define MARGIN_B 40

static void range_of(const series *const *s, int n, double *x0, double *x1, double *y0, double *y1)
{
    *x0 = *y0 = INFINITY;
    *x1 = *y1 = -INFINITY;
    for (int k = 0; k < n; k++)
        for (size_t i = 0; i < s[k]->n; i++) {
            *x0 = fmin(*x0, s[k]->x[i]);
            *x1 = fmax(*x1, s[k]->x[i]);
            *y0 = fmin(*y0, s[k]->y[i]);
            *y1 = fmax(*y1, s[k]->y[i]);
        }
    if (*x1 <= *x0)
        *x1 = *x0 + 1;
    if (*y1 <= *y0) {
        *y0 -= 0.5 * fabs(*y0) + 1e-12;
        *y1 += 0.5 * fabs(*y1) + 1e-12;
    }
}

static void svg_panel(FILE *f, int top, const char *ylabel, const series *const *s, const char *const *colors,
                      const char *const *names, int n)
{
    double x0, x1, y0, y1;
    range_of(s, n, &x0, &x1, &y0, &y1);
    int w = SVG_W - MARGIN_L - MARGIN_R, h = PANEL_H - MARGIN_T - MARGIN_B;
    int left = MARGIN_L, bottom = top + MARGIN_T + h;
    fprintf(f, "<rect x='%d' y='%d' width='%d' height='%d' fill='none' stroke='#444'/>\n", left, top + MARGIN_T, w, h);
    for (int t = 0; t <= 4; t++) {
        double fy = y0 + (y1 - y0) * t / 4, fx = x0 + (x1 - x0) * t / 4;
        int py = bottom - h * t / 4, px = left + w * t / 4;
        fprintf(f, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='#ddd'/>\n", left, py, left + w, py);
        fprintf(f, "<text x='%d' y='%d' text-anchor='end' font-size='12'>%.3g</text>\n", left - 6, py + 4, fy);
        fprintf(f, "<text x='%d' y='%d' text-anchor='middle' font-size='12'>%.0f</text>\n", px, bottom + 16, fx);
    }
    fprintf(f, "<text x='20' y='%d' font-size='13' transform='rotate(-90 20 %d)' text-anchor='middle'>%s</text>\n",
            top + MARGIN_T + h / 2, top + MARGIN_T + h / 2, ylabel);
    fprintf(f, "<text x='%d' y='%d' font-size='12' text-anchor='middle'>step</text>\n", left + w / 2, bottom + 32);
    for (int k = 0; k < n; k++) {
        if (!s[k]->n)
            continue;
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='1.5' points='", colors[k]);
        for (size_t i = 0; i < s[k]->n; i++)
            fprintf(f, "%.1f,%.1f ", left + w * (s[k]->x[i] - x0) / (x1 - x0),
                    bottom - h * (s[k]->y[i] - y0) / (y1 - y0));
        fprintf(f, "'/>\n<text x='%d' y='%d' font-size='12' fill='%s'>%s</text>\n", left + w - 120,
                top + MARGIN_T + 16 + 16 * k, colors[k], names[k]);
    }
}

static int plot_svg(const curves *c, const char *title, const char *out, gale_error *err)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' font-family='sans-serif'>\n", SVG_W,
            2 * PANEL_H + 20);
    fprintf(f, "<rect width='100%%' height='100%%' fill='white'/>\n<text x='%d' y='20' font-size='15' "
               "text-anchor='middle'>",
            SVG_W / 2);
    for (const char *p = title; *p; p++) /* the title is a path: escape what XML reserves */
        fputs(*p == '<' ? "&lt;" : *p == '>' ? "&gt;" : *p == '&' ? "&amp;" : (char[2]){*p, 0}, f);
    fprintf(f, "</text>\n");
    const series *loss[] = {&c->loss, &c->val_loss}, *lr[] = {&c->lr};
    const char *loss_colors[] = {"#1f5fbf", "#d0501f"}, *lr_colors[] = {"#2a7f3f"};
    const char *loss_names[] = {"train loss", "val loss"}, *lr_names[] = {"lr"};
    svg_panel(f, 20, "loss", loss, loss_colors, loss_names, 2);
    svg_panel(f, 20 + PANEL_H, "learning rate", lr, lr_colors, lr_names, 1);
    fprintf(f, "</svg>\n");
    fclose(f);
    int rc = gale_write_file_atomic(out, buf, len, err);
    free(buf);
    return rc;
}

int plot_run(const char *run_dir, const char *out_path, char **written, gale_error *err)
{
    char *metrics = gale_path_join(run_dir, GALE_METRICS_FILE);
    curves c = {0};
    int rc = read_curves(metrics, &c, err);
    free(metrics);
    if (rc == 0) {
        int use_gnuplot = gnuplot_available();
        const char *ext = out_path ? strrchr(out_path, '.') : NULL;
        int want_svg = ext && !strcmp(ext, ".svg");
        if (out_path && !want_svg && !use_gnuplot) {
            rc = gale_fail(err, "%s: gnuplot is not installed, so only an .svg can be drawn", out_path);
            goto done;
        }
        use_gnuplot = use_gnuplot && !want_svg;
        char *out = out_path ? gale_xstrdup(out_path) : gale_path_join(run_dir, use_gnuplot ? "curves.png" : "curves.svg");
        rc = use_gnuplot ? plot_gnuplot(&c, run_dir, out, err) : plot_svg(&c, run_dir, out, err);
        if (rc == 0 && written)
            *written = out;
        else
            free(out);
    }
done:
    series_free(&c.loss);
    series_free(&c.val_loss);
    series_free(&c.lr);
    return rc;
}
