/* yaml_config: what gale's YAML config readers (gale prepare's settings, gale train's run
 * config) share: loading a YAML document (libyaml's node tree, each node with its line),
 * naming a node as "file:line", and setting a typed value from its text against a schema
 * entry (type, inclusive range or choices), with errors that name the key and where the
 * value came from (a file line, a flag or a --set argument). */
#ifndef GALE_UTIL_YAML_CONFIG_H
#define GALE_UTIL_YAML_CONFIG_H

#include <stddef.h>

#include <jansson.h>
#include <yaml.h>

#include "util/error.h"

/* The C type each value is stored as: long, uint64_t, double, int (0/1), char * (owned),
 * int (the index into choices). */
typedef enum config_type {
    CONFIG_INT,
    CONFIG_U64,
    CONFIG_DOUBLE,
    CONFIG_BOOL,
    CONFIG_STRING,
    CONFIG_ENUM,
} config_type;

typedef struct config_value {
    config_type type;
    double min, max;            /* CONFIG_INT and CONFIG_DOUBLE: the inclusive range */
    const char *const *choices; /* CONFIG_ENUM: the names, NULL-terminated, index = value */
} config_value;

/* Parses text into *doc; a syntax error names name:line. On success the caller owns *doc
 * (yaml_document_delete). */
int config_yaml_load(yaml_document_t *doc, const char *text, size_t len, const char *name, gale_error *err);
/* "name:line" of node (lines from 1). */
void config_yaml_where(const char *name, const yaml_node_t *node, char *buf, size_t size);

/* Number syntax shared by every config value: integers may be written 1e6; a value that is
 * not finite, not whole (integers) or beyond ±9.2e18 is refused with -1. */
int config_parse_long(const char *text, long *out);
int config_parse_double(const char *text, double *out);
/* true, yes, on, 1 / false, no, off, 0. */
int config_parse_bool(const char *text, int *out);

/* Sets *slot (of v's C type) from text, checking type, range and choices; key is the name
 * the messages give ("seq_len", "optim.lr"), where their origin ("run.yaml:12"). */
int config_value_set(const config_value *v, void *slot, const char *key, const char *text, const char *where,
                     gale_error *err);
/* The value in *slot as JSON (new reference); a string slot that is NULL is null, an enum
 * below 0 is "auto". */
json_t *config_value_json(const config_value *v, const void *slot);

#endif
