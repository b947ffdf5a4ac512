/* file: whole-file reads, atomic writes (temporary name, fsync, rename, fsync of the
 * folder) and folder helpers. Every file gale leaves behind is written through here, so a
 * killed job or a full disk never leaves a partial file under its final name. */
#ifndef GALE_UTIL_FILE_H
#define GALE_UTIL_FILE_H

#include <stddef.h>

#include "util/error.h"

/* Reads all of path into a NUL-terminated buffer (the NUL is not counted in *len). */
char *gale_read_file(const char *path, size_t *len, gale_error *err);

/* All of a file, mapped read-only where it can be (a regular file), else read (a pipe): for
 * large files read once, where copying them would cost more than reading them. */
typedef struct gale_mapped_file {
    const void *data;
    size_t len;
    int mapped;
} gale_mapped_file;

int gale_map_file(const char *path, gale_mapped_file *f, gale_error *err);
void gale_unmap_file(gale_mapped_file *f);

/* Writes data to path atomically: path.tmp.<pid>, fsync, rename, fsync of the folder. */
int gale_write_file_atomic(const char *path, const void *data, size_t len, gale_error *err);

struct json_t;
/* j as JSON text (json_dumps with flags) and a newline, written to path atomically. */
int gale_write_json_atomic(const char *path, const struct json_t *j, size_t flags, gale_error *err);

/* fsyncs an existing file or folder by path. */
int gale_fsync_path(const char *path, gale_error *err);

/* Renames from to to and fsyncs the folder holding to. */
int gale_rename_durable(const char *from, const char *to, gale_error *err);

/* mkdir -p. */
int gale_mkdir_p(const char *path, gale_error *err);

/* rm -rf of a folder gale made (refuses "/" and ""). */
int gale_remove_tree(const char *path, gale_error *err);

/* 1 when path exists. */
int gale_path_exists(const char *path);

/* Joins a folder and a name into a new string. */
char *gale_path_join(const char *dir, const char *name);

#endif
