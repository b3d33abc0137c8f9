#!/usr/bin/env bash
# Socket service benchmarks, release builds, signed context on the
# upgrade as behind Envoy (so the socket service is measured alone):
#   1. memory per idle authenticated connection: server RSS delta / connections,
#      at 10k (one server process) and 50k (4 server processes, as this
#      machine caps open files at 20,000 per process), and accepts per second;
#   2. fan-out on one node: 1,000 subscribers of one conversation, messages
#      published on the Redis bus as chat nodes do; deliveries per second and
#      delivery latency (send time carried in the message).
#   3. side by side with sockudo (a Pusher-protocol server in Rust), the same
#      load generator for both: SUBSCRIBERS subscribers of one channel, each
#      offered rate of RATES in turn, variants interleaved over ROUNDS rounds:
#      CAAS direct, sockudo direct, and both with the subscribers through
#      Envoy; deliveries/s, client-measured p50/p99, memory per idle
#      subscribed connection, CPU of the server (and Envoy).
#   bench/socket.sh [memory] [fanout] [compare]   (default: memory fanout)
#     env: SMALL (10000), LARGE (50000), SUBSCRIBERS (1000), RATE (100);
#     compare: RATES ("100 200 400 800"), ROUNDS (3), PUBLISH_SECONDS (5),
#     VARIANTS ("caas sockudo caas-envoy sockudo-envoy"; also caas-envoy-filter:
#     the fast path's Wasm filter in the chain the upgrade takes, as in
#     envoy/envoy.yaml), ENVOY_WORKERS (1),
#     SOCKUDO_BIN (sockudo on PATH; `cargo install sockudo --locked`).
source "$(dirname "$0")/lib.sh"
ulimit -n 20000
SMALL=${SMALL:-10000}; LARGE=${LARGE:-50000}; SUBSCRIBERS=${SUBSCRIBERS:-1000}; RATE=${RATE:-100}
SECTIONS=${*:-memory fanout}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
TARGET=${CARGO_TARGET_DIR:-target}
# PROFILE=dev only to smoke-test this script quickly; figures need release.
PROFILE=${PROFILE:-release}; OUT=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
cargo build --profile "$PROFILE" -q -p caas-bench -p caas-socket
BENCH=$TARGET/$OUT/caas-bench
SERVICE_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
DB="sqlite://$WORK/caas.db"
SEED=$($BENCH seed --database-url "$DB" --jwt-secret "$JWT_SECRET")
field() { echo "$SEED" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
TENANT=$(field tenant); SESSION=$(field session); CONVERSATION=$(field conversation)
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_socket() { # port [extra env...]; sets SOCKET_PID
  local port=$1; shift
  # Every bench connection is the same end user: lift the per-user cap.
  env DATABASE_URL="$DB" SERVICE_SECRET="$SERVICE_SECRET" SOCKET_ADDR=127.0.0.1:$port RUST_LOG=warn \
    SOCKET_MAX_CONNECTIONS_PER_USER=20000 SOCKET_MAX_CONNECTIONS_PER_TENANT=20000 "$@" \
    "$TARGET/$OUT/socket" >/dev/null 2>&1 &
  SOCKET_PID=$!; PIDS+=("$SOCKET_PID")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
}
hold() { # servers connections sources hold_seconds [extra]
  $BENCH ws-hold --servers "$1" --connections "$2" --sources "$3" --hold-seconds "$4" \
    --service-secret "$SERVICE_SECRET" --tenant "$TENANT" --session "$SESSION" "${@:5}"
}

if has memory; then
echo "## Memory per idle authenticated connection, and accepts per second"
for total in $SMALL $LARGE; do
  if [ "$total" -le 12000 ]; then servers=1; else servers=4; fi
  pids=(); addrs=()
  for i in $(seq "$servers"); do port=$((19100 + i)); start_socket $port; pids+=("$SOCKET_PID"); addrs+=("127.0.0.1:$port"); done
  sleep 1
  before=0; for p in "${pids[@]}"; do before=$((before + $(rss_kb "$p"))); done
  per_client=10000; clients=$(( (total + per_client - 1) / per_client ))
  out=$WORK/hold-$total; : > "$out"; holders=()
  for c in $(seq "$clients"); do
    n=$(( c < clients ? per_client : total - per_client * (clients - 1) ))
    hold "$(IFS=,; echo "${addrs[*]}")" "$n" "127.0.0.$c,127.1.0.$c" "${HOLD:-20}" >> "$out" &
    holders+=($!)
  done
  # Wait until every connection is open, then let the servers settle.
  for _ in $(seq 300); do [ "$(grep -c '"event":"open"' "$out")" -ge "$clients" ] && break; sleep 0.2; done
  sleep 5
  after=0; for p in "${pids[@]}"; do after=$((after + $(rss_kb "$p"))); done
  opened=$(grep '"event":"open"' "$out" | python3 -c 'import json,sys; r=[json.loads(l) for l in sys.stdin]; print(sum(x["connections"] for x in r), sum(x["failed"] for x in r), max(x["seconds"] for x in r))')
  set -- $opened
  echo "$total connections on $servers server process(es): opened $1 (failed $2) in $3 s = $(python3 -c "print(round($1/$3))") accepts/s; RSS $((before/1024)) MiB -> $((after/1024)) MiB; $(python3 -c "print(round(($after-$before)*1024/$1))") bytes per connection"
  wait "${holders[@]}"
  for p in "${pids[@]}"; do kill "$p"; done
  sleep 1
done
fi

if has fanout; then
echo
echo "## Fan-out on one node: $SUBSCRIBERS subscribers of one conversation, $RATE messages/s on the Redis bus"
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
start_socket 19200 REDIS_URL="$REDIS_URL"
hold 127.0.0.1:19200 "$SUBSCRIBERS" 127.2.0.1 14 --subscribe "$CONVERSATION" > "$WORK/fanout" &
holder=$!
for _ in $(seq 300); do grep -q '"event":"open"' "$WORK/fanout" && break; sleep 0.1; done
sleep 1
hist() { curl -s http://127.0.0.1:19200/metrics | grep '^socket_delivery_duration_seconds_bucket'; }
before=$(hist)
$BENCH ws-publish --redis-url "$REDIS_URL" --tenant "$TENANT" --conversation "$CONVERSATION" --rate "$RATE" --seconds 10
wait $holder
cat "$WORK/fanout"
echo "on the node, event received -> frame written to the subscriber's socket:"
hist_percentiles "$before" "$(hist)"
curl -s http://127.0.0.1:19200/metrics | grep -E '^socket_(messages_delivered|closes)' || true
kill "$SOCKET_PID"; wait "$SOCKET_PID" 2>/dev/null || true
fi

if has compare; then
RATES=${RATES:-100 200 400 800}; PUBLISH_SECONDS=${PUBLISH_SECONDS:-5}
VARIANTS=${VARIANTS:-caas sockudo caas-envoy sockudo-envoy}; ENVOY_WORKERS=${ENVOY_WORKERS:-1}
SOCKUDO=${SOCKUDO_BIN:-sockudo}
if [[ " $VARIANTS " == *" sockudo"* ]]; then
  command -v "$SOCKUDO" >/dev/null 2>&1 || { echo "error: sockudo not found (cargo install sockudo --locked; or SOCKUDO_BIN=path)" >&2; exit 1; }
fi
echo
echo "## Side by side with sockudo ($("$SOCKUDO" --version 2>/dev/null | head -1)): $SUBSCRIBERS subscribers of one channel, rates $RATES messages/s for ${PUBLISH_SECONDS} s, $ROUNDS rounds"
CAAS_PORT=19300; SOCKUDO_PORT=19301; ENVOY_PORT=18100
# A private Redis for CAAS's bus, so the shared one carries none of this.
redis-server --port 16399 --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null 2>&1 &
PIDS+=($!)
COMPARE_REDIS=redis://127.0.0.1:16399
for _ in $(seq 50); do redis-cli -p 16399 ping >/dev/null 2>&1 && break; sleep 0.1; done
APP_SECRET=$(head -c 24 /dev/urandom | base64 | tr -d '\n/+=')
CHANNEL=bench
# Subscribers through Envoy: a plain WebSocket proxy in front of both servers
# (the product's upgrade passes ext_authz once per connection; what Envoy
# adds per delivered frame is this proxying).
cat > "$WORK/ws-proxy.yaml" <<YAML
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }
static_resources:
  listeners:
  - name: public
    address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: wsbench
          stream_idle_timeout: 300s
          upgrade_configs: [ { upgrade_type: websocket } ]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: ws
              domains: ["*"]
              routes:
              - match: { path: /v1/ws }
                route: { cluster: caas, timeout: 0s, idle_timeout: 3600s }
              - match: { prefix: /app/ }
                route: { cluster: sockudo, timeout: 0s, idle_timeout: 3600s }
  clusters:
  - name: caas
    type: STATIC
    connect_timeout: 0.25s
    load_assignment: { cluster_name: caas, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $CAAS_PORT } } } } ] } ] }
  - name: sockudo
    type: STATIC
    connect_timeout: 0.25s
    load_assignment: { cluster_name: sockudo, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $SOCKUDO_PORT } } } } ] } ] }
YAML

# The same proxy with the fast path's Wasm filter in the chain the upgrade
# takes, as in envoy/envoy.yaml (no feed: it decides nothing and lets every
# request on; what is measured is each upgraded stream's frames passing it).
if [[ " $VARIANTS " == *" caas-envoy-filter "* ]]; then
  cargo build -q -p caas-edge-wasm --target wasm32-wasip1 --profile edge
  WASM=$PWD/$TARGET/wasm32-wasip1/edge/caas_edge_wasm.wasm
  [ -f "$WASM" ] || WASM=$TARGET/wasm32-wasip1/edge/caas_edge_wasm.wasm
  EDGE="          - name: caas.edge
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: caas_edge
                root_id: caas_edge
                configuration: { \"@type\": type.googleapis.com/google.protobuf.StringValue, value: '{\"cluster\":\"none\",\"token\":\"x\"}' }
                vm_config: { vm_id: caas_edge, runtime: envoy.wasm.runtime.v8, code: { local: { filename: \"$WASM\" } } }
                failure_policy: FAIL_OPEN"
  python3 - "$WORK" "$EDGE" <<'PY'
import sys
work, edge = sys.argv[1], sys.argv[2]
base = open(f"{work}/ws-proxy.yaml").read()
router = "          - name: envoy.filters.http.router\n"
assert router in base
with_filter = base.replace(router, edge + "\n" + router, 1)
open(f"{work}/ws-proxy-filter.yaml", "w").write(with_filter)
PY
fi

# The env-bootstrapped app's limits default to 100 (connections, backend
# events per second, …): lifted, as start_socket lifts CAAS's per-user caps.
start_sockudo() { # sets SERVER_PID; run from an empty directory so no config/ file is read
  mkdir -p "$WORK/sockudo"
  (cd "$WORK/sockudo" && exec env HOST=127.0.0.1 PORT=$SOCKUDO_PORT SOCKUDO_DEFAULT_APP_ID=bench SOCKUDO_DEFAULT_APP_KEY=bench-key \
    SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=100000 \
    SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=100000 SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=100000 \
    SOCKUDO_DEFAULT_APP_SECRET="$APP_SECRET" RATE_LIMITER_ENABLED=false ADAPTER_DRIVER=local CACHE_DRIVER=memory \
    QUEUE_DRIVER=none APP_MANAGER_DRIVER=memory METRICS_ENABLED=false DEBUG=false RUST_LOG=warn \
    "$SOCKUDO" >>"$WORK/sockudo.log" 2>&1) &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$SOCKUDO_PORT/" && break; sleep 0.1; done
}

# cell VARIANT RATE ROUND: a fresh server, SUBSCRIBERS subscribed, RSS
# settled, RATE messages/s for PUBLISH_SECONDS; prints one JSON line.
cell() {
  local variant=$1 rate=$2 round=$3 server envoy_pid="" out=$WORK/cell target proto pub
  case $variant in
    caas*) start_socket $CAAS_PORT REDIS_URL="$COMPARE_REDIS"; SERVER_PID=$SOCKET_PID
           target=127.0.0.1:$CAAS_PORT
           proto=(--service-secret "$SERVICE_SECRET" --tenant "$TENANT" --session "$SESSION" --subscribe "$CONVERSATION")
           pub=(--redis-url "$COMPARE_REDIS" --tenant "$TENANT" --conversation "$CONVERSATION") ;;
    sockudo*) start_sockudo
           target=127.0.0.1:$SOCKUDO_PORT
           proto=(--protocol pusher --app-key bench-key --subscribe "$CHANNEL")
           pub=(--protocol pusher --api-url "http://127.0.0.1:$SOCKUDO_PORT" --app-id bench --app-key bench-key
                --app-secret "$APP_SECRET" --conversation "$CHANNEL") ;;
  esac
  server=$SERVER_PID
  if [[ $variant == *-envoy* ]]; then
    local proxy=ws-proxy
    [[ $variant == *-envoy-* ]] && proxy=ws-proxy-${variant##*-envoy-}
    "$ENVOY" -c "$WORK/$proxy.yaml" --disable-hot-restart --concurrency "$ENVOY_WORKERS" --log-level error >/dev/null 2>&1 &
    envoy_pid=$!; PIDS+=("$envoy_pid")
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$ENVOY_PORT/" && break; sleep 0.05; done
    target=127.0.0.1:$ENVOY_PORT
  fi
  sleep 0.5
  local r0 e0=0 r1 e1=0 c0 c1 ec0=0 ec1=0
  r0=$(rss_kb "$server"); [ -n "$envoy_pid" ] && e0=$(rss_kb "$envoy_pid")
  $BENCH ws-hold --servers "$target" --connections "$SUBSCRIBERS" --sources 127.3.0.1 \
    --hold-seconds $((PUBLISH_SECONDS + 6)) "${proto[@]}" > "$out" 2>"$WORK/cell.err" &
  local holder=$!
  for _ in $(seq 600); do grep -q '"event":"open"' "$out" && break; sleep 0.1; done
  sleep 2
  r1=$(rss_kb "$server"); [ -n "$envoy_pid" ] && e1=$(rss_kb "$envoy_pid")
  c0=$(cpu_ticks "$server"); [ -n "$envoy_pid" ] && ec0=$(cpu_ticks "$envoy_pid")
  $BENCH ws-publish "${pub[@]}" --rate "$rate" --seconds "$PUBLISH_SECONDS" > "$WORK/pub" 2>>"$WORK/cell.err"
  wait "$holder" || true
  c1=$(cpu_ticks "$server"); [ -n "$envoy_pid" ] && ec1=$(cpu_ticks "$envoy_pid")
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
  if [ -n "$envoy_pid" ]; then kill "$envoy_pid" 2>/dev/null || true; wait "$envoy_pid" 2>/dev/null || true; fi
  python3 - "$variant" "$rate" "$round" "$out" "$WORK/pub" "$r0" "$r1" "$e0" "$e1" "$((c1 - c0))" "$((ec1 - ec0))" \
    "$TICK" "$SUBSCRIBERS" "$PUBLISH_SECONDS" <<'PY'
import json, sys
v, rate, rnd, out, pub, r0, r1, e0, e1, cpu, ecpu, tick, subs, secs = sys.argv[1:]
lines = [json.loads(l) for l in open(out) if l.startswith("{")]
opened = next((l for l in lines if l["event"] == "open"), {"connections": 0, "failed": -1})
held = next((l for l in lines if l["event"] == "held"), {})
published = next((json.loads(l) for l in open(pub) if l.startswith("{")), {})
n = max(opened["connections"], 1)
print(json.dumps({"variant": v, "rate": int(rate), "round": int(rnd), "connections": opened["connections"],
  "failed": opened["failed"], "publish_failed": published.get("failed", 0),
  "expected": int(rate) * int(secs) * int(subs), "delivered": held.get("delivered", 0),
  "deliveries_per_second": held.get("deliveries_per_second", 0), "p50_ms": held.get("p50_ms"), "p99_ms": held.get("p99_ms"),
  "server_bytes_per_conn": round((int(r1) - int(r0)) * 1024 / n), "envoy_bytes_per_conn": round((int(e1) - int(e0)) * 1024 / n),
  "server_cpu_s": int(cpu) / int(tick), "envoy_cpu_s": int(ecpu) / int(tick)}))
PY
}

results=$WORK/compare.jsonl; : > "$results"
for round in $(seq "$ROUNDS"); do
  for rate in $RATES; do
    for variant in $VARIANTS; do
      cell "$variant" "$rate" "$round" > "$WORK/line"
      cat "$WORK/line"; cat "$WORK/line" >> "$results"
      sleep 1
    done
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
variants = list(dict.fromkeys(r["variant"] for r in rows))
rates = sorted({r["rate"] for r in rows})
def cell(xs, key, fmt):
    vals = [x[key] for x in xs if x.get(key) is not None]
    if not vals:
        return "—"
    med = statistics.median(vals)
    return f"{fmt(med)} ({fmt(min(vals))}–{fmt(max(vals))})" if len(vals) > 1 else fmt(med)
print()
print("| offered msg/s | variant | delivered / expected | deliveries/s | p50 ms | p99 ms | server CPU s | Envoy CPU s |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for rate in rates:
    for v in variants:
        xs = [r for r in rows if r["variant"] == v and r["rate"] == rate]
        if not xs:
            continue
        got = sum(x["delivered"] for x in xs) / sum(x["expected"] for x in xs)
        print(f"| {rate} | {v} | {got:.3f} | {cell(xs, 'deliveries_per_second', lambda x: f'{x:,.0f}')} | "
              f"{cell(xs, 'p50_ms', lambda x: f'{x:.1f}')} | {cell(xs, 'p99_ms', lambda x: f'{x:.1f}')} | "
              f"{cell(xs, 'server_cpu_s', lambda x: f'{x:.2f}')} | {cell(xs, 'envoy_cpu_s', lambda x: f'{x:.2f}')} |")
print()
print("| variant | server bytes per idle subscribed connection | Envoy bytes per connection | failed connects | failed publishes |")
print("|---|---:|---:|---:|---:|")
for v in variants:
    xs = [r for r in rows if r["variant"] == v]
    print(f"| {v} | {cell(xs, 'server_bytes_per_conn', lambda x: f'{x:,.0f}')} | "
          f"{cell(xs, 'envoy_bytes_per_conn', lambda x: f'{x:,.0f}')} | "
          f"{sum(x['failed'] for x in xs)} | {sum(x['publish_failed'] for x in xs)} |")
PY
fi
