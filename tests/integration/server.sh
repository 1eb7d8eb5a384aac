#!/bin/sh
# server.sh — runs the HTTP server's integration tests (tests/integration/*.test.mjs)
# with node's test runner: the official openai client, curl, schema validation
# against api/openapi.yaml, a bad-request table, concurrency and hang-ups.
# Needs node >= 18, curl and the npm packages of package-lock.json (`npm ci`,
# which ./dev.sh test runs). Exit status 0 = pass.
set -u
SRC="${GLIMPSE_SRCDIR:-.}"
command -v node >/dev/null 2>&1 || { echo "FAIL: node is not installed (./dev.sh test installs it)"; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "FAIL: curl is not installed (./dev.sh test installs it)"; exit 1; }
[ -d "$SRC/node_modules/openai" ] || { echo "FAIL: npm packages missing: run 'npm ci' in $SRC"; exit 1; }
GLIMPSE_BIN="${GLIMPSE_BUILDDIR:-.}/glimpse"
export GLIMPSE_BIN
exec node --test "$SRC"/tests/integration/*.test.mjs
