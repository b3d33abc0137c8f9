#!/usr/bin/env bash
# Socket service benchmarks, release builds, signed context on the
# upgrade as behind Envoy (so the socket service is measured alone):
#   1. memory per idle authenticated connection: server RSS delta / connections,
#      at 10k (one server process) and 50k (4 server processes, as this
#      machine caps open files at 20,000 per process), and accepts per second;
#   2. fan-out on one node: 1,000 subscribers of one conversation, messages
#      published on the Redis bus as chat nodes do; deliveries per second and
#      delivery latency (send time carried in the message).
#   bench/socket.sh     env: SMALL (10000), LARGE (50000), SUBSCRIBERS (1000), RATE (100)
source "$(dirname "$0")/lib.sh"
ulimit -n 20000
SMALL=${SMALL:-10000}; LARGE=${LARGE:-50000}; SUBSCRIBERS=${SUBSCRIBERS:-1000}; RATE=${RATE:-100}
cargo build --release -q -p caas-bench -p caas-socket
SERVICE_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
DB="sqlite://$WORK/caas.db"
SEED=$(./target/release/caas-bench seed --database-url "$DB" --jwt-secret "$JWT_SECRET")
field() { echo "$SEED" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
TENANT=$(field tenant); SESSION=$(field session); CONVERSATION=$(field conversation)
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_socket() { # port [extra env...]; sets SOCKET_PID
  local port=$1; shift
  env DATABASE_URL="$DB" SERVICE_SECRET="$SERVICE_SECRET" SOCKET_ADDR=127.0.0.1:$port RUST_LOG=warn "$@" \
    ./target/release/socket >/dev/null 2>&1 &
  SOCKET_PID=$!; PIDS+=("$SOCKET_PID")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
}
hold() { # servers connections sources hold_seconds [extra]
  ./target/release/caas-bench ws-hold --servers "$1" --connections "$2" --sources "$3" --hold-seconds "$4" \
    --service-secret "$SERVICE_SECRET" --tenant "$TENANT" --session "$SESSION" "${@:5}"
}

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
./target/release/caas-bench ws-publish --redis-url "$REDIS_URL" --tenant "$TENANT" --conversation "$CONVERSATION" --rate "$RATE" --seconds 10
wait $holder
cat "$WORK/fanout"
echo "on the node, event received -> frame written to the subscriber's socket:"
hist_percentiles "$before" "$(hist)"
curl -s http://127.0.0.1:19200/metrics | grep -E '^socket_(messages_delivered|closes)' || true
