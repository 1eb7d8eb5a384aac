#!/usr/bin/python3
"""shutdown.py — `glimpse serve`'s graceful shutdown, from the outside.

1. SIGTERM during a long stream: /health answers 503 at once (asked on a
   connection opened before the signal, since new connections are refused
   from then on, which also makes the Dockerfile's HEALTHCHECK fail), the
   stream keeps receiving tokens and completes with [DONE], the process
   exits 0.
2. Connections accepted before the signal that send their request only
   after it (as a balancer's may, racing with the signal) are answered;
   idle ones hold the exit up for a second at most.
3. A second SIGTERM during the drain exits 1 at once, stream unfinished.
(--shutdown-timeout cutting a stream off is in server.test.mjs.)
Exit status 0 = pass."""
import json
import signal
import socket
import subprocess
import threading
import time

import deploy
from deploy import Server, check


def open_stream(port, body):
    """Starts a long stream (HTTP/1.0: the body is the bare event stream, no
    chunked framing); returns (thread, result dict) once the first token came."""
    res = {"before": 0, "after": 0, "text": "", "signalled": False}
    first = threading.Event()

    def run():
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        buf = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
                n = d.count(b"data: {")
                res["after" if res["signalled"] else "before"] += n
                if n:
                    first.set()
                if b"data: [DONE]" in buf:
                    break
        except OSError as e:
            res["error"] = str(e)
        res["text"] = buf.decode("utf-8", "replace")
        s.close()
        first.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    check(first.wait(60), "the stream produced no token")
    return t, res


def healthcheck(port):
    """The Dockerfile's HEALTHCHECK command, run as Docker would, against port."""
    env = {"PATH": "/usr/bin:/bin", "GLIMPSE_PORT": str(port)}
    return subprocess.run(deploy.healthcheck_argv(), env=env, timeout=10, capture_output=True).returncode


# A stream that takes seconds even on a fast, idle machine, so that the checks
# below run while it is in flight.
DRAIN = json.dumps({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6000, "temperature": 1,
                    "seed": 3, "stream": True}).encode()


def drain():
    srv = Server(["--shutdown-timeout", "60", "--ctx-size", "8192"])
    srv.wait_ready()
    check(healthcheck(srv.port) == 0, "the Dockerfile's HEALTHCHECK fails against a ready server")
    waiting = socket.create_connection(("127.0.0.1", srv.port), timeout=30)  # sends its request after the signal
    t, res = open_stream(srv.port, DRAIN)
    res["signalled"] = True
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    waiting.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = waiting.recv(4096).decode()
    waiting.close()
    check(answer.startswith("HTTP/1.1 503") and '{"status":"draining"}' in answer and "Connection: close" in answer,
          "/health during the drain: " + answer)
    check(deploy.refused(srv.port), "a new connection was accepted after SIGTERM")
    check(healthcheck(srv.port) != 0, "the Dockerfile's HEALTHCHECK passes on a draining server")
    running = srv.proc.poll() is None
    t.join(90)
    check(running, "the server exited while its stream was running")
    code = srv.wait_exit(30)
    text = res["text"]
    check(not res.get("error") and text.rstrip().endswith("data: [DONE]") and '"error"' not in text,
          "the stream did not complete: %s ... %s" % (res.get("error"), text[-300:]))
    check(res["after"] > 0, "no token arrived after SIGTERM: the stream was not in flight (%d before)" % res["before"])
    check(code == 0, "exit status %s after a complete drain" % code)
    log = srv.log()
    check("SIGTERM: listener closed, draining (up to 60 s for 1 requests)" in log, "no drain line in the log")
    check("/v1/chat/completions 200" in log and "connection ended early" not in log, "the stream did not end well")
    print("drain: %d chunks before SIGTERM, %d after, exit 0 %.1f s after the signal"
          % (res["before"], res["after"], time.time() - t0))


def unstarted():
    srv = Server(["--shutdown-timeout", "60"])
    srv.wait_ready()
    late = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    time.sleep(0.3)  # the server has accepted both (the kernel would reset connections it has not)
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}).encode()
    late.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    answer = b""
    while True:
        d = late.recv(65536)
        if not d:
            break
        answer += d
    late.close()
    check(answer.startswith(b"HTTP/1.1 200") and b'"finish_reason"' in answer,
          "a request sent after SIGTERM on a connection accepted before it: %r" % answer[:300])
    code = srv.wait_exit(10)
    dt = time.time() - t0
    idle.close()
    check(code == 0 and dt < 5, "exit status %s %.1f s after SIGTERM with an idle connection open" % (code, dt))
    check("draining (up to 60 s for 0 requests)" in srv.log(), "the drain line should count no request in flight")
    print("connections accepted before SIGTERM: a late request answered 200, an idle one let go; exit 0 after %.1f s"
          % dt)


# Long enough to still be running when the second signal comes, however fast
# the engine is: tens of thousands of tokens in a context made that large.
ENDLESS = json.dumps({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 60000, "temperature": 1,
                      "seed": 3, "stream": True}).encode()


def second_signal():
    srv = Server(["--shutdown-timeout", "60", "--ctx-size", "65536"])
    srv.wait_ready()
    t, res = open_stream(srv.port, ENDLESS)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    check(srv.proc.poll() is None, "the server did not wait for its stream")
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.wait_exit(5)
    check(code == 1, "exit status %s after a second SIGTERM (want 1, at once)" % code)
    t.join(10)
    check("data: [DONE]" not in res["text"], "the stream completed although the second signal came first")
    check("SIGTERM: second signal, exiting with 1 requests unfinished" in srv.log(), "no line for the second signal")
    print("second SIGTERM: exit 1 after %.2f s" % (time.time() - t0))


def main():
    drain()
    unstarted()
    second_signal()


if __name__ == "__main__":
    deploy.run_test(main, 240)
