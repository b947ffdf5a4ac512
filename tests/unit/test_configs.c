/* test_configs: every example run config in configs/ loads (no unknown key, every value in
 * range), its model shape resolves, and the hub shapes give the hub's parameter counts
 * (Mistral 7B: 7,241,732,096; Mixtral 8x7B: 46,702,792,704). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "model/config.h"
#include "train/run_config.h"
#include "train/trainer.h"

static void check(const char *yaml, long long want_params, enum model_kind want_kind)
{
    gale_error err;
    gale_run_config *cfg = run_config_load(yaml, NULL, 0, &err);
    struct model_config mc;
    if (!cfg || trainer_model_config(cfg, &mc, &err)) {
        FAIL("%s: %s", yaml, err.msg);
        run_config_free(cfg);
        return;
    }
    long long params = model_config_num_params(&mc);
    CHECK_MSG((!want_params || params == want_params) && mc.kind == want_kind,
              "%s: %lld parameters (want %lld), kind %s", yaml, params, want_params, model_kind_name(mc.kind));
    printf("%-34s %-8s %15lld parameters\n", yaml, model_kind_name(mc.kind), params);
    run_config_free(cfg);
}

int main(void)
{
    const char *src = getenv("GALE_SOURCE");
    if (!src || chdir(src) != 0) {
        fprintf(stderr, "FAIL: GALE_SOURCE must name the project root\n");
        return 1;
    }
    check("configs/mixtral-tiny-fortunes.yaml", 0, MODEL_MIXTRAL);
    check("configs/sft-mistral-7b.yaml", 7241732096LL, MODEL_MISTRAL);
    check("configs/cpt-mixtral-8x7b.yaml", 46702792704LL, MODEL_MIXTRAL);
    return check_report("test_configs");
}
