#!/usr/bin/env python3
"""`make bench`: shimmer, nginx and Varnish as one image mirror, on the same work, in
one run, on one machine, beside the Pingora floor.

One origin (`shimmer origin` over a generated Shimmie data directory) feeds each
server in turn. Each is a single mirror owning everything, with the same cache budget
(25% of the image corpus in memory; the disk scenario adds a disk budget of 1.5x the
corpus on a real directory), started fresh (empty cache) for each group of scenarios
and pinned to core 0; the load generator and the origin share the other cores. Every
server has a plain and a TLS 1.3 listener on one self-signed ECDSA certificate
(Varnish through hitch, pinned with it, its CPU counted with Varnish's). The floor
(benches/http/floor.rs) is Pingora answering a fixed body: shimmer's hot 20 KB over
the floor's is how close its hit path comes to Pingora's own limit. Scenarios:

  cold             1,000 concurrent requests for one uncached object
  hot20k           one 20 KB image from memory, wrk at 64 connections
  hot5m            one 5 MB file from memory, wrk at 16 connections
  zipf             Zipf(0.9) over the 10,000 images, wrk at 64 connections, after a warm-up
  https-cold       cold, over TLS (every connection's handshake done before the requests)
  https-hot20k     hot20k over TLS, keep-alive
  https-handshake  hot20k over TLS, a new connection per request (wrk + Connection: close)
  h2               hot20k over HTTP/2 (ALPN), h2load 16 connections x 4 streams
  disk             uniform over the 10,000 images (4x the memory budget) after filling
                   them all: hits from the disk tier
  https-disk       disk over TLS, keep-alive (after disk, on the same fill): sendfile
                   helps no server here, as every body passes through TLS

Reported: requests/s, p50/p99/p99.9 latency, CPU seconds of the server per 100k
requests (its processes' time; and all of its core's busy time, softirq included),
origin requests (hit ratio), peak memory, errors, steal, and shimmer's ratio
to the best peer (and to the floor). The tables go to stdout, everything to
target/bench/http.json. Benchmarks report; they never fail on a number. They do fail
if a server cannot start or answers wrong (errors > 0, or wrong bytes).
"""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in benches/http for the modules below

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import time
import types

import corpus
import measure
import report
import servers
from measure import log
from servers import BenchError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HOT = {"hot20k": ("hot_image", 64), "hot5m": ("hot_large", 16)}
H2_CLIENTS, H2_STREAMS = 16, 4


def cpu_sets():
    """Core 0 for the server under test, the rest for the load and the origin."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return str(cpus[0]), ",".join(str(c) for c in cpus[1:])


def wrk_run(args, ctx, url, conns, seconds, **script):
    return lambda: measure.run_wrk(args, url, conns, seconds, ctx.load_cpus, **script)


def hot(args, ctx, server, scenario):
    """A hot 20 KB (or 5 MB) object, over plain HTTP/1.1, TLS, TLS with a handshake
    per request, or h2: filled and checked first, then warmed up, then measured."""
    key, conns = HOT["hot5m" if scenario == "hot5m" else "hot20k"]
    entry = ctx.manifest[key]
    path = corpus.url_path(entry)
    tls = scenario != "hot20k" and scenario != "hot5m"
    url = server.url(path, tls=tls)
    for _ in range(2):  # the miss that fills the cache, then a hit
        measure.check_fetch(url, entry, ctx.tls_client if tls else None)
    log(f"  {scenario}: warm-up {args.warmup} s, then {args.repeat} x {args.seconds} s")
    if scenario == "h2":
        h2log = os.path.join(server.work, "h2load.log")
        run = lambda seconds: lambda: measure.run_h2load(
            args, url, H2_CLIENTS, H2_STREAMS, seconds, ctx.load_cpus, h2log)
        conns = H2_CLIENTS
    else:
        script = {"script": "close.lua"} if scenario == "https-handshake" else {}
        run = lambda seconds: wrk_run(args, ctx, url, conns, seconds, **script)
    run(args.warmup)()
    return measure.measure_repeat(args, server, ctx.origin_port, run(args.seconds), conns,
                                  size=entry["size"])


def zipf(args, ctx, server):
    conns = 64
    log(f"  zipf: warm-up {args.zipf_warmup} s, then {args.repeat} x {args.seconds} s")
    script = {"script": "zipf.lua", "script_args": (ctx.zipf_paths, args.zipf_s, 1)}
    wrk_run(args, ctx, server.url("/"), conns, args.zipf_warmup, **script)()
    script["script_args"] = (ctx.zipf_paths, args.zipf_s, 2)
    return measure.measure_repeat(args, server, ctx.origin_port,
                                  wrk_run(args, ctx, server.url("/"), conns, args.seconds,
                                          **script), conns)


def disk(args, ctx, server, tls=False):
    """Every image fetched once (checked), so all are cached in some tier; then requests
    drawn uniformly (zipf.lua with s = 0) over all of them, 4x what memory holds. Over
    TLS (https-disk) on the same server, without a second fill."""
    fill = getattr(server, "disk_fill", None)
    if fill is None:
        fill = server.disk_fill = measure.fill_all(server, ctx.manifest["images"], workers=8)
        log(f"  disk: filled {fill[1]} images in {fill[0]:.1f} s")
    name = "https-disk" if tls else "disk"
    log(f"  {name}: warm-up {args.warmup} s, then {args.repeat} x {args.seconds} s")
    conns = 64
    base = server.url("/", tls=tls)
    script = {"script": "zipf.lua", "script_args": (ctx.zipf_paths, 0, 3)}
    wrk_run(args, ctx, base, conns, args.warmup, **script)()
    script["script_args"] = (ctx.zipf_paths, 0, 4)
    result = measure.measure_repeat(args, server, ctx.origin_port,
                                    wrk_run(args, ctx, base, conns, args.seconds,
                                            **script), conns)
    return dict(result, fill_s=fill[0], fill_requests=fill[1])


def run_scenario(args, ctx, server, scenario):
    if scenario == "cold":
        log(f"  cold: {args.cold} concurrent requests for one 1 MiB object")
        return measure.measure_cold(args, server, ctx.origin_port, ctx.manifest["cold"])
    if scenario == "https-cold":
        log(f"  https-cold: {args.cold} TLS connections, then one request each, at once")
        return measure.measure_cold(args, server, ctx.origin_port, ctx.manifest["cold"],
                                    tls=ctx.tls_client)
    if scenario == "zipf":
        return zipf(args, ctx, server)
    if scenario in ("disk", "https-disk"):
        return disk(args, ctx, server, tls=scenario == "https-disk")
    return hot(args, ctx, server, scenario)


def run_group(args, ctx, group, names, results, tls_info):
    """Each server started fresh for the group's scenarios, in turn."""
    for name in names:
        wanted = [s for s, g, _, on in report.SCENARIOS
                  if g == group and s in args.scenarios and name in on]
        if not wanted:
            continue
        mode = "disk" if group == "disk" else "memory"
        log(f"{name} ({group}): pinned to cpu {ctx.server_cpus}; {', '.join(wanted)}")
        per = results.setdefault(name, {})
        server = None
        try:
            server = servers.start(name, args, ctx, mode)
            tls_info.setdefault(name, server.tls)
            for scenario in wanted:
                args.profile_name = f"{name}-{scenario}"
                per[scenario] = run_scenario(args, ctx, server, scenario)
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            log(f"{name}: FAILED: {e}")
            for scenario in wanted:
                per.setdefault(scenario, {"failed": str(e)})
        finally:
            if server:
                server.stop()
                if server.cache_on_tmpfs:
                    shutil.rmtree(server.cache_dir, ignore_errors=True)
                if mode == "disk":
                    shutil.rmtree(server.work, ignore_errors=True)  # a GB or more each


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


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    which = lambda tool, default: shutil.which(tool) or default
    p.add_argument("--shimmer", default=os.path.join(REPO, "target/release/shimmer"))
    p.add_argument("--floor", default=os.path.join(REPO, "target/release/examples/floor"))
    p.add_argument("--nginx", default=which("nginx", "/usr/sbin/nginx"))
    p.add_argument("--varnishd", default=which("varnishd", "/usr/sbin/varnishd"))
    p.add_argument("--hitch", default=which("hitch", "/usr/sbin/hitch"))
    p.add_argument("--wrk", default=which("wrk", "/usr/bin/wrk"))
    p.add_argument("--h2load", default=which("h2load", "/usr/bin/h2load"))
    p.add_argument("--out", default=os.path.join(REPO, "target/bench"))
    p.add_argument("--servers", default=",".join(report.SERVERS))
    p.add_argument("--seconds", type=int, default=3, help="each measured run")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per scenario")
    p.add_argument("--warmup", type=int, default=1, help="before each hot and disk run")
    p.add_argument("--zipf-warmup", type=int, default=8, help="before the zipf run")
    p.add_argument("--zipf-s", type=float, default=0.9)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--cold", type=int, default=1000, help="concurrent cold requests")
    p.add_argument("--perf", metavar="DIR",
                   help="record `perf record -g` of the server's processes during each "
                        "measured run into DIR/<server>-<scenario>-<run>.data")
    p.add_argument("--perf-call-graph", metavar="MODE", default="fp",
                   help="perf's --call-graph for --perf: fp (cheap; Rust frames without "
                        "frame pointers are lost) or dwarf,16384 (whole stacks)")
    p.add_argument("--scenarios", default="all",
                   help="comma-separated scenarios, or "
                        + ", ".join(f"{k} ({'+'.join(v)})" for k, v in report.ALIASES.items()
                                    if k != "all") + ", or all")
    args = p.parse_args()
    wanted = []
    for s in (s for s in args.scenarios.split(",") if s):
        if s not in report.TITLES and s not in report.ALIASES:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(report.TITLES)} "
                    f"or {', '.join(report.ALIASES)}")
        wanted += [x for x in report.ALIASES.get(s, [s]) if x not in wanted]
    args.scenarios = wanted
    args.servers = [s for s in args.servers.split(",") if s]
    for s in args.servers:
        if s not in report.SERVERS:
            p.error(f"unknown server {s!r}; choose from {', '.join(report.SERVERS)}")
    on = {name for s, _, _, names in report.SCENARIOS if s in wanted for name in names}
    tools = {"shimmer": args.shimmer, "wrk": args.wrk, "taskset": shutil.which("taskset"),
             "openssl": shutil.which("openssl")}
    need = {"nginx": {"nginx": args.nginx}, "floor": {"floor": args.floor},
            "varnish": {"varnishd": args.varnishd, "hitch": args.hitch}}
    for name in set(args.servers) & on:
        tools.update(need.get(name, {}))
    if "h2" in wanted:
        tools["h2load"] = args.h2load
    if args.perf:
        tools["perf"] = shutil.which("perf")
        os.makedirs(args.perf, exist_ok=True)
    missing = [f"{k} ({v})" for k, v in tools.items() if not v or not os.access(v, os.X_OK)]
    if missing:
        p.error("missing: " + ", ".join(missing) + " (`make bench` builds and installs them)")
    return args


def main():
    args = parse_args()
    started = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    manifest = corpus.ensure(os.path.join(args.out, "corpus"), images=args.images, log=log)
    ctx = types.SimpleNamespace(manifest=manifest)
    ctx.cache_bytes = manifest["image_bytes"] // 4
    # The disk budget holds every image with room to spare, for all three servers.
    ctx.disk_bytes = manifest["image_bytes"] * 3 // 2
    hot_image = manifest["hot_image"]["hash"]
    ctx.hot_image_file = os.path.join(args.out, "corpus", "images", hot_image[:2], hot_image)
    # Popularity rank -> image, shuffled so popularity has nothing to do with the hash.
    order = list(manifest["images"])
    random.Random(11).shuffle(order)
    ctx.zipf_paths = os.path.join(args.out, "zipf-paths.txt")
    with open(ctx.zipf_paths, "w") as f:
        f.writelines(corpus.url_path(e) + "\n" for e in order)

    ctx.server_cpus, ctx.load_cpus = cpu_sets()
    ctx.run_dir = os.path.join(args.out, "run")
    shutil.rmtree(ctx.run_dir, ignore_errors=True)
    os.makedirs(os.path.join(ctx.run_dir, "origin"))
    ctx.certs = servers.make_cert(os.path.join(ctx.run_dir, "tls"))
    ctx.tls_client = measure.tls_client_context(ctx.certs["cert"])
    ctx.origin_port = servers.free_port()
    origin = servers.Server("origin", os.path.join(ctx.run_dir, "origin"), ctx.load_cpus)
    origin.spawn("origin", [args.shimmer, "origin", "--dir", os.path.join(args.out, "corpus"),
                            "--listen", f"127.0.0.1:{ctx.origin_port}", "--threads", "2"],
                 ctx.origin_port)
    results, tls_info, timings = {}, {}, {}
    try:
        for group in report.GROUPS:
            t = time.monotonic()
            run_group(args, ctx, group, args.servers, results, tls_info)
            timings[group] = round(time.monotonic() - t, 1)
    finally:
        origin.stop()

    ratio = report.ratios(results)
    bad = report.failed(results)
    out = os.path.join(args.out, "http.json")
    result = {
        "machine": machine(),
        "versions": {
            "shimmer": version(["git", "-C", REPO, "describe", "--always", "--dirty"]),
            "nginx": version([args.nginx, "-v"]),
            "varnish": version([args.varnishd, "-V"]),
            "hitch": version([args.hitch, "--version"]),
            "wrk": version([args.wrk, "-v"]),
            "h2load": version([args.h2load, "--version"]),
        },
        "params": {"seconds": args.seconds, "repeat": args.repeat, "warmup": args.warmup,
                   "images": args.images, "image_bytes": manifest["image_bytes"],
                   "cache_bytes": ctx.cache_bytes, "disk_bytes": ctx.disk_bytes,
                   "server_cpus": ctx.server_cpus, "load_cpus": ctx.load_cpus,
                   "zipf_s": args.zipf_s, "scenarios": args.scenarios,
                   "servers": args.servers, "h2": {"clients": H2_CLIENTS,
                                                   "streams": H2_STREAMS},
                   "certificate": "self-signed ECDSA P-256 (openssl req)"},
        "tls": tls_info,
        "results": results,
        "shimmer_over_best_peer": ratio,
        "failures": bad,
        "seconds": {"groups": timings, "total": round(time.monotonic() - started, 1)},
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    m = result["machine"]
    worst = lambda key: max([r[key] for per in results.values() for r in per.values()
                             if r.get(key) is not None] or [0])
    print(f"make bench: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
          f"Linux {m['kernel']}, {m['date']}")
    print(f"server on cpu {ctx.server_cpus}, load and origin on cpu {ctx.load_cpus}; "
          f"memory {ctx.cache_bytes // corpus.MIB} MiB = 25% of "
          f"{manifest['image_bytes'] // corpus.MIB} MiB of images (disk scenario: disk "
          f"{ctx.disk_bytes // corpus.MIB} MiB); median of {args.repeat} runs of "
          f"{args.seconds} s; on the server's core, steal up to {worst('steal_pct'):.1f}% "
          f"and other work up to {worst('other_pct'):.1f}%; {result['seconds']['total']:.0f} s")
    print(report.table(results, ratio, tls_info))
    if bad:
        print("\nFAILED (a wrong answer fails the bench):\n  " + "\n  ".join(bad))
    print(f"\nwritten to {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
