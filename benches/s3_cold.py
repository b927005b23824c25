"""Cold-miss latency: a mirror in front of `shimmer origin` vs in front of moto's S3.

Usage: python3 benches/s3_cold.py target/release/shimmer [N]   (README: Origins)
"""
import hashlib, json, os, shutil, tempfile, socket, statistics, subprocess, sys, time, requests, boto3
BIN = sys.argv[1]; W = tempfile.mkdtemp(prefix="shimmer-s3-cold-"); N = int(sys.argv[2]) if len(sys.argv) > 2 else 200
SIZE = 100_000
os.makedirs(W, exist_ok=True)
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def wait(port):
    for _ in range(300):
        try: socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError: time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")
procs = []
def spawn(args, env=None, log="x"):
    procs.append(subprocess.Popen(args, stdout=open(f"{W}/{log}.log", "w"), stderr=subprocess.STDOUT, env=env))
hashes = [hashlib.md5(str(i).encode()).hexdigest() for i in range(N)]
bodies = {h: os.urandom(SIZE) for h in hashes}
for h in hashes:
    d = f"{W}/data/images/{h[:2]}"; os.makedirs(d, exist_ok=True)
    open(f"{d}/{h}", "wb").write(bodies[h])
po, pm = free(), free()
spawn([BIN, "origin", "--dir", f"{W}/data", "--listen", f"127.0.0.1:{po}"], log="origin")
spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(pm)], log="moto")
wait(po); wait(pm)
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{pm}", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
s3.create_bucket(Bucket="bench")
for h in hashes:
    s3.put_object(Bucket="bench", Key=f"{h[:2]}/{h[2:4]}/{h}", Body=bodies[h], ContentType="image/jpeg", ACL="public-read")
def mirror(name, origin_block):
    p = free()
    conf = f"""
threads: 2
pid_file: {W}/{name}.pid
upgrade_sock: {W}/{name}.sock
shimmer:
  node: "a"
  listen: ["127.0.0.1:{p}"]
  static:
    image_ilink: "http://127.0.0.1:{p}/_images/$hash/$id.$ext"
  origin:
{origin_block}
  log_level: warn
"""
    open(f"{W}/{name}.yaml", "w").write(conf)
    spawn([BIN, "-c", f"{W}/{name}.yaml"], log=name); wait(p); return p
m_http = mirror("m-http", f'    servers: ["http://127.0.0.1:{po}"]')
m_s3 = mirror("m-s3", f'    s3: {{endpoint: "http://127.0.0.1:{pm}", bucket: bench, path_style: true}}')
def run(port):
    sess = requests.Session(); out = []
    for h in hashes:
        t = time.perf_counter(); r = sess.get(f"http://127.0.0.1:{port}/_images/{h}/x.jpg")
        dt = (time.perf_counter() - t) * 1000
        assert r.status_code == 200 and r.content == bodies[h] and r.headers["x-cache"] == "MISS", (r.status_code, r.headers)
        out.append(dt)
    return out
def pct(v, q): v = sorted(v); return v[min(len(v) - 1, int(q * len(v)))]
def direct(url_of):
    sess = requests.Session(); out = []
    for h in hashes:
        t = time.perf_counter(); r = sess.get(url_of(h)); out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200 and r.content == bodies[h]
    return out
try:
    for name, f in [("direct origin", lambda h: f"http://127.0.0.1:{po}/_images/{h}/x.jpg"), ("direct moto", lambda h: f"http://127.0.0.1:{pm}/bench/{h[:2]}/{h[2:4]}/{h}")]:
        v = direct(f)
        print(f"{name:16} n={len(v)} p50={pct(v,.5):.2f} ms p90={pct(v,.9):.2f} ms p99={pct(v,.99):.2f} ms mean={statistics.mean(v):.2f} ms")
    for name, port in [("shimmer origin", m_http), ("S3 (moto)", m_s3)]:
        v = run(port)
        print(f"{name:16} n={len(v)} p50={pct(v,.5):.2f} ms p90={pct(v,.9):.2f} ms p99={pct(v,.99):.2f} ms mean={statistics.mean(v):.2f} ms")
finally:
    for p in procs: p.terminate()
    for p in procs: p.wait()
    shutil.rmtree(W, ignore_errors=True)
