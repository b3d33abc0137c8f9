#!/usr/bin/env bash
# What Envoy charges for running a filter module at all, before the module
# does anything: the floor under the in-proxy fast path. Same harness as
# bench/gateway.sh (one Envoy worker, wrk -t1, a direct_response route),
# variants interleaved, medians:
#   a    Envoy, no filter
#   w    a proxy-wasm filter (V8) that does nothing (bench/floor-modules/noop-wasm)
#   dm   an Envoy dynamic module (native) whose filter does nothing
#        (bench/floor-modules/noop-module.c)
#   z    ext_authz in the chain, turned off for every request
#        (filter_enabled 0%: it is created for each request and skips it, as
#        the fast path's matcher has it skip an allowed one)
#   wz   w, then z: the fast path's floor (edge-wasm is a proxy-wasm filter)
#   dmz  dm, then z: the same floor with a native module
#   zm   ext_authz wrapped in a matcher whose SkipFilter matches every
#        request (what envoy/envoy.yaml had until 2026-12-02: ext_authz is
#        still created for each request, then skipped)
#   zc   ext_authz as envoy/envoy.yaml has it now: the action of the
#        composite filter when the matcher does not skip; skipped for every
#        request here, so ext_authz is never created
#   wzc  w, then zc: the fast path's floor since
#   bench/module-floor.sh    env: DURATION (10s), CONNECTIONS (32), ROUNDS (3),
#                            VARIANTS (all of the above)
# With CALLGRIND=1, instead: each variant's Envoy under valgrind's callgrind,
# which counts instructions, not seconds (the same count however busy the
# machine is), for WARM (1000) then WARM + COUNT (2000) keep-alive requests
# over one connection; prints instructions per request (the difference over
# COUNT). V8 compiles and collects garbage on threads of its own, by time as
# much as by request: its variants' counts move between runs.
source "$(dirname "$0")/lib.sh"

NOOP_TARGET=${CARGO_TARGET_DIR:-$PWD/target}/floor-modules
cargo build -q --locked --release --target wasm32-wasip1 --manifest-path bench/floor-modules/noop-wasm/Cargo.toml \
  --target-dir "$NOOP_TARGET"
NOOP_WASM=$NOOP_TARGET/wasm32-wasip1/release/caas_noop_wasm.wasm
mkdir -p "$WORK/modules"
cc -O2 -shared -fPIC -o "$WORK/modules/libcaas_noop.so" bench/floor-modules/noop-module.c
# Envoy finds a dynamic module named `caas_noop` as libcaas_noop.so here.
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$WORK/modules

# No server is called: measure's "server" column is a process that idles.
sleep 86400 & IDLE=$!; PIDS+=("$IDLE")

WASM_FILTER="          - name: noop.wasm
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                vm_config: { vm_id: noop, runtime: envoy.wasm.runtime.v8, code: { local: { filename: \"$NOOP_WASM\" } } }"
MODULE_FILTER="          - name: noop.module
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: caas_noop }
              filter_name: noop"
OFF_AUTHZ="          - name: envoy.filters.http.ext_authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: { envoy_grpc: { cluster_name: authz }, timeout: 1s }
              failure_mode_allow: false
              filter_enabled: { default_value: { numerator: 0, denominator: HUNDRED } }"
# The two ways of skipping ext_authz, on a predicate every request meets
# (no module here writes the fast path's filter state).
EVERY_REQUEST='predicate: { single_predicate: { input: { name: path, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: ":path" } }, value_match: { prefix: "/" } } }'
SKIP='on_match: { action: { name: skip, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter } } }'
AUTHZ_CONFIG='{ "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, transport_api_version: V3, grpc_service: { envoy_grpc: { cluster_name: authz }, timeout: 1s }, failure_mode_allow: false }'
MATCHED_AUTHZ="          - name: envoy.filters.http.ext_authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
              xds_matcher: { matcher_list: { matchers: [ { $EVERY_REQUEST, $SKIP } ] } }
              extension_config: { name: envoy.filters.http.ext_authz, typed_config: $AUTHZ_CONFIG }"
LAZY_AUTHZ="          - name: envoy.filters.http.ext_authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
              xds_matcher:
                matcher_list: { matchers: [ { $EVERY_REQUEST, $SKIP } ] }
                on_no_match: { action: { name: check, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction, typed_config: { name: envoy.filters.http.ext_authz, typed_config: $AUTHZ_CONFIG } } } }
              extension_config: { name: composite, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite } }"
config a ""
config w "$WASM_FILTER"
config dm "$MODULE_FILTER"
config z "$OFF_AUTHZ"
config wz "$WASM_FILTER
$OFF_AUTHZ"
config dmz "$MODULE_FILTER
$OFF_AUTHZ"
config zm "$MATCHED_AUTHZ"
config zc "$LAZY_AUTHZ"
config wzc "$WASM_FILTER
$LAZY_AUTHZ"

if [ "${CALLGRIND:-}" = 1 ]; then
  command -v valgrind >/dev/null || { echo "CALLGRIND=1 needs valgrind (apt-get install valgrind)" >&2; exit 1; }
  WARM=${WARM:-1000}; COUNT=${COUNT:-2000}
  # valgrind runs the binary itself: pip's `envoy` is a Python launcher.
  ELF=$(command -v "$ENVOY")
  if [ "$(head -c 4 "$ELF" | tail -c 3)" != ELF ]; then
    ELF=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
  fi
  # instructions VARIANT N: Envoy's whole run under callgrind with N requests.
  instructions() {
    local out=$WORK/callgrind-$1-$2.out
    valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$out" \
      "$ELF" -c "$WORK/$1.yaml" --disable-hot-restart --concurrency 1 --log-level error >/dev/null 2>&1 &
    local envoy=$! up=
    for _ in $(seq 600); do
      kill -0 $envoy 2>/dev/null || break
      curl -sf -o /dev/null http://127.0.0.1:18000/bench/jwt && { up=1; break; }
      sleep 0.5
    done
    [ -n "$up" ] || { echo "Envoy did not start under callgrind for $1 (is port 18000 free?)" >&2; exit 1; }
    curl -sf -o /dev/null "http://127.0.0.1:18000/bench/jwt?n=[1-$2]"
    # SIGTERM: a background job of a script ignores SIGINT.
    kill -TERM $envoy; wait $envoy 2>/dev/null || true
    local count; count=$(awk '/^summary:/ {print $2}' "$out")
    [ -n "$count" ] || { echo "callgrind counted nothing for $1" >&2; exit 1; }
    echo "$count"
  }
  echo "| variant | instructions per request | over (a) |"
  echo "|---|---:|---:|"
  base=
  for v in ${VARIANTS:-a w dm z wz dmz zm zc wzc}; do
    long=$(instructions "$v" $(( WARM + COUNT ))) || exit 1
    short=$(instructions "$v" "$WARM") || exit 1
    per=$(( (long - short) / COUNT ))
    base=${base:-$per}
    echo "| ($v) | $per | $(( per - base )) |"
  done
  exit 0
fi

RESULTS=$WORK/results.txt
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for v in ${VARIANTS:-a w dm z wz dmz zm zc wzc}; do
    measure "$v" /bench/jwt "x-bench: $round" "$IDLE" >> "$RESULTS"
  done
done

python3 - "$RESULTS" "$TICK" "$CONNECTIONS" "$DURATION" <<'PY'
import sys
sys.path.insert(0, "bench")
from results import by_variant, median, per_request_us
by, tick = by_variant(sys.argv[1]), int(sys.argv[2])
rps = lambda k: median(by[k], 1)
cpu = lambda k: per_request_us(by[k], 6, tick)
names = {"a": "Envoy, no filter", "w": "a proxy-wasm filter that does nothing (V8)",
         "dm": "a dynamic module that does nothing (native)", "z": "ext_authz in the chain, off",
         "wz": "(w) then (z): the floor under the fast path", "dmz": "(dm) then (z): that floor with a native module",
         "zm": "ext_authz created, then skipped by its matcher", "zc": "ext_authz in the composite filter, skipped: never created",
         "wzc": "(w) then (zc): the floor under the fast path since 2026-12-02"}
print(f"wrk -t1 -c{sys.argv[3]} -d{sys.argv[4]}, Envoy --concurrency 1, median of {len(by['a'])} interleaved rounds\n")
print("| variant | req/s | vs (a) | Envoy CPU µs/req | over (a) |")
print("|---|---:|---:|---:|---:|")
for k in [k for k in names if k in by]:
    print(f"| ({k}) {names[k]} | {rps(k):,.0f} | {rps(k) / rps('a'):.2f} | {cpu(k):.1f} | {cpu(k) - cpu('a'):+.1f} |")
PY
