#!/usr/bin/env bash
# dev.sh — the README's quick start, on a fresh Debian 12 machine or a used one.
#
#   ./dev.sh serve [OPTIONS]   install missing packages, build, serve the demo model
#   ./dev.sh test              install missing packages, build, run every test,
#                              then again under ASan+UBSan+LSan in build-asan/
#   ./dev.sh build             install missing packages and build ./glimpse only
#
# Packages come from Debian (apt-get, as root or through sudo). The build is
# in-tree; the program is ./glimpse. SANITIZE=0 ./dev.sh test skips the
# sanitizer pass.
set -euo pipefail
cd "$(dirname "$0")"

BUILD_PKGS="build-essential autoconf automake pkg-config libmicrohttpd-dev libcjson-dev
  libturbojpeg0-dev libjpeg62-turbo-dev libpng-dev libopenblas-dev check"
# The tests compare the engine with independent references written in Python;
# the server's integration tests drive it with curl and node (the openai npm client);
# the deployment tests put Debian's nginx in front of three servers and read docker/'s YAML.
TEST_PKGS="python3 python3-numpy python3-torch python3-pil python3-yaml curl nginx git"

need_pkgs() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "dev.sh: installing Debian packages: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# node and npm: Debian 12's packages (node 18) unless the commands are there
# already (e.g. node from another source, whose npm would conflict with
# Debian's), then the pinned npm packages of package-lock.json.
need_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    need_pkgs nodejs npm
  fi
  if [ ! -d node_modules/openai ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
}

build() {
  # shellcheck disable=SC2086
  need_pkgs $BUILD_PKGS
  [ -x configure ] || autoreconf -fi
  [ -f Makefile ] || ./configure ${CONFIGURE_FLAGS:-}
  make -j"$(nproc)"
}

# The sanitizer pass of `test`: the Check suites and the CLI/server integration
# tests again, built with AddressSanitizer, UndefinedBehaviorSanitizer and
# LeakSanitizer (configure --enable-sanitizers) in build-asan/. Any report
# fails: ASan and LSan abort, UBSan halts. Check runs each test in a forked
# child whose exit runs the leak check, so a test that leaks fails too.
# configure refuses an out-of-tree build of a tree configured in place (as
# build() leaves it), so build-asan/src gets a copy of the sources: the files
# git tracks or would track, plus the generated autotools files, mtimes kept
# so that make rebuilds only what changed. The Python tool tests check no C
# code and are skipped; the fixtures of the first build are reused.
SAN_TESTS='$(check_PROGRAMS) tests/integration/ask.sh tests/integration/server.sh'
sanitize() {
  local b=build-asan here
  here="$(pwd)"
  git rev-parse --git-dir >/dev/null 2>&1 || { echo "dev.sh: the sanitizer pass needs a git checkout" >&2; exit 1; }
  mkdir -p "$b/src" "$b/tests"
  { git ls-files -z -co --exclude-standard
    printf '%s\0' configure Makefile.in aclocal.m4 config.h.in build-aux
  } | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$b/src"
  # what the tests find beside the sources: the shared test images, npm packages, fixtures
  [ -d ../shared ] && ln -sfn "$(cd ../shared && pwd)" "$b/shared"
  ln -sfn "$here/node_modules" "$b/src/node_modules"
  [ -d tests/fixtures ] && ln -sfn "$here/tests/fixtures" "$b/tests/fixtures"
  cd "$b"
  # shellcheck disable=SC2086
  [ -f Makefile ] || src/configure -q --enable-sanitizers ${CONFIGURE_FLAGS:-}
  make -j"$(nproc)"
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    make -j"$(nproc)" check TESTS="$SAN_TESTS" || { cat test-suite.log 2>/dev/null | tail -n 300; exit 1; }
  cd "$here"
}

# The plain closing line CI reads: the counts of the given test-suite.logs.
summary() {
  local p=0 f=0 log n
  for log in "$@"; do
    n=$(sed -n 's/^# PASS: *//p' "$log"); p=$((p + ${n:-0}))
    n=$(sed -n 's/^# FAIL: *//p' "$log"); f=$((f + ${n:-0}))
    n=$(sed -n 's/^# ERROR: *//p' "$log"); f=$((f + ${n:-0}))
  done
  echo "tests: $p passed, $f failed"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  build) build ;;
  serve) build; exec ./glimpse serve "$@" ;;
  test)
    # shellcheck disable=SC2086
    need_pkgs $TEST_PKGS
    need_node
    build
    make -j"$(nproc)" check || { cat test-suite.log 2>/dev/null | tail -n 300; exit 1; }
    if [ "${SANITIZE:-1}" = 0 ]; then
      summary test-suite.log
    else
      sanitize
      summary test-suite.log build-asan/test-suite.log
    fi
    ;;
  *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
