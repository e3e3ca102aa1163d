-- wrk script for benches/peer/bench.py: POST a notification template with fresh event ids
-- on every request (every ack covers a real insert and a commit), and print one RESULT
-- line the bench script parses. Arguments: template file, API key.
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "r"))
  template = f:read("*a")
  f:close()
  prefix = tostring(tid) .. "-" .. tostring(os.time())
  counter = 0
  wrk.method = "POST"
  wrk.headers["content-type"] = "application/json"
  wrk.headers["x-api-key"] = args[2]
end

function request()
  counter = counter + 1
  local body = (template:gsub("EVENT", prefix .. "-" .. counter))
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
