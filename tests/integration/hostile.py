#!/usr/bin/python3
"""hostile.py — issue 9's bad-input suite over HTTP (beyond the table of
tests/integration/server.test.mjs): hostile JSON, hostile HTTP framing,
slow-drip clients, hostile pictures, hostile multipart, hostile limits and
clients that hang up at every phase, against a real `glimpse serve` on a free
127.0.0.1 port. Every case expects the right 4xx (or a finished 200 where
that is the right answer), and after EVERY case the server must still answer
/health and a greedy request with the same text as before the attacks.

Python stdlib only; raw sockets so that malformed HTTP can be sent at all.
Environment: GLIMPSE_BIN (default ./glimpse), GLIMPSE_FIXTURES (default
tests/fixtures; needs the server-tiny* fixtures). Exit status 0 = pass.
"""
import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

BIN = os.environ.get("GLIMPSE_BIN") or os.path.join(os.environ.get("GLIMPSE_BUILDDIR", "."), "glimpse")
FIX = os.environ.get("GLIMPSE_FIXTURES", "tests/fixtures")
KEY = "sk-hostile-0123"
TIMEOUT_S = 2          # --timeout: a silent (slow-drip) connection is closed after this
MAX_CONN = 24          # --max-connections
CTX = 256              # --ctx-size: small, so that "over the context" is cheap
SERVER_ARGS = ["--model", os.path.join(FIX, "server-tiny.gguf"),
               "--mmproj", os.path.join(FIX, "server-tiny-mmproj.gguf"), "--api-key", KEY,
               "--threads", "2", "--ctx-size", str(CTX), "--max-body-mb", "2", "--max-images", "4",
               "--max-image-pixels", "100000", "--timeout", str(TIMEOUT_S), "--max-connections", str(MAX_CONN),
               "--parallel", "1", "--queue-size", "4", "--sse-keepalive-ms", "100", "--log-level", "warn"]
PNG = open(os.path.join(FIX, "server-shapes.png"), "rb").read()
JPG = open(os.path.join(FIX, "server-shapes.jpg"), "rb").read()
PORT = None
CHAT = "/v1/chat/completions"


# ---- raw HTTP -----------------------------------------------------------------------

def connect(timeout=20.0):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(s, limit_s=30.0):
    """Everything until the server closes (every request here says Connection: close)."""
    data, end = b"", time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            break
        if not b:
            break
        data += b
    return data


def dechunk(body):
    out = b""
    while body:
        line, _, rest = body.partition(b"\r\n")
        n = int(line.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


def parse(raw):
    """-> (status, headers dict lower-case, body bytes); status 0 when nothing came back."""
    head, _, body = raw.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not m:
        return 0, {}, raw
    hdrs = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        hdrs[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return int(m.group(1)), hdrs, body


def send_raw(data, limit_s=30.0):
    s = connect()
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: read its answer
        return parse(read_all(s, limit_s))
    finally:
        s.close()


def framed(headers, body, close=True):
    """Raw bytes of a chat POST with the key, a JSON type, these framing
    headers ("Name: value\\r\\n" each) and body."""
    conn = "Connection: close\r\n" if close else ""
    return (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\n{conn}Authorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\n{headers}\r\n").encode() + body


def request(method, path, body=b"", ctype="application/json", headers=(), auth=True):
    if isinstance(body, str):
        body = body.encode()
    h = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{PORT}", "Connection: close"]
    if auth:
        h.append(f"Authorization: Bearer {KEY}")
    if ctype:
        h.append(f"Content-Type: {ctype}")
    if method == "POST":
        h.append(f"Content-Length: {len(body)}")
    h += list(headers)
    return send_raw(("\r\n".join(h) + "\r\n\r\n").encode("latin-1") + body)


def chat(obj, **kw):
    return request("POST", CHAT, obj if isinstance(obj, (bytes, str)) else json.dumps(obj), **kw)


def msg(content):
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}


def img(url, text="What is it?"):
    return msg([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}])


def uri(b, mime="image/png"):
    return f"data:{mime};base64,{base64.b64encode(b).decode()}"


# ---- hand-built pictures --------------------------------------------------------------

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w, h):
    """A PNG that claims w x h RGB pixels but carries one compressed row: the
    decoder must refuse it from the header, before allocating w*h*3 bytes."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def png_rgb(w, h):
    raw = b"".join(b"\0" + b"\x80\x40\x20" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def jpeg_with_size(w, h):
    """The fixture JPEG with its SOF0 frame size rewritten to w x h."""
    b = bytearray(JPG)
    i = 2
    while i + 4 < len(b):
        marker, seglen = b[i + 1], struct.unpack(">H", b[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 9] = struct.pack(">HH", h, w)
            return bytes(b)
        i += 2 + seglen
    raise RuntimeError("no SOF in the fixture JPEG")


TINY = png_rgb(2, 2)
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


# ---- multipart ---------------------------------------------------------------------

def form(parts, boundary="hostileBOUNDARY", eol=b"\r\n"):
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary.encode() + eol + b"Content-Disposition: " + disp.encode() + eol + eol
        out += (value if isinstance(value, bytes) else value.encode()) + eol
    return out + b"--" + boundary.encode() + b"--" + eol


MP = "multipart/form-data; boundary=hostileBOUNDARY"


# ---- slow and vanishing clients ------------------------------------------------------------

def closed_by_server(s, within):
    """True when the server closes s (EOF or reset) within `within` seconds."""
    s.settimeout(within)
    try:
        while True:
            b = s.recv(4096)
            if not b:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def goes_quiet(data, where):
    """Sends data, drips one more byte and goes quiet: the server must close
    the connection after --timeout idle seconds, not before. (--timeout is
    idle time: a byte per second would keep a connection for as long as it
    drips, which is what --max-connections bounds.)"""
    s = connect()
    try:
        s.sendall(data[:-1])
        time.sleep(0.2)
        s.sendall(data[-1:])
        t0 = time.monotonic()
        ok = closed_by_server(s, TIMEOUT_S + 4)
        return ok and time.monotonic() - t0 >= TIMEOUT_S - 0.5, f"idle {where} connection not closed in time"
    finally:
        s.close()


def slowloris_headers():
    return goes_quiet(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Drip: a".encode(), "mid-headers")


def slowloris_body():
    body = json.dumps(msg("hi")).encode()
    return goes_quiet(framed(f"Content-Length: {len(body)}\r\n", body[:10], close=False), "mid-body")


def slow_drip_under_timeout():
    """A slow but live client (a byte every 0.3 s, < --timeout) still gets its answer."""
    body = json.dumps(msg("hi")).encode()
    s = connect()
    try:
        s.sendall(framed(f"Content-Length: {len(body)}\r\n", body[:-6]))
        for i in range(6):
            time.sleep(0.3)
            s.sendall(body[len(body) - 6 + i:len(body) - 5 + i])
        st, _, b = parse(read_all(s))
        return st == 200 and json.loads(b)["choices"][0]["finish_reason"] in ("stop", "length"), f"got {st}"
    finally:
        s.close()


def smuggled_request():
    """A kept-alive GET whose second Content-Length covers another request:
    one answer (400) and a closed connection, not two answers."""
    inner = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    s = connect()
    try:
        s.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {len(inner)}\r\n\r\n"
                  f"{inner}".encode())
        raw = read_all(s, 10)
    finally:
        s.close()
    n = len(re.findall(rb"(?:^|\r\n)HTTP/1\.1 \d{3}", raw))
    return raw.startswith(b"HTTP/1.1 400") and n == 1, f"{n} answers: {raw[:300]!r}"


def connection_flood():
    """MAX_CONN + 16 silent connections: the surplus is refused or closed, the
    rest time out, and afterwards the server serves again."""
    socks = []
    try:
        for _ in range(MAX_CONN + 16):
            try:
                socks.append(connect(timeout=2))
            except OSError:
                pass
        time.sleep(0.3)
        closed = sum(closed_by_server(s, 0.05) for s in socks)
        if closed < 16 and len(socks) > MAX_CONN:
            return False, f"only {closed} of {len(socks)} connections beyond --max-connections {MAX_CONN} were closed"
        end = time.monotonic() + TIMEOUT_S + 5
        all_closed = all(closed_by_server(s, max(0.05, end - time.monotonic())) for s in socks)
        return all_closed, "idle connections were not timed out"
    finally:
        for s in socks:
            s.close()


def hangup_mid_headers():
    s = connect()
    s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Ty".encode())
    s.close()
    return True, ""


def hangup_mid_body():
    s = connect()
    s.sendall(framed("Content-Length: 5000\r\n", b'{"messages": [', close=False))
    s.close()
    return True, ""


def hangup_after_request():
    s = connect()
    body = json.dumps({**msg("a long answer please"), "max_tokens": 200}).encode()
    s.sendall(framed(f"Content-Length: {len(body)}\r\n", body, close=False))
    s.close()
    return True, ""


def stream_request(max_tokens=200):
    s = connect()
    body = json.dumps({**msg("talk"), "max_tokens": max_tokens, "stream": True}).encode()
    s.sendall(framed(f"Content-Length: {len(body)}\r\n", body))
    return s


def hangup_mid_stream():
    s = stream_request()
    s.settimeout(20)
    got = b""
    while b"data: {" not in got:
        b = s.recv(4096)
        if not b:
            return False, "stream ended before its first chunk"
        got += b
    s.close()
    return True, ""


def hangup_while_queued():
    """--parallel 1: one stream runs, three more wait in the queue and hang up."""
    running = stream_request(400)
    try:
        waiting = [stream_request(50) for _ in range(3)]
        time.sleep(0.3)
        for w in waiting:
            w.close()
        return True, ""
    finally:
        running.close()


def queue_overflow():
    """--parallel 1 --queue-size 4: the sixth concurrent request gets 429, none a 5xx."""
    socks = [stream_request(400) for _ in range(8)]
    try:
        sts = []
        for s in socks:
            s.settimeout(20)
            head = b""
            while b"\r\n" not in head:
                b = s.recv(4096)
                if not b:
                    break
                head += b
            m = re.match(rb"HTTP/1\.1 (\d{3})", head)
            sts.append(int(m.group(1)) if m else 0)
        return 429 in sts and all(st in (200, 429) for st in sts), f"statuses {sts}"
    finally:
        for s in socks:
            s.close()


# ---- the cases -------------------------------------------------------------------------

def nested(depth, o="[", c="]"):
    return o * depth + c * depth


BIG = 2 ** 63
CASES = [
    # name, thunk returning (status, headers, body) or (ok, why), expected status(es), expected error code(s)
    # -- hostile JSON
    ("nested arrays, depth 100000", lambda: chat(nested(100000)), 400, "invalid_json"),
    ("nested objects, depth 100000", lambda: chat('{"a":' * 100000 + "1" + "}" * 100000), 400, "invalid_json"),
    ("nesting as a message's content, depth 5000", lambda: chat('{"messages":[{"role":"user","content":' + nested(5000) + "}]}"), 400, "invalid_json"),
    ("nesting in an unknown field, depth 500", lambda: chat('{"messages":[{"role":"user","content":"hi"}],"x":' + nested(500) + "}"), 400, "unknown_parameter"),
    ("unclosed nesting, depth 100000", lambda: chat("[" * 100000), 400, "invalid_json"),
    ("a number with 100000 digits", lambda: chat('{"messages":[{"role":"user","content":"hi"}],"max_tokens":' + "9" * 100000 + "}"), 400, "invalid_value"),
    ("max_tokens 1e400 (overflows a double)", lambda: chat('{"messages":[{"role":"user","content":"hi"}],"max_tokens":1e400}'), 400, "invalid_value"),
    ("temperature 1e308", lambda: chat({**msg("hi"), "temperature": 1e308}), 400, "invalid_value"),
    ("temperature -1e-320 (denormal)", lambda: chat({**msg("hi"), "temperature": -1e-320}), 400, "invalid_value"),
    ("top_p 1e-400 (underflows to 0)", lambda: chat('{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"top_p":1e-400}'), (200, 400), None),
    ("seed 2^64", lambda: chat('{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"seed":18446744073709551616}'), 400, "invalid_value"),
    ("seed -1", lambda: chat({**msg("hi"), "seed": -1}), (200, 400), None),
    ("temperature NaN", lambda: chat('{"messages":[{"role":"user","content":"hi"}],"temperature":NaN}'), 400, "invalid_json"),
    ("temperature Infinity", lambda: chat('{"messages":[{"role":"user","content":"hi"}],"temperature":Infinity}'), 400, "invalid_json"),
    ("top_p -Infinity", lambda: chat('{"messages":[{"role":"user","content":"hi"}],"top_p":-Infinity}'), 400, "invalid_json"),
    ("temperature \"NaN\" as a string", lambda: chat({**msg("hi"), "temperature": "NaN"}), 400, "invalid_type"),
    ("max_tokens -1", lambda: chat({**msg("hi"), "max_tokens": -1}), 400, "invalid_value"),
    ("max_tokens 2^63", lambda: chat({**msg("hi"), "max_tokens": BIG}), 400, "invalid_value"),
    ("max_tokens 2^63-1", lambda: chat({**msg("hi"), "max_tokens": BIG - 1}), 400, "invalid_value"),
    ("max_completion_tokens 0", lambda: chat({**msg("hi"), "max_completion_tokens": 0}), 400, "invalid_value"),
    ("max_completion_tokens -2^63", lambda: chat({**msg("hi"), "max_completion_tokens": -BIG}), 400, "invalid_value"),
    ("n 2^63", lambda: chat({**msg("hi"), "n": BIG}), 400, "invalid_value"),
    ("top_logprobs -1", lambda: chat({**msg("hi"), "logprobs": True, "top_logprobs": -1}), 400, "invalid_value"),
    ("invalid UTF-8: a lone 0xff", lambda: chat(b'{"messages":[{"role":"user","content":"a\xffb"}]}'), 400, "invalid_json"),
    ("invalid UTF-8: overlong '/'", lambda: chat(b'{"messages":[{"role":"user","content":"\xc0\xaf"}]}'), 400, "invalid_json"),
    ("invalid UTF-8: an encoded surrogate", lambda: chat(b'{"messages":[{"role":"user","content":"\xed\xa0\x80"}]}'), 400, "invalid_json"),
    ("invalid UTF-8: cut at the end of a string", lambda: chat(b'{"messages":[{"role":"user","content":"\xe2\x82"}]}'), 400, "invalid_json"),
    ("invalid UTF-8 in a key", lambda: chat(b'{"messages":[{"role":"user","content":"hi"}],"\xfe":1}'), 400, "invalid_json"),
    ("invalid UTF-8 in a stop string", lambda: chat(b'{"messages":[{"role":"user","content":"hi"}],"stop":["\x80"]}'), 400, "invalid_json"),
    ("a lone surrogate escape \\ud800", lambda: chat('{"messages":[{"role":"user","content":"a\\ud800b"}],"max_tokens":2}'), 400, "invalid_json"),
    ("an escaped NUL in the prompt", lambda: chat('{"messages":[{"role":"user","content":"a\\u0000b"}],"max_tokens":2}'), (200, 400), None),
    ("a raw NUL byte in the body", lambda: chat(b'{"messages":[{"role":"user","content":"hi"}]}\x00junk'), 400, "invalid_json"),
    ("a UTF-8 BOM before the JSON", lambda: chat(b'\xef\xbb\xbf' + json.dumps(msg("hi")).encode()), (200, 400), None),
    ("duplicated key: messages twice", lambda: chat('{"messages":[{"role":"user","content":"a"}],"messages":[{"role":"user","content":"b"}],"max_tokens":2}'), 400, "invalid_value"),
    ("duplicated key: max_tokens 2 then -1", lambda: chat('{"messages":[{"role":"user","content":"a"}],"max_tokens":2,"max_tokens":-1}'), 400, "invalid_value"),
    ("duplicated key: role twice", lambda: chat('{"messages":[{"role":"user","role":"system","content":"a"}],"max_tokens":2}'), 400, "invalid_value"),
    ("duplicated key: include_usage twice in stream_options", lambda: chat('{"messages":[{"role":"user","content":"a"}],"max_tokens":2,"stream":true,"stream_options":{"include_usage":false,"include_usage":true}}'), 400, "invalid_value"),
    ("duplicated key: type twice in a content part", lambda: chat('{"messages":[{"role":"user","content":[{"type":"text","type":"image_url","text":"a"}]}],"max_tokens":2}'), 400, "invalid_value"),
    ("missing role", lambda: chat({"messages": [{"content": "hi"}]}), 400, "invalid_type"),
    ("missing content", lambda: chat({"messages": [{"role": "user"}]}), 400, "invalid_type"),
    ("content null", lambda: chat({"messages": [{"role": "user", "content": None}]}), 400, "invalid_type"),
    ("a part without type", lambda: chat(msg([{"text": "hi"}])), 400, "invalid_type"),
    ("a text part without text", lambda: chat(msg([{"type": "text"}])), 400, "invalid_type"),
    ("an image part without image_url", lambda: chat(msg([{"type": "image_url"}])), 400, "invalid_type"),
    ("image_url without url", lambda: chat(msg([{"type": "image_url", "image_url": {}}])), 400, "invalid_type"),
    ("duplicated key: url twice in image_url", lambda: chat(
        '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"%s","url":"%s"}}]}],"max_tokens":2}'
        % (uri(PNG), uri(JPG, "image/jpeg"))), 400, "invalid_value"),
    ("image_url a bare string", lambda: chat(msg([{"type": "image_url", "image_url": uri(PNG)}])), 400, "invalid_type"),
    ("only a system message", lambda: chat({"messages": [{"role": "system", "content": "be brief"}], "max_tokens": 2}), 200, None),
    ("a prompt over the context", lambda: chat(msg("the shapes " * 400)), 400, "context_length_exceeded"),
    ("a prompt that fits, max_tokens far past the context", lambda: chat({**msg("hi"), "max_tokens": 100000}), 200, None),
    ("1.5 MB of text (over --max-prompt-bytes, 1 MiB)", lambda: chat(msg("x" * 1500000)), 400, "context_length_exceeded"),
    ("a 3 MB body (over --max-body-mb 2)", lambda: chat(msg("x" * 3000000)), 413, "request_too_large"),
    # -- hostile HTTP framing
    ("a 1 MB single-line header", lambda: request("GET", "/health", headers=["X-Big: " + "a" * (1 << 20)], ctype=None), (400, 413, 431), None),
    ("10000 small headers", lambda: request("GET", "/health", headers=[f"X-H{i}: v" for i in range(10000)], ctype=None), (400, 413, 431), None),
    ("a 1 MB URL", lambda: request("GET", "/" + "a" * (1 << 20), ctype=None), (400, 404, 414, 431), None),
    ("a garbage request line", lambda: send_raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n"), (0, 400, 505), None),
    # 505 HTTP Version Not Supported is the one right 5xx (libmicrohttpd's own answer)
    ("HTTP/2 preface on a HTTP/1 port", lambda: send_raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), (0, 400, 505), None),
    ("Content-Length not a number", lambda: request("POST", CHAT, headers=["Content-Length: abc"]), (0, 400), None),
    # two lengths, or a length and an encoding: a front proxy that reads the other one would see a
    # second request in the body (request smuggling), so the request is refused and the connection closed
    ("two Content-Length headers that disagree", lambda: send_raw(framed(
        "Content-Length: 2\r\nContent-Length: 40\r\n", b"{}")), 400, "invalid_request"),
    ("Content-Length, then Transfer-Encoding", lambda: send_raw(framed(
        "Content-Length: 7\r\nTransfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n")), 400, "invalid_request"),
    ("Transfer-Encoding, then Content-Length", lambda: send_raw(framed(
        "Transfer-Encoding: chunked\r\nContent-Length: 7\r\n", b"2\r\n{}\r\n0\r\n\r\n")), 400, "invalid_request"),
    ("two Transfer-Encoding headers", lambda: send_raw(framed(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n")), 400, "invalid_request"),
    ("a request smuggled behind two Content-Lengths", smuggled_request, None, None),
    ("Content-Length 2^64", lambda: send_raw(framed(
        "Content-Length: 18446744073709551616\r\n", b"{}")), (0, 400, 413), None),
    ("a bad chunk size", lambda: send_raw(framed(
        "Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"), limit_s=TIMEOUT_S + 5), (0, 400), None),
    ("a chunk of 2^64-1 bytes", lambda: send_raw(framed(
        "Transfer-Encoding: chunked\r\n", b"ffffffffffffffff\r\n{}\r\n"), limit_s=TIMEOUT_S + 5), (0, 400, 413), None),
    ("Expect: 100-continue for 3 GB", lambda: send_raw(framed(
        "Expect: 100-continue\r\nContent-Length: 3000000000\r\n", b"")), 413, "request_too_large"),
    ("a NUL byte in a header value", lambda: request("GET", "/health", headers=["X-A: a\x00b"], ctype=None), (0, 200, 400), None),
    # -- slow and vanishing clients
    ("slowloris: headers stop mid-line", slowloris_headers, None, None),
    ("slowloris: body stops after 10 bytes", slowloris_body, None, None),
    ("a slow client under the timeout is served", slow_drip_under_timeout, None, None),
    (f"{MAX_CONN + 16} idle connections (--max-connections {MAX_CONN})", connection_flood, None, None),
    ("hang up mid-headers", hangup_mid_headers, None, None),
    ("hang up mid-body", hangup_mid_body, None, None),
    ("hang up after the request, before the answer", hangup_after_request, None, None),
    ("hang up while queued", hangup_while_queued, None, None),
    ("hang up mid-stream", hangup_mid_stream, None, None),
    ("a full queue: 429, never 5xx", queue_overflow, None, None),
    # -- hostile pictures
    ("a 20000 x 20000 PNG header", lambda: chat(img(uri(png_header_only(20000, 20000)))), 400, "image_too_large"),
    ("a 2^31-1 x 2^31-1 PNG header", lambda: chat(img(uri(png_header_only(2 ** 31 - 1, 2 ** 31 - 1)))), 400, ("image_too_large", "invalid_image")),
    ("a 0 x 0 PNG header", lambda: chat(img(uri(png_header_only(0, 0)))), 400, "invalid_image"),
    ("a 1 x 10^6 PNG (thin, over the pixel budget)", lambda: chat(img(uri(png_header_only(1, 1000000)))), 400, "image_too_large"),
    ("a 65000 x 65000 JPEG header", lambda: chat(img(uri(jpeg_with_size(65000, 65000), "image/jpeg"))), 400, "image_too_large"),
    ("a 0 x 0 JPEG header", lambda: chat(img(uri(jpeg_with_size(0, 0), "image/jpeg"))), 400, "invalid_image"),
    ("a PNG cut after the signature", lambda: chat(img(uri(PNG[:8]))), 400, "invalid_image"),
    ("a PNG cut mid-IDAT", lambda: chat(img(uri(PNG[:len(PNG) // 2]))), 400, "invalid_image"),
    ("a PNG without IEND", lambda: chat(img(uri(PNG[:-12]))), (200, 400), None),
    ("a PNG with a bad IHDR CRC", lambda: chat(img(uri(PNG[:29] + bytes([PNG[29] ^ 0xff]) + PNG[30:]))), 400, "invalid_image"),
    ("a JPEG cut after SOI", lambda: chat(img(uri(JPG[:2], "image/jpeg"))), 400, "invalid_image"),
    ("a JPEG cut at 200 bytes (in the tables)", lambda: chat(img(uri(JPG[:200], "image/jpeg"))), 400, "invalid_image"),
    ("a JPEG cut mid-scan", lambda: chat(img(uri(JPG[:len(JPG) * 2 // 3], "image/jpeg"))), (200, 400), None),
    ("data: URI says png, bytes are JPEG (sniffed, served)", lambda: chat(img(uri(JPG, "image/png"))), 200, None),
    ("data: URI says jpeg, bytes are GIF", lambda: chat(img(uri(GIF, "image/jpeg"))), 400, "invalid_image"),
    ("data: URI says png, bytes are JSON", lambda: chat(img(uri(b'{"a":1}'))), 400, "invalid_image"),
    ("data: URI without ;base64", lambda: chat(img("data:image/png," + PNG[:16].hex())), 400, "invalid_image_url"),
    ("data: URI with an empty payload", lambda: chat(img("data:image/png;base64,")), 400, "invalid_image"),
    ("data: URI with base64 cut mid-quantum", lambda: chat(img(uri(PNG)[:-3])), 400, None),
    ("1000 tiny images", lambda: chat(msg([{"type": "image_url", "image_url": {"url": uri(TINY)}}] * 1000 + [{"type": "text", "text": "?"}])), 400, "too_many_images"),
    ("1000 tiny images spread over 1000 messages", lambda: chat({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri(TINY)}}]}] * 1000, "max_tokens": 2}), 400, "too_many_images"),
    ("4 tiny images (at --max-images) are served", lambda: chat(msg([{"type": "image_url", "image_url": {"url": uri(TINY)}}] * 4 + [{"type": "text", "text": "?"}])), (200, 400), None),
    # -- hostile multipart
    ("multipart: boundary= empty", lambda: chat(form([("prompt", "hi", None)]), ctype="multipart/form-data; boundary="), 400, "invalid_multipart"),
    ("multipart: a 200-character boundary", lambda: chat(form([("prompt", "hi", None)], "b" * 200), ctype="multipart/form-data; boundary=" + "b" * 200), (200, 400), None),
    ("multipart: the boundary never appears", lambda: chat(b"just some bytes\r\n", ctype=MP), 400, "invalid_multipart"),
    ("multipart: only the closing delimiter", lambda: chat(b"--hostileBOUNDARY--\r\n", ctype=MP), 400, "missing_parameter"),
    ("multipart: LF line ends", lambda: chat(form([("prompt", "hi", None)], eol=b"\n"), ctype=MP), 400, "invalid_multipart"),
    ("multipart: a part without a name", lambda: chat(b"--hostileBOUNDARY\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--hostileBOUNDARY--\r\n", ctype=MP), 400, "invalid_multipart"),
    ("multipart: a part without headers", lambda: chat(b"--hostileBOUNDARY\r\n\r\nhi\r\n--hostileBOUNDARY--\r\n", ctype=MP), 400, "invalid_multipart"),
    ("multipart: prompt twice", lambda: chat(form([("prompt", "hi", None), ("prompt", "ho", None), ("max_tokens", "2", None)]), ctype=MP), 400, "invalid_value"),
    ("multipart: request twice", lambda: chat(form([("request", json.dumps(msg("a")), None), ("request", json.dumps(msg("b")), None)]), ctype=MP), 400, "invalid_value"),
    ("multipart: both prompt and request", lambda: chat(form([("prompt", "hi", None), ("request", json.dumps(msg("b")), None)]), ctype=MP), 400, "invalid_value"),
    ("multipart: max_tokens -1", lambda: chat(form([("prompt", "hi", None), ("max_tokens", "-1", None)]), ctype=MP), 400, "invalid_value"),
    ("multipart: max_tokens 2^63", lambda: chat(form([("prompt", "hi", None), ("max_tokens", str(BIG), None)]), ctype=MP), 400, "invalid_value"),
    ("multipart: a request field of invalid JSON", lambda: chat(form([("request", "{", None)]), ctype=MP), 400, "invalid_json"),
    ("multipart: 1000 tiny image uploads", lambda: chat(form([("prompt", "hi", None)] + [("image", TINY, f"{i}.png") for i in range(1000)]), ctype=MP), 400, ("too_many_images", "invalid_multipart")),
    ("multipart: a 20000 x 20000 PNG upload", lambda: chat(form([("prompt", "hi", None), ("image", png_header_only(20000, 20000), "big.png")]), ctype=MP), 400, "image_too_large"),
    ("multipart: a 100 kB part header", lambda: chat(b"--hostileBOUNDARY\r\nContent-Disposition: form-data; name=\"prompt\"\r\nX: " + b"a" * 100000 + b"\r\n\r\nhi\r\n--hostileBOUNDARY--\r\n", ctype=MP), (200, 400), None),
]


# ---- driver ------------------------------------------------------------------------------

def check_response(name, res, want, codes):
    st, _, body = res
    wants = want if isinstance(want, tuple) else (want,)
    if st not in wants:
        return f"status {st}, wanted {wants}: {body[:300]!r}"
    if st == 200 and b'"choices"' in body:
        fr = json.loads(body)["choices"][0]["finish_reason"]
        if fr not in ("stop", "length"):
            return f"200 with finish_reason {fr}"
        return None
    if st >= 400 and body[:1] == b"{":
        err = json.loads(body).get("error", {})
        if not err.get("message"):
            return f"error without a message: {body[:300]!r}"
        if codes and err.get("code") not in (codes if isinstance(codes, tuple) else (codes,)):
            return f"code {err.get('code')}, wanted {codes}: {body[:300]!r}"
    elif st >= 400 and codes:
        return f"wanted an OpenAI error body with {codes}, got {body[:300]!r}"
    return None


def still_serving(ref):
    end = time.monotonic() + 15
    while True:  # the queue may still be draining the work of a case that hung up
        st, _, b = request("GET", "/health", ctype=None, auth=False)
        if st == 200 or time.monotonic() > end:
            break
        time.sleep(0.1)
    if st != 200:
        return f"/health answered {st}"
    while True:  # cancelled requests leave the queue at their next keep-alive or token
        st, _, b = chat(msg("Hello there"))
        if st != 429 or time.monotonic() > end:
            break
        time.sleep(0.1)
    if st != 200:
        return f"the normal request answered {st}: {b[:200]!r}"
    got = json.loads(b)["choices"][0]["message"]["content"]
    return None if got == ref else f"the normal request's answer changed: {got!r} != {ref!r}"


def count_5xx():
    st, _, b = request("GET", "/metrics", ctype=None)
    assert st == 200, b
    return {k: int(n) for k, n in
            re.findall(r'(glimpse_http_requests_total\{[^}]*code="5\d\d"\}) (\d+)', b.decode())}


def start_server():
    global PORT
    proc = subprocess.Popen([BIN, "serve", "--host", "127.0.0.1", "--port", "0"] + SERVER_ARGS,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = []
    found = threading.Event()

    def pump():
        for line in proc.stdout:
            line = line.decode("utf-8", "replace")
            log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m and not found.is_set():
                global PORT
                PORT = int(m.group(1))
                found.set()
    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(30):
        raise RuntimeError("server did not start: " + "".join(log))
    end = time.monotonic() + 30
    while request("GET", "/health", ctype=None, auth=False)[0] != 200:
        if time.monotonic() > end:
            raise RuntimeError("server never became healthy")
        time.sleep(0.1)
    return proc, log


def main():
    t0 = time.monotonic()
    proc, log = start_server()
    failures = []
    try:
        st, _, b = chat(msg("Hello there"))
        assert st == 200, b
        ref = json.loads(b)["choices"][0]["message"]["content"]
        before = count_5xx()  # /health answers 503 while the model loads: not the attacks' doing
        for name, fn, want, codes in CASES:
            try:
                res = fn()
                if want is None:
                    ok, why = res
                    err = None if ok else why
                else:
                    err = check_response(name, res, want, codes)
                    code = re.search(rb'"code":"([a-z_]+)"', res[2])
                    name += f" -> {res[0]}" + (f" {code.group(1).decode()}" if code else "")
            except Exception as e:  # a test bug or a dead server; report it as the case's failure
                err = f"{type(e).__name__}: {e}"
            if proc.poll() is not None:
                err = f"the server died (exit {proc.returncode})"
            err = err or still_serving(ref)
            print(f"{'ok  ' if not err else 'FAIL'} {name}" + (f": {err}" if err else ""), flush=True)
            if err:
                failures.append(name)
            if proc.poll() is not None:
                break
        fivexx = {k: n - before.get(k, 0) for k, n in count_5xx().items() if n > before.get(k, 0)}
        if fivexx:
            failures.append("5xx in /metrics")
            print("FAIL /metrics counts 5xx answers:", fivexx)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # a clean drain exits 0; under the sanitizers a leak or an error report makes it non-zero
    if proc.returncode != 0:
        failures.append("server exit status")
        print(f"FAIL the server exited with {proc.returncode} after SIGTERM")
    print(f"{len(CASES)} cases, {len(failures)} failed, {time.monotonic() - t0:.1f} s")
    if failures:
        print("server log tail:\n" + "".join(log[-30:]))
    return 1 if failures or len(CASES) < 60 else 0


if __name__ == "__main__":
    sys.exit(main())
