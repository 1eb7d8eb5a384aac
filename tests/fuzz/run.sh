#!/usr/bin/env bash
# tests/fuzz/run.sh — builds the libFuzzer targets with clang and runs one.
#
#   tests/fuzz/run.sh TARGET [SECONDS] [libFuzzer options...]   fuzz TARGET (default 60 s)
#   tests/fuzz/run.sh cover TARGET    line coverage of TARGET's own sources by its corpus
#   tests/fuzz/run.sh build           only build every target
#   tests/fuzz/run.sh list            the target names
#
# The build goes to $FUZZ_BUILD (default: build-fuzz/ beside the source tree,
# never inside it), compiled with -fsanitize=fuzzer,address,undefined; the
# engine and server sources are compiled straight from the tree (no autotools
# needed). Each run starts from the committed seeds in tests/fuzz/corpus/TARGET
# and grows a working corpus in $FUZZ_BUILD/corpus/TARGET (never committed);
# crashes, leaks and timeouts are written to $FUZZ_BUILD/artifacts/TARGET/.
# `cover` builds the targets again without sanitizers but with clang's
# source-based coverage in $FUZZ_BUILD/cov and replays both corpora through it.
# FUZZ_REV=<git revision> (e.g. HEAD) builds that commit's sources, exported
# into $FUZZ_BUILD/src, instead of the working tree's (whose files others may be
# editing at the time). A run of another revision replaces that export, so
# runs sharing a $FUZZ_BUILD at the same time must name the same commit.
# Needs Debian's clang, libclang-rt-14-dev and llvm (for cover), and
# /usr/bin/python3 with numpy for the vocabulary GGUF of the tokenizer target.
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
B="${FUZZ_BUILD:-$(dirname "$src")/build-fuzz}"
mkdir -p "$B"
# one build at a time: runs started together would rebuild the same files
exec 9>"$B/lock"
flock 9
origin="worktree"
[ -n "${FUZZ_REV:-}" ] && origin="$(git -C "$src" rev-parse --verify "$FUZZ_REV^{commit}")"
# objects and programs of another source origin go: mtimes cannot tell them apart
if [ "$(cat "$B/origin" 2>/dev/null)" != "$origin" ]; then
  rm -rf "$B/src" "$B/obj" "$B/cov" "$B"/fuzz_*
  if [ "$origin" != worktree ]; then
    mkdir -p "$B/src" && git -C "$src" archive --format=tar "$origin" | tar -x -C "$B/src"
  fi
  echo "$origin" >"$B/origin"
fi
[ "$origin" != worktree ] && src="$B/src"
CC="${CC:-clang}"
PY="${PY:-/usr/bin/python3}"
TARGETS="gguf model image tokenizer multipart chat_json datauri response"
PKGS="libturbojpeg libjpeg libpng openblas libcjson"

# per-target sources beyond the engine
extra_srcs() {
  case "$1" in
    multipart|chat_json|datauri|response) echo "server/multipart.c server/openai.c server/queue.c server/utf8.c" ;;
    *) ;;
  esac
}

# the sources a target is about, for its coverage figure
own_srcs() {
  case "$1" in
    gguf) echo "engine/gguf.c engine/quant.c" ;;
    model) echo "engine/gguf.c engine/model.c engine/vision.c engine/tokenizer.c" ;;
    image) echo "engine/image.c" ;;
    tokenizer) echo "engine/tokenizer.c engine/unicode.c" ;;
    multipart) echo "server/multipart.c server/openai.c" ;;
    *) echo "server/openai.c" ;;
  esac
}

# build_in DIR CFLAGS...: objects in DIR/obj and DIR/fuzz_TARGET, rebuilt when
# their sources or any header are newer.
build_in() {
  local dir="$1"; shift
  local cflags="-std=c11 -g -O1 -D_GNU_SOURCE -pthread -fno-omit-frame-pointer -fsanitize=fuzzer-no-link
    $* -I$B -I$src/engine -I$src/server $(pkg-config --cflags $PKGS)"
  local libs; libs="$(pkg-config --libs $PKGS) -lm"
  mkdir -p "$dir/obj"
  for f in "$src"/engine/*.c "$src"/engine/kernels/*.c "$src"/server/multipart.c "$src"/server/openai.c \
      "$src"/server/queue.c "$src"/server/utf8.c; do
    local o; o="$dir/obj/$(echo "${f#"$src"/}" | tr / _).o"
    if [ ! -f "$o" ] || [ "$f" -nt "$o" ] || [ -n "$(find "$src/engine" "$src/server" -name '*.h' -newer "$o" | head -1)" ]; then
      if [ "$f" = "$src/engine/kernels/kernels_avx2.c" ]; then
        # clang 14 knows no __builtin_cpu_supports("f16c"): gcc builds the
        # SIMD kernels, uninstrumented (no target reaches them with input)
        # shellcheck disable=SC2046
        gcc -std=c11 -O2 -g -D_GNU_SOURCE -I"$src/engine" $(pkg-config --cflags openblas) -c "$f" -o "$o"
      else
        # shellcheck disable=SC2086
        $CC $cflags -c "$f" -o "$o"
      fi
    fi
  done
  local t
  for t in $TARGETS; do
    local exe="$dir/fuzz_$t" fsrc="$src/tests/fuzz/fuzz_$t.c"
    local deps=("$dir"/obj/engine_*.o)
    for s in $(extra_srcs "$t"); do deps+=("$dir/obj/$(echo "$s" | tr / _).o"); done
    local newer=0
    [ -f "$exe" ] || newer=1
    for d in "$fsrc" "$src"/tests/fuzz/*.h "${deps[@]}"; do [ "$d" -nt "$exe" ] && newer=1; done
    if [ "$newer" = 1 ]; then
      # shellcheck disable=SC2086
      $CC $cflags -fsanitize=fuzzer "$fsrc" "${deps[@]}" $libs -o "$exe"
    fi
  done
}

build() {
  mkdir -p "$B"
  # openai.c wants config.h for PACKAGE_VERSION only
  [ -f "$B/config.h" ] || echo '#define PACKAGE_VERSION "fuzz"' >"$B/config.h"
  build_in "$B" -fsanitize=address,undefined -fno-sanitize-recover=undefined
  # the tokenizer target's vocabulary: the committed test tokenizer as a GGUF
  if [ ! -f "$B/vocab.gguf" ] || [ "$src/tests/data/tokenizer.json" -nt "$B/vocab.gguf" ]; then
    "$PY" "$src/tools/make_model.py" --vocab-only --tokenizer "$src/tests/data/tokenizer.json" -o "$B/vocab.gguf"
  fi
}

export GLIMPSE_FUZZ_VOCAB="$B/vocab.gguf"

# cover TARGET: replays the working and the committed corpus through a
# coverage build and prints the line coverage of the target's own sources.
cover() {
  local t="$1" c="$B/cov"
  build
  build_in "$c" -fprofile-instr-generate -fcoverage-mapping
  rm -f "$c/$t".profraw
  mkdir -p "$B/corpus/$t"
  LLVM_PROFILE_FILE="$c/$t.profraw" "$c/fuzz_$t" -runs=0 "$B/corpus/$t" "$src/tests/fuzz/corpus/$t" \
    >"$c/$t.replay.log" 2>&1
  llvm-profdata merge -sparse "$c/$t.profraw" -o "$c/$t.profdata"
  local files=()
  for s in $(own_srcs "$t"); do files+=("$src/$s"); done
  llvm-cov report "$c/fuzz_$t" -instr-profile="$c/$t.profdata" "${files[@]}"
}

cmd="${1:-}"
case "$cmd" in
  list) echo "$TARGETS"; exit 0 ;;
  build) build; exit 0 ;;
  cover) [ $# -ge 2 ] || { echo "run.sh: cover needs a target" >&2; exit 2; }; cover "$2"; exit 0 ;;
  ""|-h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
case " $TARGETS " in *" $cmd "*) ;; *) echo "run.sh: unknown target '$cmd' (one of: $TARGETS)" >&2; exit 2 ;; esac
secs="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))
build
mkdir -p "$B/corpus/$cmd" "$B/artifacts/$cmd"
dict=()
[ -f "$src/tests/fuzz/$cmd.dict" ] && dict=("-dict=$src/tests/fuzz/$cmd.dict")
exec 9>&-
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
exec "$B/fuzz_$cmd" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$B/artifacts/$cmd/" "${dict[@]}" "$@" "$B/corpus/$cmd" "$src/tests/fuzz/corpus/$cmd"
