#!/usr/bin/env bash
# The miss path as the issue names it: the first request of a new key. Every
# request brings a key that Envoy, the filter and ext-authz have never seen
# (one fresh tenant per key, whitelisting 127.0.0.0/8), so ext-authz reads
# the key and its tenant's whitelist from the database for each one, as it
# does for a key's first request in production. Side by side, same load tool,
# same Envoy settings as bench/gateway.sh, variants interleaved:
#   e1  Envoy ext_authz -> caas ext-authz, API-key route (gateway.sh's (e))
#   i1  the in-proxy fast path in front of the same ext_authz (gateway.sh's
#       (g)): the filter does not hold the key, leaves the request to
#       ext_authz and asks ext-authz for the key's record for next time
# bench/gateway.sh's (i) is the same miss with one key that exists nowhere,
# repeated: ext-authz answers it from its cache, so there the filter's look
# at the request is all that differs. Here the database read a new key costs
# is in both.
#   bench/first-request.sh    env: DURATION (3s), CONNECTIONS (32), ROUNDS (3),
#                             KEYS_PER_RUN (30000; a run that would need more
#                             is reported, never repeated)
DURATION=${DURATION:-3s}
source "$(dirname "$0")/lib.sh"
KEYS_PER_RUN=${KEYS_PER_RUN:-30000}

cargo build --release -q -p caas-bench -p caas-ext-authz
cargo build -q -p caas-edge-wasm --target wasm32-wasip1 --profile edge
WASM=$PWD/${CARGO_TARGET_DIR:-target}/wasm32-wasip1/edge/caas_edge_wasm.wasm
CALLER_TOKEN=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
SERVICE_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
DB="sqlite://$WORK/caas.db"
RUNS=$(( ROUNDS * 2 ))
# One extra key per run: measure's probe and its 2 s warm-up send it (so
# Envoy, its connections to ext-authz and the filter's feed are warm); the
# measured run sends only the run's other keys, each once.
echo "seeding $(( RUNS * (KEYS_PER_RUN + 1) )) tenants with a key each…" >&2
./target/release/caas-bench seed --database-url "$DB" --jwt-secret "$JWT_SECRET" \
  --fresh-keys $(( RUNS * (KEYS_PER_RUN + 1) )) --fresh-keys-file "$WORK/keys.txt" >/dev/null
# keys.txt split into one file per run: run-N.keys (measured) and run-N.probe.
split -l $(( KEYS_PER_RUN + 1 )) -d -a 3 "$WORK/keys.txt" "$WORK/run-"
for f in "$WORK"/run-[0-9][0-9][0-9]; do
  head -n 1 "$f" > "$f.probe"; tail -n +2 "$f" > "$f.keys"
done
cat > "$WORK/fresh.lua" <<'LUA'
-- Each request the next key of $FRESH_KEYS; past the last, the first again
-- (the summary reports such a run).
local keys, i = {}, 0
for line in io.lines(os.getenv("FRESH_KEYS")) do keys[#keys + 1] = line end
request = function()
  i = i + 1
  return wrk.format(nil, nil, { ["x-api-key"] = keys[(i - 1) % #keys + 1] })
end
LUA

DATABASE_URL=$DB JWT_SECRET=$JWT_SECRET SERVICE_SECRET=$SERVICE_SECRET EXT_AUTHZ_ADDR=127.0.0.1:9391 \
  EXT_AUTHZ_OPS_ADDR=127.0.0.1:9392 EXT_AUTHZ_CALLER_TOKEN=$CALLER_TOKEN QUOTAS_ENABLED=false FAILED_AUTH_LIMIT=0 \
  RUST_LOG=warn ./target/release/ext-authz >/dev/null 2>&1 & AUTHZ=$!; PIDS+=("$AUTHZ")
for _ in $(seq 100); do curl -sf http://127.0.0.1:9392/health >/dev/null && break; sleep 0.1; done

config d "$(ext_authz_filter)" 9391
config f "$(edge_filter "$WASM" "$CALLER_TOKEN")
$(skipped_ext_authz_filter "$CALLER_TOKEN")" 9391

metric() { curl -s http://127.0.0.1:9392/metrics | awk -v m="$1" '$1 ~ "^"m {s += $2} END {print s+0}'; }
run() { # label config
  local reads0 reads1 line run_file
  run_file=$(printf '%s/run-%03d' "$WORK" "$RUN")
  export FRESH_KEYS=$run_file.keys
  reads0=$(metric auth_db_reads)
  line=$(WRK_SCRIPT=$WORK/fresh.lua measure "$2" /bench/key "x-api-key: $(cat "$run_file.probe")" "$AUTHZ")
  reads1=$(metric auth_db_reads)
  echo "$1 ${line#* } $reads0 $reads1"
}

RESULTS=$WORK/results.txt
: > "$RESULTS"
RUN=0
for round in $(seq "$ROUNDS"); do
  run e1 d >> "$RESULTS"; RUN=$(( RUN + 1 ))
  run i1 f >> "$RESULTS"; RUN=$(( RUN + 1 ))
done

python3 - "$RESULTS" "$TICK" "$CONNECTIONS" "$DURATION" "$KEYS_PER_RUN" <<'PY'
import sys, statistics
sys.path.insert(0, "bench")
from results import by_variant, median, per_request_us
by, tick, keys = by_variant(sys.argv[1]), int(sys.argv[2]), int(sys.argv[5])
rows = [r for runs in by.values() for r in runs]
med = lambda k, i: median(by[k], i)
cpu = lambda k, i: per_request_us(by[k], i, tick)
names = {"e1": "Envoy + caas ext-authz, API-key route, every key new",
         "i1": "fast path in front of it, every key new (the filter forwards)"}
print(f"wrk -t1 -c{sys.argv[3]} -d{sys.argv[4]}, Envoy --concurrency 1, median of {len(by['e1'])} interleaved rounds\n")
print("| variant | req/s | vs (e1) | p99 | non-2xx | database reads per request | ext-authz CPU µs/req | Envoy CPU µs/req |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for k in ["e1", "i1"]:
    reads = statistics.median((int(r[8]) - int(r[7])) / float(r[2]) for r in by[k])
    print(f"| ({k}) {names[k]} | {med(k, 1):,.0f} | {med(k, 1) / med('e1', 1):.2f} | {by[k][0][3]} | {int(med(k, 4))} | {reads:.2f} | {cpu(k, 5):.1f} | {cpu(k, 6):.1f} |")
over = [r for r in rows if float(r[2]) > keys]
if over:
    print(f"\nWARNING: {len(over)} run(s) sent more requests than their {keys} fresh keys (keys repeated): raise KEYS_PER_RUN")
print(f"\nthe first request of a new key through the fast path: {med('i1', 1) / med('e1', 1):.2f}x of ext_authz alone")
PY
