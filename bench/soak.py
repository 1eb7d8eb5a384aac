#!/usr/bin/python3
"""soak.py — hours-long confidence in minutes: mixed good and bad traffic against
a running chat-completions server, then its memory growth and errors.

    bench/soak.py --url http://127.0.0.1:8080 --pid $(pgrep -n glimpse) --minutes 20

Not a CI test (issue 9's soak). --clients threads loop until --minutes pass,
each picking at random (seeded) one of:
  good     text, non-streaming;   stream    text, streaming (SSE, read to [DONE]);
  image    a small PNG data: URI;  hangup    a stream the client drops after its
  first chunk;  bad_*  a bad request that must get its 4xx (invalid JSON, deep
  nesting, invalid UTF-8, a 20000x20000 PNG header, a truncated PNG, a data: URI
  that lies, max_tokens -1, a 64 kB header, a multipart without boundary, an
  over-long prompt, a 3 MB body).
The server's RSS (VmRSS of /proc/PID/status, so the server must run on this
machine) is sampled every --sample seconds; the start figure is taken after
--warmup seconds of the same load, so that caches, the KV pool and allocator
arenas have grown to their working size. Printed at the end: requests served by
kind, outcomes by kind (status + error code, or the client-side exception), RSS
at start/end/max and the growth in percent.

Exit status 0 when no request got a 5xx or an unexpected answer and RSS grew
by less than --max-growth percent (default 5) between warm-up and the end,
taken as the median of the first and of the last five samples: a single
sample moves by a megabyte or two with the requests in flight at that moment
(their bodies and pictures are mapped and unmapped), which on a 20 MiB
server is more than the limit.
Standard library only; the pictures are built here.
"""
import argparse
import base64
import collections
import http.client
import json
import random
import socket
import statistics
import struct
import sys
import threading
import time
import urllib.parse
import zlib


def png(w, h, rows=None):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + bytes((x * 7 + y * 3) % 256 for x in range(w * 3)) for y in range(rows or h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


SMALL = png(48, 32)
HUGE_HEADER = png(20000, 20000, rows=1)  # claims 400 M pixels, carries one row
uri = lambda b, t="image/png": f"data:{t};base64,{base64.b64encode(b).decode()}"  # noqa: E731


def msgs(content):
    return [{"role": "user", "content": content}]


def image_content(url):
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]


class Soak:
    def __init__(self, a):
        self.a = a
        u = urllib.parse.urlsplit(a.url)
        self.host, self.port = u.hostname, u.port or 80
        self.auth = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
        self.lock = threading.Lock()
        self.served = collections.Counter()    # kind -> requests finished (any outcome)
        self.outcomes = collections.Counter()  # (kind, outcome) -> n
        self.unexpected = collections.Counter()
        self.stop = threading.Event()

    def body(self, **kw):
        b = {"messages": msgs("Tell me about shapes."), "max_tokens": self.a.max_tokens, "temperature": 0.7}
        b.update(kw)
        return json.dumps(b).encode()

    def kinds(self):
        """kind -> (weight, method building (body, headers, content type), expected statuses)."""
        big = "the shapes " * 20000
        return {
            "good": (30, lambda: (self.body(), {}, "application/json"), {200}),
            "stream": (20, lambda: (self.body(stream=True), {}, "application/json"), {200}),
            "image": (15, lambda: (self.body(messages=msgs(image_content(uri(SMALL)))), {}, "application/json"), {200}),
            "hangup": (5, None, None),
            "bad_json": (3, lambda: (b'{"messages": [', {}, "application/json"), {400}),
            "bad_nesting": (2, lambda: (b"[" * 50000 + b"]" * 50000, {}, "application/json"), {400}),
            "bad_utf8": (2, lambda: (b'{"messages":[{"role":"user","content":"\xc0\xaf"}]}', {}, "application/json"), {400}),
            "bad_pixels": (3, lambda: (self.body(messages=msgs(image_content(uri(HUGE_HEADER)))), {}, "application/json"), {400}),
            "bad_truncated": (3, lambda: (self.body(messages=msgs(image_content(uri(SMALL[:len(SMALL) // 2])))), {}, "application/json"), {400}),
            "bad_lying_uri": (2, lambda: (self.body(messages=msgs(image_content(uri(b"GIF89a....", "image/png")))), {}, "application/json"), {400}),
            "bad_max_tokens": (3, lambda: (self.body(max_tokens=-1), {}, "application/json"), {400}),
            "bad_header": (2, lambda: (self.body(), {"X-Junk": "a" * 65536}, "application/json"), {400, 413, 431}),
            "bad_multipart": (2, lambda: (b"--x\r\n\r\nhi\r\n--x--\r\n", {}, "multipart/form-data"), {400}),
            "bad_context": (2, lambda: (self.body(messages=msgs(big)), {}, "application/json"), {400}),
            "bad_body_size": (1, lambda: (b"x" * (self.a.big_body_mb << 20), {}, "application/json"), {413}),
        }

    def note(self, kind, outcome, ok):
        with self.lock:
            self.served[kind] += 1
            self.outcomes[(kind, outcome)] += 1
            if not ok:
                self.unexpected[(kind, outcome)] += 1

    def one(self, kind, build, want):
        body, extra, ctype = build()
        c = http.client.HTTPConnection(self.host, self.port, timeout=self.a.request_timeout)
        try:
            c.request("POST", "/v1/chat/completions", body, {"Content-Type": ctype, **self.auth, **extra})
            r = c.getresponse()
            data = r.read()
            code = ""
            if r.status != 200:
                try:
                    code = " " + str(json.loads(data)["error"]["code"])
                except (ValueError, KeyError, TypeError):
                    pass
            elif kind == "stream" and not data.rstrip().endswith(b"data: [DONE]"):
                self.note(kind, "200 stream without [DONE]", False)
                return
            self.note(kind, f"{r.status}{code}", r.status in want)
        except (OSError, http.client.HTTPException) as e:
            # the server may answer a too-large request and close before reading all of it
            self.note(kind, type(e).__name__, kind in ("bad_header", "bad_body_size"))
        finally:
            c.close()

    def hangup(self):
        try:
            s = socket.create_connection((self.host, self.port), timeout=self.a.request_timeout)
        except OSError as e:
            self.note("hangup", type(e).__name__, False)
            return
        try:
            body = self.body(stream=True, max_tokens=max(self.a.max_tokens, 64))
            head = "".join(f"{k}: {v}\r\n" for k, v in self.auth.items())
            s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}\r\n{head}"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
            got = b""
            while b"data: {" not in got and b"HTTP/1.1 4" not in got:
                b = s.recv(4096)
                if not b:
                    break
                got += b
            st = got[9:12].decode("latin-1", "replace") or "closed"
            self.note("hangup", f"{st} dropped", st == "200")
        except OSError as e:
            self.note("hangup", type(e).__name__, False)
        finally:
            s.close()

    def client(self, seed):
        rng = random.Random(seed)
        kinds = self.kinds()
        names = [k for k in kinds if not self.a.only or k in self.a.only]
        weights = [kinds[k][0] for k in names]
        while not self.stop.is_set():
            k = rng.choices(names, weights)[0]
            if k == "hangup":
                self.hangup()
            else:
                self.one(k, kinds[k][1], kinds[k][2])


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--pid", type=int, required=True, help="the server's process id (RSS from /proc)")
    p.add_argument("--api-key", default="", help="sent as a Bearer token")
    p.add_argument("--minutes", type=float, default=20, help="length of the soak after warm-up (default 20)")
    p.add_argument("--warmup", type=float, default=60, help="seconds of load before the start RSS (default 60)")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of the good requests (default 16)")
    p.add_argument("--big-body-mb", type=int, default=40, help="size of the over-limit body (default 40: above --max-body-mb's 32)")
    p.add_argument("--sample", type=float, default=30, help="seconds between RSS samples (default 30)")
    p.add_argument("--request-timeout", type=float, default=300, help="client timeout per request, seconds")
    p.add_argument("--max-growth", type=float, default=5.0, help="allowed RSS growth after warm-up, percent")
    p.add_argument("--only", default="", help="comma-separated kinds to send (default: all), to find what grows RSS")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    a.only = [k for k in a.only.split(",") if k]

    soak = Soak(a)
    rss0 = rss_kb(a.pid)
    threads = [threading.Thread(target=soak.client, args=(a.seed * 1000 + i,), daemon=True) for i in range(a.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(a.warmup)
    start = rss_kb(a.pid)
    served_at_start = sum(soak.served.values())
    print(f"warm-up {a.warmup:.0f} s: RSS {rss0 / 1024:.1f} -> {start / 1024:.1f} MiB, "
          f"{served_at_start} requests", flush=True)
    samples = [start]
    end = time.monotonic() + a.minutes * 60
    while time.monotonic() < end:
        time.sleep(max(0.0, min(a.sample, end - time.monotonic())))
        samples.append(rss_kb(a.pid))
        print(f"  {(time.monotonic() - t0) / 60:5.1f} min  RSS {samples[-1] / 1024:.1f} MiB  "
              f"{sum(soak.served.values())} requests", flush=True)
    soak.stop.set()
    for t in threads:
        t.join(a.request_timeout)
    final = rss_kb(a.pid)
    samples.append(final)
    n_med = max(1, min(5, len(samples) // 2))
    first, last = statistics.median(samples[:n_med]), statistics.median(samples[-n_med:])
    growth = 100.0 * (last - first) / first
    total = sum(soak.served.values())
    print(f"\nsoak: {a.minutes:g} min after {a.warmup:g} s warm-up, {a.clients} clients, {total} requests "
          f"({total - served_at_start} after warm-up)")
    print("requests by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(soak.served.items())))
    print("outcomes:")
    for (k, o), n in sorted(soak.outcomes.items()):
        print(f"  {k:16s} {o:40s} {n}{'   UNEXPECTED' if (k, o) in soak.unexpected else ''}")
    fivexx = sum(n for (k, o), n in soak.outcomes.items() if o[:1] == "5")
    print(f"5xx: {fivexx}   unexpected: {sum(soak.unexpected.values())}")
    print(f"RSS: start (after warm-up) {start / 1024:.1f} MiB, end {final / 1024:.1f} MiB, "
          f"min {min(samples) / 1024:.1f} MiB, max {max(samples) / 1024:.1f} MiB; median of the first {n_med} samples "
          f"{first / 1024:.1f} MiB, of the last {n_med} {last / 1024:.1f} MiB: growth {growth:+.2f} % "
          f"(limit {a.max_growth:g} %)")
    return 0 if fivexx == 0 and not soak.unexpected and growth < a.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
