"""Proxy mode: what a proxied hit costs over a local hit.

Two mirrors in proxy mode in front of `shimmer origin`; one 20 KB image owned by
mirror A. wrk asks A (a local memory hit) and then B (B fetches it from A over its
keep-alive pool and streams it back). Both mirrors are pinned to core 0 and wrk to
core 1, one wrk thread, 16 connections, 10 s each.

Usage: python3 benches/proxied_hit.py target/release/shimmer   (README: The fleet)
Needs wrk and taskset (`make bench-deps`).
"""
import hashlib, json, os, socket, subprocess, sys, tempfile, time, urllib.request

BIN = os.path.abspath(sys.argv[1])
W = tempfile.mkdtemp(prefix="shimmer-proxied-hit-")
SECONDS = 10
procs = []


def free():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(port):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def spawn(args, log):
    procs.append(subprocess.Popen(["taskset", "-c", "0", *args],
                                  stdout=open(f"{W}/{log}.log", "w"), stderr=subprocess.STDOUT))


def get(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
        return r.status, dict(r.headers), r.read()


def main():
    pa, pb, po = free(), free(), free()
    template = f"http://127.0.0.1:{{{pa}=1,{pb}=1}}/_images/$hash/x.jpg"
    # The first hash whose primary is A.
    for i in range(1000):
        h = hashlib.md5(str(i).encode()).hexdigest()
        out = subprocess.run([BIN, "owners", "--template", template, h],
                             capture_output=True, text=True, check=True).stdout.split()
        if out[1] == str(pa):
            break
    body = os.urandom(20_000)
    os.makedirs(f"{W}/data/images/{h[:2]}")
    open(f"{W}/data/images/{h[:2]}/{h}", "wb").write(body)
    open(f"{W}/fleet.token", "w").write("bench-fleet-token-0123456789")
    spawn([BIN, "origin", "--dir", f"{W}/data", "--listen", f"127.0.0.1:{po}"], "origin")
    for p in (pa, pb):
        open(f"{W}/{p}.yaml", "w").write(f"""
threads: 1
pid_file: {W}/{p}.pid
upgrade_sock: {W}/{p}.sock
shimmer:
  node: "{p}"
  mode: proxy
  listen: ["127.0.0.1:{p}"]
  static:
    image_ilink: "{template}"
  origin:
    servers: ["http://127.0.0.1:{po}"]
  fleet_token_file: {W}/fleet.token
  log_level: warn
""")
        spawn([BIN, "-c", f"{W}/{p}.yaml"], str(p))
    for p in (po, pa, pb):
        wait(p)
    time.sleep(1)  # both mirrors see each other up (health interval 2 s, rise 2)
    path = f"/_images/{h}/x.jpg"
    rows = []
    for label, port in (("local hit (at the owner)", pa), ("proxied hit (at the other mirror)", pb)):
        for _ in range(5):
            status, headers, got = get(f"http://127.0.0.1:{port}{path}")
            assert status == 200 and got == body, (status, headers)
        via = headers.get("x-shimmer-via", "")
        assert (port == pb) == bool(via), f"{label}: x-shimmer-via {via!r}"
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{SECONDS}s", "--latency",
             f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
        rps = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
        lat = {l.split()[0]: l.split()[1] for l in out.splitlines() if l.strip().startswith(("50%", "99%"))}
        errors = [l for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
        rows.append((label, rps, lat.get("50%"), lat.get("99%"), "; ".join(errors) or "0"))
    print(f"{'':36} {'req/s':>9} {'p50':>9} {'p99':>9}  errors")
    for label, rps, p50, p99, err in rows:
        print(f"{label:36} {rps:9.0f} {p50:>9} {p99:>9}  {err}")
    json.dump([dict(zip(("case", "rps", "p50", "p99", "errors"), r)) for r in rows],
              open(f"{W}/result.json", "w"))


try:
    main()
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
