"""How `make bench` measures: wrk (HTTP/1.1, plain or TLS), h2load (HTTP/2 over TLS),
an asyncio client for the cold stampede, and a threaded one that fills the disk tier.
Every run reports the same fields; see measure_once."""

import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import corpus
from servers import (CLK_TCK, BenchError, origin_requests, pinned, session_processes,
                     tree_bytes)

HERE = os.path.dirname(os.path.abspath(__file__))
# Response headers are a few hundred bytes; anything past this per response is wrong.
HEADER_SLACK = 4096


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def core_ticks(cpus):
    """(busy, steal) ticks of the server's cores from /proc/stat: busy is user, nice,
    system, irq and softirq; steal is what the hypervisor took."""
    wanted = {f"cpu{c}" for c in cpus.split(",")} if cpus else {"cpu"}
    busy = steal = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:
                busy += sum(int(fields[i]) for i in (1, 2, 3, 6, 7))
                steal += int(fields[8])
    return busy, steal


class CoreShare:
    """What the server's core did besides running the server during a run, as shares of
    the run's wall time: `steal_pct` (the hypervisor) and `other_pct` (other processes,
    a build say, plus softirq time the kernel does not charge to the server); and
    `core_s_per_100k`, all the core's busy time per 100k requests. On the dedicated core
    that is the server's whole cost, softirq included: a server that sends with
    `sendfile` has much of its TCP work done in softirq, which no process is charged for
    (nginx's cold burst: 7 s/100k of process time and 9 more of softirq)."""

    def __init__(self, server):
        self.server = server
        self.cpu, (self.busy, self.steal) = server.cpu_seconds(), core_ticks(server.cpus)

    def finish(self, seconds, requests):
        busy, steal = core_ticks(self.server.cpus)
        mine = (self.server.cpu_seconds() - self.cpu) * CLK_TCK
        core_s = (busy - self.busy) / CLK_TCK
        return {"steal_pct": 100 * (steal - self.steal) / CLK_TCK / seconds,
                "other_pct": max(0.0, 100 * (busy - self.busy - mine) / CLK_TCK / seconds),
                "core_s_per_100k": core_s / requests * 100_000 if requests else None}


class MemorySampler(threading.Thread):
    """Peak memory of a server while a run goes on: its processes' RSS plus, for nginx
    on tmpfs, the cache directory (which is memory too, but no process's RSS)."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.peak, self.stopped = server, 0, threading.Event()

    def sample(self):
        used = self.server.rss_bytes()
        if self.server.cache_on_tmpfs:
            used += tree_bytes(self.server.cache_dir)
        self.peak = max(self.peak, used)

    def run(self):
        while not self.stopped.wait(1.0):
            self.sample()

    def finish(self):
        self.stopped.set()
        self.join()
        self.sample()
        return self.peak


class Profile:
    """`--perf DIR`: `perf record -g` of the server's processes for one measured run,
    written to DIR/<server>-<scenario>-<n>.data (n counts the runs), for
    `perf report -i`. Off (a no-op) without --perf."""

    def __init__(self, args, server):
        self.proc = None
        if not getattr(args, "perf", None):
            return
        pids = ",".join(pid for p in server.procs for pid, _ in session_processes(p.pid))
        name = getattr(args, "profile_name", server.name)
        n = 1
        while os.path.exists(os.path.join(args.perf, f"{name}-{n}.data")):
            n += 1
        out = os.path.join(args.perf, f"{name}-{n}.data")
        # perf itself runs off the server's core; its sampling still costs the server
        # a little, so numbers from a profiled run are not for the table.
        mine = {int(c) for c in (server.cpus or "").split(",") if c}
        others = sorted(set(os.sched_getaffinity(0)) - mine)
        graph = getattr(args, "perf_call_graph", None) or "fp"
        cmd = ["perf", "record", f"--call-graph={graph}", "-q", "-o", out, "-p", pids]
        self.proc = subprocess.Popen(pinned(cmd, ",".join(map(str, others)) or None),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # perf attaches before the load starts

    def finish(self):
        if self.proc:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)


def run_wrk(args, url, conns, seconds, cpus, script="report.lua", script_args=()):
    """wrk against `url`; returns report.lua's summary."""
    threads = len(cpus.split(",")) if cpus else 1
    cmd = [args.wrk, f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
           "-s", os.path.join(HERE, script), url]
    if script_args:
        cmd += ["--"] + [str(a) for a in script_args]
    env = dict(os.environ, BENCH_LUA_DIR=HERE)
    out = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, env=env,
                         timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON "):])
            result["error_count"] = sum(result["errors"].values())
            return result
    raise BenchError(f"wrk printed no summary (status {out.returncode}): {out.stderr.strip()}")


def _percentile(sorted_values, q):
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_h2load(args, url, clients, streams, seconds, cpus, log_file):
    """h2load (HTTP/2 by ALPN) against `url` for `seconds`; a summary shaped as wrk's,
    latencies from its per-request log. Refuses a run that did not speak h2."""
    threads = len(cpus.split(",")) if cpus else 1
    cmd = [args.h2load, f"-t{threads}", f"-c{clients}", f"-m{streams}", f"-D{seconds}",
           "--npn-list=h2,http/1.1", f"--log-file={log_file}", url]
    out = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True,
                         timeout=seconds + 60)
    text = out.stdout
    proto = re.search(r"Application protocol: (\S+)", text)
    if not proto or proto.group(1) != "h2":
        got = proto.group(1) if proto else "none"
        raise BenchError(f"h2load negotiated {got}, not h2 (status {out.returncode}): "
                         f"{(out.stderr or text).strip()[-300:]}")
    reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    traffic = re.search(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?\((\d+)\) data",
                        text)
    finished = re.search(r"finished in ([\d.]+)(m?s)", text)
    if not (reqs and codes and traffic and finished):
        raise BenchError(f"h2load output not understood: {text.strip()[-300:]}")
    _total, started, done, ok, failed, errored, timeout = map(int, reqs.groups())
    latencies = []
    with open(log_file) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                latencies.append(int(parts[2]))
    latencies.sort()
    duration = float(finished.group(1)) * (1e3 if finished.group(2) == "ms" else 1e6)
    return {
        "requests": ok, "started": started, "duration_us": duration,
        "bytes": int(traffic.group(1)), "body_bytes": int(traffic.group(3)),
        "errors": {"failed": failed, "errored": errored, "timeout": timeout,
                   "status": done - ok + int(codes.group(2)) + int(codes.group(3))
                   + int(codes.group(4))},
        "error_count": failed + errored + timeout + (done - ok),
        "p50_us": _percentile(latencies, 0.50), "p99_us": _percentile(latencies, 0.99),
        "p999_us": _percentile(latencies, 0.999),
        "max_us": latencies[-1] if latencies else 0,
        "protocol": "h2",
    }


def bytes_check(result, size, conns):
    """A wrong answer must fail the bench: every counted response carried `size` body
    bytes (wrk counts all bytes read, so allow the headers and the responses still in
    flight when it stopped). None when fine, else what is wrong."""
    if result.get("body_bytes") is not None:  # h2load counts body bytes exactly
        low, high = result["requests"] * size, result["started"] * size
        got = result["body_bytes"]
    else:
        low = result["requests"] * size
        high = (result["requests"] + conns) * (size + HEADER_SLACK)
        got = result["bytes"]
    if low <= got <= high:
        return None
    return f"{got} bytes for {result['requests']} responses of {size} bytes"


def measure_once(args, server, origin_port, run, conns, size=None):
    """One measured run (`run()` is a wrk or h2load call returning its summary):
    throughput, latency, the server's CPU, origin traffic."""
    origin_before = origin_requests(origin_port)
    cpu_before = server.cpu_seconds()
    share = CoreShare(server)
    memory = MemorySampler(server)
    memory.start()
    profile = Profile(args, server)
    try:
        result = run()
    finally:
        profile.finish()
        peak_memory = memory.finish()
    cpu = server.cpu_seconds() - cpu_before
    origin = origin_requests(origin_port) - origin_before
    requests = result["requests"]
    seconds = result["duration_us"] / 1e6
    core = share.finish(seconds, requests)
    wrong = bytes_check(result, size, conns) if size and requests else None
    return {
        "connections": conns,
        "requests": requests,
        "rps": requests / seconds,
        "mbytes_per_s": result["bytes"] / seconds / 1e6,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "p999_ms": result["p999_us"] / 1000,
        "cpu_s_per_100k": cpu / requests * 100_000 if requests else None,
        "errors": result["error_count"] + (1 if wrong else 0),
        "error_kinds": dict(result["errors"], **({"bytes": wrong} if wrong else {})),
        "origin_requests": origin,
        "hit_ratio": 1 - origin / requests if requests else None,
        "peak_memory_mib": peak_memory / corpus.MIB,
        **core,
    }


def measure_repeat(args, server, origin_port, run, conns, size=None):
    """`args.repeat` runs back to back; the one with the median requests/s is reported
    (all are kept in the JSON). On a shared VM one run can lose a second to the
    hypervisor (see steal_pct); the median is what the server does, not what the host did."""
    runs = [measure_once(args, server, origin_port, run, conns, size)
            for _ in range(args.repeat)]
    median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    # Errors in any run count: a wrong answer in one run is not outvoted by two right ones.
    return dict(median, runs=runs, errors=sum(r["errors"] for r in runs))


def tls_client_context(cert):
    """Trusts the bench certificate, offers HTTP/1.1 only; an EOF without close_notify
    after a complete body is no error."""
    ctx = ssl.create_default_context(cafile=cert)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return ctx


class _ColdClient(asyncio.Protocol):
    """One cold request on its own connection. A bare Protocol rather than asyncio's
    streams: those copy every chunk twice, and at 1 MiB per answer the client, not the
    server, was the limit (612 against 2,189 req/s from nginx serving a file; over TLS
    417 against 737). Status and length are checked for every answer, the bytes (md5)
    for those created with `digest`."""

    def __init__(self, size, digest):
        self.size, self.head, self.need, self.body = size, b"", None, 0
        self.md5 = hashlib.md5() if digest else None
        self.status, self.start, self.elapsed = "no answer", None, None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def send(self, request):
        self.start = time.monotonic()
        self.transport.write(request)

    def data_received(self, data):
        if self.need is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.1 ") else "?"
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            self.need = int(length.group(1)) if length else -1  # -1: to the end
        self.body += len(data)
        if self.md5:
            self.md5.update(data)
        if self.need >= 0 and self.body >= self.need:
            self._finish()

    def _finish(self):
        if not self.done.done():
            if self.start is not None:
                self.elapsed = time.monotonic() - self.start
            self.done.set_result(None)
            self.transport.close()

    def eof_received(self):
        self._finish()

    def connection_lost(self, exc):
        self._finish()

    def outcome(self, want_md5):
        ok = self.status == "200" and self.body == self.size and self.need in (-1, self.size)
        if ok and self.md5 and self.md5.hexdigest() != want_md5:
            ok, self.status = False, "wrong bytes"
        return ok, self.status, self.elapsed


async def _cold(port, entry, clients, tls, connected):
    # Connect (and shake hands) everyone first, so the requests arrive together rather
    # than as fast as connections can be accepted.
    loop = asyncio.get_running_loop()
    conns = await asyncio.gather(*(
        loop.create_connection(lambda i=i: _ColdClient(entry["size"], i % 100 == 0),
                               "127.0.0.1", port, ssl=tls,
                               server_hostname="127.0.0.1" if tls else None)
        for i in range(clients)))
    connected()
    request = (f"GET {corpus.url_path(entry, 'cold')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Connection: close\r\n\r\n").encode()
    start = time.monotonic()
    for _, client in conns:
        client.send(request)
    await asyncio.gather(*(client.done for _, client in conns))
    wall = time.monotonic() - start
    return [client.outcome(entry["hash"]) for _, client in conns], wall


def measure_cold(args, server, origin_port, entry, tls=None):
    """`args.cold` concurrent requests for one uncached object: how many reach the origin.
    `tls`: a client context to ask over the server's TLS listener. CPU and steal count
    from when every connection is up (the handshakes are not in the figures)."""
    origin_before = origin_requests(origin_port)
    port = server.tls_port if tls else server.port
    before = {}

    profile = None

    def connected():
        nonlocal profile
        profile = Profile(args, server)  # --perf: the burst only, not the handshakes
        before.update(cpu=server.cpu_seconds(), share=CoreShare(server), at=time.monotonic())

    t = time.monotonic()
    results, wall = asyncio.run(_cold(port, entry, args.cold, tls, connected))
    cpu = server.cpu_seconds() - before["cpu"]
    if profile:
        profile.finish()
    core = before["share"].finish(wall, len(results))
    latencies = sorted(r[2] for r in results if r[2] is not None)
    bad = [r[1] for r in results if not r[0]]
    pick = lambda q: _percentile(latencies, q) * 1000
    return {
        "connections": args.cold,
        "requests": len(results),
        "rps": len(results) / wall,
        "wall_s": wall,
        "connect_s": before["at"] - t,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "p999_ms": pick(0.999),
        "cpu_s_per_100k": cpu / len(results) * 100_000,
        "errors": len(bad),
        "error_statuses": sorted(set(bad)),
        "origin_requests": origin_requests(origin_port) - origin_before,
        "hit_ratio": None,
        "peak_memory_mib": None,
        **core,
    }


def fetch(url, tls=None):
    """GET a URL through the mirror; returns (status, body)."""
    with urllib.request.urlopen(url, timeout=30, context=tls) as r:
        return r.status, r.read()


def check_fetch(url, entry, tls=None):
    """One GET that must answer 200 with the entry's bytes (their md5 is its hash)."""
    status, body = fetch(url, tls)
    if status != 200 or len(body) != entry["size"]:
        raise BenchError(f"GET {url}: status {status}, {len(body)} bytes, "
                         f"expected 200 and {entry['size']}")
    if hashlib.md5(body).hexdigest() != entry["hash"]:
        raise BenchError(f"GET {url}: {entry['size']} bytes, but not the object's")


def fill_all(server, entries, workers):
    """GETs every entry once over keep-alive connections (`workers` at once), checking
    each answer's status and length; returns (seconds, requests). This is the warm-up
    of the disk scenario: afterwards every entry is in some tier of every server."""
    chunks = [entries[i::workers] for i in range(workers)]

    def worker(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            for entry in chunk:
                path = corpus.url_path(entry)
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or len(body) != entry["size"]:
                    raise BenchError(f"GET {path}: status {r.status}, {len(body)} bytes, "
                                     f"expected 200 and {entry['size']}")
                if r.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        finally:
            conn.close()
        return len(chunk)

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = sum(pool.map(worker, chunks))
    return time.monotonic() - start, done
