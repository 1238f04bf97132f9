#!/usr/bin/env bash
# Issue #12's table in one run: Ponte beside bare actix-web servers written with the raw
# libraries (crates/server/examples/bare.rs, argon2_ceiling.rs) and beside node
# oidc-provider 9, every pair with the same wrk settings, server CPU per request beside
# requests per second, after waiting for an idle machine; the load of others during each
# run is reported. Nothing is asserted: the run fails only when it is broken.
#
# Usage: bench/ceilings.sh          (from anywhere; see bench/README.md)
# Knobs (environment):
#   BENCH_DURATION     measured wrk run per target                  (default 10s)
#   BENCH_WARMUP       unmeasured run before each                   (default 2s; 0 to skip)
#   BENCH_THREADS      wrk threads                                  (default 2)
#   BENCH_CONNECTIONS  wrk connections                              (default 32)
#   BENCH_IDLE_LOAD    1-minute load average that counts as idle    (default 0.5)
#   BENCH_IDLE_WAIT    seconds to wait for it before measuring anyway (default 300)
#   BENCH_LOGINS       sign-ins for the password row (bench/logins.sh; 0 skips it) (default 1700)
#   BENCH_NODE_DIR     where oidc-provider is installed with npm    (default ~/.cache/ponte-bench-node)
#   PONTE_TEST_DATABASE_URL  PostgreSQL where a database is created and dropped (default postgres://postgres@127.0.0.1:5432/postgres)
#   PONTE_TEST_REDIS_URL     Redis (keys under a prefix of the run's own) (default redis://127.0.0.1:6379/)
#   CARGO_TARGET_DIR   where cargo builds (default: ./target of the workspace)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-2s}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
IDLE_LOAD="${BENCH_IDLE_LOAD:-0.5}"
IDLE_WAIT="${BENCH_IDLE_WAIT:-300}"
LOGINS="${BENCH_LOGINS:-1700}"
NODE_DIR="${BENCH_NODE_DIR:-$HOME/.cache/ponte-bench-node}"
DATABASE_URL="${PONTE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${PONTE_TEST_REDIS_URL:-redis://127.0.0.1:6379/}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

say() { printf '%s\n' "bench: $*" >&2; }
die() {
  printf '%s\n' "bench: FAILED: $*" >&2
  exit 1
}
for tool in wrk curl node npm psql python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# --- build and install -------------------------------------------------------------------
say "building ponte, bare and argon2_ceiling (release)"
(cd "$ROOT" && cargo build --release --quiet -p ponte-server --bin ponte --example bare --example argon2_ceiling)
PONTE="$TARGET_DIR/release/ponte"
BARE="$TARGET_DIR/release/examples/bare"
for bin in "$PONTE" "$BARE" "$TARGET_DIR/release/examples/argon2_ceiling"; do
  [ -x "$bin" ] || die "no binary at $bin (is CARGO_TARGET_DIR the one cargo used?)"
done
mkdir -p "$NODE_DIR"
if ! (cd "$NODE_DIR" && node -e 'process.exit(require("oidc-provider/package.json").version.startsWith("9.") ? 0 : 1)') 2>/dev/null; then
  say "installing oidc-provider@9 with npm into $NODE_DIR"
  [ -f "$NODE_DIR/package.json" ] || echo '{"private": true}' >"$NODE_DIR/package.json"
  (cd "$NODE_DIR" && timeout 300 npm install --no-audit --no-fund --silent oidc-provider@9) || die "npm install failed"
fi
cp "$BENCH/oidc_provider_peer.mjs" "$NODE_DIR/"

# --- temp folder, database, cleanup ------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ponte-ceilings.XXXXXX")"
RUN="bench_$(date +%s)_$$"
DB_URL="${DATABASE_URL%/*}/$RUN"
PREFIX="ponte-$RUN:"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $RUN" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" del "bare:session:0123456789abcdef0123456789abcdef" >/dev/null 2>&1 || true
  if [ "$status" -ne 0 ]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
psql -q "$DATABASE_URL" -c "CREATE DATABASE $RUN" >/dev/null || die "cannot create database $RUN"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
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

# --- the servers -------------------------------------------------------------------------
BARE_PORT="$(free_port)"
BARE_URL="http://127.0.0.1:$BARE_PORT"
"$BARE" "127.0.0.1:$BARE_PORT" "$REDIS_URL" >"$WORK/bare.log" 2>&1 &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_for bare "$BARE_PID" curl -fsS --max-time 1 "$BARE_URL/session"

PEER_PORT="$(free_port)"
PEER_URL="http://127.0.0.1:$PEER_PORT"
PEER_SECRET="peer-secret-$RANDOM$RANDOM$RANDOM"
(cd "$NODE_DIR" && NODE_ENV=production exec node oidc_provider_peer.mjs "$PEER_PORT" peer-client "$PEER_SECRET") \
  >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
PIDS+=("$PEER_PID")
wait_for peer "$PEER_PID" grep -q ready "$WORK/peer.log"
PEER_BASIC="$(printf '%s:%s' peer-client "$PEER_SECRET" | base64 | tr -d '\n')"

while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PONTE_' || true)
PONTE_PORT="$(free_port)"
PONTE_URL="http://127.0.0.1:$PONTE_PORT"
PONTE_ENV=(PONTE_BIND="127.0.0.1:$PONTE_PORT" PONTE_PUBLIC_URL="$PONTE_URL" PONTE_DATA_DIR="$WORK/data"
  PONTE_DATABASE_URL="$DB_URL" PONTE_REDIS_URL="$REDIS_URL" PONTE_REDIS_KEY_PREFIX="$PREFIX"
  PONTE_LOG_LEVEL=warn RUST_LOG=warn)
ponte() { (cd "$WORK" && exec env "${PONTE_ENV[@]}" "$PONTE" "$@"); }
(cd "$WORK" && exec env "${PONTE_ENV[@]}" "$PONTE" serve) >"$WORK/ponte.log" 2>&1 &
PONTE_PID=$!
PIDS+=("$PONTE_PID")
wait_for ponte "$PONTE_PID" curl -fsS --max-time 1 "$PONTE_URL/healthz"

json_field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }
ADMIN="$(ponte client create --name bench --grant client_credentials --scope ponte.admin 2>>"$WORK/cli.log")"
CLIENT_ID="$(printf '%s' "$ADMIN" | json_field client_id)"
CLIENT_SECRET="$(printf '%s' "$ADMIN" | json_field client_secret)"
BASIC="$(printf '%s:%s' "$CLIENT_ID" "$CLIENT_SECRET" | base64 | tr -d '\n')"
TOKEN="$(curl -fsS -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=client_credentials "$PONTE_URL/oauth2/token" | json_field access_token)"
[ -n "$TOKEN" ] || die "no access token from Ponte"
RP="$(ponte client create --name bench-app --grant authorization_code --scope openid \
  --redirect-uri http://127.0.0.1:9/callback --first-party 2>>"$WORK/cli.log")"
RP_ID="$(printf '%s' "$RP" | json_field client_id)"
[ -n "$RP_ID" ] || die "could not register the first-party application: $RP"
PASSWORD="bench password $RANDOM$RANDOM"
ACCOUNT="$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d "{\"name\":\"Bench\",\"owner\":{\"email\":\"owner@esempio.it\",\"name\":\"Bench Owner\",\"password\":\"$PASSWORD\"}}" \
  "$PONTE_URL/api/v1/accounts" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')" || die "could not create the account"
# One company, so the signed-in page shows a company and its integration as a customer's does.
curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"legal_name": "Bar Sport S.r.l.", "vat_number": "00743110157", "sdi_code": "M5UXCR1",
       "address": {"street": "Via Roma 1", "city": "Milano", "postal_code": "20121", "province": "MI"}}' \
  "$PONTE_URL/api/v1/accounts/$ACCOUNT/companies" || die "could not create the company"
JAR="$WORK/jar"
CSRF="$(curl -fsS -c "$JAR" "$PONTE_URL/login" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p' | head -1)"
curl -sS -o /dev/null -b "$JAR" -c "$JAR" --data-urlencode email=owner@esempio.it --data-urlencode "password=$PASSWORD" \
  --data-urlencode "csrf_token=$CSRF" "$PONTE_URL/login"
SESSION_COOKIE="$(awk '$6 ~ /ponte_session$/ { print $6 "=" $7 }' "$JAR")"
[ -n "$SESSION_COOKIE" ] || die "signing in gave no session cookie"
# What a browser that has seen one of Ponte's pages sends: the session and the CSRF cookie.
BROWSER_COOKIES="$SESSION_COOKIE; $(awk '$6 ~ /ponte_csrf$/ { print $6 "=" $7 }' "$JAR")"
AUTHORIZE="/oauth2/authorize?response_type=code&client_id=$RP_ID&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcallback&scope=openid&state=bench-state-0123&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
HOP="$(curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' -H "Cookie: $SESSION_COOKIE" "$PONTE_URL$AUTHORIZE")"
case "$HOP" in 30[23]*code=*) ;; *) die "the SSO hop did not redirect with a code: $HOP" ;; esac
for path in / /oauth2/logout; do
  code="$(curl -sS -o /dev/null -w '%{http_code}' -H "Cookie: $BROWSER_COOKIES" "$PONTE_URL$path")"
  [ "$code" = 200 ] || die "GET $path with the session answered $code"
done
curl -fsS -H "Cookie: $BROWSER_COOKIES" "$PONTE_URL/" | grep -q 'data-company=' || die "the signed-in page shows no company"

# --- measuring ---------------------------------------------------------------------------
HZ="$(getconf CLK_TCK)"
CORES="$(nproc)"
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# The idle guard: waits (bounded) for the 1-minute load to drop below BENCH_IDLE_LOAD.
deadline=$((SECONDS + IDLE_WAIT))
until awk -v l="$(load1)" -v m="$IDLE_LOAD" 'BEGIN { exit !(l < m) }'; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "machine not idle after ${IDLE_WAIT} s (load $(load1)): measuring anyway, see the others_% column"
    break
  fi
  sleep 5
done
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

declare -A RPS CPU P99 OTHERS
# run NAME PID URL LUA [VAR=value…]: a warm-up and a measured wrk run against server PID.
run() {
  local name=$1 pid=$2 url=$3 lua=$4 out="$WORK/wrk-$1.txt"
  shift 4
  if [ "$WARMUP" != 0 ] && [ "$WARMUP" != 0s ]; then
    env "$@" timeout 120 wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$lua" "$url" >/dev/null 2>&1 ||
      die "wrk warm-up of $name failed"
  fi
  say "measuring $name: wrk -t$THREADS -c$CONNECTIONS -d$DURATION $url"
  local before busy_before after busy_after
  before="$(cpu_ticks "$pid")"
  busy_before="$(busy_ticks)"
  env "$@" timeout 300 wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$lua" "$url" >"$out" 2>&1 ||
    die "wrk against $name failed: $(cat "$out")"
  after="$(cpu_ticks "$pid")"
  busy_after="$(busy_ticks)"
  local line requests seconds
  line="$(grep '^bench: ' "$out")" || die "no summary line in the wrk output of $name"
  requests="$(printf '%s' "$line" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')"
  case "$line" in *' bad_status=0 socket_errors=0 '*) ;; *) die "$name: errors under load: $line" ;; esac
  [ "$requests" -gt 0 ] || die "$name: no request completed"
  RPS[$name]="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")"
  P99[$name]="$(printf '%s' "$line" | sed -n 's/.*p99_us=\([0-9]*\).*/\1/p')"
  CPU[$name]="$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
  seconds="$(awk -v d="${DURATION%s}" 'BEGIN { print d + 0 }')"
  # Everything but the server on the cores during the run: wrk itself and any foreign load.
  OTHERS[$name]="$(awk -v b=$((busy_after - busy_before)) -v s=$((after - before)) -v hz="$HZ" -v c="$CORES" -v d="$seconds" \
    'BEGIN { printf "%.0f", 100 * (b - s) / (hz * c * d) }')"
  kill -0 "$pid" 2>/dev/null || die "$name's server died during the run"
}

LUA="$BENCH/post_form.lua"
run bare-sign "$BARE_PID" "$BARE_URL/sign" "$LUA" BENCH_BODY= BENCH_BASIC=
# Not a goal's row: the bare signer doing the client authentication a token endpoint must.
BARE_BASIC="$(printf '%s:%s' cl_barebenchclient00000000 bare-bench-secret-0123456789abcdefghijklmnop | base64 | tr -d '\n')"
run bare-sign-client "$BARE_PID" "$BARE_URL/sign-client" "$LUA" BENCH_BODY=grant_type=client_credentials BENCH_BASIC="$BARE_BASIC"
run ponte-token "$PONTE_PID" "$PONTE_URL/oauth2/token" "$LUA" BENCH_BODY=grant_type=client_credentials BENCH_BASIC="$BASIC"
run peer-token "$PEER_PID" "$PEER_URL/token" "$LUA" BENCH_BODY="grant_type=client_credentials&scope=ponte.admin" BENCH_BASIC="$PEER_BASIC"
BARE_TOKEN="$(curl -fsS -X POST "$BARE_URL/sign" | json_field access_token)"
run bare-verify "$BARE_PID" "$BARE_URL/verify" "$LUA" BENCH_BODY="token=$BARE_TOKEN" BENCH_BASIC=
run ponte-introspect "$PONTE_PID" "$PONTE_URL/oauth2/introspect" "$LUA" BENCH_BODY="token=$TOKEN" BENCH_BASIC="$BASIC"
run bare-session "$BARE_PID" "$BARE_URL/session" "$LUA" BENCH_METHOD=GET BENCH_COOKIE=
run ponte-logout-page "$PONTE_PID" "$PONTE_URL/oauth2/logout" "$LUA" BENCH_METHOD=GET BENCH_COOKIE="$BROWSER_COOKIES"
run ponte-home "$PONTE_PID" "$PONTE_URL/" "$LUA" BENCH_METHOD=GET BENCH_COOKIE="$BROWSER_COOKIES"
run ponte-sso-hop "$PONTE_PID" "$PONTE_URL$AUTHORIZE" "$LUA" BENCH_METHOD=GET BENCH_COOKIE="$BROWSER_COOKIES"
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
# Ponte's resident size after every row has loaded it (memory that grows with requests shows here).
rss_mib() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
PONTE_RSS="$(rss_mib "$PONTE_PID" VmRSS) MiB (peak $(rss_mib "$PONTE_PID" VmHWM) MiB)"

# --- report ------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
meets() { awk -v r="$1" -v g="$2" 'BEGIN { print (r >= g) ? "yes" : "NO" }'; }
echo
echo "Ponte beside bare ceilings and oidc-provider: wrk -t$THREADS -c$CONNECTIONS -d$DURATION (warm-up $WARMUP), $CORES cores, loopback"
echo "load average at the start: $LOAD_START; at the end: $LOAD_END"
echo
printf '%-18s %-44s %10s %8s %10s %8s\n' target request req/s p99_ms cpu_us/req others_%
for row in "bare-sign|POST /sign (aws-lc-rs, key parsed once)" \
  "bare-sign-client|POST /sign-client (+ form, Basic, SHA-256 check)" "ponte-token|POST /oauth2/token (client_credentials)" \
  "peer-token|oidc-provider POST /token (client_credentials)" "bare-verify|POST /verify (jsonwebtoken ES256)" \
  "ponte-introspect|POST /oauth2/introspect (valid token)" "bare-session|GET /session (one Redis GET)" \
  "ponte-logout-page|GET /oauth2/logout with a session" "ponte-home|GET / signed in, one company (directory)" \
  "ponte-sso-hop|GET /oauth2/authorize, session → 303 + code"; do
  name="${row%%|*}"
  printf '%-18s %-44s %10s %8s %10s %8s\n' "$name" "${row#*|}" "${RPS[$name]}" \
    "$(awk -v us="${P99[$name]}" 'BEGIN { printf "%.2f", us / 1000 }')" "${CPU[$name]}" "${OTHERS[$name]}"
done
echo
line() { # NAME OURS THEIRS GOAL: a ratio of req/s and the same by CPU per request
  local r c
  r="$(ratio "${RPS[$2]}" "${RPS[$3]}")"
  c="$(ratio "${CPU[$3]}" "${CPU[$2]}")"
  printf '%-44s %5s  (goal >= %s: %-3s)  by CPU/request: %s\n' "$1" "$r" "$4" "$(meets "$r" "$4")" "$c"
}
line "issuance: ponte-token / bare-sign" ponte-token bare-sign 0.9
line "issuance: ponte-token / oidc-provider" ponte-token peer-token 5.5
printf '%-44s %5s  (not a goal: the bare signer that also authenticates the client)\n' \
  "issuance: ponte-token / bare-sign-client" "$(ratio "${RPS[ponte-token]}" "${RPS[bare-sign-client]}")"
line "introspection: ponte / bare-verify" ponte-introspect bare-verify 0.9
line "session route: logout page / bare-session" ponte-logout-page bare-session 0.9
line "signed-in page: home / bare-session" ponte-home bare-session 0.5
line "SSO hop: authorize / bare-session" ponte-sso-hop bare-session 0.4
echo "(others_% is the share of all cores used by anything but the measured server: wrk and foreign load)"
echo "ponte resident after these runs: $PONTE_RSS"

if [ "$LOGINS" != 0 ]; then
  echo
  echo "Password sign-ins (bench/logins.sh, goal >= 0.9 of the argon2 ceiling, peak resident < 256 MB):"
  kill "$PONTE_PID" "$BARE_PID" "$PEER_PID" 2>/dev/null || true
  BENCH_BIN="$PONTE" BENCH_CEILING="$TARGET_DIR/release/examples/argon2_ceiling" BENCH_LOGINS="$LOGINS" \
    BENCH_PARALLEL="$CONNECTIONS" "$BENCH/logins.sh" 2>&1 | grep -E 'argon2_ceiling|after|peak|CPU|login_load|ceiling =|load average'
fi
