#!/usr/bin/env bash
# What moves the ext_authz floor: variant (c) (Envoy + do-nothing ext_authz
# server) with one setting changed at a time, interleaved, medians; reported
# relative to the baseline (the settings envoy/envoy.yaml and ext-authz use).
#   bench/floor.sh    env: DURATION (10s), CONNECTIONS (32), ROUNDS (3)
source "$(dirname "$0")/lib.sh"
cargo build --release -q -p caas-bench

./target/release/caas-bench noop-authz --addr 127.0.0.1:9291 2>/dev/null & TUNED=$!; PIDS+=("$TUNED")
./target/release/caas-bench noop-authz --addr 127.0.0.1:9294 --tonic-defaults 2>/dev/null & PLAIN=$!; PIDS+=("$PLAIN")
./target/release/caas-bench noop-authz --addr 127.0.0.1:9295 --worker-threads 1 2>/dev/null & SINGLE=$!; PIDS+=("$SINGLE")
sleep 1

config base "$(ext_authz_filter)" 9291
config all_headers "$(ext_authz_filter '')" 9291
config raw_headers "$(ext_authz_filter "$ALLOWED_HEADERS
              encode_raw_headers: true")" 9291
config envoy_default_h2 "$(ext_authz_filter)" 9291 'http2_protocol_options: {}'
config h2_keepalive "$(ext_authz_filter)" 9291 'http2_protocol_options: { initial_stream_window_size: 1048576, initial_connection_window_size: 4194304, connection_keepalive: { interval: 30s, timeout: 10s } }'
config tonic_defaults "$(ext_authz_filter)" 9294
config one_runtime_thread "$(ext_authz_filter)" 9295

RESULTS=$WORK/floor.txt
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for v in base all_headers raw_headers envoy_default_h2 h2_keepalive tonic_defaults one_runtime_thread; do
    server=$TUNED
    case $v in tonic_defaults) server=$PLAIN ;; one_runtime_thread) server=$SINGLE ;; esac
    measure $v /bench/jwt "authorization: Bearer x.y.z" "$server" >> "$RESULTS"
  done
  measure base /bench/jwt "authorization: Bearer x.y.z" "$TUNED" 2 | sed 's/^base/envoy_2_workers/' >> "$RESULTS"
done
python3 - "$RESULTS" "$TICK" <<'PY'
import sys, statistics
by = {}
for l in open(sys.argv[1]):
    r = l.split(); by.setdefault(r[0], []).append(r)
tick = int(sys.argv[2])
med = lambda k, i: statistics.median(float(r[i]) for r in by[k])
desc = {
  "base": "baseline: allowed_headers, 1 MiB/4 MiB HTTP/2 windows, tuned tonic, 1 Envoy worker",
  "all_headers": "no allowed_headers (Envoy sends every request header)",
  "raw_headers": "encode_raw_headers: true",
  "envoy_default_h2": "Envoy's default HTTP/2 windows on the authz cluster",
  "h2_keepalive": "HTTP/2 keepalive pings on the authz cluster",
  "tonic_defaults": "tonic server defaults (no nodelay, default windows)",
  "one_runtime_thread": "do-nothing server on a 1-thread Tokio runtime",
  "envoy_2_workers": "Envoy --concurrency 2",
}
base = med("base", 1)
print("| setting | req/s | vs baseline | server CPU µs/check | Envoy CPU µs/req |")
print("|---|---:|---:|---:|---:|")
for k in desc:
    if k not in by: continue
    print(f"| {desc[k]} | {med(k,1):,.0f} | {med(k,1)/base:.2f} | {med(k,5)/tick/med(k,2)*1e6:.1f} | {med(k,6)/tick/med(k,2)*1e6:.1f} |")
PY
