#!/usr/bin/env bash
# dev.sh — the README's quick start, on a fresh Debian 12 machine or a used one.
#
#   ./dev.sh serve [OPTIONS]   install missing packages, build, serve the demo model
#   ./dev.sh test              install missing packages, build, run every test
#   ./dev.sh build             install missing packages and build ./glimpse only
#
# Packages come from Debian (apt-get, as root or through sudo). The build is
# in-tree; the program is ./glimpse.
set -euo pipefail
cd "$(dirname "$0")"

BUILD_PKGS="build-essential autoconf automake pkg-config libmicrohttpd-dev libcjson-dev
  libturbojpeg0-dev libjpeg62-turbo-dev libpng-dev libopenblas-dev check"
# The tests compare the engine with independent references written in Python;
# the server's integration tests drive it with curl and node (the openai npm client);
# the deployment tests put Debian's nginx in front of three servers and read docker/'s YAML.
TEST_PKGS="python3 python3-numpy python3-torch python3-pil python3-yaml curl nginx"

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
    ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
