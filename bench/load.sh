#!/usr/bin/env bash
# Load test on loopback: Ponte's client_credentials issuance and introspection of a valid
# token, beside the bare ceilings of a minimal actix-web server that only signs or only
# verifies an ES256 access token with the same key ring code (crates/server/examples/ceiling.rs).
#
# Prints one table and two ratios:
#   issuance      = /oauth2/token (client_credentials)   / ceiling /sign     goal >= 0.5
#   introspection = /oauth2/introspect (valid token)     / ceiling /verify   goal >= 0.8
# The ratios are reported, never asserted: the script fails only when a run is broken
# (a server does not start, a response is not 2xx, a socket error).
#
# Usage: bench/load.sh            (from anywhere; see bench/README.md)
# Knobs (environment):
#   BENCH_DURATION     wrk duration of each measured run      (default 10s)
#   BENCH_WARMUP       unmeasured run before each target      (default 2s; 0 to skip)
#   BENCH_THREADS      wrk threads                            (default 2)
#   BENCH_CONNECTIONS  wrk connections                        (default 32)
#   BENCH_KEEP         set to 1 to keep the temp folder (logs, raw wrk output)
#   CARGO_TARGET_DIR   where cargo builds (default: ./target of the workspace)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-2s}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SCRIPT="$BENCH/post_form.lua"

say() { printf '%s\n' "bench: $*" >&2; }
die() {
  printf '%s\n' "bench: FAILED: $*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
  say "installing wrk with apt-get"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q wrk >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q wrk >/dev/null; }
fi
command -v wrk >/dev/null 2>&1 || die "wrk is not installed"
command -v curl >/dev/null 2>&1 || die "curl is not installed"

# --- build -------------------------------------------------------------------------------
say "building ponte and the ceiling example (release)"
(cd "$ROOT" && cargo build --release --quiet -p ponte-server --bin ponte --example ceiling)
PONTE="$TARGET_DIR/release/ponte"
CEILING="$TARGET_DIR/release/examples/ceiling"
[ -x "$PONTE" ] || die "no binary at $PONTE (is CARGO_TARGET_DIR the one cargo used?)"
[ -x "$CEILING" ] || die "no binary at $CEILING"

# --- temp folder and cleanup -----------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ponte-bench.XXXXXX")"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Bounded: a server that does not drain within 5 s is killed.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ] || [ "${BENCH_KEEP:-0}" = 1 ]; then
    say "logs and raw wrk output kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

# wait_for NAME PID CMD...: polls CMD every 0.1 s for at most 30 s while PID lives.
wait_for() {
  local name=$1 pid=$2
  shift 2
  local deadline=$((SECONDS + 30))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup (log: $WORK/$name.log)"
    [ "$SECONDS" -lt "$deadline" ] || die "$name not up after 30 s (log: $WORK/$name.log)"
    sleep 0.1
  done
}

# --- Ponte on its embedded defaults ----------------------------------------------------
# Nothing from the caller's environment or a ./ponte.toml may change the setup: clear every
# PONTE_* variable and run from the temp folder.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PONTE_' || true)
PONTE_PORT="$(free_port)"
PONTE_URL="http://127.0.0.1:$PONTE_PORT"
PONTE_ENV=(PONTE_BIND="127.0.0.1:$PONTE_PORT" PONTE_PUBLIC_URL="$PONTE_URL" PONTE_DATA_DIR="$WORK/data"
  PONTE_LOG_LEVEL=warn RUST_LOG=warn)
ponte() { (cd "$WORK" && exec env "${PONTE_ENV[@]}" "$PONTE" "$@"); }
# The background subshell execs ponte itself, so $! is ponte's pid (the trap kills it).
(cd "$WORK" && exec env "${PONTE_ENV[@]}" "$PONTE" serve) >"$WORK/ponte.log" 2>&1 &
PIDS+=($!)
wait_for ponte "${PIDS[0]}" curl -fsS --max-time 1 "$PONTE_URL/healthz"
say "ponte up at $PONTE_URL (data in $WORK/data)"

CREATED="$(ponte client create --name bench --grant client_credentials --scope ponte.admin 2>>"$WORK/ponte-cli.log")" ||
  die "ponte client create failed (log: $WORK/ponte-cli.log)"
CLIENT_ID="$(printf '%s' "$CREATED" | sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')"
CLIENT_SECRET="$(printf '%s' "$CREATED" | sed -n 's/.*"client_secret":"\([^"]*\)".*/\1/p')"
if [ -z "$CLIENT_ID" ] || [ -z "$CLIENT_SECRET" ]; then die "unexpected output of client create: $CREATED"; fi
# RFC 6749 §2.3.1 form-encodes id and secret before base64; ours are base64url, unchanged by it.
BASIC="$(printf '%s:%s' "$CLIENT_ID" "$CLIENT_SECRET" | base64 | tr -d '\n')"

ISSUED="$(curl -fsS --max-time 5 -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=client_credentials "$PONTE_URL/oauth2/token")" ||
  die "could not get a token from $PONTE_URL/oauth2/token"
TOKEN="$(printf '%s' "$ISSUED" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
[ -n "$TOKEN" ] || die "no access_token in: $ISSUED"
ACTIVE="$(curl -fsS --max-time 5 -u "$CLIENT_ID:$CLIENT_SECRET" -d "token=$TOKEN" "$PONTE_URL/oauth2/introspect")"
case "$ACTIVE" in *'"active":true'*) ;; *) die "introspection of a fresh token did not say active: $ACTIVE" ;; esac

# --- the ceiling ------------------------------------------------------------------------
CEILING_PORT="$(free_port)"
CEILING_URL="http://127.0.0.1:$CEILING_PORT"
"$CEILING" "127.0.0.1:$CEILING_PORT" >"$WORK/ceiling.log" 2>&1 &
PIDS+=($!)
wait_for ceiling "${PIDS[1]}" curl -fsS --max-time 1 -X POST "$CEILING_URL/sign"
CEILING_TOKEN="$(curl -fsS --max-time 5 -X POST "$CEILING_URL/sign")"
VERIFIED="$(curl -fsS --max-time 5 -d "token=$CEILING_TOKEN" "$CEILING_URL/verify")" ||
  die "the ceiling refused its own token"
case "$VERIFIED" in *'"active":true'*) ;; *) die "ceiling /verify did not say active: $VERIFIED" ;; esac
say "ceiling up at $CEILING_URL"

# --- runs --------------------------------------------------------------------------------
HZ="$(getconf CLK_TCK)"
# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# run NAME PID URL BODY BASIC: one warm-up and one measured wrk run against the server
# PID; fills RPS[NAME], P50, P99 and CPU[NAME] (server CPU microseconds per request).
declare -A RPS P50 P99 CPU
run() {
  local name=$1 pid=$2 url=$3 body=$4 basic=$5 out="$WORK/wrk-$1.txt" before after
  if [ "$WARMUP" != 0 ] && [ "$WARMUP" != 0s ]; then
    BENCH_BODY="$body" BENCH_BASIC="$basic" timeout 120 \
      wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$SCRIPT" "$url" >"$WORK/wrk-$name-warmup.txt" 2>&1 ||
      die "wrk warm-up of $name failed: $(cat "$WORK/wrk-$name-warmup.txt")"
  fi
  say "measuring $name: wrk -t$THREADS -c$CONNECTIONS -d$DURATION POST $url"
  before="$(cpu_ticks "$pid")"
  BENCH_BODY="$body" BENCH_BASIC="$basic" timeout 300 \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$SCRIPT" "$url" >"$out" 2>&1 ||
    die "wrk against $name failed: $(cat "$out")"
  after="$(cpu_ticks "$pid")"
  if grep -q 'Non-2xx or 3xx responses' "$out"; then
    cat "$out" >&2
    die "$name answered non-2xx responses under load (see above)"
  fi
  if grep -q 'Socket errors' "$out"; then
    cat "$out" >&2
    die "$name had socket errors under load (see above)"
  fi
  local line
  line="$(grep '^bench: ' "$out")" || die "no summary line in the wrk output of $name"
  case "$line" in *' requests=0 '*) die "$name: wrk completed no request" ;; esac
  RPS[$name]="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
  [ -n "${RPS[$name]}" ] || die "no Requests/sec in the wrk output of $name"
  P50[$name]="$(printf '%s' "$line" | sed -n 's/.*p50_us=\([0-9]*\).*/\1/p')"
  P99[$name]="$(printf '%s' "$line" | sed -n 's/.*p99_us=\([0-9]*\).*/\1/p')"
  CPU[$name]="$(printf '%s' "$line" | awk -v t=$((after - before)) -v hz="$HZ" \
    '{ sub(/.*requests=/, ""); sub(/ .*/, ""); printf "%.0f", t / hz * 1e6 / $0 }')"
  kill -0 "${PIDS[0]}" 2>/dev/null || die "ponte died during the run (log: $WORK/ponte.log)"
  kill -0 "${PIDS[1]}" 2>/dev/null || die "the ceiling died during the run (log: $WORK/ceiling.log)"
}

run ceiling-sign "${PIDS[1]}" "$CEILING_URL/sign" "" ""
run ponte-token "${PIDS[0]}" "$PONTE_URL/oauth2/token" "grant_type=client_credentials" "$BASIC"
run ceiling-verify "${PIDS[1]}" "$CEILING_URL/verify" "token=$CEILING_TOKEN" ""
run ponte-introspect "${PIDS[0]}" "$PONTE_URL/oauth2/introspect" "token=$TOKEN" "$BASIC"

# --- report ------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
meets() { awk -v r="$1" -v g="$2" 'BEGIN { print (r >= g) ? "yes" : "NO" }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

ISSUANCE="$(ratio "${RPS[ponte-token]}" "${RPS[ceiling-sign]}")"
INTROSPECTION="$(ratio "${RPS[ponte-introspect]}" "${RPS[ceiling-verify]}")"
# The same ratios from server CPU per request: less sensitive to wrk and to other load on
# the machine sharing the cores.
ISSUANCE_CPU="$(ratio "${CPU[ceiling-sign]}" "${CPU[ponte-token]}")"
INTROSPECTION_CPU="$(ratio "${CPU[ceiling-verify]}" "${CPU[ponte-introspect]}")"

echo
echo "Ponte load test: wrk -t$THREADS -c$CONNECTIONS -d$DURATION (warm-up $WARMUP), $(nproc) cores, loopback"
echo
printf '%-18s %-34s %12s %9s %9s %12s\n' target endpoint requests/s p50_ms p99_ms cpu_us/req
printf '%-18s %-34s %12s %9s %9s %12s\n' ------------------ ---------------------------------- ------------ --------- --------- ------------
for row in \
  "ceiling-sign|POST /sign" \
  "ponte-token|POST /oauth2/token (client_creds)" \
  "ceiling-verify|POST /verify" \
  "ponte-introspect|POST /oauth2/introspect"; do
  name="${row%%|*}"
  printf '%-18s %-34s %12s %9s %9s %12s\n' "$name" "${row#*|}" "${RPS[$name]}" "$(ms "${P50[$name]}")" \
    "$(ms "${P99[$name]}")" "${CPU[$name]}"
done
echo
printf 'issuance      = ponte-token / ceiling-sign        = %s  (goal >= 0.50: %s)   by CPU/request: %s\n' \
  "$ISSUANCE" "$(meets "$ISSUANCE" 0.5)" "$ISSUANCE_CPU"
printf 'introspection = ponte-introspect / ceiling-verify = %s  (goal >= 0.80: %s)   by CPU/request: %s\n' \
  "$INTROSPECTION" "$(meets "$INTROSPECTION" 0.8)" "$INTROSPECTION_CPU"
echo "(ratios of requests/s; the goals are judged on these. cpu_us/req is the server's CPU time per request.)"
