#!/usr/bin/env bash
# Hostile-traffic benchmark (login part) against `caas up` (release build):
# 300 concurrent wrong-password logins, each on its own connection, first
# from one address (300 emails), then for one email from 300 addresses while
# its owner logs in from an address it used before. Reports answers by
# status, password checks run (auth_password_checks_total) and the caas
# process's RSS (VmRSS before, VmHWM peak after). Envoy is caas's child but
# its own process: the numbers are the services' alone.
#   bench/abuse.sh   (PostgreSQL on 127.0.0.1:5432, database `test`; Redis on 6379)
#   env: CAAS_BIN (a caas binary to run instead of building one: before/after comparisons)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-envoy.sh
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/test}
DB=caas_abuse_$$
REDIS_DB=${REDIS_DB:-13}
BURST=${BURST:-300}
TARGET=${CARGO_TARGET_DIR:-target}
export GW=127.0.0.1:18480
API=127.0.0.1:13907
WORK=$(mktemp -d /tmp/caas-abuse.XXXXXX)

if [ -z "${CAAS_BIN:-}" ]; then cargo build --release -q -p caas; CAAS_BIN=$TARGET/release/caas; fi
psql -q "$PG_ADMIN" -c "CREATE DATABASE $DB" >/dev/null
redis-cli -n "$REDIS_DB" FLUSHDB >/dev/null
cleanup() {
  [ -n "${UP_PID:-}" ] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  redis-cli -n "$REDIS_DB" FLUSHDB >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" REDIS_URL="redis://127.0.0.1:6379/$REDIS_DB" RUST_LOG=error \
  "$CAAS_BIN" up --data-dir "$WORK" --auth-api-addr "$API" --ext-authz-addr 127.0.0.1:19291 \
  --ext-authz-ops-addr 127.0.0.1:19292 --chat-addr 127.0.0.1:13002 --socket-addr 127.0.0.1:13003 \
  --envoy-listen "$GW" --envoy-admin-port 0 >"$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 300); do curl -sf -o /dev/null "http://$GW/v1/client/login" -XPOST && break; curl -s -o /dev/null "http://$GW/" && break; sleep 0.1; done

login() { # FROM EMAIL PASSWORD -> "status/code"
  local out
  out=$(curl -s -w ' %{http_code}' --interface "$1" -XPOST "http://$GW/v1/client/login" \
    -H 'content-type: application/json' -d "{\"email\":\"$2\",\"password\":\"$3\"}" || true)
  local code; code=$(echo "$out" | grep -o '"code":"[a-z_]*"' | cut -d'"' -f4 || true)
  echo "${out##* }${code:+/$code}"
}
checks() { curl -s "http://$API/metrics" | awk '/^auth_password_checks_total\{outcome="mismatch"\}/ {print $2}'; }
rss() { awk "/^$1:/ {print int(\$2/1024) \" MiB\"}" "/proc/$UP_PID/status"; }

OWNER=127.0.0.200
curl -s -o /dev/null --interface $OWNER -XPOST "http://$GW/v1/client/register" -H 'content-type: application/json' \
  -d '{"name":"Victim","email":"victim@example.com","password":"correct horse battery staple"}'
echo "owner's first login: $(login $OWNER victim@example.com 'correct horse battery staple')"
echo "caas RSS before: $(rss VmRSS)"

burst() { # NAME, then lines "FROM EMAIL" on stdin
  local before; before=$(checks)
  local started=$EPOCHREALTIME
  xargs -P "$BURST" -L1 bash -c "$(declare -f login); login \$0 \$1 'wrong horse battery staple'" \
    | sort | uniq -c | awk '{printf "%s x %s  ", $2, $1}'
  echo
  echo "  $1: $(( $(checks) - before )) password checks, $(python3 -c "print(round($EPOCHREALTIME - $started, 2))") s"
}

echo "## $BURST wrong logins from one address (127.0.0.1), one email each"
for i in $(seq "$BURST"); do echo "127.0.0.1 guess$i@example.com"; done | burst "one address"
echo "## $BURST wrong logins for one email, from $BURST addresses, the owner logging in meanwhile"
( sleep 0.2; echo "  owner during the burst: $(login $OWNER victim@example.com 'correct horse battery staple')" ) &
OWNER_PID=$!
for i in $(seq "$BURST"); do echo "127.1.$(( i / 250 )).$(( i % 250 + 1 )) victim@example.com"; done | burst "many addresses"
wait "$OWNER_PID" || true
echo "  owner after the burst: $(login $OWNER victim@example.com 'correct horse battery staple')"
echo "  a never-seen address with the right password: $(login 127.2.0.1 victim@example.com 'correct horse battery staple')"
echo "caas RSS now: $(rss VmRSS), peak: $(rss VmHWM)"
