/* test_yaml_config: the shared value setters store what the text says, refuse wrong types,
 * out-of-range values and unknown choices with the key and origin in the message, and the
 * YAML loader names the line of a syntax error. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "util/yaml_config.h"

static const char *const colours[] = {"red", "green", NULL};

/* Sets text into slot through v and expects an error containing want. */
static void expect_refused(const config_value *v, void *slot, const char *text, const char *want)
{
    gale_error err = {{0}};
    CHECK_ERROR(config_value_set(v, slot, "sec.key", text, "f.yaml:3", &err) < 0, err, want);
}

static void test_values(void)
{
    gale_error err = {{0}};
    config_value integer = {CONFIG_INT, 1, 100, NULL};
    long n = 0;
    CHECK_OK(config_value_set(&integer, &n, "sec.key", "1e1", "f.yaml:3", &err), err);
    CHECK(n == 10);
    expect_refused(&integer, &n, "2.5", "f.yaml:3: sec.key must be an integer, got '2.5'");
    expect_refused(&integer, &n, "inf", "must be an integer");
    expect_refused(&integer, &n, "1e19", "must be an integer");
    expect_refused(&integer, &n, "0", "f.yaml:3: sec.key = 0 is out of range [1, 100]");
    CHECK(n == 10);

    config_value u64 = {CONFIG_U64, 0, 0, NULL};
    uint64_t seed = 0;
    CHECK_OK(config_value_set(&u64, &seed, "sec.key", "18446744073709551615", "w", &err), err);
    CHECK(seed == UINT64_MAX);
    expect_refused(&u64, &seed, "-1", "sec.key must be a non-negative integer, got '-1'");

    config_value number = {CONFIG_DOUBLE, 0, 1, NULL};
    double d = 0;
    CHECK_OK(config_value_set(&number, &d, "sec.key", "0.25", "w", &err), err);
    CHECK(d == 0.25);
    expect_refused(&number, &d, "nan", "sec.key must be a number, got 'nan'");
    expect_refused(&number, &d, "1.5", "sec.key = 1.5 is out of range [0, 1]");

    config_value boolean = {CONFIG_BOOL, 0, 1, NULL};
    int b = 0;
    CHECK_OK(config_value_set(&boolean, &b, "sec.key", "yes", "w", &err), err);
    CHECK(b == 1);
    CHECK_OK(config_value_set(&boolean, &b, "sec.key", "0", "w", &err), err);
    CHECK(b == 0);
    expect_refused(&boolean, &b, "maybe", "sec.key must be true or false, got 'maybe'");

    config_value choice = {CONFIG_ENUM, 0, 0, colours};
    int e = 0;
    CHECK_OK(config_value_set(&choice, &e, "sec.key", "green", "w", &err), err);
    CHECK(e == 1);
    expect_refused(&choice, &e, "blue", "f.yaml:3: sec.key must be one of red, green, got 'blue'");
    json_t *j = config_value_json(&choice, &e);
    CHECK(json_is_string(j) && !strcmp(json_string_value(j), "green"));
    json_decref(j);

    config_value string = {CONFIG_STRING, 0, 0, NULL};
    char *s = NULL;
    CHECK_OK(config_value_set(&string, &s, "sec.key", "a", "w", &err), err);
    CHECK_OK(config_value_set(&string, &s, "sec.key", "b", "w", &err), err);
    CHECK(s && !strcmp(s, "b"));
    expect_refused(&string, &s, "", "sec.key must not be empty");
    free(s);
}

static void test_yaml(void)
{
    gale_error err = {{0}};
    yaml_document_t doc;
    const char good[] = "a: 1\nb:\n  c: 2\n";
    CHECK_OK(config_yaml_load(&doc, good, strlen(good), "g.yaml", &err), err);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    CHECK(root && root->type == YAML_MAPPING_NODE);
    if (root && root->type == YAML_MAPPING_NODE) {
        yaml_node_t *b = yaml_document_get_node(&doc, root->data.mapping.pairs.start[1].key);
        char where[64];
        config_yaml_where("g.yaml", b, where, sizeof where);
        CHECK_MSG(!strcmp(where, "g.yaml:2"), "where '%s'", where);
    }
    yaml_document_delete(&doc);
    const char bad[] = "a: 1\nb: [unclosed\n";
    CHECK_ERROR(config_yaml_load(&doc, bad, strlen(bad), "b.yaml", &err) < 0, err, "b.yaml:3: YAML error");
    /* a key given twice is refused naming both lines (libyaml keeps both; the last won) */
    const char twice[] = "optim:\n  lr: 1.0e-3\n  warmup: 10\n  lr: 1.0e-2\n";
    CHECK_ERROR(config_yaml_load(&doc, twice, strlen(twice), "d.yaml", &err) < 0, err,
                "d.yaml:4: key 'lr' is given twice (first at line 2)");
    const char top[] = "run:\n  steps: 3\ndata:\n  seq_len: 8\nrun:\n  steps: 5\n";
    CHECK_ERROR(config_yaml_load(&doc, top, strlen(top), "t.yaml", &err) < 0, err,
                "t.yaml:5: key 'run' is given twice (first at line 1)");
    /* equal keys in different mappings are fine */
    const char apart[] = "a:\n  x: 1\nb:\n  x: 2\n";
    CHECK_OK(config_yaml_load(&doc, apart, strlen(apart), "ok.yaml", &err), err);
    yaml_document_delete(&doc);
}

int main(void)
{
    test_values();
    test_yaml();
    return check_report("test_yaml_config");
}
