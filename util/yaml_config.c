/* yaml_config: one setter per value type, so every reader checks a YAML value, a flag and
 * a --set override alike and words its refusals the same way. */
#include "util/yaml_config.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libyaml keeps every pair of a mapping; without this check the last of two equal keys
 * would silently win. Scalar keys are compared; the nodes of a document are all in its
 * node table, so one pass over it sees every mapping. */
static int check_duplicate_keys(yaml_document_t *doc, const char *name, gale_error *err)
{
    for (yaml_node_t *n = doc->nodes.start; n < doc->nodes.top; n++) {
        if (n->type != YAML_MAPPING_NODE)
            continue;
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            yaml_node_t *key = yaml_document_get_node(doc, p->key);
            if (!key || key->type != YAML_SCALAR_NODE)
                continue;
            for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++) {
                yaml_node_t *earlier = yaml_document_get_node(doc, q->key);
                if (earlier && earlier->type == YAML_SCALAR_NODE &&
                    earlier->data.scalar.length == key->data.scalar.length &&
                    !memcmp(earlier->data.scalar.value, key->data.scalar.value, key->data.scalar.length))
                    return gale_fail(err, "%s:%zu: key '%s' is given twice (first at line %zu)", name,
                                     key->start_mark.line + 1, (const char *)key->data.scalar.value,
                                     earlier->start_mark.line + 1);
            }
        }
    }
    return 0;
}

int config_yaml_load(yaml_document_t *doc, const char *text, size_t len, const char *name, gale_error *err)
{
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int rc = 0;
    if (!yaml_parser_load(&parser, doc)) {
        rc = gale_fail(err, "%s:%zu: YAML error: %s (invalid YAML syntax)", name, parser.problem_mark.line + 1,
                       parser.problem ? parser.problem : "unreadable");
    } else if (check_duplicate_keys(doc, name, err) != 0) {
        yaml_document_delete(doc);
        rc = -1;
    }
    yaml_parser_delete(&parser);
    return rc;
}

void config_yaml_where(const char *name, const yaml_node_t *node, char *buf, size_t size)
{
    snprintf(buf, size, "%s:%zu", name, node->start_mark.line + 1);
}

int config_parse_long(const char *text, long *out)
{
    char *end;
    errno = 0;
    double d = strtod(text, &end); /* accepts 1e6 as well as 1000000 */
    if (errno || end == text || *end || !isfinite(d) || d != floor(d) || fabs(d) > 9.2e18)
        return -1;
    *out = (long)d;
    return 0;
}

int config_parse_double(const char *text, double *out)
{
    char *end;
    errno = 0;
    *out = strtod(text, &end);
    return (errno || end == text || *end || !isfinite(*out)) ? -1 : 0;
}

int config_parse_bool(const char *text, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        if (!strcmp(text, yes[i])) {
            *out = 1;
            return 0;
        }
        if (!strcmp(text, no[i])) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static int set_enum(const config_value *v, int *slot, const char *key, const char *text, const char *where,
                    gale_error *err)
{
    for (int i = 0; v->choices[i]; i++)
        if (!strcmp(text, v->choices[i])) {
            *slot = i;
            return 0;
        }
    char list[256] = "";
    for (int i = 0; v->choices[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", v->choices[i]);
    return gale_fail(err, "%s: %s must be one of %s, got '%s'", where, key, list, text);
}

int config_value_set(const config_value *v, void *slot, const char *key, const char *text, const char *where,
                     gale_error *err)
{
    switch (v->type) {
    case CONFIG_INT: {
        long n;
        if (config_parse_long(text, &n))
            return gale_fail(err, "%s: %s must be an integer, got '%s'", where, key, text);
        if (n < v->min || n > v->max)
            return gale_fail(err, "%s: %s = %s is out of range [%.0f, %.0f]", where, key, text, v->min, v->max);
        *(long *)slot = n;
        return 0;
    }
    case CONFIG_U64: {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(text, &end, 10);
        if (errno || end == text || *end || text[0] == '-')
            return gale_fail(err, "%s: %s must be a non-negative integer, got '%s'", where, key, text);
        *(uint64_t *)slot = n;
        return 0;
    }
    case CONFIG_DOUBLE: {
        double d;
        if (config_parse_double(text, &d))
            return gale_fail(err, "%s: %s must be a number, got '%s'", where, key, text);
        if (d < v->min || d > v->max)
            return gale_fail(err, "%s: %s = %s is out of range [%g, %g]", where, key, text, v->min, v->max);
        *(double *)slot = d;
        return 0;
    }
    case CONFIG_BOOL:
        if (config_parse_bool(text, slot))
            return gale_fail(err, "%s: %s must be true or false, got '%s'", where, key, text);
        return 0;
    case CONFIG_STRING:
        if (!*text)
            return gale_fail(err, "%s: %s must not be empty", where, key);
        free(*(char **)slot);
        *(char **)slot = gale_xstrdup(text);
        return 0;
    case CONFIG_ENUM:
        return set_enum(v, slot, key, text, where, err);
    }
    return 0;
}

json_t *config_value_json(const config_value *v, const void *slot)
{
    switch (v->type) {
    case CONFIG_INT:
        return json_integer(*(const long *)slot);
    case CONFIG_U64:
        return json_integer((json_int_t) * (const uint64_t *)slot);
    case CONFIG_DOUBLE:
        return json_real(*(const double *)slot);
    case CONFIG_BOOL:
        return json_boolean(*(const int *)slot);
    case CONFIG_STRING:
        return *(char *const *)slot ? json_string(*(char *const *)slot) : json_null();
    case CONFIG_ENUM: {
        int e = *(const int *)slot;
        return json_string(e >= 0 ? v->choices[e] : "auto");
    }
    }
    return json_null();
}
