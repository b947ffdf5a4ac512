/* run_agreement: the run's "key=value" lines (util/rank_agreement.h). */
#define _GNU_SOURCE
#include "train/run_agreement.h"

#include <stdio.h>
#include <stdlib.h>

#include "data/manifest.h"
#include "util/file.h"
#include "util/hash.h"
#include "util/rank_agreement.h"

int run_agreement_check(const gale_run_config *cfg, const struct model_config *mc, gale_error *err)
{
    char *text = NULL;
    json_t *run = run_config_to_json(cfg);
    rank_agreement_lines(&text, "", run);
    json_decref(run);
    char *layout_text = model_config_to_json(mc);
    json_t *layout = json_loads(layout_text, 0, NULL);
    rank_agreement_lines(&text, "model layout", layout);
    json_decref(layout);
    free(layout_text);
    json_t *data = json_array();
    for (int i = 0; i < cfg->data.n_sources; i++) {
        char *path = gale_path_join(cfg->data.sources[i].path, GALE_MANIFEST_FILE);
        char hex[65];
        json_array_append_new(data, json_string(gale_sha256_file_hex(path, hex, NULL) == 0 ? hex : "(unreadable)"));
        free(path);
    }
    rank_agreement_lines(&text, "data manifest.json sha256", data);
    json_decref(data);
    int rc = rank_agreement_check(MPI_COMM_WORLD, "the run (config, model layout, data)", text ? text : "", err);
    free(text);
    return rc;
}
