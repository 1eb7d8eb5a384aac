/*
 * testutil.h — helpers shared by the Check suites.
 */
#ifndef GLIMPSE_TESTUTIL_H
#define GLIMPSE_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Path of a generated fixture (tests/fixtures/NAME), in a static buffer. */
static inline const char *fixture_path(const char *name)
{
    static char buf[4096];
    const char *dir = getenv("GLIMPSE_FIXTURES");
    snprintf(buf, sizeof buf, "%s/%s", dir ? dir : "tests/fixtures", name);
    return buf;
}

/* Path of a file in the source tree (relative to the top), in a static buffer. */
static inline const char *source_path(const char *rel)
{
    static char buf[4096];
    const char *dir = getenv("GLIMPSE_SRCDIR");
    snprintf(buf, sizeof buf, "%s/%s", dir ? dir : ".", rel);
    return buf;
}

/* Reads a whole file; owned, free with free(). NULL on failure. */
static inline void *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf)
        *len = (size_t)n;
    return buf;
}

/* Copies len bytes so that they end exactly at an inaccessible guard page:
 * any read past the end faults (picohttpparser's trick). Free with
 * guarded_free(ptr, len). */
static inline void *guarded_copy(const void *data, size_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (len + page - 1) / page * page;
    char *base = mmap(NULL, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    mprotect(base + body, page, PROT_NONE);
    char *p = base + body - len;
    memcpy(p, data, len);
    return p;
}

static inline void guarded_free(void *p, size_t len)
{
    if (!p)
        return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (len + page - 1) / page * page;
    munmap((char *)p + len - body, body + page);
}

/* Runs one suite and returns the process exit status. */
static inline int run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif /* GLIMPSE_TESTUTIL_H */
