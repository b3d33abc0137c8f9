#!/usr/bin/env bash
# What observability costs ext-authz, side by side in one run:
# Check at a fixed rate straight to three ext-authz processes on one database,
# variants interleaved over ROUNDS rounds, medians:
#   p   RUST_LOG=warn: no line per Check, no traceparent, no export (gateway.sh's setup)
#   l   RUST_LOG=info: the JSON decision line per Check, to a file
#   t   as (l), plus a client traceparent on every Check and OTLP/HTTP export of
#       every span to a collector that only counts (caas-bench otlp-sink)
# CPU is the server process's own (utime+stime from /proc) per Check.
#   bench/tracing.sh    env: RATE (5000), SECONDS_EACH (10), ROUNDS (3)
source "$(dirname "$0")/lib.sh"
RATE=${RATE:-5000}
SECONDS_EACH=${SECONDS_EACH:-10}

cargo build --release -q -p caas-bench -p caas-ext-authz
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
SERVICE_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
DB="sqlite://$WORK/caas.db"
SEED=$(./target/release/caas-bench seed --database-url "$DB" --jwt-secret "$JWT_SECRET" --token-ttl 7200)
TOKEN=$(echo "$SEED" | python3 -c "import json,sys; print(json.load(sys.stdin)['token'])")
TRACEPARENT=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01

./target/release/caas-bench otlp-sink --addr 127.0.0.1:9499 & PIDS+=($!)
declare -A PID PORT=([p]=95 [l]=96 [t]=97)
start() { # variant RUST_LOG [OTLP endpoint]
  local port=${PORT[$1]}
  DATABASE_URL=$DB JWT_SECRET=$JWT_SECRET SERVICE_SECRET=$SERVICE_SECRET RUST_LOG=$2 \
    EXT_AUTHZ_ADDR=127.0.0.1:${port}91 EXT_AUTHZ_OPS_ADDR=127.0.0.1:${port}92 OTEL_EXPORTER_OTLP_ENDPOINT=${3-} \
    ./target/release/ext-authz > "$WORK/$1.log" 2>&1 & PID[$1]=$!; PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:${port}92/health" >/dev/null && break; sleep 0.1; done
}
start p warn
start l info
start t info http://127.0.0.1:9499
for _ in $(seq 50); do curl -sf http://127.0.0.1:9499/spans >/dev/null && break; sleep 0.1; done

p99() { # variant: the server's own p99 (histogram bucket bound) since the last call
  local now; now=$(curl -s "http://127.0.0.1:${PORT[$1]}92/metrics" | grep '^gateway_check_duration_seconds_bucket{.*policy="end_user"')
  python3 - "${LAST[$1]:-}" "$now" <<'PY'
import re, sys
parse = lambda t: {float(m.group(1)) if m.group(1) != "+Inf" else float("inf"): int(float(m.group(2)))
                   for m in re.finditer(r'le="([^"]+)"[^}]*} (\S+)', t)}
b, a = parse(sys.argv[1]), parse(sys.argv[2])
d = {le: a[le] - b.get(le, 0) for le in a}
total = d[float("inf")]
print(min(le for le, n in d.items() if n >= 0.99 * total) * 1e6)
PY
  LAST[$1]=$now
}
declare -A LAST
RESULTS=$WORK/results.txt
for round in $(seq "$ROUNDS"); do
  for v in p l t; do
    p99 "$v" >/dev/null
    args=(--addr "127.0.0.1:${PORT[$v]}91" --rate "$RATE" --seconds "$SECONDS_EACH" --policy end_user --token "$TOKEN")
    [ "$v" = t ] && args+=(--traceparent "$TRACEPARENT")
    spans0=$(curl -s http://127.0.0.1:9499/spans)
    t0=$(cpu_ticks "${PID[$v]}")
    out=$(./target/release/caas-bench grpc-load "${args[@]}")
    t1=$(cpu_ticks "${PID[$v]}")
    sleep 0.5 # the exporter's last batch (it gathers for 100 ms)
    spans1=$(curl -s http://127.0.0.1:9499/spans)
    echo "$v $(echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['requests'] + 100, d['denied'], d['errors'], d['p99_us'])") $((t1 - t0)) $(p99 "$v") $((spans1 - spans0))" >> "$RESULTS"
  done
done
lines_per_check=$(python3 -c "import sys; print(sum(1 for l in open(sys.argv[1]) if '\"decision\":\"allow\"' in l))" "$WORK/l.log")

python3 - "$RESULTS" "$TICK" "$RATE" "$SECONDS_EACH" "$lines_per_check" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
tick = int(sys.argv[2])
by = {}
for r in rows:
    by.setdefault(r[0], []).append(r)
med = lambda k, f: statistics.median(f(r) for r in by[k])
cpu = lambda k: med(k, lambda r: int(r[5]) / tick / int(r[1]) * 1e6)
names = {"p": "no decision log, no tracing", "l": "JSON decision line per Check (RUST_LOG=info)",
         "t": "(l) + client traceparent + OTLP export of every span"}
print(f"grpc-load at {sys.argv[3]} Check/s for {sys.argv[4]} s per variant, JWT route, median of {len(by['p'])} interleaved rounds\n")
print("| variant | ext-authz CPU µs/Check | vs (p) | server p99 ≤ | client p99 | denied+errors | spans exported/Check |")
print("|---|---:|---:|---:|---:|---:|---:|")
for k in "plt":
    bad = sum(int(r[2]) + int(r[3]) for r in by[k])
    spans = sum(int(r[7]) for r in by[k]) / sum(int(r[1]) for r in by[k])
    print(f"| ({k}) {names[k]} | {cpu(k):.1f} | {cpu(k) / cpu('p'):.2f} | {med(k, lambda r: float(r[6])):,.0f} µs "
          f"| {med(k, lambda r: int(r[4])):,} µs | {bad} | {spans:.3f} |")
print(f"\n(l) wrote {sys.argv[5]} allow lines for {sum(int(r[1]) for r in by['l']):,} Checks")
PY
