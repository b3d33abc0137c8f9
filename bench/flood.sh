#!/usr/bin/env bash
# API-key flood benchmark: random well-formed (checksum-valid) but unknown
# API keys from one address, at the rate wrk can send them, through Envoy
# into the ext-authz of `caas up` (release build) on PostgreSQL and Redis,
# while an honest tenant sends its real key from another address. Side by
# side in one run, ROUNDS interleaved rounds of:
#   alone   the honest tenant only (wrk, CONNECTIONS connections)
#   flood   the same, with the forged-key flood running beside it
#   shape   the same flood, but every key's checksum wrong: refused by its
#           shape before any lookup (and counted against the address like
#           the forged ones), so the same traffic without the database
#           load: the baseline the forged flood is held to (>= 0.9x)
# Reports the honest tenant's req/s in each (median; its quotas raised to
# their maximums so they are not what is measured) and ext-authz's database
# reads (`auth_db_reads`: incremented wherever validation goes to the store,
# core/src/validate.rs) per 1,000 forged requests, cross-checked at the end
# against PostgreSQL's own scan counts on `api_keys`. The failure window
# (FAILED_AUTH_WINDOW, 60 s) runs on wall time: a run of the defaults
# crosses one window end, where the address is allowed lookups again.
#
# Both clients sit behind one trusted proxy (TRUSTED_PROXY_HOPS=1 for
# ext-authz, xff_num_trusted_hops: 1 for Envoy), which tells them apart by
# x-forwarded-for: wrk cannot choose its source address.
#   bench/flood.sh   env: DURATION (10s), CONNECTIONS (32), FLOOD_CONNECTIONS (32), ROUNDS (3),
#                    FLOOD_RATE (0: as fast as wrk goes; else requests/s), ENVOY_WORKERS (1)
source "$(dirname "$0")/lib.sh"
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/test}
DB=caas_flood_$$
REDIS_DB=${REDIS_DB:-12}
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-32}
FLOOD_RATE=${FLOOD_RATE:-0}
ENVOY_WORKERS=${ENVOY_WORKERS:-1}
TARGET=${CARGO_TARGET_DIR:-target}
HONEST_IP=198.51.100.10
FLOOD_IP=203.0.113.66
AUTHZ=127.0.0.1:19391
OPS=127.0.0.1:19392
UP_GW=127.0.0.1:18491

cargo build --release -q -p caas
psql -q "$PG_ADMIN" -c "CREATE DATABASE $DB" >/dev/null
redis-cli -n "$REDIS_DB" FLUSHDB >/dev/null
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  redis-cli -n "$REDIS_DB" FLUSHDB >/dev/null 2>&1 || true
  rm -rf "$WORK"
}

DB_URL="postgres://postgres@127.0.0.1:5432/$DB"
DATABASE_URL=$DB_URL REDIS_URL="redis://127.0.0.1:6379/$REDIS_DB" RUST_LOG=error TRUSTED_PROXY_HOPS=1 \
  "$TARGET/release/caas" up --data-dir "$WORK/data" --auth-api-addr 127.0.0.1:13917 --ext-authz-addr "$AUTHZ" \
  --ext-authz-ops-addr "$OPS" --chat-addr 127.0.0.1:13012 --socket-addr 127.0.0.1:13013 \
  --envoy-listen "$UP_GW" --envoy-admin-port 0 >"$WORK/up.log" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
for _ in $(seq 300); do curl -s -o /dev/null "http://$UP_GW/healthz" && break; sleep 0.1; done

# The honest tenant, through caas up's own gateway: registered, logged in,
# its address whitelisted.
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
REGISTERED=$(curl -sf -XPOST "http://$UP_GW/v1/client/register" -H "x-forwarded-for: $HONEST_IP" \
  -H 'content-type: application/json' -d '{"name":"Honest","email":"honest@example.com","password":"correct horse battery staple"}')
API_KEY=$(echo "$REGISTERED" | json "['api_key']['key']")
TOKEN=$(curl -sf -XPOST "http://$UP_GW/v1/client/login" -H "x-forwarded-for: $HONEST_IP" -H 'content-type: application/json' \
  -d '{"email":"honest@example.com","password":"correct horse battery staple"}' | json "['access_token']")
curl -sf -o /dev/null -XPUT "http://$UP_GW/v1/client/ip-whitelist" -H "x-forwarded-for: $HONEST_IP" \
  -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "{\"cidrs\":[\"$HONEST_IP\"]}"
# Its quotas at their maximums, so that they are not what is measured.
curl -sf -o /dev/null -XPUT "http://$UP_GW/v1/client/rate-limits" -H "x-forwarded-for: $HONEST_IP" \
  -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"per_key":{"rate":10000,"burst":20000},"per_user":{"rate":1000,"burst":2000},"per_tenant":{"rate":50000,"burst":100000}}'

# The measured gateway: lib.sh's Envoy (direct_response routes, so only the
# authorization differs) on caas up's ext-authz, trusting one proxy hop.
config flood "$(ext_authz_filter)" "${AUTHZ##*:}"
sed -i 's/^\( *\)use_remote_address: true/&\n\1xff_num_trusted_hops: 1/' "$WORK/flood.yaml"
"$ENVOY" -c "$WORK/flood.yaml" --disable-hot-restart --concurrency "$ENVOY_WORKERS" --log-level error >/dev/null 2>&1 &
ENVOY_PID=$!; PIDS+=("$ENVOY_PID")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18000/" && break; sleep 0.05; done
GW=http://127.0.0.1:18000
status=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $API_KEY" -H "x-forwarded-for: $HONEST_IP" "$GW/bench/key")
[ "$status" = 200 ] || { echo "the honest tenant's key answered $status, not 200" >&2; exit 1; }

# Forged keys: caas_ + 32 random base62 + the 6-character base62 CRC32 of
# the body (rules/src/api_key.rs), new for every request.
cat > "$WORK/forge.lua" <<'LUA'
local bit = require("bit")
local alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if bit.band(c, 1) == 1 then c = bit.bxor(bit.rshift(c, 1), 0xEDB88320) else c = bit.rshift(c, 1) end
  end
  crc_table[i] = c
end
local function crc32(s)
  local c = bit.bnot(0)
  for i = 1, #s do
    c = bit.bxor(crc_table[bit.band(bit.bxor(c, s:byte(i)), 0xFF)], bit.rshift(c, 8))
  end
  c = bit.bnot(c)
  if c < 0 then c = c + 4294967296 end
  return c
end
local function digit(d) return alphabet:sub(d + 1, d + 1) end
function forge()
  local body = {}
  for i = 1, 32 do body[i] = digit(math.random(0, 61)) end
  body = table.concat(body)
  local v, sum = crc32(body), {}
  for i = 6, 1, -1 do sum[i] = digit(v % 62); v = math.floor(v / 62) end
  local key = "caas_" .. body .. table.concat(sum)
  if bad_checksum then
    -- The last checksum digit moved on by one: the same shape, never valid.
    local last = alphabet:find(key:sub(-1), 1, true) % 62
    key = key:sub(1, -2) .. digit(last)
  end
  return key
end
local wait_ms = tonumber(os.getenv("FLOOD_DELAY_MS") or "0")
bad_checksum = os.getenv("BAD_CHECKSUM") == "1"
function setup(thread) thread:set("seed", math.random(1, 2^31)) end
function init() math.randomseed(seed or os.time()) end
if os.getenv("FORGE_ONE") then print(forge()) os.exit(0) end
request = function()
  wrk.headers["x-api-key"] = forge()
  return wrk.format(nil, "/bench/key")
end
if wait_ms > 0 then delay = function() return wait_ms end end
LUA
FLOOD_DELAY_MS=0
[ "$FLOOD_RATE" -gt 0 ] && FLOOD_DELAY_MS=$(( FLOOD_CONNECTIONS * 1000 / FLOOD_RATE ))
export FLOOD_DELAY_MS

metric() { curl -s "http://$OPS/metrics" | { grep -E "^$1" || true; } | awk '{s += $NF} END {print s+0}'; }
reads() { metric auth_db_reads; }
pg_scans() {
  psql -qtA "$DB_URL" -c "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'api_keys'"
}
refused() { metric 'gateway_auth_failures_total\{.*reason="too_many_failures"'; }
flood() { # SECONDS [BAD_CHECKSUM] -> forged requests sent
  BAD_CHECKSUM=${2:-0} wrk -t1 -c"$FLOOD_CONNECTIONS" -d"$1" -s "$WORK/forge.lua" -H "x-forwarded-for: $FLOOD_IP" "$GW/bench/key" \
    | awk '/requests in/ {print $1}'
}
honest() { # -> req/s, requests, non-2xx
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "x-api-key: $API_KEY" -H "x-forwarded-for: $HONEST_IP" "$GW/bench/key" \
    | awk '/Requests\/sec/ {rps = $2} /requests in/ {n = $1} /Non-2xx/ {bad = $NF} END {print rps, n, bad + 0}'
}

# One forged key from the script must reach the store (well-formed, so not
# refused by its shape): proves the Lua checksum is the product's.
one=$(FORGE_ONE=1 wrk -s "$WORK/forge.lua" "$GW/" 2>/dev/null | head -1)
before=$(reads)
curl -s -o /dev/null -H "x-api-key: $one" -H "x-forwarded-for: 192.0.2.77" "$GW/bench/key"
[ "$(( $(reads) - before ))" = 1 ] || { echo "a forged key ($one) did not reach the store: checksum wrong?" >&2; exit 1; }
# …and one with its checksum spoiled must not.
bad=$(BAD_CHECKSUM=1 FORGE_ONE=1 wrk -s "$WORK/forge.lua" "$GW/" 2>/dev/null | head -1)
before=$(reads)
status=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $bad" -H "x-forwarded-for: 192.0.2.78" "$GW/bench/key")
[ "$status" = 401 ] && [ "$(reads)" = "$before" ] || { echo "a key with a wrong checksum ($bad) answered $status or reached the store" >&2; exit 1; }

sleep 1
pg0=$(pg_scans); r0=$(reads)
wrk -t1 -c"$CONNECTIONS" -d2s -H "x-api-key: $API_KEY" -H "x-forwarded-for: $HONEST_IP" "$GW/bench/key" >/dev/null
limiting=$(flood 2s)
r1=$(reads)
echo "warm-up: $limiting forged requests until and after the flood address was limited: $(( r1 - r0 )) database reads"

RESULTS=$WORK/results.txt
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  a=$(reads); line=$(honest); b=$(reads)
  echo "alone $line $(( b - a )) 0 0" >> "$RESULTS"
  flood "$DURATION" > "$WORK/flood.out" & FLOODER=$!
  a=$(reads); f=$(refused); line=$(honest); wait $FLOODER; b=$(reads); g=$(refused)
  echo "flood $line $(( b - a )) $(cat "$WORK/flood.out") $(( g - f ))" >> "$RESULTS"
  flood "$DURATION" 1 > "$WORK/flood.out" & FLOODER=$!
  a=$(reads); f=$(refused); line=$(honest); wait $FLOODER; b=$(reads); g=$(refused)
  echo "shape $line $(( b - a )) $(cat "$WORK/flood.out") $(( g - f ))" >> "$RESULTS"
done
sleep 11 # PostgreSQL publishes a backend's table statistics within 10 s of idling
pg1=$(pg_scans); r2=$(reads)

python3 - "$RESULTS" "$CONNECTIONS" "$FLOOD_CONNECTIONS" "$DURATION" "$FLOOD_RATE" "$ENVOY_WORKERS" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r[0], []).append(r)
med = lambda k: statistics.median(float(r[1]) for r in by[k])
rate = "as fast as wrk goes" if sys.argv[5] == "0" else f"{sys.argv[5]} req/s"
print(f"honest: wrk -t1 -c{sys.argv[2]} -d{sys.argv[4]}; flood: wrk -t1 -c{sys.argv[3]} ({rate}); "
      f"Envoy --concurrency {sys.argv[6]}; median of {len(by['alone'])} interleaved rounds\n")
print("| round | honest alone req/s | honest during the bad-checksum flood req/s | honest during the forged flood req/s | forged ÷ bad-checksum | forged ÷ alone | honest non-2xx (alone / bad / forged) | forged requests | 429 too_many_failures | database reads (alone / bad / forged) | reads per 1,000 forged |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for i, (a, s, f) in enumerate(zip(by["alone"], by["shape"], by["flood"]), 1):
    forged = int(f[5]); reads = int(f[4])
    print(f"| {i} | {float(a[1]):,.0f} | {float(s[1]):,.0f} | {float(f[1]):,.0f} | {float(f[1]) / float(s[1]):.2f} | {float(f[1]) / float(a[1]):.2f} | {a[3]} / {s[3]} / {f[3]} | {forged:,} | {int(f[6]):,} | {a[4]} / {s[4]} / {reads} | {reads / forged * 1000:.3f} |")
forged = sum(int(r[5]) for r in by["flood"]); reads = sum(int(r[4]) for r in by["flood"])
print(f"| median / total | {med('alone'):,.0f} | {med('shape'):,.0f} | {med('flood'):,.0f} | {med('flood') / med('shape'):.2f} | {med('flood') / med('alone'):.2f} | | {forged:,} | | {reads} | {reads / forged * 1000:.3f} |")
PY
echo
echo "cross-check over the whole run: auth_db_reads +$(( r2 - r0 )); PostgreSQL scans of api_keys +$(( pg1 - pg0 ))"
