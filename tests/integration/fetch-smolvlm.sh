#!/bin/sh
# fetch-smolvlm.sh (test) — scripts/fetch-smolvlm.sh against a local mirror:
# a file:// directory and the same directory over `python3 -m http.server` on
# 127.0.0.1. Good files land with their checksums; a corrupt, truncated,
# non-GGUF or unchecksummed file is refused and leaves nothing behind.
# Exit status 0 = pass.
set -u
SRC="${GLIMPSE_SRCDIR:-.}"
FETCH="$SRC/scripts/fetch-smolvlm.sh"
PY="${PYTHON3:-/usr/bin/python3}"
TMP=$(mktemp -d)
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

M=SmolVLM-256M-Instruct-Q8_0.gguf
P=mmproj-SmolVLM-256M-Instruct-Q8_0.gguf
mkdir -p "$TMP/mirror" "$TMP/bare"
{ printf 'GGUF'; head -c 200000 /dev/urandom; } > "$TMP/mirror/$M"
{ printf 'GGUF'; head -c 50000 /dev/urandom; } > "$TMP/mirror/$P"
(cd "$TMP/mirror" && sha256sum "$M" "$P" > SHA256SUMS)
cp "$TMP/mirror/$M" "$TMP/mirror/$P" "$TMP/bare/"

# run NAME WANT_STATUS ARGS... (output in $TMP/NAME.out/.err)
run() {
    name=$1 want=$2
    shift 2
    timeout 60 bash "$FETCH" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
    got=$?
    [ "$got" = "$want" ] || fail "$name: exit $got, expected $want: $(cat "$TMP/$name.err")"
}

# file:// mirror with SHA256SUMS
run file 0 --base-url "file://$TMP/mirror" --out "$TMP/out1"
cmp -s "$TMP/mirror/$M" "$TMP/out1/$M" || fail "file: model differs"
cmp -s "$TMP/mirror/$P" "$TMP/out1/$P" || fail "file: mmproj differs"
grep -q "^glimpse serve --model $TMP/out1/$M --mmproj $TMP/out1/$P\$" "$TMP/file.out" || fail "file: no serve command"
# again: nothing to download
run again 0 --base-url "file://$TMP/mirror" --out "$TMP/out1"
grep -q "already there" "$TMP/again.err" || fail "again: downloaded again"

# the same over HTTP from python's http.server on a free loopback port
"$PY" -u -m http.server 0 --bind 127.0.0.1 --directory "$TMP/mirror" >"$TMP/http.log" 2>&1 &
SERVER_PID=$!
port=""
for _ in $(seq 100); do
    port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$TMP/http.log" | head -n 1)
    [ -n "$port" ] && break
    sleep 0.1
done
if [ -z "$port" ]; then
    fail "http.server did not start: $(cat "$TMP/http.log")"
else
    run http 0 --base-url "http://127.0.0.1:$port/" --out "$TMP/out2"
    cmp -s "$TMP/mirror/$M" "$TMP/out2/$M" || fail "http: model differs"
    run http-missing 1 --base-url "http://127.0.0.1:$port" --size 500M --out "$TMP/out3"
    [ -z "$(ls -A "$TMP/out3" 2>/dev/null)" ] || fail "http-missing: left files behind"
fi

# a corrupt file (checksum mismatch) is refused and removed
cp -r "$TMP/mirror" "$TMP/bad"
printf 'X' | dd of="$TMP/bad/$M" bs=1 seek=1000 conv=notrunc 2>/dev/null
run corrupt 1 --base-url "file://$TMP/bad" --out "$TMP/out4"
grep -q "SHA-256" "$TMP/corrupt.err" || fail "corrupt: no checksum message"
[ ! -e "$TMP/out4/$M" ] && [ ! -e "$TMP/out4/$M.part" ] || fail "corrupt: file left behind"

# a truncated file
cp "$TMP/mirror/$M" "$TMP/bad/$M" && truncate -s 1000 "$TMP/bad/$M"
run truncated 1 --base-url "file://$TMP/bad" --out "$TMP/out5"

# not a GGUF (with a checksum that matches, so the magic check is what refuses it)
printf 'NOPE' | dd of="$TMP/bad/$M" bs=1 conv=notrunc 2>/dev/null
cp "$TMP/mirror/$P" "$TMP/bad/$P"
(cd "$TMP/bad" && sha256sum "$M" "$P" > SHA256SUMS)
run notgguf 1 --base-url "file://$TMP/bad" --out "$TMP/out6"
grep -q "not a GGUF" "$TMP/notgguf.err" || fail "notgguf: wrong message: $(cat "$TMP/notgguf.err")"

# no checksum anywhere: fail closed; pinned on the command line: fine
run nosum 1 --base-url "file://$TMP/bare" --out "$TMP/out7"
grep -q "no SHA-256" "$TMP/nosum.err" || fail "nosum: wrong message"
run pinned 0 --base-url "file://$TMP/bare" --out "$TMP/out7" \
    --sha256-model "$(sha256sum "$TMP/bare/$M" | cut -d' ' -f1)" \
    --sha256-mmproj "$(sha256sum "$TMP/bare/$P" | cut -d' ' -f1 | tr a-f A-F)"
cmp -s "$TMP/bare/$P" "$TMP/out7/$P" || fail "pinned: mmproj differs"

run badarg 1 --size 7B
[ "$failures" = 0 ] && echo "fetch-smolvlm: all passed"
exit $((failures > 0))
