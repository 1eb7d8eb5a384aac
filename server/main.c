/*
 * main.c — the glimpse program: `glimpse ask` (one question from the command
 * line) and `glimpse serve` (the HTTP server).
 */
#include "glimpse.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: glimpse <command> [options]\n"
            "\n"
            "commands:\n"
            "  ask     answer one prompt from the command line\n"
            "  help    show this help\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    fprintf(stderr, "glimpse: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
