"""deploy.py — shared by the deployment tests (replicas.py, shutdown.py,
docker_drift.py): `glimpse serve` processes on free loopback ports, Debian's
nginx with docker/nginx/glimpse.conf, chat requests over plain HTTP, and the
pieces of docker/Dockerfile the tests run. Standard library only; every
process a test starts is killed when the test ends, however it ends."""
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

SRCDIR = os.environ.get("GLIMPSE_SRCDIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILDDIR = os.environ.get("GLIMPSE_BUILDDIR", ".")
FIXTURES = os.environ.get("GLIMPSE_FIXTURES", os.path.join(BUILDDIR, "tests", "fixtures"))
GLIMPSE = os.path.join(BUILDDIR, "glimpse")
MODEL = os.path.join(FIXTURES, "server-tiny.gguf")
MMPROJ = os.path.join(FIXTURES, "server-tiny-mmproj.gguf")
NGINX_CONF = os.path.join(SRCDIR, "docker", "nginx", "glimpse.conf")
DOCKERFILE = os.path.join(SRCDIR, "docker", "Dockerfile")

_procs = []


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def cleanup():
    for p in _procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def run_test(main, time_limit_s):
    """Runs main() with a hard time limit; kills every started process after."""
    def on_alarm(sig, frame):
        raise TimeoutError("the test ran longer than %d s" % time_limit_s)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(time_limit_s)
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 — any error is a failed test, reported with the logs
        for s in Server.all:
            sys.stdout.write("---- log of glimpse serve on port %d:\n%s" % (s.port, s.log()))
        fail("%s: %s" % (type(e).__name__, e))
    finally:
        signal.alarm(0)
        cleanup()
    print("PASS", flush=True)


class Server:
    """A `glimpse serve --port 0` on 127.0.0.1; the port comes from its log."""
    all = []

    def __init__(self, args=(), env=None, cpu=None):
        """cpu: run on that one CPU only."""
        cmd = [GLIMPSE, "serve", "--host", "127.0.0.1", "--port", "0", "--model", MODEL, "--mmproj", MMPROJ]
        self.proc = subprocess.Popen(cmd + list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=dict(os.environ, **(env or {})),
                                     preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}))
        _procs.append(self.proc)
        Server.all.append(self)
        self._log = []
        self._lock = threading.Lock()
        self._port_seen = threading.Event()
        self.port = 0
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._port_seen.wait(30):
            raise RuntimeError("glimpse serve did not start: " + self.log())

    def _read_log(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            with self._lock:
                self._log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m and not self.port:
                self.port = int(m.group(1))
                self._port_seen.set()

    def log(self):
        with self._lock:
            return "".join(self._log)

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if get(self.port, "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("glimpse serve never became ready: " + self.log())

    def metric(self, name):
        status, text = get(self.port, "/metrics")
        m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
        if status != 200 or not m:
            raise RuntimeError("no metric %s in /metrics (%d)" % (name, status))
        return float(m.group(1))

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def get(port, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def refused(port):
    """Whether a new TCP connection to the port is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- chat requests ------------------------------------------------------------------

def image_data_uri(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return "data:image/%s;base64,%s" % (name.rsplit(".", 1)[1], base64.b64encode(f.read()).decode())


def chat_body(kind, max_tokens, seed, stream=None):
    """A request of one of the kinds 'text', 'image' (a data: URI) or 'form'
    (multipart with an uploaded file), streaming if asked or, by default, if
    the seed is odd: (content type, body bytes, stream)."""
    if stream is None:
        stream = seed % 2 == 1
    if kind == "form":
        boundary = uuid.uuid4().hex
        with open(os.path.join(FIXTURES, "server-shapes.jpg"), "rb") as f:
            img = f.read()
        fields = [("prompt", b"What shapes are in the picture?"), ("max_tokens", str(max_tokens).encode()),
                  ("seed", str(seed).encode()), ("temperature", b"0.8"), ("stream", b"true" if stream else b"false")]
        parts = [b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (boundary.encode(), n.encode(), v)
                 for n, v in fields]
        parts.append(b'--%s\r\nContent-Disposition: form-data; name="image"; filename="s.jpg"\r\n'
                     b"Content-Type: image/jpeg\r\n\r\n%s\r\n" % (boundary.encode(), img))
        return "multipart/form-data; boundary=" + boundary, b"".join(parts) + b"--%s--\r\n" % boundary.encode(), stream
    if kind == "image":
        content = [{"type": "image_url", "image_url": {"url": image_data_uri("server-shapes.png")}},
                   {"type": "text", "text": "Describe the picture."}]
    else:
        content = "Tell me about circles and squares."
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "seed": seed,
            "temperature": 0.8, "stream": stream}
    return "application/json", json.dumps(body).encode(), stream


def chat(port, ctype, body, stream, headers=None, timeout=120):
    """POSTs one chat request; returns (ok, status, detail). ok means a 200
    with a complete answer: a JSON completion, or an SSE stream of chunks that
    ends with [DONE] and carries no error event."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/chat/completions", body=body, headers=dict({"Content-Type": ctype}, **(headers or {})))
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        return False, 0, "%s: %s" % (type(e).__name__, e)
    finally:
        c.close()
    if r.status != 200:
        return False, r.status, text[:300]
    if not stream:
        try:
            ok = json.loads(text)["choices"][0]["finish_reason"] in ("stop", "length")
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        return ok, 200, text[:300]
    events = [ln[6:] for ln in text.split("\n") if ln.startswith("data: ")]
    ok = bool(events) and events[-1] == "[DONE]" and len(events) >= 2 and not any('"error"' in e for e in events[:-1])
    return ok, 200, text[-300:]


# ---- nginx --------------------------------------------------------------------------

class Nginx:
    """Debian's nginx, unprivileged, on a free loopback port, with
    docker/nginx/glimpse.conf where only the replicas' addresses, the listen
    port and the access log's path are replaced."""

    def __init__(self, replica_ports):
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
        if not exe:
            fail("nginx is not installed (./dev.sh test installs Debian's nginx)")
        self.dir = tempfile.mkdtemp(prefix="glimpse-nginx-")
        self.access_log = os.path.join(self.dir, "access.log")
        with open(NGINX_CONF) as f:
            conf = f.read()
        for i, p in enumerate(replica_ports, 1):
            conf, n = re.subn(r"\bserver glimpse-%d:8080\b" % i, "server 127.0.0.1:%d" % p, conf)
            check(n == 2, "docker/nginx/glimpse.conf: glimpse-%d:8080 should appear in both upstreams (%d)" % (i, n))
        check(not re.search(r"\bserver glimpse-", conf), "docker/nginx/glimpse.conf has more than three replicas")
        conf, n = re.subn(r"access_log /var/log/nginx/access\.log glimpse;", "access_log %s glimpse;" % self.access_log,
                          conf)
        check(n == 1, "docker/nginx/glimpse.conf: no 'access_log /var/log/nginx/access.log glimpse;'")
        self.port = None
        for attempt in range(5):  # a free port can be taken by someone else before nginx binds it
            port = free_port()
            site, n = re.subn(r"\blisten 8080;", "listen 127.0.0.1:%d;" % port, conf)
            check(n == 1, "docker/nginx/glimpse.conf: no 'listen 8080;'")
            if self._start(exe, site):
                self.port = port
                break
        check(self.port is not None, "nginx did not start: " + self.error_log())

    def _start(self, exe, site):
        d = self.dir
        with open(os.path.join(d, "glimpse.conf"), "w") as f:
            f.write(site)
        # As root, nginx would hand its workers to 'nobody'; run all of it as
        # nobody instead, so the test never serves anything with privileges.
        as_root = os.geteuid() == 0
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write("worker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log notice;\n"
                    "events { worker_connections 512; }\nhttp {\n" % (d, d))
            for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                f.write("    %s_temp_path %s/%s_temp;\n" % (t, d, t))
            f.write("    include %s/glimpse.conf;\n}\n" % d)
        cmd = [exe, "-e", os.path.join(d, "error.log"), "-p", d, "-c", os.path.join(d, "nginx.conf"), "-g", "daemon off;"]
        if as_root:
            os.chown(d, 65534, 65534)
            for name in os.listdir(d):
                os.chown(os.path.join(d, name), 65534, 65534)
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _procs.append(self.proc)
        deadline = time.time() + 10
        while time.time() < deadline and self.proc.poll() is None:
            try:
                get(int(re.search(r"listen 127\.0\.0\.1:(\d+);", site).group(1)), "/health")
                return True
            except OSError:
                time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return False

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def access(self, rids):
        """The access log's lines of the requests rids: request id ->
        (upstream addresses, upstream statuses, status). nginx writes a line
        when it has finished the request, which can be just after the client
        has read the whole answer: waits for up to 10 s for all of them."""
        deadline = time.time() + 10
        while True:
            out = {}
            with open(self.access_log) as f:
                for line in f:
                    m = re.search(r'" (\d{3}) \d+ rid=(\S+) upstream=(.*?) upstream_status=(.*?) rt=', line)
                    if m and m.group(2) in rids:
                        out[m.group(2)] = (m.group(3), m.group(4), int(m.group(1)))
            missing = set(rids) - set(out)
            if not missing:
                return out
            if time.time() > deadline:
                fail("requests missing from nginx's access log: %s" % sorted(missing)[:5])
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- docker/Dockerfile ---------------------------------------------------------------

def dockerfile_instructions(path=DOCKERFILE):
    """The Dockerfile as (INSTRUCTION, arguments) pairs: comments dropped,
    backslash continuations joined, in order."""
    out, cur = [], ""
    with open(path) as f:
        for line in f:
            s = line.rstrip("\n")
            if not cur and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if cur and s.lstrip().startswith("#"):
                continue  # a comment line inside a continued instruction
            if s.endswith("\\"):
                cur += s[:-1] + " "
                continue
            cur += s
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def healthcheck_argv(path=DOCKERFILE):
    """The HEALTHCHECK's CMD in exec form, as Docker runs it."""
    for ins, args in dockerfile_instructions(path):
        if ins == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
            check(m, "HEALTHCHECK should use CMD in exec (JSON) form: " + args)
            return json.loads(m.group(1))
    fail("docker/Dockerfile has no HEALTHCHECK")
