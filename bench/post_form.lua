-- wrk script for bench/load.sh and bench/ceilings.sh: every request is a POST of one fixed
-- application/x-www-form-urlencoded body, optionally with HTTP Basic credentials, or a
-- GET with an optional Cookie. Configured from the environment:
--   BENCH_BODY    the form body, already urlencoded (e.g. grant_type=client_credentials)
--   BENCH_BASIC   base64 of "client_id:client_secret"; empty or unset: no Authorization
--   BENCH_METHOD  GET for a GET without a body; unset: POST
--   BENCH_COOKIE  a Cookie header value (e.g. ponte_session=…); empty or unset: none
if os.getenv("BENCH_METHOD") == "GET" then
  wrk.method = "GET"
else
  wrk.method = "POST"
  wrk.body = os.getenv("BENCH_BODY") or ""
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end
local basic = os.getenv("BENCH_BASIC")
if basic ~= nil and basic ~= "" then
  wrk.headers["Authorization"] = "Basic " .. basic
end
local cookie = os.getenv("BENCH_COOKIE")
if cookie ~= nil and cookie ~= "" then
  wrk.headers["Cookie"] = cookie
end

-- One machine-readable line for load.sh. errors.status counts responses with a status
-- of 400 or more (what wrk reports as "Non-2xx or 3xx responses").
function done(summary, latency, requests)
  io.write(string.format("bench: requests=%d bad_status=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
