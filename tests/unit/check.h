/* check: the assertions of the unit tests (tests/unit/test_*.c) and their failure count. A failed
 * check prints "FAIL file:line: what" to stderr and the test goes on, so that one run shows every
 * failure; main ends with `return check_report("name");`, which says how many checks ran and failed
 * and gives the exit status. Header-only: each test is one program. */
#ifndef GALE_TESTS_CHECK_H
#define GALE_TESTS_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The exit status that ctest reports as "Skipped" (SKIP_RETURN_CODE in CMakeLists.txt): a
 * test, or a part of one, that cannot run here (a peer missing) must not count as passed. */
#define CHECK_SKIP_CODE 77

/* The checks made so far, those of them that failed, and the parts skipped. */
static int checks;
static int failures;
static int skipped;

/* Notes that a part of the test could not run here, and why (stdout). */
__attribute__((format(printf, 1, 2))) static inline void check_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("SKIP: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    skipped++;
}

/* Counts one failed check and prints "FAIL file:line: " with the message. */
__attribute__((format(printf, 3, 4))) static inline void check_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    checks++;
    failures++;
}

/* A check that failed by the test's own reckoning (printf-style message). */
#define FAIL(...) check_fail(__FILE__, __LINE__, __VA_ARGS__)

/* Fails with the printf-style message when cond is false. */
#define CHECK_MSG(cond, ...)                                                                                           \
    do {                                                                                                               \
        if (cond)                                                                                                      \
            checks++;                                                                                                  \
        else                                                                                                           \
            FAIL(__VA_ARGS__);                                                                                         \
    } while (0)

/* Fails with the text of the condition when it is false. */
#define CHECK(cond) CHECK_MSG(cond, "%s", #cond)

/* Expects rc == 0; a failure shows err's message. */
#define CHECK_OK(rc, err) CHECK_MSG((rc) == 0, "%s", (err).msg)

/* Expects an error (rc_is_error true) whose message in err contains want. */
#define CHECK_ERROR(rc_is_error, err, want)                                                                            \
    do {                                                                                                               \
        if (!(rc_is_error))                                                                                            \
            FAIL("expected an error containing '%s'", want);                                                           \
        else                                                                                                           \
            CHECK_MSG(strstr((err).msg, want), "error '%s' lacks '%s'", (err).msg, want);                              \
    } while (0)

/* The end of a test's main: prints the count of checks that failed (stderr) or that all passed
 * (stdout), and returns the exit status: CHECK_SKIP_CODE when every check passed but a part
 * was skipped, so that the run is not counted as a full pass. */
static inline int check_report(const char *name)
{
    if (failures) {
        fprintf(stderr, "%s: %d of %d checks failed\n", name, failures, checks);
        return 1;
    }
    printf("%s: all %d checks passed%s\n", name, checks, skipped ? ", but a part was skipped" : "");
    return skipped ? CHECK_SKIP_CODE : 0;
}

#endif
