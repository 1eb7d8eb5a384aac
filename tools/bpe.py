#!/usr/bin/python3
"""bpe.py — byte-level BPE for Glimpse: a trainer and a pure-Python encoder/decoder.

The encoder follows llama.cpp's `tokenizer.ggml.model = gpt2` tokenizer with the
`smollm` (or `gpt-2`) pre-tokenizer, step for step, so that it can serve as an
independent check of engine/tokenizer.c:

  1. special-token partition: CONTROL / USER_DEFINED / UNKNOWN token texts are
     cut out of the text literally, longest first (CONTROL and UNKNOWN only when
     parse_special is set);
  2. each remaining fragment is decoded leniently from UTF-8 (an invalid byte
     becomes U+FFFD; overlong forms and surrogates are accepted as decoded);
  3. pre-tokenization: `smollm` first isolates every \\p{N} code point, then the
     GPT-2 pattern 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
     splits each piece into words;
  4. each word's UTF-8 bytes are mapped to the GPT-2 byte characters and merged
     by lowest merge rank (ties: leftmost); a final symbol missing from the
     vocabulary falls back to its single bytes, and a byte whose one-byte
     string is not a token is dropped (what llama.cpp does).

Unicode categories come from this Python's `unicodedata` (Debian python3 3.11:
Unicode 14.0); llama.cpp's own tables may be newer, so text using code points
assigned after 14.0 may split differently.

Library use (tools/make_model.py, tools/shapes/):
    tok = train(texts, vocab_size, specials=SMOLVLM_SPECIALS)
    ids = encode(tok, "text", parse_special=True)
    text = decode(tok, ids)            # bytes-exact inverse for normal text
Command line:
    bpe.py train -o tok.json [--vocab-size N] FILE...   train on text files
    bpe.py encode tok.json TEXT                         print ids
    bpe.py test-vocab -o tests/data/tokenizer.json      the test vocabulary
"""

import collections
import heapq
import json
import sys
import unicodedata

# token types (include/llama.h: llama_token_type)
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# SmolVLM's added tokens in vocabulary order, with the types that
# convert_hf_to_gguf's get_vocab_base gives them: tokens HF marks special (or
# that look like <|...|>) are CONTROL, the image-grid tokens are plain added
# tokens and so USER_DEFINED.
SMOLVLM_SPECIALS = (
    [(t, TOKEN_CONTROL) for t in (
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>",
        "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>",
        "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
        "<jupyter_output>", "<jupyter_script>", "<empty_output>")]
    + [("<global-img>", TOKEN_USER_DEFINED)]
    + [("<row_%d_col_%d>" % (r, c), TOKEN_USER_DEFINED) for r in range(1, 7) for c in range(1, 7)]
    + [("<fake_token_around_image>", TOKEN_CONTROL), ("<image>", TOKEN_CONTROL),
       ("<end_of_utterance>", TOKEN_CONTROL)]
)

# SmolVLM's chat template (HuggingFaceTB/SmolVLM-*-Instruct, chat_template.json).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


# ---------------------------------------------------------------------------
# byte <-> unicode map (GPT-2's bytes_to_unicode)

def _byte_chars():
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {}
    n = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + n)
            n += 1
    return table


BYTE_TO_CHAR = _byte_chars()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


# ---------------------------------------------------------------------------
# Unicode: lenient UTF-8 and code point classes

F_LETTER, F_NUMBER, F_WHITESPACE, F_OTHER = 1, 2, 4, 8

WHITESPACE = set(range(0x09, 0x0E)) | set(range(0x2000, 0x200B)) | {
    0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}


def cpt_class(c):
    """F_LETTER, F_NUMBER, F_WHITESPACE or F_OTHER (every code point, even an
    unassigned or out-of-range one, has some class inside a fragment)."""
    if c in WHITESPACE:
        return F_WHITESPACE
    if c >= 0x110000:
        return F_OTHER
    cat = unicodedata.category(chr(c))
    if cat[0] == "L":
        return F_LETTER
    if cat[0] == "N":
        return F_NUMBER
    return F_OTHER


def utf8_decode(data):
    """Code points of data (bytes) the way llama.cpp's unicode_cpts_from_utf8
    reads them: only the lead byte's length and the continuation bytes are
    checked; anything else costs one byte and yields U+FFFD."""
    out = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            out.append(b)
            i += 1
            continue
        if b & 0x40 == 0:
            need = 0
        elif b & 0x20 == 0:
            need = 1
        elif b & 0x10 == 0:
            need = 2
        elif b & 0x08 == 0:
            need = 3
        else:
            need = 0
        if need == 0 or i + need >= n:
            # a stray continuation byte, an impossible lead byte, or a cut-off sequence
            out.append(0xFFFD)
            i += 1
            continue
        if any(data[i + k] & 0xC0 != 0x80 for k in range(1, need + 1)):
            out.append(0xFFFD)
            i += 1
            continue
        c = b & (0x7F >> (need + 1))
        for k in range(1, need + 1):
            c = (c << 6) | (data[i + k] & 0x3F)
        out.append(c)
        i += need + 1
    return out


def utf8_encode(cpts):
    """UTF-8 bytes of code points, surrogates included (no validity checks)."""
    out = bytearray()
    for c in cpts:
        if c < 0x80:
            out.append(c)
        elif c < 0x800:
            out += bytes((0xC0 | c >> 6, 0x80 | c & 0x3F))
        elif c < 0x10000:
            out += bytes((0xE0 | c >> 12, 0x80 | c >> 6 & 0x3F, 0x80 | c & 0x3F))
        elif c < 0x110000:
            out += bytes((0xF0 | c >> 18, 0x80 | c >> 12 & 0x3F, 0x80 | c >> 6 & 0x3F, 0x80 | c & 0x3F))
        else:
            raise ValueError("code point U+%X beyond U+10FFFF" % c)
    return bytes(out)


# ---------------------------------------------------------------------------
# pre-tokenizers: lists of code point lists

def _split_digits(cpts):
    """smollm's first pass (\\p{N}): every number code point is its own piece."""
    pieces, run = [], []
    for c in cpts:
        if cpt_class(c) == F_NUMBER:
            if run:
                pieces.append(run)
                run = []
            pieces.append([c])
        else:
            run.append(c)
    if run:
        pieces.append(run)
    return pieces


def _split_gpt2(cpts):
    """The GPT-2 pattern over one piece (no look outside it)."""
    n = len(cpts)
    cls = [cpt_class(c) for c in cpts] + [0]  # 0: past the end, matches nothing
    words = []
    start = pos = 0
    while pos < n:
        c = cpts[pos]
        if c == 0x27 and pos + 1 < n:  # 's 't 'm 'd 're 've 'll (lower case only)
            nx = cpts[pos + 1]
            if nx in (0x73, 0x74, 0x6D, 0x64):
                pos += 2
                words.append(cpts[start:pos])
                start = pos
                continue
            if pos + 2 < n and (nx, cpts[pos + 2]) in ((0x72, 0x65), (0x76, 0x65), (0x6C, 0x6C)):
                pos += 3
                words.append(cpts[start:pos])
                start = pos
                continue
        f = cls[pos + 1] if c == 0x20 else cls[pos]
        if f in (F_LETTER, F_NUMBER, F_OTHER):  # ' ?' then a run of that class
            if c == 0x20:
                pos += 1
            while cls[pos] == f:
                pos += 1
            words.append(cpts[start:pos])
            start = pos
            continue
        nws = 0
        while cls[pos + nws] == F_WHITESPACE:
            nws += 1
        if nws > 1 and pos + nws < n:  # \s+(?!\S): leave the last one to the next word
            pos += nws - 1
        elif nws > 0:
            pos += nws
        else:
            pos += 1
        words.append(cpts[start:pos])
        start = pos
    return words


def pretokenize(cpts, pre="smollm"):
    """Words (code point lists) of one text fragment."""
    if pre == "smollm":
        pieces = _split_digits(cpts)
    elif pre == "gpt-2":
        pieces = [cpts]
    else:
        raise ValueError("unknown pre-tokenizer type: '%s'" % pre)
    words = []
    for p in pieces:
        words.extend(_split_gpt2(p))
    return words


def byte_encode(cpts):
    return "".join(BYTE_TO_CHAR[b] for b in utf8_encode(cpts))


# ---------------------------------------------------------------------------
# encoder

# Token texts llama.cpp's vocabulary loader makes CONTROL (src/llama-vocab.cpp:
# load): every end-of-generation text, and for each role (EOT, EOM, FIM pre /
# suffix / middle / pad / repo / sep) the first token having one of its texts
# (here: the lowest id; the file's *_token_id keys are not consulted).
EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[")
ROLE_TEXTS = (
    ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
     "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>"),
    ("<|eom_id|>",),
    ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>", "\u2581<PRE>",
     "<|code_prefix|>", "<|prefix|>"),
    ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>", "\u2581<SUF>",
     "<|code_suffix|>", "<|suffix|>"),
    ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>", "\u2581<MID>",
     "<|code_middle|>", "<|middle|>"),
    ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    ("<|file_sep|>",),
)


class _Tables:
    """Lookup tables built once per tokenizer dict (cached on it)."""

    def __init__(self, tok):
        # an empty token is renamed like llama.cpp does
        self.texts = [t if t else "[EMPTY_%d]" % i for i, t in enumerate(tok["tokens"])]
        self.token_to_id = {}
        for i, t in enumerate(self.texts):
            self.token_to_id[t] = i  # a later duplicate wins, as in llama.cpp's map
        self.ranks = {}
        for i, m in enumerate(tok["merges"]):
            sp = m.find(" ", 1)
            pair = (m[:sp], m[sp + 1:]) if sp >= 0 else ("", "")
            self.ranks.setdefault(pair, i)
        self.control = {self.token_to_id[t] for t in EOG_TEXTS if t in self.token_to_id}
        for texts in ROLE_TEXTS:
            ids = [self.token_to_id[t] for t in texts if t in self.token_to_id]
            if ids:
                self.control.add(min(ids))
        types = tok["token_type"]
        # CONTROL-like: rendered and matched only when special parsing is on
        self.ctl = [t in (TOKEN_CONTROL, TOKEN_UNKNOWN) or i in self.control for i, t in enumerate(types)]
        special = [i for i, t in enumerate(types) if self.ctl[i] or t == TOKEN_USER_DEFINED]
        # longest text first; equal lengths by id (llama.cpp leaves them unordered)
        self.specials = sorted(special, key=lambda i: (-len(self.texts[i].encode()), i))


def _tables(tok):
    t = tok.get("_tables")
    if t is None:
        t = _Tables(tok)
        tok["_tables"] = t
    return t


def partition(tok, data, parse_special=True):
    """Splits bytes into a list of bytes fragments and int token ids."""
    tb = _tables(tok)
    frags = [data] if data else []
    for sid in tb.specials:
        if not parse_special and tb.ctl[sid]:
            continue
        text = tb.texts[sid].encode()
        out = []
        for f in frags:
            if isinstance(f, int):
                out.append(f)
                continue
            pos = 0
            while True:
                k = f.find(text, pos)
                if k < 0:
                    break
                if k > pos:
                    out.append(f[pos:k])
                out.append(sid)
                pos = k + len(text)
            if pos < len(f):
                out.append(f[pos:])
        frags = out
    return frags


def bpe_word(tok, word):
    """Ids of one byte-encoded word."""
    tb = _tables(tok)
    syms = list(word)
    if len(syms) > 1:
        # merge lowest rank first, leftmost on ties, with a heap of candidate
        # pairs (stale entries are recognised by their text)
        nxt = list(range(1, len(syms))) + [-1]
        prv = list(range(-1, len(syms) - 1))
        heap = []

        def push(a, b):
            if a < 0 or b < 0:
                return
            r = tb.ranks.get((syms[a], syms[b]))
            if r is not None:
                heapq.heappush(heap, (r, a, b, syms[a] + syms[b]))

        for i in range(len(syms) - 1):
            push(i, i + 1)
        while heap:
            r, a, b, text = heapq.heappop(heap)
            if not syms[a] or not syms[b] or syms[a] + syms[b] != text:
                continue
            syms[a] = text
            syms[b] = ""
            nxt[a] = nxt[b]
            if nxt[b] >= 0:
                prv[nxt[b]] = a
            push(prv[a], a)
            push(a, nxt[a])
    ids = []
    for s in syms:
        if not s:
            continue
        i = tb.token_to_id.get(s)
        if i is not None:
            ids.append(i)
            continue
        for b in s.encode():  # llama.cpp looks up each single byte as a string
            i = tb.token_to_id.get(chr(b)) if b < 0x80 else None
            if i is not None:
                ids.append(i)
    return ids


def encode(tok, text, parse_special=True, add_special=False):
    """Token ids of text (str or bytes) as llama.cpp's llama_tokenize gives them."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    ids = []
    if add_special and tok.get("add_bos_token", False):
        ids.append(tok["bos_token_id"])
    pre = tok.get("pre", "smollm")
    for frag in partition(tok, data, parse_special):
        if isinstance(frag, int):
            ids.append(frag)
            continue
        for w in pretokenize(utf8_decode(frag), pre):
            ids.extend(bpe_word(tok, byte_encode(w)))
    if add_special and tok.get("add_eos_token", False):
        ids.append(tok["eos_token_id"])
    return ids


def piece(tok, i, special=True):
    """Bytes of one token (llama.cpp's token_to_piece)."""
    tb = _tables(tok)
    t = tok["token_type"][i]
    text = tb.texts[i]
    if tb.ctl[i]:
        return text.encode() if special else b""
    if t == TOKEN_USER_DEFINED:
        return text.encode()
    if t == TOKEN_NORMAL:
        out = bytearray()
        for c in text:
            if c in CHAR_TO_BYTE:
                out.append(CHAR_TO_BYTE[c])
            else:  # not a byte character: llama.cpp writes this marker
                out += b"[UNK_BYTE_0x" + c.encode().hex().encode() + text.encode() + b"]"
        return bytes(out)
    if t == TOKEN_BYTE:  # "<0x0A>": the hex digits at [3:5], as strtol reads them
        digits = ""
        for c in text[3:5]:
            if c not in "0123456789abcdefABCDEF":
                break
            digits += c
        return bytes((int(digits, 16) if digits else 0,))
    return b""  # UNUSED, UNDEFINED


def decode(tok, ids, special=True):
    """Bytes of a token sequence, decoded as UTF-8 with U+FFFD for bad bytes."""
    return b"".join(piece(tok, i, special) for i in ids).decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# trainer

def train(texts, vocab_size, specials=SMOLVLM_SPECIALS, pre="smollm",
          required=("\n\n",), chat_template=SMOLVLM_CHAT_TEMPLATE,
          bos="<|im_start|>", eos="<end_of_utterance>", unk="<|endoftext|>", pad="<|im_end|>"):
    """Trains a byte-level BPE vocabulary of vocab_size tokens on texts (str).

    Vocabulary order: the specials (a list of (text, type) or plain texts,
    which are CONTROL), the 256 byte characters, then one token per merge.
    Every string in `required` gets its merges first so that it is one token.
    bos/eos/unk/pad name special texts (None: no such key). Returns the
    tokenizer dict of the team contract."""
    spec = [(s, TOKEN_CONTROL) if isinstance(s, str) else tuple(s) for s in specials]
    tokens = [s for s, _ in spec] + [BYTE_TO_CHAR[b] for b in range(256)]
    types = [t for _, t in spec] + [TOKEN_NORMAL] * 256
    if vocab_size < len(tokens):
        raise ValueError("vocab_size %d below the %d base tokens" % (vocab_size, len(tokens)))
    merges = []
    known = set(tokens)

    def add_merge(a, b):
        merges.append(a + " " + b)
        tokens.append(a + b)
        types.append(TOKEN_NORMAL)
        known.add(a + b)

    for r in required:
        syms = list(byte_encode(utf8_decode(r.encode())))
        while len(syms) > 1:
            a, b = syms[0], syms[1]
            if a + b not in known:
                add_merge(a, b)
            syms[:2] = [a + b]

    # word frequencies after the special partition and pre-tokenization
    stub = {"tokens": tokens, "token_type": types, "merges": [], "pre": pre}
    counts = collections.Counter()
    for text in texts:
        for frag in partition(stub, text.encode("utf-8", "surrogatepass"), True):
            if isinstance(frag, bytes):
                for w in pretokenize(utf8_decode(frag), pre):
                    counts[byte_encode(w)] += 1
    words = [list(w) for w in counts]
    freq = [counts[w] for w in counts]

    # apply the required merges to the words first
    for m in merges:
        a, b = m.split(" ", 1)
        for sy in words:
            i = 0
            while i < len(sy) - 1:
                if sy[i] == a and sy[i + 1] == b:
                    sy[i:i + 2] = [a + b]
                i += 1

    pair_count = collections.Counter()
    where = collections.defaultdict(set)
    for wi, sy in enumerate(words):
        for i in range(len(sy) - 1):
            pair_count[sy[i], sy[i + 1]] += freq[wi]
            where[sy[i], sy[i + 1]].add(wi)

    # max-heap of (count, pair) with lazy deletion: an entry is current only
    # if its count still equals pair_count[pair]; ties go to the smaller text
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    def bump(p, d):
        c = pair_count[p] + d
        if c > 0:
            pair_count[p] = c
            if d > 0:
                heapq.heappush(heap, (-c, p))
        else:
            del pair_count[p]

    while len(tokens) < vocab_size and heap:
        c, best = heapq.heappop(heap)
        if pair_count.get(best) != -c:
            if best in pair_count:  # count went down: requeue at its true count
                heapq.heappush(heap, (-pair_count[best], best))
            continue
        if -c < 2:
            break
        a, b = best
        if a + b in known:
            # the pair's text is already a token (e.g. a required string): record
            # the merge rank without a duplicate token
            merges.append(a + " " + b)
        else:
            add_merge(a, b)
        for wi in list(where.pop(best, ())):
            sy = words[wi]
            f = freq[wi]
            for i in range(len(sy) - 1):
                bump((sy[i], sy[i + 1]), -f)
            i = 0
            out = []
            while i < len(sy):
                if i < len(sy) - 1 and sy[i] == a and sy[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sy[i])
                    i += 1
            words[wi] = out
            for i in range(len(out) - 1):
                bump((out[i], out[i + 1]), f)
                where[out[i], out[i + 1]].add(wi)

    def special_id(text):
        return tokens.index(text) if text is not None else None

    tok = {"model": "gpt2", "pre": pre, "tokens": tokens, "token_type": types, "merges": merges}
    for key, text in (("bos_token_id", bos), ("eos_token_id", eos),
                      ("unknown_token_id", unk), ("padding_token_id", pad)):
        if text is not None:
            tok[key] = special_id(text)
    if chat_template is not None:
        tok["chat_template"] = chat_template
    return tok


def save(tok, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in tok.items() if not k.startswith("_")}, f,
                  ensure_ascii=False, indent=0)
        f.write("\n")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# Multilingual sentences for the test vocabulary: accents, Greek, Cyrillic,
# CJK, Arabic, Devanagari, emoji (all assigned before Unicode 14.0).
_SAMPLES = [
    "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë au delà des îles.",
    "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg. Straße, Grüße, Äpfel.",
    "El pingüino Wenceslao hizo kilómetros bajo exhaustiva lluvia y frío, añoraba a su querido cachorro.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Широкая электрификация южных губерний.",
    "我能吞下玻璃而不伤身体。敏捷的棕色狐狸跳过了懒狗。今天天气很好，我们去公园散步吧。",
    "いろはにほへと ちりぬるを わかよたれそ つねならむ。私はガラスを食べられます。",
    "다람쥐 헌 쳇바퀴에 타고파. 나는 유리를 먹을 수 있어요. 그래도 아프지 않아요.",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني. نص حكيم له سر قاطع وذو شأن عظيم.",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती। ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले।",
    "Emoji: 😀 😂 🎉 👍 🚀 ❤️ 🐍 🌍 👨‍👩‍👧 🇫🇷 ✨ 🔥 ☕ 🍕",
    "Math: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ = ½; π ≈ 3.14159; ∞ ≠ ∅; ⅓ + ⅔ = 1; Ⅻ o'clock.",
    "Quotes «guillemets» „Anführungszeichen“ ‘single’ “double” — dashes – and … ellipses.",
]

_CODE = """
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

int main(int argc, char **argv) {
\tfor (int i = 0; i < argc; i++) {
\t\tprintf("%s\\n", argv[i]);
\t}
\treturn 0;
}
SELECT id, name FROM users WHERE age >= 18 ORDER BY name;  -- comment
{"key": [1, 2, 3], "nested": {"a": true, "b": null}}
x = [i ** 2 for i in range(10) if i % 2 == 0]   # trailing spaces   
"""


def test_corpus():
    """The texts tests/data/tokenizer.json is trained on: the licence texts of
    /usr/share/common-licenses, docstrings of Python's standard library, and
    generated multilingual, numeric, code and whitespace text (seeded, so the
    result is reproducible on the same machine)."""
    import glob
    import os
    import random
    import pydoc
    texts = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p) and not os.path.islink(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    for name in ("os", "re", "json", "collections", "itertools", "functools", "string",
                 "textwrap", "pathlib", "argparse", "datetime", "unicodedata", "heapq"):
        try:
            texts.append(pydoc.render_doc(name, renderer=pydoc.plaintext))
        except Exception:  # a module missing from this Python: skip it
            pass
    rng = random.Random(1234)
    for _ in range(60):
        texts.append(" ".join(rng.sample(_SAMPLES, 5)))
        texts.append(_CODE)
        nums = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(40))
        texts.append(nums + " 3.14 2,718 1e-9 0x1F 2024-06-01 12:30:45 $9.99 50%")
        ws = "".join(rng.choice([" ", "  ", "\t", "\n", "\n\n", "\n\n\n", "    ", "word", "x"])
                     for _ in range(200))
        texts.append(ws)
        texts.append("User:<image>What is in this image?<end_of_utterance>\nAssistant: A red "
                     "circle and a blue square.<end_of_utterance>\n")
    return texts


def main(argv):
    if len(argv) == 4 and argv[1] == "test-vocab" and argv[2] == "-o":
        save(train(test_corpus(), 4000), argv[3])
        return 0
    if len(argv) >= 2 and argv[1] == "encode" and len(argv) == 4:
        print(" ".join(str(i) for i in encode(load(argv[2]), argv[3])))
        return 0
    if len(argv) >= 4 and argv[1] == "train" and argv[2] == "-o":
        out, rest, size = argv[3], argv[4:], 4000
        if len(rest) >= 2 and rest[0] == "--vocab-size":
            size, rest = int(rest[1]), rest[2:]
        texts = []
        for p in rest:
            with open(p, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
        save(train(texts, size), out)
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
