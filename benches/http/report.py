"""The tables `make bench` prints, and shimmer's ratios to the best peer and the floor."""

# Which servers each scenario runs on. The floor (benches/http/floor.rs) answers one
# fixed body, so it only stands in the hot 20 KB scenarios; it is nobody's peer.
SCENARIOS = (
    # name, group (one fresh server per group), title, servers
    ("cold", "memory", "1,000 concurrent cold requests, one 1 MiB object",
     ("shimmer", "nginx", "varnish")),
    ("hot20k", "memory", "hot 20 KB image (memory hit), 64 connections",
     ("shimmer", "nginx", "varnish", "floor")),
    ("hot5m", "memory", "hot 5 MB file (memory hit), 16 connections",
     ("shimmer", "nginx", "varnish")),
    ("zipf", "memory", "Zipf(0.9) over 10,000 images, cache = 25% of corpus, 64 connections",
     ("shimmer", "nginx", "varnish")),
    ("https-cold", "tls", "1,000 concurrent cold requests over TLS 1.3 (handshakes first), "
     "one 1 MiB object", ("shimmer", "nginx", "varnish")),
    ("https-hot20k", "tls", "hot 20 KB image over TLS 1.3, keep-alive, 64 connections",
     ("shimmer", "nginx", "varnish", "floor")),
    ("https-handshake", "tls", "hot 20 KB image over TLS 1.3, a new connection per request "
     "(wrk, Connection: close), 64 connections", ("shimmer", "nginx", "varnish", "floor")),
    ("h2", "tls", "hot 20 KB image over HTTP/2 (TLS 1.3, ALPN h2), h2load 16 connections x "
     "4 streams", ("shimmer", "nginx", "floor")),
    ("disk", "disk", "uniform over 10,000 images (4x the memory budget) after a fill: "
     "hits from the disk tier, 64 connections", ("shimmer", "nginx", "varnish")),
    ("https-disk", "disk", "disk over TLS 1.3, keep-alive, 64 connections (same fill)",
     ("shimmer", "nginx", "varnish")),
)
SERVERS = ("shimmer", "nginx", "varnish", "floor")
GROUPS = ("memory", "tls", "disk")
# --scenarios also takes these names for several scenarios at once.
ALIASES = {
    "all": [s[0] for s in SCENARIOS],
    "plain": ["cold", "hot20k", "hot5m", "zipf"],
    "https": ["https-cold", "https-hot20k", "https-handshake", "https-disk"],
    "tls": ["https-cold", "https-hot20k", "https-handshake", "h2"],
}
TITLES = {s[0]: s[2] for s in SCENARIOS}
PEERS = ("nginx", "varnish")


def _measured(results, name, scenario):
    r = results.get(name, {}).get(scenario)
    return r if isinstance(r, dict) and "rps" in r else None


def _over(mine, other):
    best = lambda key, pick: pick((p[key] for p in other if p.get(key) is not None), default=None)
    p99, core = best("p99_ms", min), best("core_s_per_100k", min)
    return {
        "rps": mine["rps"] / best("rps", max),
        "p99": mine["p99_ms"] / p99 if p99 else None,
        "cpu": mine["cpu_s_per_100k"] / best("cpu_s_per_100k", min),
        "core": mine["core_s_per_100k"] / core if mine.get("core_s_per_100k") and core else None,
    }


def ratios(results):
    """shimmer against the best peer measured, and against the floor, per scenario."""
    out = {}
    for scenario, *_ in SCENARIOS:
        mine = _measured(results, "shimmer", scenario)
        if not mine:
            continue
        peers = [p for p in (_measured(results, n, scenario) for n in PEERS) if p]
        floor = _measured(results, "floor", scenario)
        q = {}
        if peers:
            q = _over(mine, peers)
            if scenario in ("zipf", "disk", "https-disk") and all(p.get("hit_ratio") is not None for p in peers):
                q["hit_points"] = 100 * (mine["hit_ratio"] - max(p["hit_ratio"] for p in peers))
        if floor:
            q["floor"] = _over(mine, [floor])
        if q:
            out[scenario] = q
    return out


def _fmt(value, spec, missing="-"):
    return format(value, spec) if value is not None else missing


def table(results, ratio, tls_info=None):
    lines = []
    head = (f"{'server':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
            f"{'CPU s/100k':>12}{'core s/100k':>12}{'origin':>8}{'hit %':>7}{'mem MiB':>9}{'errors':>8}{'steal %':>9}"
            f"{'other %':>9}")
    for scenario, _group, title, servers in SCENARIOS:
        rows = []
        for name in servers:
            r = results.get(name, {}).get(scenario)
            if r is None:
                continue
            if "rps" not in r:
                rows.append(f"{name:<9}  FAILED: {r.get('failed', r)}")
                continue
            h = r.get("hit_ratio")
            hit = f"{100 * h:.1f}" if h is not None else "-"
            rows.append(
                f"{name:<9}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                f"{r['p999_ms']:>10.2f}{_fmt(r['cpu_s_per_100k'], '12.2f'):>12}"
                f"{_fmt(r.get('core_s_per_100k'), '12.2f'):>12}"
                f"{r['origin_requests']:>8}{hit:>7}"
                f"{_fmt(r.get('peak_memory_mib'), '.0f'):>9}{r['errors']:>8}"
                f"{_fmt(r.get('steal_pct'), '.1f'):>9}{_fmt(r.get('other_pct'), '.1f'):>9}")
        if not rows:
            continue
        lines += ["", f"{scenario}: {title}", head] + rows
        q = ratio.get(scenario, {})
        if "rps" in q:
            text = (f"shimmer / best peer: req/s {q['rps']:.2f}x (higher is better), "
                    f"p99 {_fmt(q['p99'], '.2f')}x, CPU {q['cpu']:.2f}x, "
                    f"core {_fmt(q.get('core'), '.2f')}x (lower is better)")
            if "hit_points" in q:
                text += f", hit ratio {q['hit_points']:+.1f} points"
            lines.append(text)
        if "floor" in q:
            f = q["floor"]
            lines.append(f"shimmer / Pingora floor: req/s {f['rps']:.2f}x, "
                         f"p99 {_fmt(f['p99'], '.2f')}x, CPU {f['cpu']:.2f}x, "
                         f"core {_fmt(f.get('core'), '.2f')}x")
    if tls_info:
        lines += ["", "TLS as negotiated (a client offering h2 and http/1.1; resumes: "
                      "a second connection resumed the first's session):"]
        for name, t in tls_info.items():
            lines.append(f"  {name:<9}{t.get('version')} {t.get('cipher')}, "
                         f"ALPN {t.get('alpn') or 'none'}, resumes {t.get('resumes')}")
    return "\n".join(lines)


def failed(results):
    """What makes the bench fail: a server that did not run, a scenario with errors."""
    bad = []
    for name, per in results.items():
        for scenario, r in per.items():
            if "rps" not in r:
                bad.append(f"{name} {scenario}: {r.get('failed')}")
            elif r.get("errors"):
                bad.append(f"{name} {scenario}: {r['errors']} errors {r.get('error_kinds', '')}"
                           f"{r.get('error_statuses', '')}")
    return bad
