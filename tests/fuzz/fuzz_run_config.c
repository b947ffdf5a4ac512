/* fuzz_run_config: any bytes as a run YAML, with and without an override: the parser
 * either refuses them with a message or gives a config whose JSON rendering is a complete
 * object, and never crashes or leaks. Run e.g. ./fuzz_run_config -max_total_time=60 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "train/run_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *overrides[] = {"optim.lr=1e-3"};
    for (int n = 0; n < 2; n++) {
        gale_error err = {{0}};
        gale_run_config *cfg = run_config_parse((const char *)data, size, "fuzz.yaml", overrides, n, &err);
        if (!cfg) {
            assert(strstr(err.msg, "fuzz.yaml") || strstr(err.msg, "--set"));
            continue;
        }
        json_t *j = run_config_to_json(cfg);
        assert(json_object_get(j, "run") && json_object_get(j, "optim") && json_object_get(j, "data"));
        json_decref(j);
        run_config_free(cfg);
    }
    return 0;
}
