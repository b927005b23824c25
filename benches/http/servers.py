"""The servers `make bench` measures, started from the configs in benches/http.

Each server is one or more processes (Varnish and the hitch in front of it), each in
its own session so that their CPU and memory can be summed, all pinned to the same
core. Every server has a plain HTTP and a TLS listener on one self-signed certificate
(ECDSA P-256, made here with openssl); `mode` picks its cache: "memory" (the memory
budget, nginx on tmpfs) or "disk" (the disk tier on a real directory under target/).
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

import corpus

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def pinned(cmd, cpus):
    return (["taskset", "-c", cpus] + cmd) if cpus else cmd


def session_processes(sid):
    """(pid, /proc stat fields after the command) of every live process in session `sid`.
    Fields: state(0) ppid(1) pgrp(2) session(3) ... utime(11) stime(12)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid:
            yield pid, fields


def session_cpu_seconds(sid):
    """user+system CPU seconds of every live process in session `sid`."""
    ticks = sum(int(f[11]) + int(f[12]) for _, f in session_processes(sid))
    return ticks / CLK_TCK


def session_rss_bytes(sid):
    """Resident memory of every live process in session `sid`."""
    total = 0
    for pid, _ in session_processes(sid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def tree_bytes(root):
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def render(template, values):
    """A config file from benches/http with its @NAME@ placeholders filled in."""
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    leftover = sorted(set(re.findall(r"@[A-Z_]+@", code)))
    if leftover:
        raise BenchError(f"{template}: placeholders left unfilled: {leftover}")
    return text


def make_cert(folder):
    """One self-signed certificate for 127.0.0.1 that every server uses; returns the
    paths of the cert, the key and both in one file (hitch's format)."""
    os.makedirs(folder, exist_ok=True)
    cert, key, both = (os.path.join(folder, n) for n in ("cert.pem", "key.pem", "both.pem"))
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
           "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
           "-days", "30", "-subj", "/CN=127.0.0.1",
           "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"openssl req failed: {out.stderr.strip()}")
    with open(both, "w") as f:
        for part in (cert, key):
            with open(part) as p:
                f.write(p.read())
    return {"cert": cert, "key": key, "pem": both}


class Server:
    """One server under test: its processes, its ports, and what it serves over TLS."""

    def __init__(self, name, work, cpus):
        self.name, self.work, self.cpus = name, work, cpus
        self.port = self.tls_port = None
        self.cache_dir = None  # counted in its memory when on tmpfs
        self.cache_on_tmpfs = False
        self.procs, self.logs = [], []
        self.tls = {}  # what a handshake negotiated, filled in by probe_tls

    def spawn(self, what, cmd, port):
        log = open(os.path.join(self.work, f"{what}.log"), "wb")
        self.logs.append(log)
        proc = subprocess.Popen(pinned(cmd, self.cpus), stdout=log, stderr=log,
                                start_new_session=True)
        self.procs.append(proc)
        try:
            wait_port(port, proc, what)
        except BenchError as e:
            raise BenchError(f"{e}; see {log.name}")

    def cpu_seconds(self):
        return sum(session_cpu_seconds(p.pid) for p in self.procs)

    def rss_bytes(self):
        return sum(session_rss_bytes(p.pid) for p in self.procs)

    def url(self, path, tls=False):
        scheme, port = ("https", self.tls_port) if tls else ("http", self.port)
        return f"{scheme}://127.0.0.1:{port}{path}"

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        for log in self.logs:
            log.close()


def _tls_get(ctx, port, session=None):
    """One HTTP/1.1 exchange over a new TLS connection, read to the end so that the
    session tickets a TLS 1.3 server sends after the handshake arrive."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
            s.sendall(b"GET /_bench_probe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Connection: close\r\n\r\n")
            while True:
                try:
                    if not s.recv(65536):
                        break
                except (ssl.SSLError, OSError):
                    break
            return s.session, s.session_reused


def probe_tls(server, cert):
    """The protocol, cipher and ALPN a client offering h2 and HTTP/1.1 gets, and whether
    the server resumes a session (wrk does, when it reconnects)."""
    ctx = ssl.create_default_context(cafile=cert)
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            server.tls = {"version": s.version(), "cipher": s.cipher()[0],
                          "alpn": s.selected_alpn_protocol()}
    h1 = ssl.create_default_context(cafile=cert)
    h1.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    h1.set_alpn_protocols(["http/1.1"])
    session, _ = _tls_get(h1, server.tls_port)
    server.tls["resumes"] = _tls_get(h1, server.tls_port, session=session)[1]
    return server.tls


def start(name, args, ctx, mode):
    """Starts `name` fresh (empty cache) in `ctx.run_dir/mode/name`.
    ctx: origin_port, cache_bytes, disk_bytes, certs, server_cpus, run_dir, manifest."""
    work = os.path.join(ctx.run_dir, mode, name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    server = Server(name, work, ctx.server_cpus)
    server.port, server.tls_port = free_port(), free_port()
    budget = ctx.disk_bytes if mode == "disk" else ctx.cache_bytes
    values = {
        "WORK": work,
        "PORT": server.port,
        "TLS_PORT": server.tls_port,
        "ORIGIN_PORT": ctx.origin_port,
        "CACHE_BYTES": f"{budget // corpus.MIB}M",
        "CERT": ctx.certs["cert"],
        "KEY": ctx.certs["key"],
        "USER": pwd.getpwuid(os.getuid()).pw_name,
    }
    try:
        if name == "shimmer":
            _shimmer(server, args, ctx, mode, values)
        elif name == "nginx":
            _nginx(server, args, mode, values)
        elif name == "varnish":
            _varnish(server, args, ctx, mode, values)
        elif name == "floor":
            server.spawn("floor", [args.floor, "--listen", f"127.0.0.1:{server.port}",
                                   "--body", ctx.hot_image_file,
                                   "--tls", f"127.0.0.1:{server.tls_port}",
                                   "--cert", ctx.certs["cert"], "--key", ctx.certs["key"]],
                         server.port)
        else:
            raise BenchError(f"unknown server {name}")
        wait_port(server.tls_port, server.procs[-1], f"{name} (TLS)")
        probe_tls(server, ctx.certs["cert"])
    except (BenchError, OSError, ssl.SSLError) as e:
        server.stop()
        raise BenchError(f"{name} failed to start: {e}")
    return server


def _shimmer(server, args, ctx, mode, values):
    values["ADMIN_PORT"] = free_port()
    values["CACHE_BYTES"] = f"{ctx.cache_bytes // corpus.MIB}M"  # memory, in both modes
    if mode == "disk":
        values["CACHE_DIR"] = os.path.join(server.work, "cache")
        values["DISK_BYTES"] = f"{ctx.disk_bytes // corpus.MIB}M"
    else:
        values["CACHE_DIR"] = values["DISK_BYTES"] = "~"
    conf = os.path.join(server.work, "shimmer.yaml")
    with open(conf, "w") as f:
        f.write(render("shimmer.yaml", values))
    server.spawn("shimmer", [args.shimmer, "-c", conf], server.port)


def _nginx(server, args, mode, values):
    if mode == "disk":
        values["CACHE_DIR"] = os.path.join(server.work, "cache")
    else:
        # tmpfs, so nginx's cache is memory like the others' (the page cache would be
        # too, but a disk-backed directory also writes every fill back to the disk).
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else server.work
        values["CACHE_DIR"] = os.path.join(shm, f"shimmer-bench-nginx-{os.getpid()}")
        shutil.rmtree(values["CACHE_DIR"], ignore_errors=True)
        server.cache_on_tmpfs = True
    server.cache_dir = values["CACHE_DIR"]
    conf = os.path.join(server.work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(render("nginx.conf", values))
    server.spawn("nginx", [args.nginx, "-p", server.work, "-e",
                           os.path.join(server.work, "error.log"), "-c", conf,
                           "-g", "daemon off;"], server.port)


def _varnish(server, args, ctx, mode, values):
    vcl = os.path.join(server.work, "varnish.vcl")
    with open(vcl, "w") as f:
        f.write(render("varnish.vcl", values))
    proxy_port = free_port()  # hitch's backend: PROXY v2, as hitch is deployed
    if mode == "disk":
        storage = f"file,{os.path.join(server.work, 'storage.bin')},{ctx.disk_bytes // corpus.MIB}M"
    else:
        storage = f"malloc,{ctx.cache_bytes // corpus.MIB}M"
    server.spawn("varnish", [args.varnishd, "-F", "-j", "none", "-n",
                             os.path.join(server.work, "varnish"),
                             "-a", f"127.0.0.1:{server.port}",
                             "-a", f"127.0.0.1:{proxy_port},PROXY",
                             "-f", vcl, "-T", "none", "-s", storage], server.port)
    wait_port(proxy_port, server.procs[-1], "varnish (PROXY listener)")
    server.spawn("hitch", [args.hitch, f"--frontend=[127.0.0.1]:{server.tls_port}",
                           f"--backend=[127.0.0.1]:{proxy_port}", "--write-proxy-v2=on",
                           "--workers=1", "--tls-protos=TLSv1.3", "--alpn-protos=http/1.1",
                           "--backlog=4096", "--daemon=off",
                           f"--ocsp-dir={server.work}", f"--pidfile={server.work}/hitch.pid",
                           # hitch refuses to run its workers as root.
                           *(["--user=nobody"] if os.getuid() == 0 else []),
                           ctx.certs["pem"]], server.tls_port)


def origin_requests(origin_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{origin_port}/_origin/stats", timeout=5) as r:
        return json.load(r)["requests"]
