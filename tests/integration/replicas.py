#!/usr/bin/python3
"""replicas.py — three `glimpse serve` replicas behind Debian's nginx running
docker/nginx/glimpse.conf (only the addresses, the listen port and the log
path replaced), all on loopback.

Wave 1: 200 mixed requests (text, data: URI images, multipart uploads;
streaming and not) through nginx: all succeed, each replica serves at least
20 %. Then 24 requests in three sessions (X-Session-Id): each session stays
on one replica.
Wave 2: 60 streams through nginx; one replica gets SIGTERM while it runs
some: no request fails, the stopped replica finished its streams and exited
0, and requests nginx then tried on it were refused and answered by another.
Exit status 0 = pass."""
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import deploy
from deploy import Nginx, Server, chat, chat_body, check

KINDS = ("text", "image", "form", "text", "image")
SESSIONS = ("alice", "bob", "carol")


def send(nginx, rid, kind, max_tokens, seed, session=None, stream=None):
    ctype, body, stream = chat_body(kind, max_tokens, seed, stream)
    headers = {"X-Request-Id": rid}
    if session:
        headers["X-Session-Id"] = session
    ok, status, detail = chat(nginx.port, ctype, body, stream, headers)
    return rid, ok, status, detail


def replica_of(log, rid):
    """The port of the one replica that answered rid, which must be a 200."""
    upstream, _, status = log[rid]
    check(status == 200 and "," not in upstream, "request %s: upstream %s status %d" % (rid, upstream, status))
    return int(upstream.rsplit(":", 1)[1])


def wave1(nginx, servers):
    jobs = [("w1-%d" % i, KINDS[i % len(KINDS)], 200 + i % 101, i) for i in range(200)]
    t0 = time.time()
    with ThreadPoolExecutor(12) as ex:
        results = list(ex.map(lambda j: send(nginx, *j), jobs))
    bad = [r for r in results if not r[1]]
    check(not bad, "%d of 200 requests failed, e.g. %s" % (len(bad), bad[:3]))
    log = nginx.access([j[0] for j in jobs])
    by_port = {s.port: 0 for s in servers}
    for rid, *_ in jobs:
        by_port[replica_of(log, rid)] += 1
    print("wave 1: 200/200 succeeded in %.1f s; requests per replica: %s" % (time.time() - t0, [by_port[s.port] for s in servers]))
    for port, n in by_port.items():
        check(n >= 40, "replica on port %d served %d of 200 requests (< 20 %%)" % (port, n))


def sessions(nginx):
    jobs = [("s-%d" % i, KINDS[i % len(KINDS)], 8, i, SESSIONS[i % 3]) for i in range(24)]
    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda j: send(nginx, *j), jobs))
    check(all(r[1] for r in results), "session requests failed: %s" % [r for r in results if not r[1]][:3])
    log = nginx.access([j[0] for j in jobs])
    ports = {}
    for rid, _, _, _, session in jobs:
        ports.setdefault(session, set()).add(replica_of(log, rid))
    print("sessions -> replicas: %s" % {k: sorted(v) for k, v in ports.items()})
    for session, p in ports.items():
        check(len(p) == 1, "session %s was spread over replicas %s" % (session, sorted(p)))


def wave2(nginx, servers):
    victim = servers[1]
    n_req = 60
    t0 = time.time()
    results = []
    lock = threading.Lock()
    issued = threading.Semaphore(0)

    def one(i):
        issued.release()
        r = send(nginx, "w2-%d" % i, ("text", "image", "form")[i % 3], 150 + i % 100, 1000 + i, stream=True)
        with lock:
            results.append(r)

    with ThreadPoolExecutor(9) as ex:
        futures = [ex.submit(one, i) for i in range(n_req)]
        # SIGTERM in the middle of the wave, once the victim has requests in flight
        for _ in range(20):
            issued.acquire()
        deadline = time.time() + 30
        while victim.metric("glimpse_requests_in_flight") < 1 and time.time() < deadline:
            time.sleep(0.02)
        t_signal = time.time()
        victim.proc.send_signal(signal.SIGTERM)
        for f in futures:
            f.result()
    t_end = time.time()
    code = victim.wait_exit(60)
    bad = [r for r in results if not r[1]]
    check(not bad, "%d of %d requests failed while a replica stopped, e.g. %s" % (len(bad), n_req, bad[:3]))
    check(code == 0, "the stopped replica exited with %s" % code)
    vlog = victim.log()
    m = re.search(r"SIGTERM: listener closed, draining \(up to \d+ s for (\d+) requests\)", vlog)
    check(m, "the stopped replica logged no drain")
    in_flight = int(m.group(1))
    check(in_flight >= 1, "the replica had no stream in flight at SIGTERM: the test proved nothing")
    after = vlog[m.end():]
    finished = after.count("/v1/chat/completions 200")
    check("connection ended early" not in vlog, "a connection to the stopped replica ended early")
    check(finished >= in_flight, "the stopped replica finished %d of its %d requests" % (finished, in_flight))
    # nginx's view: every request ended 200; those it tried on the stopped
    # replica after the signal were refused there and answered by another
    log = nginx.access(["w2-%d" % i for i in range(n_req)])
    victim_addr = "127.0.0.1:%d" % victim.port
    served_by_victim = retried = 0
    for rid, (upstream, ustatus, status) in log.items():
        addrs = [a.strip() for a in upstream.split(",")]
        check(status == 200, "request %s: status %d via %s (%s)" % (rid, status, upstream, ustatus))
        if addrs[-1] == victim_addr:
            served_by_victim += 1
        if len(addrs) > 1:
            retried += 1
            check(addrs[-1] != victim_addr, "request %s was retried onto the stopped replica" % rid)
    print("wave 2: %d/%d succeeded in %.1f s; SIGTERM %.1f s in (after 20 requests started) with %d streams in "
          "flight on the replica, which finished %d after the signal and %d in all, exit 0; %d requests retried on "
          "another replica after a refused connection"
          % (n_req, n_req, t_end - t0, t_signal - t0, in_flight, finished, served_by_victim, retried))


def main():
    # Replicas of equal capacity, as behind a real balancer: three processes on
    # a shared machine do not get equal CPU (with 2 CPUs one often has a CPU to
    # itself and the others share one, and least_conn rightly sends the faster
    # one twice as much); on one CPU, the scheduler shares it evenly.
    cpu = min(os.sched_getaffinity(0))
    servers = [Server(["--threads", "1"], cpu=cpu) for _ in range(3)]
    for s in servers:
        s.wait_ready()
    nginx = Nginx([s.port for s in servers])
    try:
        wave1(nginx, servers)
        sessions(nginx)
        wave2(nginx, servers)
        for s in (servers[0], servers[2]):
            s.proc.send_signal(signal.SIGTERM)
            check(s.wait_exit(30) == 0, "a replica did not stop cleanly")
    finally:
        print("nginx error log:\n" + nginx.error_log()[-1500:])
        nginx.stop()


if __name__ == "__main__":
    deploy.run_test(main, 600)
