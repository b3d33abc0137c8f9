#!/usr/bin/env bash
# Quota benchmarks (docs/DESIGN.md, "Quotas"), side by side in one run.
#
# Accuracy: three ext-authz processes, one API key limited to 100 requests/s
# (burst 100), Checks at RATE_EACH/s to each of the three (300/s: three times
# the limit) for ACCURACY_SECONDS; the admitted rate with the three sharing
# one Redis, and (for contrast) with each counting alone (no REDIS_URL).
#
# Cost: one ext-authz behind Envoy (wrk, the API-key route, the key's limits
# at their maxima so nothing is refused), variants interleaved over ROUNDS:
#   off     QUOTAS_ENABLED=false (Redis set)
#   local   quotas counted in the process only (no REDIS_URL)
#   shared  quotas shared through Redis (the reconciler every 25 ms)
# throughput and ext-authz CPU per request, as ratios to `off`.
#
# Cost in process (no Envoy, no gRPC: the Check alone, where quotas are
# the larger share): `caas-bench check-cost`, the three variants side by
# side in one process, ns per Check; and instructions per Check under
# valgrind (callgrind), which do not change with the machine's load: each
# variant run for N1 and N2 Checks, (I(N2) - I(N1)) / (N2 - N1).
#   bench/quota.sh    env: ACCURACY_SECONDS (30), RATE_EACH (100), DURATION (10s), CONNECTIONS (32), ROUNDS (3),
#                     SKIP_ENVOY (unset; 1 runs only the in-process cost)
source "$(dirname "$0")/lib.sh"
ACCURACY_SECONDS=${ACCURACY_SECONDS:-30}
RATE_EACH=${RATE_EACH:-100}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -q -p caas-bench -p caas-ext-authz
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
SERVICE_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
DB="sqlite://$WORK/caas.db"
field() { echo "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
LIMITED=$("$TARGET"/release/caas-bench seed --database-url "$DB" --jwt-secret "$JWT_SECRET" --key-quota 100/100)
OPEN=$("$TARGET"/release/caas-bench seed --database-url "$DB" --jwt-secret "$JWT_SECRET" --key-quota 10000/20000)

# A Redis of this run's own (the benchmark never touches another's data).
REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 & PIDS+=($!)
REDIS=redis://127.0.0.1:$REDIS_PORT
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# start_authz GRPC_PORT OPS_PORT [VAR=value...]: one ext-authz; its pid in $AUTHZ.
start_authz() {
  local grpc=$1 ops=$2; shift 2
  env DATABASE_URL="$DB" JWT_SECRET="$JWT_SECRET" SERVICE_SECRET="$SERVICE_SECRET" EXT_AUTHZ_ADDR=127.0.0.1:$grpc \
    EXT_AUTHZ_OPS_ADDR=127.0.0.1:$ops EXT_AUTHZ_LOG_ALLOWED=false RUST_LOG=error "$@" \
    "$TARGET"/release/ext-authz >/dev/null 2>&1 & AUTHZ=$!; PIDS+=("$AUTHZ")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ops/health" >/dev/null && return; sleep 0.1; done
  echo "ext-authz on $grpc did not start" >&2; exit 1
}

# accuracy LABEL [VAR=value...]: three instances, the load spread evenly.
accuracy() {
  local label=$1; shift
  local started=("${PIDS[@]}") group=() outs=()
  for i in 0 1 2; do start_authz $((9501 + 2 * i)) $((9502 + 2 * i)) "$@"; group+=("$AUTHZ"); done
  sleep 1 # a few reconcile rounds: each instance has seen the others alive
  for i in 0 1 2; do
    "$TARGET"/release/caas-bench grpc-load --addr 127.0.0.1:$((9501 + 2 * i)) --rate "$RATE_EACH" \
      --seconds "$ACCURACY_SECONDS" --policy api_key --api-key "$(field "$LIMITED" api_key)" > "$WORK/acc-$label-$i.json" &
    outs+=($!)
  done
  wait "${outs[@]}"
  kill "${group[@]}"; wait "${group[@]}" 2>/dev/null || true
  PIDS=("${started[@]}")
  python3 - "$label" "$ACCURACY_SECONDS" "$WORK"/acc-"$label"-*.json <<'PY'
import json, sys
label, seconds = sys.argv[1], float(sys.argv[2])
runs = [json.load(open(p)) for p in sys.argv[3:]]
sent = sum(r["requests"] for r in runs)
admitted = sum(r["requests"] - r["denied"] - r["errors"] for r in runs)
errors = sum(r["errors"] for r in runs)
rate = admitted / seconds
print(f"| {label} | {sent / seconds:,.0f} | {admitted:,} | {rate:,.1f} | {rate / 100:.3f} | {errors} |")
PY
}

echo "Cost in process: caas-bench check-cost (a cached API-key Check through Authorizer::check)"
echo
"$TARGET"/release/caas-bench check-cost --redis-url "$REDIS"
echo
# instructions VARIANT CHECKS: everything the process executed (setup included).
instructions() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$TARGET"/release/caas-bench check-cost \
    --redis-url "$REDIS" --variant "$1" --iterations "$2" 2>&1 | awk '/Collected/ {print $NF}'
}
echo "| variant | instructions per Check (callgrind, 20,000 − 5,000 Checks) | vs off |"
echo "|---|---:|---:|"
declare -A PER
for v in off local shared; do
  small=$(instructions "$v" 5000); large=$(instructions "$v" 20000)
  PER[$v]=$(( (large - small) / 15000 ))
done
for v in off local shared; do
  echo "| $v | ${PER[$v]} | $(python3 -c "print(f'{${PER[$v]} / ${PER[off]}:.3f}')") |"
done
echo
[ -n "${SKIP_ENVOY:-}" ] && exit 0

echo "Accuracy: 3 ext-authz, one key limited to 100/s (burst 100), ${RATE_EACH}/s to each for ${ACCURACY_SECONDS} s (grpc-load, open loop)"
echo
echo "| variant | offered/s | admitted | admitted/s | vs the limit | errors |"
echo "|---|---:|---:|---:|---:|---:|"
accuracy "shared through Redis" REDIS_URL="$REDIS"
accuracy "each alone (no REDIS_URL)"
echo

start_authz 9391 9392 REDIS_URL="$REDIS" QUOTAS_ENABLED=false; OFF=$AUTHZ
start_authz 9393 9394; LOCAL=$AUTHZ
start_authz 9395 9396 REDIS_URL="$REDIS"; SHARED=$AUTHZ
config off "$(ext_authz_filter)" 9391
config local "$(ext_authz_filter)" 9393
config shared "$(ext_authz_filter)" 9395
KEY="x-api-key: $(field "$OPEN" api_key)"
RESULTS=$WORK/results.txt
: > "$RESULTS"
for _ in $(seq "$ROUNDS"); do
  measure off /bench/key "$KEY" "$OFF" >> "$RESULTS"
  measure local /bench/key "$KEY" "$LOCAL" >> "$RESULTS"
  measure shared /bench/key "$KEY" "$SHARED" >> "$RESULTS"
done
python3 - "$RESULTS" "$TICK" "$CONNECTIONS" "$DURATION" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
tick = int(sys.argv[2])
by = {}
for r in rows:
    by.setdefault(r[0], []).append(r)
med = lambda k, i: statistics.median(float(r[i]) for r in by[k])
cpu = lambda k: statistics.median(float(r[5]) / tick / float(r[2]) * 1e6 for r in by[k])
names = {"off": "quotas off (QUOTAS_ENABLED=false)", "local": "quotas in-process only (no REDIS_URL)",
         "shared": "quotas shared through Redis"}
print(f"Cost: wrk -t1 -c{sys.argv[3]} -d{sys.argv[4]}, Envoy --concurrency 1, API-key route, median of {len(by['off'])} interleaved rounds\n")
print("| variant | req/s | vs off | non-2xx | ext-authz CPU µs/check | vs off |")
print("|---|---:|---:|---:|---:|---:|")
for k in ["off", "local", "shared"]:
    print(f"| {names[k]} | {med(k, 1):,.0f} | {med(k, 1) / med('off', 1):.3f} | {int(med(k, 4))} | {cpu(k):.1f} | {cpu(k) / cpu('off'):.3f} |")
PY
