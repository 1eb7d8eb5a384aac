/*
 * demo.c — where the bundled demo model is found.
 */
#include "demo.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The bundled demo model next to the program (models/ of an in-tree build),
 * or in the current directory's models/. Owned strings in *model and *mmproj. */
int find_demo_model(char **model, char **mmproj)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    const char *dirs[2] = { ".", "." };
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            dirs[0] = exe;
        }
    }
    for (int i = 0; i < 2; i++) {
        char m[PATH_MAX + 64], p[PATH_MAX + 64];
        snprintf(m, sizeof m, "%s/models/glimpse-shapes.gguf", dirs[i]);
        snprintf(p, sizeof p, "%s/models/glimpse-shapes-mmproj.gguf", dirs[i]);
        if (access(m, R_OK) == 0) {
            *model = strdup(m);
            *mmproj = access(p, R_OK) == 0 ? strdup(p) : NULL;
            return *model ? 0 : -1;
        }
    }
    return -1;
}
