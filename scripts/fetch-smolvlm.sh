#!/usr/bin/env bash
# fetch-smolvlm.sh — download a SmolVLM GGUF pair (text model + mmproj) for
# `glimpse serve`, and check each file before it is moved into place.
#
#   scripts/fetch-smolvlm.sh [--size 256M|500M] [--quant Q8_0|f16] [--out DIR]
#                            [--base-url URL] [--sha256-model HEX] [--sha256-mmproj HEX]
#
# Files come from Hugging Face's ggml-org/SmolVLM-<size>-Instruct-GGUF unless
# --base-url names a mirror (http(s):// or file://, e.g. a local directory):
# the files are fetched as BASE/<name>. Each download must
#   - have the size the server announced (curl fails on a short transfer),
#   - start with the GGUF magic,
#   - match its SHA-256: from --sha256-model/--sha256-mmproj, else from a
#     SHA256SUMS file next to the files at the base URL, else from Hugging
#     Face's X-Linked-Etag header (the LFS object's SHA-256).
# Without any checksum source the script refuses (fail closed). Files already
# present with the right checksum are not downloaded again.
# Prints the `glimpse serve` command at the end. Needs curl and sha256sum.
set -euo pipefail

size=256M
quant=Q8_0
out=models
base=""
sum_model=""
sum_mmproj=""

die() { echo "fetch-smolvlm: $*" >&2; exit 1; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --size) size="${2:?}"; shift 2 ;;
    --quant) quant="${2:?}"; shift 2 ;;
    --out) out="${2:?}"; shift 2 ;;
    --base-url) base="${2:?}"; shift 2 ;;
    --sha256-model) sum_model="${2:?}"; shift 2 ;;
    --sha256-mmproj) sum_mmproj="${2:?}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
case "$size" in 256M|500M) ;; *) die "--size must be 256M or 500M" ;; esac
case "$quant" in Q8_0|f16) ;; *) die "--quant must be Q8_0 or f16" ;; esac
command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
command -v sha256sum >/dev/null || die "sha256sum is needed (coreutils)"

repo="ggml-org/SmolVLM-${size}-Instruct-GGUF"
[ -n "$base" ] || base="https://huggingface.co/${repo}/resolve/main"
base="${base%/}"
model="SmolVLM-${size}-Instruct-${quant}.gguf"
mmproj="mmproj-SmolVLM-${size}-Instruct-${quant}.gguf"
mkdir -p "$out"

CURL=(curl --fail --location --silent --show-error --retry 3 --connect-timeout 20)

# A SHA256SUMS at the base URL ("HEX  NAME" lines), if the mirror has one.
sums=""
if sums_text=$("${CURL[@]}" "$base/SHA256SUMS" 2>/dev/null); then
  sums="$sums_text"
fi

# expected_sum NAME GIVEN: the checksum to hold the file to.
expected_sum() {
  local name=$1 given=$2 s
  if [ -n "$given" ]; then echo "$given"; return; fi
  if [ -n "$sums" ]; then
    s=$(printf '%s\n' "$sums" | awk -v n="$name" '$2 == n || $2 == "*" n { print $1; exit }')
    [ -n "$s" ] && { echo "$s"; return; }
  fi
  case "$base" in
    http://*|https://*)
      s=$("${CURL[@]}" --head "$base/$name" 2>/dev/null | tr -d '\r' |
          awk 'tolower($1) == "x-linked-etag:" { gsub(/"/, "", $2); print $2 }' | tail -n 1)
      if printf '%s' "$s" | grep -Eq '^[0-9a-f]{64}$'; then echo "$s"; return; fi ;;
  esac
  echo ""
}

fetch() {
  local name=$1 given=$2 want dest="$out/$1"
  want=$(expected_sum "$name" "$given" | tr 'A-F' 'a-f')
  printf '%s' "$want" | grep -Eq '^[0-9a-f]{64}$' ||
    die "no SHA-256 for $name (give --sha256-model/--sha256-mmproj or put a SHA256SUMS next to the files)"
  if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want" ]; then
    echo "fetch-smolvlm: $dest is already there and checks out" >&2
    return
  fi
  echo "fetch-smolvlm: downloading $base/$name" >&2
  rm -f "$dest.part"
  "${CURL[@]}" --output "$dest.part" "$base/$name" || { rm -f "$dest.part"; die "download of $name failed"; }
  [ "$(head -c 4 "$dest.part")" = "GGUF" ] || { rm -f "$dest.part"; die "$name is not a GGUF file"; }
  local got
  got=$(sha256sum "$dest.part" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { rm -f "$dest.part"; die "$name: SHA-256 $got, expected $want"; }
  mv "$dest.part" "$dest"
  echo "fetch-smolvlm: $dest ($(wc -c < "$dest") bytes, SHA-256 ok)" >&2
}

fetch "$model" "$sum_model"
fetch "$mmproj" "$sum_mmproj"
echo "glimpse serve --model $out/$model --mmproj $out/$mmproj"
