/* fuzz_safetensors: libFuzzer over safetensors_parse and the dtype conversions: any byte string
 * must be refused with a message or parsed into tensors that lie inside the buffer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct safetensors_set set;
    gale_error err;
    if (safetensors_parse(data, size, "fuzz", &set, &err) != 0)
        return 0;
    for (int i = 0; i < set.n; i++) {
        const struct safetensors_tensor *t = &set.tensors[i];
        size_t bytes = t->numel * safetensors_dtype_size(t->dtype);
        if (t->data < data || t->data + bytes > data + size)
            abort();
        if (t->numel > (1u << 20))
            continue;
        double *out = malloc(sizeof(double) * (t->numel ? t->numel : 1));
        safetensors_read_f64(t, out, &err);
        safetensors_read_i64(t, (int64_t *)out, &err);
        free(out);
        if (safetensors_find(&set, t->name) == NULL)
            abort();
    }
    safetensors_close(&set);
    return 0;
}
