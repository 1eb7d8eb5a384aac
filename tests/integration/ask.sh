#!/bin/sh
# ask.sh — `glimpse ask` from the outside: output shapes, --raw-prompt, errors.
# Run by `make check` (needs the tiny fixtures and Debian's python3 to read
# the JSON); exit status 0 = pass, 1 = fail.
set -u

GLIMPSE="${GLIMPSE_BUILDDIR:-.}/glimpse"
MODEL="${GLIMPSE_FIXTURES:-tests/fixtures}/tiny-f32.gguf"
PY="${PYTHON3:-/usr/bin/python3}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0

fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# run NAME EXPECTED_STATUS ARGS... — runs glimpse, keeps stdout/stderr in $TMP/NAME.{out,err}
run() {
    name=$1 want=$2
    shift 2
    "$GLIMPSE" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"
    got=$?
    [ "$got" = "$want" ] || fail "$name: exit status $got, expected $want (stderr: $(head -c 300 "$TMP/$name.err"))"
}

[ -x "$GLIMPSE" ] || { echo "FAIL: $GLIMPSE not built"; exit 1; }
[ -f "$MODEL" ] || { echo "FAIL: fixture $MODEL missing"; exit 1; }

# --json: one object with the documented fields and consistent values.
run json 0 ask --model "$MODEL" --prompt "Hello there" --max-tokens 12 --top-logprobs 3 --json --seed 1 --threads 2
"$PY" - "$TMP/json.out" <<'EOF' || fail "json: bad JSON shape"
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
assert len(lines) == 1, "expected exactly one line of output"
o = json.loads(lines[0])
assert set(o) >= {"text", "tokens", "usage", "timings"}, o.keys()
toks = o["tokens"]
assert len(toks) == o["usage"]["completion_tokens"] and 1 <= len(toks) <= 12
assert o["usage"]["prompt_tokens"] > 0
for t in toks:
    assert isinstance(t["id"], int) and isinstance(t["text"], str)
    assert t["logprob"] <= 0
    assert len(t["top_logprobs"]) == 3
    lps = [a["logprob"] for a in t["top_logprobs"]]
    assert lps == sorted(lps, reverse=True), lps
    for a in t["top_logprobs"]:
        assert set(a) == {"id", "text", "logprob"}
    # greedy (default --temp 0): the chosen token is the likeliest one
    assert t["top_logprobs"][0]["id"] == t["id"]
if len(toks) == 12:
    assert o["finish_reason"] == "length"
    # every token's text ends up in the text when no stop string applies
    assert o["text"] == "".join(t["text"] for t in toks), (o["text"], [t["text"] for t in toks])
for k in ("load_ms", "prefill_ms", "decode_ms"):
    assert o["timings"][k] >= 0
EOF

# Plain mode prints the same text (plus a newline) and nothing else on stdout.
run plain 0 ask --model "$MODEL" --prompt "Hello there" --max-tokens 12 --seed 1 --threads 2
"$PY" - "$TMP/json.out" "$TMP/plain.out" <<'EOF' || fail "plain: text differs from --json text"
import json, sys
o = json.loads(open(sys.argv[1], encoding="utf-8").read())
plain = open(sys.argv[2], encoding="utf-8").read()
assert plain == o["text"] + "\n", (plain, o["text"])
EOF
grep -q "prompt" "$TMP/plain.err" || fail "plain: no summary on stderr"

# --raw-prompt skips the chat template: fewer prompt tokens for the same text,
# and the same result as the rendered template given raw.
run raw 0 ask --model "$MODEL" --prompt "Hello there" --raw-prompt --max-tokens 4 --json
run templ 0 ask --model "$MODEL" --raw-prompt --max-tokens 4 --json \
    --prompt "<|im_start|>User: Hello there<end_of_utterance>
Assistant:"
"$PY" - "$TMP/raw.out" "$TMP/json.out" "$TMP/templ.out" <<'EOF' || fail "raw-prompt: prompt token counts"
import json, sys
raw, chat, templ = (json.loads(open(p, encoding="utf-8").read()) for p in sys.argv[1:4])
assert raw["usage"]["prompt_tokens"] < chat["usage"]["prompt_tokens"]
assert templ["usage"]["prompt_tokens"] == chat["usage"]["prompt_tokens"]
assert [t["id"] for t in templ["tokens"]] == [t["id"] for t in chat["tokens"][:4]]
EOF

# Bad command lines and files: non-zero exit and a message on stderr.
bad() {
    name=$1 want=$2 msg=$3
    shift 3
    run "$name" "$want" "$@"
    grep -q -- "$msg" "$TMP/$name.err" || fail "$name: stderr lacks '$msg': $(head -c 300 "$TMP/$name.err")"
    [ ! -s "$TMP/$name.out" ] || fail "$name: wrote to stdout"
}
bad no_prompt 2 "required" ask --model "$MODEL"
bad bad_int 2 "max-tokens" ask --model "$MODEL" --prompt hi --max-tokens 12x
bad zero_tokens 2 "max-tokens" ask --model "$MODEL" --prompt hi --max-tokens 0
bad bad_temp 2 "temp" ask --model "$MODEL" --prompt hi --temp -1
bad bad_top 2 "top-logprobs" ask --model "$MODEL" --prompt hi --top-logprobs 21
bad unknown_opt 2 "unknown option" ask --model "$MODEL" --prompt hi --frobnicate
bad missing_value 2 "needs a value" ask --model "$MODEL" --prompt
bad extra_arg 2 "unexpected argument" ask --model "$MODEL" --prompt hi extra
bad unknown_cmd 2 "unknown command" frobnicate
bad no_file 1 "cannot load" ask --model "$TMP/does-not-exist.gguf" --prompt hi
printf 'GGUF\003\000\000\000garbage' >"$TMP/garbage.gguf"
bad garbage 1 "cannot load" ask --model "$TMP/garbage.gguf" --prompt hi
bad vocab_only 1 "cannot load" ask --model "${GLIMPSE_FIXTURES:-tests/fixtures}/vocab.gguf" --prompt hi
bad small_ctx 1 "context" ask --model "$MODEL" --prompt "Hello there, how are you today" --ctx-size 4

# Without --model: the bundled demo model next to the program. A copy of the
# program with no models/ beside it (and none in the working directory) says so.
cp "$GLIMPSE" "$TMP/glimpse-alone"
(cd "$TMP" && ./glimpse-alone ask --prompt hi >"$TMP/nodemo.out" 2>"$TMP/nodemo.err")
[ $? = 2 ] || fail "nodemo: exit status, expected 2"
grep -q "demo model" "$TMP/nodemo.err" || fail "nodemo: stderr lacks 'demo model': $(head -c 300 "$TMP/nodemo.err")"
DEMO="${GLIMPSE_SRCDIR:-.}/models/glimpse-shapes.gguf"
if [ -f "$DEMO" ]; then
    # the demo model answers about a picture of two shapes (right or wrong: this
    # checks the default path; tools/shapes/eval.py measures accuracy)
    mkdir -p "$TMP/demo/models"
    cp "$GLIMPSE" "$TMP/demo/glimpse"
    ln -s "$(cd "$(dirname "$DEMO")" && pwd)"/glimpse-shapes*.gguf "$TMP/demo/models/"
    "$PY" -c "
from PIL import Image, ImageDraw
im = Image.new('RGB', (160, 120), (250, 248, 240)); d = ImageDraw.Draw(im)
d.ellipse((15, 30, 55, 70), fill=(220, 30, 30)); d.rectangle((90, 45, 130, 85), fill=(30, 60, 220))
im.save('$TMP/two.png')"
    "$TMP/demo/glimpse" ask --image "$TMP/two.png" --prompt "How many shapes are there?" --max-tokens 4 \
        >"$TMP/demo.out" 2>"$TMP/demo.err" || fail "demo: $(head -c 300 "$TMP/demo.err")"
    grep -Eq '^ ?(one|two|three)$' "$TMP/demo.out" || fail "demo: answer '$(cat "$TMP/demo.out")' is not a count"
fi

run help 0 ask --help
grep -q -- "--raw-prompt" "$TMP/help.out" || fail "help: no usage on stdout"

if [ "$failures" -ne 0 ]; then
    echo "ask.sh: $failures failure(s)"
    exit 1
fi
echo "ask.sh: all checks passed"
