/* ops: choosing a backend by name. */
#include "model/ops.h"

#include <string.h>

const struct gale_ops *gale_ops_by_name(const char *name)
{
    if (!strcmp(name, "cpu"))
        return gale_ops_cpu();
    return NULL;
}
