/* module: gale's shared modules, found beside the executable or in an installed tree. */
#include "util/module.h"

#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void *gale_module_open(const char *file, const char *env_var, int flags, const char *symbol,
                       int *missing, gale_error *err)
{
    char exe[PATH_MAX], tried[2][PATH_MAX + 64];
    int n = 0;
    const char *env = getenv(env_var);
    *missing = 0;
    if (env && *env) {
        snprintf(tried[n++], sizeof tried[0], "%s", env);
    } else {
        ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (len > 0) {
            exe[len] = 0;
            const char *dir = dirname(exe);
            snprintf(tried[n++], sizeof tried[0], "%s/%s", dir, file);
            snprintf(tried[n++], sizeof tried[0], "%s/../lib/gale/%s", dir, file);
        }
    }
    for (int i = 0; i < n; i++) {
        if (access(tried[i], F_OK))
            continue;
        void *module = dlopen(tried[i], flags);
        if (module && dlsym(module, symbol))
            return module;
        gale_fail(err, "%s does not load: %s", tried[i], dlerror());
        return NULL;
    }
    *missing = 1;
    if (env && *env)
        gale_fail(err, "%s (%s) does not exist", env, env_var);
    else if (n)
        gale_fail(err, "no %s (looked for %s and %s)", file, tried[0], tried[1]);
    else
        gale_fail(err, "no %s: the running executable's path (/proc/self/exe) is unreadable", file);
    return NULL;
}
