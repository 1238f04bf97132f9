#!/usr/bin/env bash
# Password sign-ins at the browser form, many at a time: memory (peak and final resident
# size), sign-ins per second and server CPU per sign-in, beside the argon2 ceiling (the
# argon2 crate alone verifying at Ponte's parameters on as many threads as Ponte hashes
# with: crates/server/examples/argon2_ceiling.rs).
#
# Usage: bench/logins.sh                          (from anywhere)
# Knobs (environment):
#   BENCH_LOGINS     sign-ins to send                                   (default 1700)
#   BENCH_PARALLEL   connections at a time, 1..500                      (default 32)
#   BENCH_KIND       correct | wrong | unknown: the right password of a
#                    real user, a wrong one, or an email nobody has      (default correct)
#   BENCH_BIN        a ponte binary to use instead of building the release one
#   BENCH_CEILING    an argon2_ceiling binary, or "skip"                (default: built)
#   BENCH_ENV        extra VAR=value settings for ponte, space-separated (e.g. PONTE_HASHING__QUEUE=8)
#   CARGO_TARGET_DIR where cargo builds                                 (default: ./target of the workspace)
# Nothing is asserted; the run fails only when it is broken (a server that does not start
# or dies, a socket error).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOGINS="${BENCH_LOGINS:-1700}"
PARALLEL="${BENCH_PARALLEL:-32}"
KIND="${BENCH_KIND:-correct}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

say() { printf '%s\n' "bench: $*" >&2; }
die() {
  printf '%s\n' "bench: FAILED: $*" >&2
  exit 1
}
for tool in curl python3; do command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"; done
[ "$PARALLEL" -ge 1 ] && [ "$PARALLEL" -le 500 ] || die "BENCH_PARALLEL must be 1..500"
case "$KIND" in correct | wrong | unknown) ;; *) die "BENCH_KIND must be correct, wrong or unknown" ;; esac

if [ -n "${BENCH_BIN:-}" ]; then
  PONTE="$BENCH_BIN"
  CEILING="${BENCH_CEILING:-skip}"
else
  say "building ponte and argon2_ceiling (release)"
  (cd "$ROOT" && cargo build --release --quiet -p ponte-server --bin ponte --example argon2_ceiling)
  PONTE="$TARGET_DIR/release/ponte"
  CEILING="${BENCH_CEILING:-$TARGET_DIR/release/examples/argon2_ceiling}"
fi
[ -x "$PONTE" ] || die "no binary at $PONTE"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ponte-logins.XXXXXX")"
PID=""
cleanup() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
say "load average before: $(loadavg) ($(nproc) cores)"

# --- the ceiling, on an otherwise idle Ponte-less machine ---------------------------------
if [ "$CEILING" != skip ]; then
  [ -x "$CEILING" ] || die "no binary at $CEILING"
  CEILING_LINE="$("$CEILING" "$(nproc)" 5)"
  say "$CEILING_LINE"
fi

# --- Ponte on its embedded defaults ----------------------------------------------------
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
URL="http://127.0.0.1:$PORT"
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PONTE_' || true)
PONTE_ENV=(PONTE_BIND="127.0.0.1:$PORT" PONTE_PUBLIC_URL="$URL" PONTE_DATA_DIR="$WORK/data"
  PONTE_LOG_LEVEL=error RUST_LOG=error)
# shellcheck disable=SC2206 # BENCH_ENV is a space-separated list of VAR=value on purpose
[ -n "${BENCH_ENV:-}" ] && PONTE_ENV+=(${BENCH_ENV})
(cd "$WORK" && exec env "${PONTE_ENV[@]}" "$PONTE" serve) >"$WORK/ponte.log" 2>&1 &
PID=$!
deadline=$((SECONDS + 30))
until curl -fsS --max-time 1 "$URL/healthz" >/dev/null 2>&1; do
  kill -0 "$PID" 2>/dev/null || die "ponte exited during startup: $(tail -5 "$WORK/ponte.log")"
  [ "$SECONDS" -lt "$deadline" ] || die "ponte not up after 30 s"
  sleep 0.1
done

status_of() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/status"; }
mib() { awk -v kb="$1" 'BEGIN { printf "%.1f MiB", kb / 1024 }'; }
sizes() { printf 'VmRSS %s, VmHWM (peak) %s, RssAnon %s, threads %s' "$(mib "$(status_of VmRSS)")" \
  "$(mib "$(status_of VmHWM)")" "$(mib "$(status_of RssAnon)")" "$(status_of Threads)"; }
# CPU ticks (user, system) the server used so far.
cpu_ticks() { sed 's/.*) //' "/proc/$PID/stat" | awk '{ print $12, $13 }'; }

# --- users: one per 8 sign-ins (the per-email limit is 10 per 15 minutes) ---------------
USERS="$WORK/users.tsv"
PASSWORD="bench password $RANDOM$RANDOM"
if [ "$KIND" = unknown ]; then
  for n in $(seq "$LOGINS"); do printf 'nobody-%s@esempio.it\t-\n' "$n"; done >"$USERS"
else
  CREATED="$(cd "$WORK" && env "${PONTE_ENV[@]}" "$PONTE" client create --name bench --grant client_credentials \
    --scope ponte.admin 2>>"$WORK/ponte-cli.log")" || die "ponte client create failed: $(tail -3 "$WORK/ponte-cli.log")"
  CLIENT_ID="$(printf '%s' "$CREATED" | sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')"
  CLIENT_SECRET="$(printf '%s' "$CREATED" | sed -n 's/.*"client_secret":"\([^"]*\)".*/\1/p')"
  TOKEN="$(curl -fsS -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=client_credentials "$URL/oauth2/token" |
    sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
  [ -n "$TOKEN" ] || die "no access token"
  COUNT=$(((LOGINS + 7) / 8))
  say "creating $COUNT users"
  for n in $(seq "$COUNT"); do
    email="bench-$n@esempio.it"
    code="$(curl -sS -o "$WORK/created.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' \
      -d "{\"name\":\"Bench $n\",\"owner\":{\"email\":\"$email\",\"name\":\"Bench $n\",\"password\":\"$PASSWORD\"}}" \
      "$URL/api/v1/accounts")"
    [ "$code" = 201 ] || die "creating user $n answered $code: $(cat "$WORK/created.json")"
    if [ "$KIND" = correct ]; then printf '%s\t%s\n' "$email" "$PASSWORD"; else printf '%s\t-\n' "$email"; fi
  done >"$USERS"
fi

say "binary: $PONTE"
say "before: $(sizes)"
read -r user_before sys_before < <(cpu_ticks)
python3 "$ROOT/bench/login_load.py" "$URL" "$USERS" "$LOGINS" "$PARALLEL" >"$WORK/load.txt" ||
  die "the load generator failed"
read -r user_after sys_after < <(cpu_ticks)
kill -0 "$PID" 2>/dev/null || die "ponte died under load"
LINE="$(cat "$WORK/load.txt")"
say "after $LOGINS $KIND-password sign-ins, $PARALLEL at a time: $(sizes)"
sleep 2
say "2 s later: $(sizes)"
HZ="$(getconf CLK_TCK)"
done_logins="$(printf '%s' "$LINE" | sed -n 's/.*logins=\([0-9]*\).*/\1/p')"
awk -v u=$((user_after - user_before)) -v s=$((sys_after - sys_before)) -v hz="$HZ" -v n="$done_logins" 'BEGIN {
  printf "bench: server CPU %.2f ms per sign-in, %.0f %% of it in the kernel\n", (u + s) / hz * 1000 / n, (u + s) ? 100 * s / (u + s) : 0
}' >&2
say "$LINE"
if [ "$CEILING" != skip ]; then
  ceiling_rate="$(printf '%s' "$CEILING_LINE" | sed -n 's/.*per_second=\([0-9.]*\).*/\1/p')"
  rate="$(printf '%s' "$LINE" | sed -n 's/.*per_second=\([0-9.]*\).*/\1/p')"
  awk -v r="$rate" -v c="$ceiling_rate" 'BEGIN { printf "bench: sign-ins/s ÷ argon2 ceiling = %.2f\n", r / c }' >&2
fi
say "load average after: $(loadavg)"
