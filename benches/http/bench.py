#!/usr/bin/env python3
"""`make bench`: shimmer, nginx and Varnish as one image mirror, on the same work, in
one run, on one machine.

One origin (`shimmer origin` over a generated Shimmie data directory) feeds each
server in turn. Each is a single mirror owning everything, with the same cache budget
(25% of the image corpus), started fresh (empty cache) and pinned to core 0; the load
generator and the origin share the other cores. Scenarios, per server:

  cold    1,000 concurrent requests for one uncached object (origin requests counted)
  hot20k  one 20 KB image from memory, wrk at 64 connections
  hot5m   one 5 MB file from memory, wrk at 16 connections
  zipf    Zipf(0.9) over the 10,000 images, wrk at 64 connections, after a warm-up

Reported: requests/s, p50/p99/p99.9 latency, CPU seconds of the server per 100k
requests, origin requests (hit ratio for zipf), and shimmer's ratio to the best peer.
The table goes to stdout, everything to target/bench/http.json. Benchmarks report;
they never fail on a number. They do fail if a server cannot start or answers wrong.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import corpus

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("shimmer", "nginx", "varnish")


class BenchError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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


def cpu_sets():
    """Core 0 for the server under test, the rest for the load and the origin."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return str(cpus[0]), ",".join(str(c) for c in cpus[1:])


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


class MemorySampler(threading.Thread):
    """Peak memory of a server while a run goes on: its processes' RSS plus, for nginx,
    the tmpfs cache directory (which is memory too, but no process's RSS)."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.peak, self.stopped = server, 0, threading.Event()

    def sample(self):
        used = session_rss_bytes(self.server.proc.pid)
        if self.server.cache_dir:
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


class Server:
    """One process tree under test, started in its own session so its CPU can be summed."""

    def __init__(self, name, cmd, port, work, cpus):
        self.name, self.port, self.work = name, port, work
        self.cache_dir = None
        self.cpus = cpus
        self.stderr = open(os.path.join(work, "stderr.log"), "wb")
        self.proc = subprocess.Popen(
            pinned(cmd, cpus),
            stdout=self.stderr,
            stderr=self.stderr,
            start_new_session=True,
        )
        try:
            wait_port(port, self.proc, name)
        except BenchError:
            self.stop()
            raise BenchError(f"{name} failed to start; see {self.stderr.name}")

    def cpu_seconds(self):
        return session_cpu_seconds(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.stderr.close()


def start_server(name, args, work, origin_port, cache_bytes, cpus):
    port = free_port()
    values = {
        "WORK": work,
        "PORT": port,
        "ORIGIN_PORT": origin_port,
        "CACHE_BYTES": f"{cache_bytes // corpus.MIB}M",
        "USER": pwd.getpwuid(os.getuid()).pw_name,
    }
    if name == "shimmer":
        conf = os.path.join(work, "shimmer.yaml")
        with open(conf, "w") as f:
            f.write(render("shimmer.yaml", values))
        cmd = [args.shimmer, "-c", conf]
    elif name == "nginx":
        # tmpfs, so nginx's cache is memory like the others' (the page cache would be too,
        # but a disk-backed directory also writes every fill back to the disk).
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else work
        values["CACHE_DIR"] = os.path.join(shm, f"shimmer-bench-nginx-{os.getpid()}")
        shutil.rmtree(values["CACHE_DIR"], ignore_errors=True)
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(render("nginx.conf", values))
        cmd = [args.nginx, "-p", work, "-e", os.path.join(work, "error.log"), "-c", conf,
               "-g", "daemon off;"]
    elif name == "varnish":
        vcl = os.path.join(work, "varnish.vcl")
        with open(vcl, "w") as f:
            f.write(render("varnish.vcl", values))
        cmd = [args.varnishd, "-F", "-j", "none", "-n", os.path.join(work, "varnish"),
               "-a", f"127.0.0.1:{port}", "-f", vcl, "-T", "none",
               "-s", f"malloc,{cache_bytes // corpus.MIB}M"]
    else:
        raise BenchError(f"unknown server {name}")
    server = Server(name, cmd, port, work, cpus)
    server.cache_dir = values.get("CACHE_DIR")
    return server


def origin_requests(origin_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{origin_port}/_origin/stats", timeout=5) as r:
        return json.load(r)["requests"]


def fetch(port, path):
    """GET a path through the mirror; returns (status, body length)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.status, len(r.read())


def run_wrk(args, port, path, conns, seconds, cpus, script="report.lua", script_args=()):
    """wrk against http://127.0.0.1:port/path; returns report.lua's summary."""
    threads = len(cpus.split(",")) if cpus else 1
    cmd = [args.wrk, f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
           "-s", os.path.join(HERE, script), f"http://127.0.0.1:{port}{path}"]
    if script_args:
        cmd += ["--"] + [str(a) for a in script_args]
    env = dict(os.environ, BENCH_LUA_DIR=HERE)
    out = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, env=env,
                         timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise BenchError(f"wrk printed no summary (status {out.returncode}): {out.stderr.strip()}")


def steal_ticks(cpus):
    """Ticks the hypervisor took from the server's cores (/proc/stat "steal")."""
    wanted = {f"cpu{c}" for c in cpus.split(",")} if cpus else {"cpu"}
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:
                total += int(fields[8])
    return total


def measure_once(args, server, origin_port, cpus, path, conns, **script):
    """One measured wrk run: throughput, latency, the server's CPU, origin traffic."""
    origin_before = origin_requests(origin_port)
    cpu_before = server.cpu_seconds()
    steal_before = steal_ticks(server.cpus)
    memory = MemorySampler(server)
    memory.start()
    result = run_wrk(args, server.port, path, conns, args.seconds, cpus, **script)
    cpu = server.cpu_seconds() - cpu_before
    steal = steal_ticks(server.cpus) - steal_before
    peak_memory = memory.finish()
    origin = origin_requests(origin_port) - origin_before
    requests = result["requests"]
    seconds = result["duration_us"] / 1e6
    return {
        "connections": conns,
        "requests": requests,
        "rps": requests / seconds,
        "mbytes_per_s": result["bytes"] / seconds / 1e6,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "p999_ms": result["p999_us"] / 1000,
        "cpu_s_per_100k": cpu / requests * 100_000 if requests else None,
        "errors": sum(result["errors"].values()),
        "origin_requests": origin,
        "hit_ratio": 1 - origin / requests if requests else None,
        "peak_memory_mib": peak_memory / corpus.MIB,
        "steal_pct": 100 * steal / CLK_TCK / seconds,
    }


def measure_wrk(args, server, origin_port, cpus, path, conns, **script):
    """`args.repeat` runs back to back; the one with the median requests/s is reported
    (all are kept in the JSON). On a shared VM one run can lose a second to the
    hypervisor (see steal_pct); the median is what the server does, not what the host did."""
    runs = [measure_once(args, server, origin_port, cpus, path, conns, **script)
            for _ in range(args.repeat)]
    median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    return dict(median, runs=runs)


async def _connect(port):
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)


async def _cold_exchange(reader, writer, request, size):
    start = time.monotonic()
    writer.write(request)
    await writer.drain()
    data = await reader.read()  # Connection: close, so the body ends at EOF
    elapsed = time.monotonic() - start
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.1 ") else "?"
    ok = status == "200" and len(body) == size
    return ok, status, elapsed


async def _cold(port, path, size, clients):
    # Connect everyone first, so the requests arrive together rather than as fast as
    # connections can be accepted.
    conns = await asyncio.gather(*(_connect(port) for _ in range(clients)))
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").encode()
    start = time.monotonic()
    results = await asyncio.gather(*(_cold_exchange(r, w, request, size) for r, w in conns))
    return results, time.monotonic() - start


def measure_cold(args, server, origin_port, entry):
    """`args.cold` concurrent requests for one uncached object: how many reach the origin."""
    origin_before = origin_requests(origin_port)
    cpu_before = server.cpu_seconds()
    results, wall = asyncio.run(_cold(server.port, corpus.url_path(entry, "cold"),
                                      entry["size"], args.cold))
    cpu = server.cpu_seconds() - cpu_before
    latencies = sorted(r[2] for r in results)
    bad = [r[1] for r in results if not r[0]]
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    return {
        "connections": args.cold,
        "requests": len(results),
        "rps": len(results) / wall,
        "wall_s": wall,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "p999_ms": pick(0.999),
        "cpu_s_per_100k": cpu / len(results) * 100_000,
        "errors": len(bad),
        "error_statuses": sorted(set(bad)),
        "origin_requests": origin_requests(origin_port) - origin_before,
        "hit_ratio": None,
        "peak_memory_mib": None,
        "steal_pct": None,
    }


def check_fetch(port, entry, path):
    status, length = fetch(port, path)
    if status != 200 or length != entry["size"]:
        raise BenchError(f"GET {path}: status {status}, {length} bytes, "
                         f"expected 200 and {entry['size']}")


def bench_server(args, server, origin_port, manifest, zipf_paths, cpus):
    results = {}
    if "cold" in args.scenarios:
        log(f"  cold: {args.cold} concurrent requests for one 1 MiB object")
        results["cold"] = measure_cold(args, server, origin_port, manifest["cold"])
    for name, key, conns in (("hot20k", "hot_image", 64), ("hot5m", "hot_large", 16)):
        if name not in args.scenarios:
            continue
        entry = manifest[key]
        path = corpus.url_path(entry)
        check_fetch(server.port, entry, path)  # the miss that fills the cache
        check_fetch(server.port, entry, path)
        log(f"  {name}: warm-up {args.warmup} s, then {args.seconds} s at {conns} connections")
        run_wrk(args, server.port, path, conns, args.warmup, cpus)
        results[name] = measure_wrk(args, server, origin_port, cpus, path, conns)
    if "zipf" not in args.scenarios:
        return results
    conns = 64
    log(f"  zipf: warm-up {args.zipf_warmup} s, then {args.seconds} s at {conns} connections")
    zipf = {"script": "zipf.lua", "script_args": (zipf_paths, args.zipf_s, 1)}
    run_wrk(args, server.port, "/", conns, args.zipf_warmup, cpus, **zipf)
    zipf["script_args"] = (zipf_paths, args.zipf_s, 2)
    results["zipf"] = measure_wrk(args, server, origin_port, cpus, "/", conns, **zipf)
    return results


SCENARIOS = (
    ("cold", "1,000 concurrent cold requests, one 1 MiB object"),
    ("hot20k", "hot 20 KB image (memory hit), 64 connections"),
    ("hot5m", "hot 5 MB file (memory hit), 16 connections"),
    ("zipf", "Zipf(0.9) over 10,000 images, cache = 25% of corpus, 64 connections"),
)


def ratios(results):
    """shimmer against the best peer measured, per scenario."""
    out = {}
    for scenario, _ in SCENARIOS:
        mine = results.get("shimmer")
        mine = mine.get(scenario) if isinstance(mine, dict) else None
        peers = [r[scenario] for n, r in results.items()
                 if n != "shimmer" and isinstance(r, dict) and scenario in r]
        if not mine or not peers:
            continue
        best = lambda key, pick: pick(p[key] for p in peers if p.get(key) is not None)
        out[scenario] = {
            "rps": mine["rps"] / best("rps", max),
            "p99": mine["p99_ms"] / best("p99_ms", min) if best("p99_ms", min) else None,
            "cpu": mine["cpu_s_per_100k"] / best("cpu_s_per_100k", min),
        }
        if scenario == "zipf":
            out[scenario]["hit_points"] = 100 * (mine["hit_ratio"] - best("hit_ratio", max))
    return out


def table(results, ratio):
    lines = []
    head = (f"{'server':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
            f"{'CPU s/100k':>12}{'origin':>8}{'hit %':>7}{'mem MiB':>9}{'errors':>8}{'steal %':>9}")
    for scenario, title in SCENARIOS:
        lines += ["", f"{scenario}: {title}", head]
        for name in SERVERS:
            r = results.get(name, {})
            if isinstance(r, str):
                lines.append(f"{name:<9}  FAILED: {r}")
                continue
            m = r.get(scenario)
            if not m:
                continue
            hit = f"{100 * m['hit_ratio']:.1f}" if m.get("hit_ratio") is not None else "-"
            mem = f"{m['peak_memory_mib']:.0f}" if m.get("peak_memory_mib") is not None else "-"
            steal = f"{m['steal_pct']:.1f}" if m.get("steal_pct") is not None else "-"
            lines.append(
                f"{name:<9}{m['rps']:>10.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
                f"{m['p999_ms']:>10.2f}{m['cpu_s_per_100k']:>12.2f}{m['origin_requests']:>8}"
                f"{hit:>7}{mem:>9}{m['errors']:>8}{steal:>9}")
        q = ratio.get(scenario)
        if q:
            text = (f"shimmer / best peer: req/s {q['rps']:.2f}x (higher is better), "
                    f"p99 {q['p99']:.2f}x, CPU {q['cpu']:.2f}x (lower is better)")
            if "hit_points" in q:
                text += f", hit ratio {q['hit_points']:+.1f} points"
            lines.append(text)
    return "\n".join(lines)


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shimmer", default=os.path.join(REPO, "target/release/shimmer"))
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--varnishd", default=shutil.which("varnishd") or "/usr/sbin/varnishd")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    p.add_argument("--out", default=os.path.join(REPO, "target/bench"))
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--seconds", type=int, default=5, help="each measured run")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per scenario")
    p.add_argument("--warmup", type=int, default=2, help="before each hot run")
    p.add_argument("--zipf-warmup", type=int, default=10)
    p.add_argument("--zipf-s", type=float, default=0.9)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--cold", type=int, default=1000, help="concurrent cold requests")
    p.add_argument("--scenarios", default=",".join(s for s, _ in SCENARIOS))
    args = p.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for s in args.scenarios:
        if s not in dict(SCENARIOS):
            p.error(f"unknown scenario {s!r}; choose from {', '.join(dict(SCENARIOS))}")
    servers = [s for s in args.servers.split(",") if s]
    for s in servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r}; choose from {', '.join(SERVERS)}")
    tools = {"shimmer": args.shimmer, "wrk": args.wrk, "taskset": shutil.which("taskset")}
    if "nginx" in servers:
        tools["nginx"] = args.nginx
    if "varnish" in servers:
        tools["varnishd"] = args.varnishd
    missing = [f"{k} ({v})" for k, v in tools.items() if not v or not os.access(v, os.X_OK)]
    if missing:
        p.error("missing: " + ", ".join(missing) + " (`make bench` installs them)")

    os.makedirs(args.out, exist_ok=True)
    manifest = corpus.ensure(os.path.join(args.out, "corpus"), images=args.images, log=log)
    cache_bytes = manifest["image_bytes"] // 4
    # Popularity rank -> image, shuffled so popularity has nothing to do with the hash.
    order = list(manifest["images"])
    __import__("random").Random(11).shuffle(order)
    zipf_paths = os.path.join(args.out, "zipf-paths.txt")
    with open(zipf_paths, "w") as f:
        f.writelines(corpus.url_path(e) + "\n" for e in order)

    server_cpus, load_cpus = cpu_sets()
    run_dir = os.path.join(args.out, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(os.path.join(run_dir, "origin"))
    origin_port = free_port()
    origin = Server("origin", [args.shimmer, "origin", "--dir", os.path.join(args.out, "corpus"),
                               "--listen", f"127.0.0.1:{origin_port}", "--threads", "2"],
                    origin_port, os.path.join(run_dir, "origin"), load_cpus)
    results = {}
    try:
        for name in servers:
            work = os.path.join(run_dir, name)
            os.makedirs(work)
            log(f"{name}: cache {cache_bytes // corpus.MIB} MiB, pinned to cpu {server_cpus}")
            server = None
            try:
                server = start_server(name, args, work, origin_port, cache_bytes, server_cpus)
                results[name] = bench_server(args, server, origin_port, manifest, zipf_paths,
                                             load_cpus)
            except (BenchError, OSError, subprocess.SubprocessError) as e:
                log(f"{name}: FAILED: {e}")
                results[name] = str(e)
            finally:
                if server:
                    server.stop()
                    if server.cache_dir:
                        shutil.rmtree(server.cache_dir, ignore_errors=True)
    finally:
        origin.stop()

    ratio = ratios(results)
    report = {
        "machine": machine(),
        "versions": {
            "shimmer": version(["git", "-C", REPO, "describe", "--always", "--dirty"]),
            "nginx": version([args.nginx, "-v"]),
            "varnish": version([args.varnishd, "-V"]),
            "wrk": version([args.wrk, "-v"]),
        },
        "params": {"seconds": args.seconds, "images": args.images,
                   "image_bytes": manifest["image_bytes"], "cache_bytes": cache_bytes,
                   "server_cpus": server_cpus, "load_cpus": load_cpus, "zipf_s": args.zipf_s},
        "results": results,
        "shimmer_over_best_peer": ratio,
    }
    out = os.path.join(args.out, "http.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    m = report["machine"]
    print(f"make bench: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
          f"Linux {m['kernel']}, {m['date']}")
    print(f"server on cpu {server_cpus}, wrk and origin on cpu {load_cpus}; "
          f"cache {cache_bytes // corpus.MIB} MiB = 25% of {manifest['image_bytes'] // corpus.MIB}"
          f" MiB of images; median of {args.repeat} runs of {args.seconds} s")
    print(table(results, ratio))
    print(f"\nwritten to {out}")
    return 1 if any(isinstance(r, str) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
