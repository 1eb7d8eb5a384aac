/*
 * serve.h — the `glimpse serve` command, dispatched from main.c.
 */
#ifndef GLIMPSE_SERVE_H
#define GLIMPSE_SERVE_H

/* Runs the HTTP server until SIGINT/SIGTERM. argv[0] is "serve". Returns the
 * process exit status: 0 stopped cleanly, 1 start-up or model failure, 2 bad
 * command line. A shutdown that has to cut requests off (--shutdown-timeout,
 * or a second signal) ends the process itself, with status 1. */
int cmd_serve(int argc, char **argv);

#endif /* GLIMPSE_SERVE_H */
