-- Requests drawn from Zipf(s) over the paths in a file (one per line, most popular
-- first). Usage: wrk -s zipf.lua URL -- PATHS_FILE S SEED
-- Each wrk thread draws its own stream; the CDF is built once per thread.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local paths, cdf = {}, {}

local threads_started = 0
setup = function(thread)
  threads_started = threads_started + 1
  thread:set("thread_no", threads_started) -- a global in that thread's Lua state
end

init = function(args)
  local file = assert(io.open(args[1], "r"))
  for line in file:lines() do paths[#paths + 1] = line end
  file:close()
  local s, total = tonumber(args[2]), 0
  for k = 1, #paths do
    total = total + 1 / k ^ s
    cdf[k] = total
  end
  for k = 1, #paths do cdf[k] = cdf[k] / total end
  math.randomseed(tonumber(args[3]) + (thread_no or 0) * 7919)
end

request = function()
  local u, lo, hi = math.random(), 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", paths[lo])
end
