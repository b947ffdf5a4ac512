/* module: finding and opening one of gale's own shared modules (libgale_commands.so, the
 * heavy commands; libgale_cuda.so, the CUDA backend), which executables open only when a run
 * needs them. */
#ifndef GALE_UTIL_MODULE_H
#define GALE_UTIL_MODULE_H

#include "util/error.h"

/* Opens the module `file` with dlopen(flags) and returns its handle, kept for the life of
 * the process. It is $env_var when that is set, else `file` beside the running executable
 * (the build folder), else ../lib/gale/`file` from it (an installed tree). NULL when none of
 * those exists (*missing = 1; err says where it looked) or when the one found does not load
 * or lacks `symbol` (*missing = 0; err names the file and why). */
void *gale_module_open(const char *file, const char *env_var, int flags, const char *symbol,
                       int *missing, gale_error *err);

#endif
