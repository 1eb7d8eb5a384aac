#!/usr/bin/python3
"""docker_drift.py — docker/ against the rest of the tree, since no Docker
engine runs here to build the image:
- the Dockerfile's build stage runs exactly the README's "Build from source"
  commands;
- its runtime stage installs exactly the Debian packages of the shared
  libraries ./glimpse links (NEEDED), minus those every Debian image has;
- every GLIMPSE_* variable in docker/ and in the README's Deployment section
  is an option of `glimpse serve --help`;
- base images, user, ports, the demo model's paths, the health check, the
  stop signal and the grace periods agree between the Dockerfile,
  compose.yaml, nginx/glimpse.conf, k8s/ and the server;
- the build context keeps what the build needs.
Exit status 0 = pass."""
import fnmatch
import glob
import os
import re
import shutil
import subprocess

import yaml

import deploy
from deploy import SRCDIR, check, fail

README = os.path.join(SRCDIR, "README.md")
# Libraries of Debian's essential packages (coreutils, bash, ...) are in every
# image, bookworm-slim too: the runtime stage need not name them.
IN_EVERY_IMAGE = {"libc6", "libgcc-s1"}


def stages():
    """The Dockerfile's stages: list of (FROM arguments, [(INSTRUCTION, args)])."""
    out = []
    for ins, args in deploy.dockerfile_instructions():
        if ins == "FROM":
            out.append((args, []))
        else:
            check(out, "docker/Dockerfile: %s before the first FROM" % ins)
            out[-1][1].append((ins, args))
    return out


def readme_build_commands():
    with open(README) as f:
        text = f.read()
    m = re.search(r"<!-- docker/Dockerfile's build stage runs exactly these commands[^\n]*-->\n```sh\n(.*?)```",
                  text, re.S)
    check(m, "README.md: no build-steps block (marked for the Dockerfile)")
    return [ln.split(" #")[0].strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def build_steps(build):
    froms, instrs = build
    check(re.fullmatch(r"debian:bookworm-slim AS build", froms), "build stage: FROM %s" % froms)
    runs = [args for ins, args in instrs if ins == "RUN"]
    want = readme_build_commands()
    check(runs == want, "the build stage runs %s but the README builds with %s" % (runs, want))
    check(("COPY", ". .") in instrs, "the build stage should copy the whole context (COPY . .)")
    print("build steps: %s in both" % want)


def runtime_packages(final):
    froms, instrs = final
    check(froms == "debian:bookworm-slim", "final stage: FROM %s" % froms)
    installs = [args for ins, args in instrs if ins == "RUN" and "apt-get install" in args]
    check(len(installs) == 1, "the final stage should install its packages in one RUN")
    m = re.search(r"apt-get install ((?:-\S+ )*)(.*?)(?:&&|$)", installs[0])
    check(m and "--no-install-recommends" in m.group(1), "apt-get install without --no-install-recommends")
    listed = set(m.group(2).split())
    exe = deploy.GLIMPSE
    if not (shutil.which("dpkg-query") and shutil.which("readelf") and shutil.which("ldd")):
        print("runtime packages: not checked (no dpkg/readelf/ldd here): %s" % sorted(listed))
        return
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                        subprocess.run(["readelf", "-d", exe], capture_output=True, text=True, check=True).stdout)
    paths = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run(["ldd", exe], capture_output=True, text=True,
                                                                       check=True).stdout, re.M))
    want = set()
    for soname in needed:
        check(soname in paths, "ldd does not resolve %s" % soname)
        real = os.path.realpath(paths[soname])
        # dpkg knows libc's files by their pre-usrmerge paths (/lib/...)
        for candidate in (real, re.sub(r"^/usr/lib/", "/lib/", real)):
            owner = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
            if owner.returncode == 0:
                break
        check(owner.returncode == 0, "no Debian package owns %s" % real)
        pkg = owner.stdout.split(":")[0].strip()
        if pkg not in IN_EVERY_IMAGE:
            want.add(pkg)
    check(listed == want, "the final stage installs %s; ./glimpse needs %s (missing %s, extra %s)"
          % (sorted(listed), sorted(want), sorted(want - listed), sorted(listed - want)))
    print("runtime packages: %s = the packages of %s" % (sorted(listed), needed))


def serve_options():
    out = subprocess.run([deploy.GLIMPSE, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"\(env (GLIMPSE_[A-Z0-9_]+);", out))
    check(len(names) >= 15, "glimpse serve --help lists too few variables")
    return names


def variables(options):
    files = [deploy.DOCKERFILE, os.path.join(SRCDIR, "docker", "compose.yaml")]
    files += sorted(glob.glob(os.path.join(SRCDIR, "docker", "k8s", "*.yaml")))
    texts = {}
    for p in files:
        with open(p) as f:
            texts[os.path.relpath(p, SRCDIR)] = f.read()
    with open(README) as f:
        readme = f.read()
    m = re.search(r"\n## Deployment\n(.*?)\n## ", readme, re.S)
    check(m, "README.md has no Deployment section")
    texts["README.md#deployment"] = m.group(1)
    used = 0
    for where, text in texts.items():
        for v in sorted(set(re.findall(r"\bGLIMPSE_[A-Z0-9_]+", text))):
            check(v in options, "%s uses %s, which is not an option of glimpse serve" % (where, v))
            used += 1
    print("variables: %d uses in %d files, all options of glimpse serve" % (used, len(texts)))


def dockerfile_settings(final):
    _, instrs = final
    env = {}
    for ins, args in instrs:
        if ins == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    check(env.get("GLIMPSE_HOST") == "0.0.0.0", "the image must listen on 0.0.0.0 (ENV GLIMPSE_HOST)")
    port = env.get("GLIMPSE_PORT")
    check(("EXPOSE", port) in instrs, "EXPOSE should be GLIMPSE_PORT %s" % port)
    users = [args for ins, args in instrs if ins == "USER"]
    check(len(users) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[0]), "USER should be a numeric non-root uid:gid")
    uid = int(users[0].split(":")[0])
    check(("STOPSIGNAL", "SIGTERM") in instrs, "STOPSIGNAL SIGTERM missing")
    check(any(ins == "ENTRYPOINT" and "serve" in args for ins, args in instrs), "ENTRYPOINT should run glimpse serve")
    # the demo model goes where `glimpse serve` looks for it: models/ next to the program
    copies = " ".join(args for ins, args in instrs if ins == "COPY")
    with open(os.path.join(SRCDIR, "server", "demo.c")) as f:
        demo_c = f.read()
    for name in ("glimpse-shapes.gguf", "glimpse-shapes-mmproj.gguf"):
        check("/src/models/" + name in copies, "the image does not copy the demo model file %s" % name)
        check("models/" + name in demo_c, "server/demo.c no longer looks for models/%s" % name)
    check(re.search(r"--from=build /src/glimpse (/\S+)/glimpse\b", copies) and
          re.search(r"/opt/glimpse/models/", copies), "the program and models/ should be side by side in /opt/glimpse")
    hc = deploy.healthcheck_argv()
    check("/health" in " ".join(hc) and "GLIMPSE_PORT" in " ".join(hc), "HEALTHCHECK should ask /health on GLIMPSE_PORT")
    return env, uid


def orchestration(env, uid):
    port = int(env["GLIMPSE_PORT"])
    with open(os.path.join(SRCDIR, "docker", "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    replicas = sorted(s for s in services if s.startswith("glimpse-"))
    with open(deploy.NGINX_CONF) as f:
        conf = f.read()
    upstream = sorted(set(re.findall(r"server (glimpse-\d+):(\d+)", conf)))
    check(upstream == [(r, str(port)) for r in replicas] and len(replicas) == 3,
          "nginx's upstreams %s should be compose's replicas %s on port %d" % (upstream, replicas, port))
    mounts = services["nginx"]["volumes"]
    check("./nginx/glimpse.conf:/etc/nginx/conf.d/default.conf:ro" in mounts, "compose's nginx should mount glimpse.conf")
    for r in replicas:
        s = services[r]
        check(s["build"]["dockerfile"] == "docker/Dockerfile", "%s is not built from docker/Dockerfile" % r)
        check(any(v.endswith(":/models:ro") for v in s["volumes"]), "%s: models not mounted read-only at /models" % r)
        grace = int(re.fullmatch(r"(\d+)s", s["stop_grace_period"]).group(1))
        timeout = int(s["environment"].get("GLIMPSE_SHUTDOWN_TIMEOUT", env.get("GLIMPSE_SHUTDOWN_TIMEOUT", 30)))
        check(grace > timeout, "%s: stop_grace_period %d s <= shutdown timeout %d s" % (r, grace, timeout))

    docs = {}
    for p in sorted(glob.glob(os.path.join(SRCDIR, "docker", "k8s", "*.yaml"))):
        with open(p) as f:
            for d in yaml.safe_load_all(f):
                docs[d["kind"]] = d
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        check(kind in docs, "docker/k8s has no %s" % kind)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    kenv = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(c["ports"][0]["containerPort"] == int(kenv.get("GLIMPSE_PORT", port)) == port, "k8s containerPort != %d" % port)
    check(pod["securityContext"]["runAsUser"] == uid, "k8s runAsUser != the image's user %d" % uid)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check(c[probe]["httpGet"]["path"] == "/health", "k8s %s should ask /health" % probe)
    check(all(k in c["resources"]["requests"] for k in ("cpu", "memory")), "k8s: no resource requests")
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    check(sleep[0] == "sleep", "k8s preStop should sleep while the endpoint is removed")
    timeout = int(kenv.get("GLIMPSE_SHUTDOWN_TIMEOUT") or env.get("GLIMPSE_SHUTDOWN_TIMEOUT", 30))
    grace = pod["terminationGracePeriodSeconds"]
    check(grace > int(sleep[1]) + timeout, "k8s terminationGracePeriodSeconds %d <= preStop %s s + shutdown %d s"
          % (grace, sleep[1], timeout))
    check(any(m["mountPath"] == "/models" and m.get("readOnly") for m in c["volumeMounts"]),
          "k8s: models not mounted read-only at /models")
    svc_port = docs["Service"]["spec"]["ports"][0]["targetPort"]
    check(svc_port in ("http", port), "k8s Service targets %s" % svc_port)
    check(docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"],
          "the HPA does not scale the Deployment")
    print("orchestration: port %d, uid %d, grace periods compose %s / k8s %d s over a %d s shutdown timeout"
          % (port, uid, services[replicas[0]]["stop_grace_period"], grace, timeout))


def ignored(path, patterns):
    """Whether the build context leaves path out (.dockerignore rules: the
    last matching pattern wins, '!' keeps, '**/' matches any directory)."""
    out = False
    for pat in patterns:
        keep = pat.startswith("!")
        pat = pat.lstrip("!")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]  # a pattern on a directory covers its files
        cands = [pat] + ([pat[3:]] if pat.startswith("**/") else [])
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in cands) or \
           (pat.startswith("**/") and any(fnmatch.fnmatchcase(seg, pat[3:]) for seg in parts)):
            out = not keep
    return out


def build_context():
    with open(os.path.join(SRCDIR, "docker", "Dockerfile.dockerignore")) as f:
        patterns = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    must = ["dev.sh", "configure.ac", "Makefile.am", "engine/glimpse.h", "engine/kernels/kernels.c", "server/main.c",
            "tests/unit/check_gguf.c", "models/glimpse-shapes.gguf", "models/glimpse-shapes-mmproj.gguf"]
    must_not = ["Makefile", "config.status", "configure", "glimpse", "engine/gguf.o", "engine/.deps/gguf.Po",
                "node_modules/openai/index.js", ".git/HEAD", "tests/fixtures/server-tiny.gguf", "build-asan/Makefile",
                "models/SmolVLM-256M-Instruct-Q8_0.gguf", "tests/unit/check_gguf"]
    for p in must:
        check(not ignored(p, patterns), "docker/Dockerfile.dockerignore leaves out %s, which the build needs" % p)
    for p in must_not:
        check(ignored(p, patterns), "docker/Dockerfile.dockerignore lets %s into the build context" % p)
    print("build context: sources in, build outputs and downloaded models out")


def main():
    st = stages()
    check(len(st) == 2, "docker/Dockerfile should have two stages (build, runtime), has %d" % len(st))
    build_steps(st[0])
    runtime_packages(st[1])
    variables(serve_options())
    env, uid = dockerfile_settings(st[1])
    orchestration(env, uid)
    build_context()


if __name__ == "__main__":
    if not os.access(deploy.GLIMPSE, os.X_OK):
        fail("no ./glimpse in the build directory")
    deploy.run_test(main, 60)
