#!/usr/bin/python3
"""loadgen.py — drive an OpenAI-compatible chat-completions URL with concurrent
streaming requests (text, or with images) and report throughput and latency.

    bench/loadgen.py --url http://127.0.0.1:8080 --concurrency 1,8 --requests 16 \\
        --max-tokens 128 --image none
    bench/loadgen.py --url ... --concurrency 1 --requests 2 --image repeated --verbose
    bench/loadgen.py --url ... --concurrency 1,4 --requests 8 --max-tokens 32 --image distinct

Each phase (one per --concurrency value, run one after the other against the
same server) sends --requests requests from that many client threads, each
request as soon as the thread's previous one ended. Requests stream (SSE,
stream_options.include_usage), so that:
  TTFT  = time from sending the request to the first content chunk;
  ITL   = time between consecutive content chunks of one request;
  output tokens = the usage block's completion_tokens.
Printed per phase: requests/s, output tokens/s (both over the phase's wall
time), TTFT and ITL p50/p95; then the ratios of every phase to the first.

Images (--image): none; distinct (a different picture per request: random
coloured rectangles on noise, seeded by the request's number); repeated (one
picture for every request). They are sent as data: URIs of JPEGs of
--image-size pixels, made with PIL (Debian's python3) before the clock starts.

Standard library only (plus PIL for images); no retries: a failed request is
counted and reported with its status.
"""
import argparse
import base64
import io
import json
import os
import platform
import random
import sys
import threading
import time
import urllib.parse
import http.client


def make_image(seed, size):
    from PIL import Image, ImageDraw
    rnd = random.Random(seed)
    # noise from the seeded generator (PIL's effect_noise is not seeded)
    img = Image.frombytes("L", (size, size), rnd.randbytes(size * size)).convert("RGB")
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rnd.randrange(size), rnd.randrange(size)
        x1, y1 = x0 + rnd.randrange(size // 2), y0 + rnd.randrange(size // 2)
        d.rectangle([x0, y0, x1, y1], fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


class Result:
    def __init__(self):
        self.ok = False
        self.status = None
        self.error = None
        self.ttft = None
        self.itl = []
        self.tokens = 0
        self.t_start = self.t_end = 0.0


def one_request(url, headers, body):
    """Sends one streaming request; returns a Result."""
    r = Result()
    u = urllib.parse.urlsplit(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port, timeout=3600)
    path = (u.path.rstrip("/") or "") + "/v1/chat/completions"
    r.t_start = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        r.status = resp.status
        if resp.status != 200:
            r.error = resp.read(300).decode(errors="replace")
            return r
        last = None
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            if ev.get("error"):
                r.error = json.dumps(ev["error"])[:300]
                return r
            if ev.get("usage"):
                r.tokens = ev["usage"].get("completion_tokens", 0)
            for ch in ev.get("choices") or []:
                delta = ch.get("delta") or {}
                if delta.get("content"):
                    now = time.perf_counter()
                    if last is None:
                        r.ttft = now - r.t_start
                    else:
                        r.itl.append(now - last)
                    last = now
        r.ok = r.ttft is not None or r.tokens == 0
    except (OSError, http.client.HTTPException, ValueError) as e:
        r.error = repr(e)
    finally:
        r.t_end = time.perf_counter()
        conn.close()
    return r


def run_phase(args, concurrency, bodies, headers):
    results = [None] * len(bodies)
    next_i = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= len(bodies):
                    return
                next_i[0] += 1
            results[i] = one_request(args.url, headers, bodies[i])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return results, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--model", help="model id sent in requests (default: the first of /v1/models)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    ap.add_argument("--concurrency", default="1,8", help="comma-separated client counts, one phase each")
    ap.add_argument("--requests", type=int, default=16, help="requests per phase")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt", default="Describe what you see in a few sentences.")
    ap.add_argument("--image", choices=["none", "distinct", "repeated"], default="none")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="print every request")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = "Bearer " + args.api_key

    if not args.model:
        u = urllib.parse.urlsplit(args.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.request("GET", (u.path.rstrip("/") or "") + "/v1/models", headers=headers)
        args.model = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()

    print(f"# loadgen: {args.url}  {platform.node()}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} CPUs  load {os.getloadavg()[0]:.2f}")
    print(f"# model {args.model}  requests/phase {args.requests}  max_tokens {args.max_tokens}  image {args.image}"
          f"{' %dx%d' % (args.image_size, args.image_size) if args.image != 'none' else ''}  "
          f"temperature {args.temperature}")

    phases = []
    for p, conc in enumerate(levels):
        bodies = []
        for i in range(args.requests):
            content = [{"type": "text", "text": args.prompt}]
            if args.image != "none":
                # distinct images differ across phases too, so no phase hits
                # the server's caches with another phase's pictures
                seed = 0 if args.image == "repeated" else 1 + p * 100000 + i
                content.insert(0, {"type": "image_url", "image_url": {"url": make_image(seed, args.image_size)}})
            body = {"model": args.model, "messages": [{"role": "user", "content": content}],
                    "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed,
                    "stream": True, "stream_options": {"include_usage": True}}
            bodies.append(json.dumps(body).encode())
        results, wall = run_phase(args, conc, bodies, headers)
        ok = [r for r in results if r.ok]
        bad = [r for r in results if not r.ok]
        toks = sum(r.tokens for r in ok)
        ttft = [r.ttft for r in ok if r.ttft is not None]
        itl = [x for r in ok for x in r.itl]
        ph = dict(conc=conc, n_ok=len(ok), n_bad=len(bad), wall=wall, rps=len(ok) / wall, tps=toks / wall,
                  ttft50=percentile(ttft, 50), ttft95=percentile(ttft, 95),
                  itl50=percentile(itl, 50), itl95=percentile(itl, 95), tokens=toks)
        phases.append(ph)
        if args.verbose:
            for i, r in enumerate(results):
                print(f"  c={conc} #{i}: status {r.status} tokens {r.tokens} "
                      f"ttft {r.ttft if r.ttft is None else round(r.ttft * 1000, 1)} ms  "
                      f"total {round((r.t_end - r.t_start) * 1000, 1)} ms{'  ' + r.error if r.error else ''}")
        for r in bad[:3]:
            print(f"  failed: status {r.status}: {r.error}", file=sys.stderr)
        print(f"concurrency {conc:3d}: {ph['n_ok']} ok {ph['n_bad']} failed in {wall:.1f} s  "
              f"{ph['rps']:.3f} req/s  {ph['tps']:.2f} output tok/s ({toks} tokens)  "
              f"TTFT p50 {ph['ttft50'] * 1000:.0f} ms p95 {ph['ttft95'] * 1000:.0f} ms  "
              f"ITL p50 {ph['itl50'] * 1000:.1f} ms p95 {ph['itl95'] * 1000:.1f} ms", flush=True)
    base = phases[0]
    for ph in phases[1:]:
        if base["rps"] == 0 or base["tps"] == 0:
            break
        print(f"ratio c={ph['conc']} / c={base['conc']}: requests/s x{ph['rps'] / base['rps']:.2f}  "
              f"output tok/s x{ph['tps'] / base['tps']:.2f}")
    return 0 if all(ph["n_bad"] == 0 for ph in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
