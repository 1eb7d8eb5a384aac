/*
 * log.h — the server's log: one line per event on stderr, with a UTC time
 * stamp and the level. The engine's log is routed here too (serve.c).
 */
#ifndef GLIMPSE_SERVER_LOG_H
#define GLIMPSE_SERVER_LOG_H

#include "glimpse.h"

/* Lines above this level (enum glimpse_log_level) are dropped. */
extern int slog_level;

void slog(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* GLIMPSE_SERVER_LOG_H */
