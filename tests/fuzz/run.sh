#!/usr/bin/env bash
# tests/fuzz/run.sh — builds the libFuzzer targets with clang and runs one.
#
#   tests/fuzz/run.sh TARGET [SECONDS] [libFuzzer options...]   fuzz TARGET (default 60 s)
#   tests/fuzz/run.sh build                                     only build every target
#   tests/fuzz/run.sh list                                      the target names
#
# The build goes to $FUZZ_BUILD (default: build-fuzz/ beside the source tree,
# never inside it), compiled with -fsanitize=fuzzer,address,undefined; the
# engine and server sources are compiled straight from the tree (no autotools
# needed). Each run starts from the committed seeds in tests/fuzz/corpus/TARGET
# and grows a working corpus in $FUZZ_BUILD/corpus/TARGET (never committed);
# crashes, leaks and timeouts are written to $FUZZ_BUILD/artifacts/TARGET/.
# FUZZ_REV=<git revision> (e.g. HEAD) builds that commit's sources, exported
# into $FUZZ_BUILD/src, instead of the working tree's (whose files others may be
# editing at the time).
# Needs Debian's clang and libclang-rt-14-dev, and /usr/bin/python3 with numpy
# for the vocabulary GGUF of the tokenizer target.
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
B="${FUZZ_BUILD:-$(dirname "$src")/build-fuzz}"
origin="worktree"
[ -n "${FUZZ_REV:-}" ] && origin="$(git -C "$src" rev-parse --verify "$FUZZ_REV^{commit}")"
# objects and programs of another source origin go: mtimes cannot tell them apart
if [ "$(cat "$B/origin" 2>/dev/null)" != "$origin" ]; then
  rm -rf "$B/src" "$B/obj" "$B"/fuzz_*
  mkdir -p "$B"
  if [ "$origin" != worktree ]; then
    mkdir -p "$B/src" && git -C "$src" archive --format=tar "$origin" | tar -x -C "$B/src"
  fi
  echo "$origin" >"$B/origin"
fi
[ "$origin" != worktree ] && src="$B/src"
CC="${CC:-clang}"
PY="${PY:-/usr/bin/python3}"
TARGETS="gguf model image tokenizer multipart chat_json datauri response"

# per-target sources beyond the engine
extra_srcs() {
  case "$1" in
    multipart|chat_json|datauri|response) echo "server/multipart.c server/openai.c server/queue.c" ;;
    *) ;;
  esac
}

build() {
  mkdir -p "$B/obj"
  # openai.c wants config.h for PACKAGE_VERSION only
  [ -f "$B/config.h" ] || echo '#define PACKAGE_VERSION "fuzz"' >"$B/config.h"
  local pkgs="libturbojpeg libjpeg libpng openblas libcjson"
  local cflags="-std=c11 -g -O1 -D_GNU_SOURCE -pthread -fno-omit-frame-pointer
    -fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link
    -I$B -I$src/engine -I$src/server $(pkg-config --cflags $pkgs)"
  local libs; libs="$(pkg-config --libs $pkgs) -lm"
  local objs=()
  for f in "$src"/engine/*.c "$src"/engine/kernels/*.c "$src"/server/multipart.c "$src"/server/openai.c \
      "$src"/server/queue.c; do
    local o="$B/obj/$(echo "${f#$src/}" | tr / _).o"
    if [ ! -f "$o" ] || [ "$f" -nt "$o" ] || [ -n "$(find "$src/engine" "$src/server" -name '*.h' -newer "$o" | head -1)" ]; then
      if [ "$f" = "$src/engine/kernels/kernels_avx2.c" ]; then
        # clang 14 knows no __builtin_cpu_supports("f16c"): gcc builds the
        # SIMD kernels, uninstrumented (no target reaches them with input)
        gcc -std=c11 -O2 -g -D_GNU_SOURCE -I"$src/engine" $(pkg-config --cflags openblas) -c "$f" -o "$o"
      else
        # shellcheck disable=SC2086
        $CC $cflags -c "$f" -o "$o"
      fi
    fi
    objs+=("$o")
  done
  for t in $TARGETS; do
    local exe="$B/fuzz_$t" fsrc="$src/tests/fuzz/fuzz_$t.c"
    local deps=("$B"/obj/engine_*.o)
    for s in $(extra_srcs "$t"); do deps+=("$B/obj/$(echo "$s" | tr / _).o"); done
    local newer=0
    [ -f "$exe" ] || newer=1
    for d in "$fsrc" "$src"/tests/fuzz/*.h "${deps[@]}"; do [ "$d" -nt "$exe" ] && newer=1; done
    if [ "$newer" = 1 ]; then
      # shellcheck disable=SC2086
      $CC $cflags -fsanitize=fuzzer "$fsrc" "${deps[@]}" $libs -o "$exe"
    fi
  done
  # the tokenizer target's vocabulary: the committed test tokenizer as a GGUF
  if [ ! -f "$B/vocab.gguf" ] || [ "$src/tests/data/tokenizer.json" -nt "$B/vocab.gguf" ]; then
    "$PY" "$src/tools/make_model.py" --vocab-only --tokenizer "$src/tests/data/tokenizer.json" -o "$B/vocab.gguf"
  fi
}

cmd="${1:-}"
case "$cmd" in
  list) echo "$TARGETS"; exit 0 ;;
  build) build; exit 0 ;;
  ""|-h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
case " $TARGETS " in *" $cmd "*) ;; *) echo "run.sh: unknown target '$cmd' (one of: $TARGETS)" >&2; exit 2 ;; esac
secs="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))
build
mkdir -p "$B/corpus/$cmd" "$B/artifacts/$cmd"
dict=()
[ -f "$src/tests/fuzz/$cmd.dict" ] && dict=("-dict=$src/tests/fuzz/$cmd.dict")
export GLIMPSE_FUZZ_VOCAB="$B/vocab.gguf"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
exec "$B/fuzz_$cmd" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$B/artifacts/$cmd/" "${dict[@]}" "$@" "$B/corpus/$cmd" "$src/tests/fuzz/corpus/$cmd"
