-- 90 % GET /items/<random>, 10 % POST /items; the position token is carried back
-- in the Wsgi-Sqla-Position header, as an API client would; counts who served reads.
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

token = ""
primary_reads = 0
replica_reads = 0
local n = 0

function request()
  n = n + 1
  local headers = {}
  if token ~= "" then headers["Wsgi-Sqla-Position"] = token end
  if n % 10 == 0 then
    return wrk.format("POST", "/items", headers, "")
  end
  return wrk.format("GET", "/items/" .. math.random(1, 1000), headers)
end

function response(status, headers, body)
  local t = headers["Wsgi-Sqla-Position"]
  if t ~= nil then token = t end
  local served = headers["X-Served-By"]
  if served == "replica" then replica_reads = replica_reads + 1
  elseif served == "primary" then primary_reads = primary_reads + 1 end
end

function done(summary, latency, requests)
  local p, r = 0, 0
  for _, thread in ipairs(threads) do
    p = p + thread:get("primary_reads")
    r = r + thread:get("replica_reads")
  end
  io.write(string.format("BENCH primary_reads=%d replica_reads=%d p99_us=%d p50_us=%d requests=%d errors=%d\n",
    p, r, latency:percentile(99), latency:percentile(50), summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
