#!/usr/bin/env bash
# Resident size of `ponte serve` under a burst of failed logins (issue #7): argon2id needs
# 19 MiB per hash, and before the hashing pool every hash left its block behind.
#
# Starts the release `ponte serve` on its embedded defaults, reads VmRSS / RssAnon /
# RssFile from /proc, sends BENCH_LOGINS failed sign-ins with distinct unknown emails,
# BENCH_PARALLEL at a time, each stream from its own loopback address (127.0.1.x: the
# login limit is 100 per address and 10 per email), reads the sizes again and prints the
# statuses seen and logins/s. Reported, never asserted; it fails only when a run is broken
# (the server does not start or dies, a request fails at the socket).
#
# Usage: bench/logins.sh                          (from anywhere)
# Knobs (environment):
#   BENCH_LOGINS     failed logins to send          (default 500)
#   BENCH_PARALLEL   concurrent streams, <= 200     (default 32)
#   BENCH_BIN        a ponte binary to use instead of building the release one
#   CARGO_TARGET_DIR where cargo builds             (default: ./target of the workspace)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOGINS="${BENCH_LOGINS:-500}"
PARALLEL="${BENCH_PARALLEL:-32}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

say() { printf '%s\n' "bench: $*" >&2; }
die() {
  printf '%s\n' "bench: FAILED: $*" >&2
  exit 1
}
command -v curl >/dev/null 2>&1 || die "curl is not installed"
[ "$PARALLEL" -ge 1 ] && [ "$PARALLEL" -le 200 ] || die "BENCH_PARALLEL must be 1..200"

if [ -n "${BENCH_BIN:-}" ]; then
  PONTE="$BENCH_BIN"
else
  say "building ponte (release)"
  (cd "$ROOT" && cargo build --release --quiet -p ponte-server --bin ponte)
  PONTE="$TARGET_DIR/release/ponte"
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

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
URL="http://127.0.0.1:$PORT"
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PONTE_' || true)
(cd "$WORK" && exec env PONTE_BIND="127.0.0.1:$PORT" PONTE_PUBLIC_URL="$URL" PONTE_DATA_DIR="$WORK/data" \
  PONTE_LOG_LEVEL=error RUST_LOG=error "$PONTE" serve) >"$WORK/ponte.log" 2>&1 &
PID=$!
deadline=$((SECONDS + 30))
until curl -fsS --max-time 1 "$URL/healthz" >/dev/null 2>&1; do
  kill -0 "$PID" 2>/dev/null || die "ponte exited during startup: $(tail -5 "$WORK/ponte.log")"
  [ "$SECONDS" -lt "$deadline" ] || die "ponte not up after 30 s"
  sleep 0.1
done

sizes() { awk '/^(VmRSS|RssAnon|RssFile):/ { printf "%s %.1f MiB  ", $1, $2 / 1024 }' "/proc/$PID/status"; }
say "binary: $PONTE"
say "before: $(sizes)"

# One stream: its own address, one CSRF token, then its share of failed logins.
stream() {
  local n=$1 count=$2 addr="127.0.1.$((10 + $1))" jar="$WORK/jar.$1" csrf i
  csrf="$(curl -sS --interface "$addr" -c "$jar" "$URL/login" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p' | head -1)"
  [ -n "$csrf" ] || { echo "nocsrf"; return; }
  for i in $(seq "$count"); do
    curl -sS --interface "$addr" -b "$jar" -o /dev/null -w '%{http_code}\n' \
      --data-urlencode "email=nobody-$n-$i-$RANDOM@esempio.it" --data-urlencode "password=not the password" \
      --data-urlencode "csrf_token=$csrf" "$URL/login" || echo "socket"
  done
}

started=$(date +%s.%N)
STREAMS=()
for n in $(seq 0 $((PARALLEL - 1))); do
  share=$((LOGINS / PARALLEL + (n < LOGINS % PARALLEL ? 1 : 0)))
  stream "$n" "$share" >"$WORK/statuses.$n" &
  STREAMS+=($!)
done
wait "${STREAMS[@]}"
elapsed=$(python3 -c "print($(date +%s.%N) - $started)")
kill -0 "$PID" 2>/dev/null || die "ponte died under load"

say "after $LOGINS failed logins, $PARALLEL at a time: $(sizes)"
cat "$WORK"/statuses.* | sort | uniq -c | awk '{ printf "bench: status %s: %s\n", $2, $1 }' >&2
python3 -c "print('bench: %.1f logins/s (%.1f s)' % ($LOGINS / $elapsed, $elapsed))" >&2
if grep -qE 'socket|nocsrf' "$WORK"/statuses.*; then die "some requests failed at the socket"; fi
