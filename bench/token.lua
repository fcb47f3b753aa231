-- wrk script for bench/token-bench.sh: POSTs a client_credentials request
-- with HTTP Basic authentication — or, when M2M_BENCH_ASSERTION is set, with
-- an RFC 7523 client assertion (workload identity); with M2M_BENCH_API_TOKEN
-- set, M2M_BENCH_MODE=introspect introspects that API token (HTTP Basic as
-- the caller) and M2M_BENCH_MODE=exchange exchanges it (RFC 8693) — and
-- prints one machine-readable summary line. Reads the credentials and path
-- from the environment.
local id_secret = os.getenv("M2M_BENCH_CREDENTIALS")
local assertion = os.getenv("M2M_BENCH_ASSERTION")
local api_token = os.getenv("M2M_BENCH_API_TOKEN")
local mode = os.getenv("M2M_BENCH_MODE") or ""
local path = os.getenv("M2M_BENCH_PATH") or "/oauth/token"

local function b64(data)
  local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  return ((data:gsub('.', function(x)
    local r, byte = '', x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end

wrk.method = "POST"
wrk.path = path
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
if mode == "introspect" then
  -- An API token is [a-z0-9_A-Z]: nothing to percent-encode.
  wrk.path = "/oauth/introspect"
  wrk.body = "token=" .. api_token
  wrk.headers["Authorization"] = "Basic " .. b64(id_secret)
elseif mode == "exchange" then
  wrk.body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
    .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
    .. "&scope=bench%3Aread&subject_token=" .. api_token
elseif assertion and assertion ~= "" then
  -- A JWT is base64url and dots: nothing to percent-encode.
  wrk.body = "grant_type=client_credentials&scope=bench%3Aread"
    .. "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    .. "&client_assertion=" .. assertion
else
  wrk.body = "grant_type=client_credentials&scope=bench%3Aread"
  wrk.headers["Authorization"] = "Basic " .. b64(id_secret)
end

-- DPoP (M2M_BENCH_DPOP_PROOFS: a file of proofs, one per line, made by
-- `m2m-operator bench-dpop`): every request carries the next unused proof
-- of this thread (thread i of n takes lines i, i+n, ...), because the
-- server refuses a replayed one. Proofs are signed before the run, so the
-- load generator's own signing costs nothing during it.
local proofs_file = os.getenv("M2M_BENCH_DPOP_PROOFS")
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local proofs, next_proof = nil, 1
function init(args)
  if proofs_file and proofs_file ~= "" then
    proofs = {}
    local n = tonumber(os.getenv("M2M_BENCH_THREADS") or "1")
    local i = 0
    for line in io.lines(proofs_file) do
      if i % n == id then table.insert(proofs, line) end
      i = i + 1
    end
  end
end

if proofs_file and proofs_file ~= "" then
  function request()
    local proof = proofs[next_proof] or proofs[1]
    next_proof = next_proof + 1
    local headers = {}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers["DPoP"] = proof
    return wrk.format(nil, nil, headers, nil)
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f requests=%d errors=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, bad))
end
