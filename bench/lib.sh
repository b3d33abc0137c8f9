# Shared plumbing of the gateway benchmarks (sourced by gateway.sh, floor.sh).
# Each variant is one Envoy config differing only where the variant says.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure-envoy.sh
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "wrk not found: installing it (apt-get install wrk)…" >&2
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null; }
  fi
  command -v wrk >/dev/null 2>&1 || { echo "error: the gateway benchmarks need wrk (apt-get install wrk)" >&2; exit 1; }
fi
ENVOY=${ENVOY_BIN:-envoy}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d /tmp/caas-bench.XXXXXX)
TICK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

DEFAULT_H2='http2_protocol_options: { initial_stream_window_size: 1048576, initial_connection_window_size: 4194304 }'
# The headers envoy/envoy.yaml lets travel to ext-authz.
ALLOWED_PATTERNS='[ { exact: authorization }, { exact: x-api-key }, { exact: origin }, { exact: x-forwarded-for }, { exact: x-request-id }, { exact: traceparent }, { exact: tracestate }, { exact: upgrade }, { exact: sec-websocket-protocol }, { exact: access-control-request-method }, { exact: access-control-request-headers }, { prefix: x-caas- } ]'
ALLOWED_HEADERS="allowed_headers: { patterns: $ALLOWED_PATTERNS }"

# ext_authz filter YAML; $1 = extra filter options (indented 14), default the
# product's allowed_headers.
ext_authz_filter() {
  cat <<YAML
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: { envoy_grpc: { cluster_name: authz }, timeout: 1s, initial_metadata: [ { key: x-caas-authz-token, value: "${CALLER_TOKEN:-}" } ] }
              failure_mode_allow: false
              status_on_error: { code: ServiceUnavailable }
              ${1-$ALLOWED_HEADERS}
YAML
}

# The fast path's filter ($1 the module, $2 the caller token): its feed is
# ext-authz's ops listener (cluster `authz_ops`, 127.0.0.1:9392).
edge_filter() {
  cat <<YAML
          - name: caas.edge
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: caas_edge
                root_id: caas_edge
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"cluster":"authz_ops","token":"$2"}'
                vm_config: { vm_id: caas_edge, runtime: envoy.wasm.runtime.v8, code: { local: { filename: "$1" } } }
                failure_policy: FAIL_OPEN
YAML
}

# ext_authz as envoy/envoy.yaml has it ($1 the caller token): skipped for
# the fast path's mark only, otherwise the composite filter's action (created
# only for a request it checks). With $2 = eager, as envoy.yaml had it until
# 2026-12-02: created for every request, then skipped on the mark.
skipped_ext_authz_filter() {
  local authz='{ "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, transport_api_version: V3, grpc_service: { envoy_grpc: { cluster_name: authz }, timeout: 1s, initial_metadata: [ { key: x-caas-authz-token, value: "'"$1"'" } ] }, failure_mode_allow: false, status_on_error: { code: ServiceUnavailable }, allowed_headers: { patterns: '"$ALLOWED_PATTERNS"' } }'
  local check='on_no_match: { action: { name: check, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction, typed_config: { name: envoy.filters.http.ext_authz, typed_config: '"$authz"' } } } }'
  local extension='extension_config: { name: composite, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite } }'
  if [ "${2:-}" = eager ]; then
    check=
    extension="extension_config: { name: envoy.filters.http.ext_authz, typed_config: $authz }"
  fi
  cat <<YAML
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
              xds_matcher:
                matcher_list:
                  matchers:
                  - predicate: { single_predicate: { input: { name: caas_edge, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.FilterStateInput, key: wasm.caas_edge } }, value_match: { exact: allow } } }
                    on_match: { action: { name: skip, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter } } }
                $check
              $extension
YAML
}

# route PATH POLICY: a direct_response route declaring its CAAS policy to
# both the fast path (route metadata) and ext_authz, as envoy/envoy.yaml does.
route() {
  cat <<YAML
              - match: { path: $1 }
                metadata: { filter_metadata: { caas: { policy: $2 } } }
                direct_response: { status: 200, body: { inline_string: ok } }
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: { context_extensions: { policy: $2 } }
YAML
}

# config NAME FILTER [AUTHZ_PORT] [HTTP2_OPTIONS]: writes $WORK/NAME.yaml, a
# listener on 127.0.0.1:18000 with three direct_response routes (JWT,
# API-key and refresh policy) behind FILTER.
config() {
  local name=$1 filter=$2 port=${3:-9291} h2=${4:-$DEFAULT_H2}
  cat > "$WORK/$name.yaml" <<YAML
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }
static_resources:
  listeners:
  - name: public
    address: { socket_address: { address: 127.0.0.1, port_value: 18000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          use_remote_address: true
          generate_request_id: true
          http_filters:
$filter
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
$(route /bench/jwt end_user)
$(route /bench/key api_key)
$(route /bench/refresh refresh)
  clusters:
  - name: authz
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          $h2
    load_assignment:
      cluster_name: authz
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $port } } } } ] } ]
  - name: authz_ops
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: authz_ops
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9392 } } } } ] } ]
YAML
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure NAME PATH HEADER SERVER_PID [ENVOY_WORKERS]: one wrk run against
# $WORK/NAME.yaml; prints "NAME rps requests p99 non2xx server_ticks envoy_ticks".
# METHOD (default GET) is the requests' method; EXTRA_HEADER, if set, a second header.
# WRK_SCRIPT, if set, is the measured run's wrk script (it makes the requests;
# the probe and the warm-up send HEADER).
measure() {
  local name=$1 path=$2 header=$3 server=$4 workers=${5:-1} method=${METHOD:-GET}
  local script=() extra=()
  [ -z "${EXTRA_HEADER:-}" ] || extra=(-H "$EXTRA_HEADER")
  if [ "$method" != GET ]; then
    echo "wrk.method = \"$method\"" > "$WORK/method-$method.lua"
    script=(-s "$WORK/method-$method.lua")
  fi
  local measured=("${script[@]}")
  if [ -n "${WRK_SCRIPT:-}" ]; then
    [ "$method" = GET ] || { echo "measure: WRK_SCRIPT makes GET requests only" >&2; exit 1; }
    measured=(-s "$WRK_SCRIPT")
  fi
  "$ENVOY" -c "$WORK/$name.yaml" --disable-hot-restart --concurrency "$workers" --log-level error >/dev/null 2>&1 & local envoy=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18000/" && break; sleep 0.05; done
  local status; status=$(curl -s -o /dev/null -w '%{http_code}' -X "$method" -H "$header" "${extra[@]}" "http://127.0.0.1:18000$path")
  [ "$status" = "${EXPECT:-200}" ] || { echo "variant $name answered $status, not ${EXPECT:-200}" >&2; kill $envoy; exit 1; }
  wrk -t1 -c"$CONNECTIONS" -d2s "${script[@]}" -H "$header" "${extra[@]}" "http://127.0.0.1:18000$path" >/dev/null
  local s0 e0 s1 e1 out
  s0=$(cpu_ticks "$server"); e0=$(cpu_ticks $envoy)
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "${measured[@]}" -H "$header" "${extra[@]}" "http://127.0.0.1:18000$path")
  s1=$(cpu_ticks "$server"); e1=$(cpu_ticks $envoy)
  kill $envoy; wait $envoy 2>/dev/null || true
  local rps reqs p99 non2xx
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  echo "$name $rps $reqs $p99 ${non2xx:-0} $(( s1 - s0 )) $(( e1 - e0 ))"
}

# hist_percentiles BEFORE AFTER: p50/p99/p99.9 upper bounds of a Prometheus
# histogram between two scrapes of its _bucket lines.
hist_percentiles() {
  python3 - "$1" "$2" <<'PY'
import re, sys
def parse(text):
    return {float(m.group(1)) if m.group(1) != "+Inf" else float("inf"): int(float(m.group(2)))
            for m in re.finditer(r'le="([^"]+)"[^}]*} (\S+)', text)}
b, a = parse(sys.argv[1]), parse(sys.argv[2])
delta = {le: a[le] - b.get(le, 0) for le in a}
total = delta.get(float("inf"), 0)
if total:
    for q in (0.5, 0.99, 0.999):
        le = min(le for le, n in delta.items() if n >= q * total)
        print(f"  server-side p{q*100:g} ≤ {le*1e6:,.0f} µs", end="")
print(f"  ({total} observations)")
PY
}
