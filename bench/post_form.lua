-- wrk script for bench/load.sh: every request is a POST of one fixed
-- application/x-www-form-urlencoded body, optionally with HTTP Basic credentials.
-- Configured from the environment (load.sh sets both):
--   BENCH_BODY   the form body, already urlencoded (e.g. grant_type=client_credentials)
--   BENCH_BASIC  base64 of "client_id:client_secret"; empty or unset: no Authorization
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or ""
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local basic = os.getenv("BENCH_BASIC")
if basic ~= nil and basic ~= "" then
  wrk.headers["Authorization"] = "Basic " .. basic
end

-- One machine-readable line for load.sh. errors.status counts responses with a status
-- of 400 or more (what wrk reports as "Non-2xx or 3xx responses").
function done(summary, latency, requests)
  io.write(string.format("bench: requests=%d bad_status=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
