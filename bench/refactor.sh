#!/usr/bin/env bash
# The auth refactor's claims, measured: the old flow against the new one,
# side by side in one run, same route, same load, variants interleaved over
# ROUNDS rounds, medians. Release builds, one SQLite database, no Redis.
#
#   old  client → Envoy (the same configuration without the ext_authz
#        filter) → legacy gateway (caas-bench legacy-gateway) → chat. Every
#        request's token is validated by an HTTP call to auth-api's internal
#        endpoint (POST /api/v1/auth/internal/validate), as services used to
#        ask the auth service; then it goes to chat with a signed context.
#   new  client → Envoy (the product's envoy.yaml, rendered by `caas
#        envoy-config`) → ext_authz gRPC → caas ext-authz (cached decision,
#        signed context) → chat, which verifies one HMAC.
#
# Same route for both: GET /v1/conversations with an end user's access
# token (chat reads the user's conversations from the database in both).
# Quotas are off in ext-authz (QUOTAS_ENABLED=false): the old flow had none.
# Both flows have one Envoy (1 worker) in front; the old one has one more
# proxy hop (the legacy gateway), as a service calling the auth service had.
#
# Measured per variant: req/s, p50 and p99 (wrk), auth-api calls per client
# request, CPU per request of the auth service (auth-api + ext-authz), of
# everything on the path, and ext-authz's validation cache hit rate and
# database reads.
#   bench/refactor.sh    env: DURATION (10s), CONNECTIONS (32), ROUNDS (3)
source "$(dirname "$0")/lib.sh"

cargo build --release -q -p caas-bench -p caas-auth-api -p caas-ext-authz -p caas-chat -p caas
BIN=${CARGO_TARGET_DIR:-target}/release
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
SERVICE_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
DB="sqlite://$WORK/caas.db"
SEED=$($BIN/caas-bench seed --database-url "$DB" --jwt-secret "$JWT_SECRET" --token-ttl 7200)
TOKEN=$(echo "$SEED" | python3 -c "import json,sys; print(json.load(sys.stdin)['token'])")
export DATABASE_URL=$DB JWT_SECRET SERVICE_SECRET RUST_LOG=warn

AUTH_API_ADDR=127.0.0.1:18307 $BIN/auth-api >/dev/null 2>&1 & AUTH=$!; PIDS+=("$AUTH")
EXT_AUTHZ_ADDR=127.0.0.1:18391 EXT_AUTHZ_OPS_ADDR=127.0.0.1:18392 QUOTAS_ENABLED=false EXT_AUTHZ_LOG_ALLOWED=false \
  $BIN/ext-authz >/dev/null 2>&1 & AUTHZ=$!; PIDS+=("$AUTHZ")
CHAT_ADDR=127.0.0.1:18308 $BIN/chat >/dev/null 2>&1 & CHAT=$!; PIDS+=("$CHAT")
$BIN/caas-bench legacy-gateway --addr 127.0.0.1:18100 --auth-api http://127.0.0.1:18307 \
  --upstream http://127.0.0.1:18308 --service-secret "$SERVICE_SECRET" 2>/dev/null & LEGACY=$!; PIDS+=("$LEGACY")
for url in http://127.0.0.1:18307/health http://127.0.0.1:18392/health http://127.0.0.1:18308/health; do
  for _ in $(seq 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
done
$BIN/caas envoy-config --listen-address 127.0.0.1 --listen-port 18080 --admin-port 0 \
  --auth-api 127.0.0.1:18307 --ext-authz 127.0.0.1:18391 --chat 127.0.0.1:18308 --socket 127.0.0.1:18309 \
  --access-log-path /dev/null --output "$WORK/envoy.yaml"
# The old flow's gateway: the same configuration on port 18081 without the
# ext_authz filter, its chat routes sent to the legacy gateway.
python3 - "$WORK/envoy.yaml" "$WORK/old.yaml" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
listener = config["static_resources"]["listeners"][0]
listener["address"]["socket_address"]["port_value"] = 18081
for chain in listener["filter_chains"]:
    for f in chain["filters"]:
        manager = f["typed_config"]
        manager["http_filters"] = [h for h in manager.get("http_filters", []) if h["name"] != "envoy.filters.http.ext_authz"]
for cluster in config["static_resources"]["clusters"]:
    if cluster["name"] == "chat":
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = 18100
yaml.safe_dump(config, open(sys.argv[2], "w"))
PY
"$ENVOY" -c "$WORK/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level error --base-id 1801 >/dev/null 2>&1 & ENVOY_PID=$!; PIDS+=("$ENVOY_PID")
"$ENVOY" -c "$WORK/old.yaml" --disable-hot-restart --concurrency 1 --log-level error --base-id 1802 >/dev/null 2>&1 & ENVOY_OLD=$!; PIDS+=("$ENVOY_OLD")
for port in 18080 18081; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done
done

scrape() { curl -s "$1/metrics" | awk -v m="$2" '$1 ~ "^"m {s += $2} END {print s+0}'; }
for url in http://127.0.0.1:18080 http://127.0.0.1:18081; do
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" "$url/v1/conversations")
  [ "$status" = 200 ] || { echo "$url/v1/conversations answered $status, not 200" >&2; exit 1; }
done

# run NAME URL: one wrk run; prints NAME rps requests p50 p99 non2xx, then
# CPU ticks of auth-api ext-authz chat envoy legacy, auth-api validations,
# ext-authz cache hits, misses and database reads (deltas).
counters() {
  echo "$(cpu_ticks $AUTH) $(cpu_ticks $AUTHZ) $(cpu_ticks $CHAT) $(( $(cpu_ticks $ENVOY_PID) + $(cpu_ticks $ENVOY_OLD) )) $(cpu_ticks $LEGACY)" \
    "$(scrape http://127.0.0.1:18307 auth_token_validations_total)" \
    "$(scrape http://127.0.0.1:18392 auth_cache_hits_total) $(scrape http://127.0.0.1:18392 auth_cache_misses_total)" \
    "$(scrape http://127.0.0.1:18392 auth_db_reads_total)"
}
run() {
  wrk -t1 -c"$CONNECTIONS" -d2s -H "authorization: Bearer $TOKEN" "$2/v1/conversations" >/dev/null
  local before after out
  before=$(counters)
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "authorization: Bearer $TOKEN" "$2/v1/conversations")
  after=$(counters)
  echo "$1 $(echo "$out" | awk '/Requests\/sec/ {r=$2} /requests in/ {n=$1} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} /Non-2xx/ {e=$NF} END {print r, n, p50, p99, e+0}') $before $after"
}

RESULTS=$WORK/results.txt
: > "$RESULTS"
for _ in $(seq "$ROUNDS"); do
  run old http://127.0.0.1:18081 >> "$RESULTS"
  run new http://127.0.0.1:18080 >> "$RESULTS"
done

python3 - "$RESULTS" "$TICK" "$CONNECTIONS" "$DURATION" <<'PY'
import sys, statistics, re
tick = int(sys.argv[2])
def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    name, rps, n, p50, p99, non2xx = f[0], float(f[1]), float(f[2]), ms(f[3]), ms(f[4]), int(f[5])
    b, a = [float(x) for x in f[6:15]], [float(x) for x in f[15:24]]
    d = [y - x for x, y in zip(b, a)]
    us = lambda ticks: ticks / tick / n * 1e6
    hits, misses = d[6], d[7]
    rows.setdefault(name, []).append(dict(
        rps=rps, p50=p50, p99=p99, non2xx=non2xx,
        auth_calls=d[5] / n, auth_cpu=us(d[0] + d[1]), total_cpu=us(sum(d[0:5])),
        hit=hits / (hits + misses) if hits + misses else None, reads=d[8] / n * 1000))
med = lambda k, f: statistics.median(r[f] for r in rows[k])
print(f"wrk -t1 -c{sys.argv[3]} -d{sys.argv[4]}, GET /v1/conversations with an end user's token, median of {len(rows['old'])} interleaved rounds\n")
print("| flow | req/s | p50 | p99 | non-2xx | auth-api calls / request | auth service CPU µs/request (auth-api + ext-authz) | CPU µs/request, whole path | ext-authz cache hit rate | database reads / 1,000 requests (ext-authz) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
names = {"old": "old: Envoy → service asks auth-api over HTTP on every request", "new": "new: Envoy → ext-authz once (cached), context HMAC downstream"}
for k in ["old", "new"]:
    hit = [r["hit"] for r in rows[k] if r["hit"] is not None]
    hit = f"{statistics.median(hit):.2%}" if hit else "—"
    reads = f"{med(k, 'reads'):.3f}" if k == "new" else "—"
    print(f"| {names[k]} | {med(k,'rps'):,.0f} | {med(k,'p50'):.2f} ms | {med(k,'p99'):.2f} ms | {int(med(k,'non2xx'))} | {med(k,'auth_calls'):.2f} | {med(k,'auth_cpu'):.1f} | {med(k,'total_cpu'):.1f} | {hit} | {reads} |")
o, n = rows["old"], rows["new"]
print()
print(f"p50 latency: {med('old','p50') - med('new','p50'):+.2f} ms (old − new); p99: {med('old','p99') - med('new','p99'):+.2f} ms")
change = med('new','auth_cpu') / med('old','auth_cpu') - 1
print(f"auth service CPU per request: {abs(change):.0%} {'more' if change > 0 else 'less'} in the new flow; auth-api calls per request {med('old','auth_calls'):.2f} → {med('new','auth_calls'):.2f}")
PY
