-- A new connection per request: wrk reconnects when an answer says Connection: close,
-- and a TLS reconnect is a new handshake (wrk offers the previous session's ticket, so
-- servers that issue tickets resume; bench.py reports which do).
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
wrk.headers["Connection"] = "close"
