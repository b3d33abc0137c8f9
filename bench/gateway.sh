#!/usr/bin/env bash
# Gateway benchmark, side by side in one run, same load tool (wrk),
# same route (a direct_response, so only the filter differs), same Envoy
# settings (1 worker), variants interleaved over ROUNDS rounds, medians:
#   a   Envoy, no auth
#   b   Envoy jwt_authn (HS256, local JWKS with an oct key)
#   c   Envoy ext_authz -> do-nothing server (allows everything; bench/src/load.rs)
#   c'  the do-nothing server returning the same header mutations as (d): what
#       the context-header contract itself costs Envoy
#   d   Envoy ext_authz -> caas ext-authz, JWT route (end_user policy)
#   e   Envoy ext_authz -> caas ext-authz, API-key route (api_key policy)
#   f   the in-proxy fast path (edge-wasm/) in front of (d)'s ext_authz, JWT
#       route: the filter decides, ext_authz is skipped (warm)
#   f0  (f) with ext_authz wrapped as until 2026-12-02: created for every
#       request, then skipped (envoy.yaml now creates it only to check)
#   g   the same Envoy as (f), API-key route: the filter decides (the key's
#       hash looked up once, its tenant's IP whitelist), ext_authz is skipped (warm)
#   e'  (e) with OPTIONS requests (no Origin: not a preflight, the Check allows)
#   h   (g) with OPTIONS requests, which the filter leaves to ext_authz: the
#       miss path (what a request the filter cannot decide costs), against (e')
#   e'' (e) with a well-formed key that exists nowhere (ext-authz answers 401;
#       its failure limit is off for the bench)
#   i   (g) with that key: the filter leaves it to ext_authz, as it does the
#       first request of a new key, against (e''); ext-authz answers this
#       one from its cache (bench/first-request.sh: keys that exist, each
#       sent once, read from the database in both variants)
#   d'' (d) with an expired token (ext-authz answers 401 token_expired)
#   k   (f) with that token: the filter answers the 401 itself
#   d'  (d) with CORS preflights (OPTIONS, Origin, Access-Control-Request-Method):
#       ext-authz answers them 204
#   j   (f) with those preflights: the filter answers them itself
#   d''' Envoy ext_authz -> caas ext-authz, a refresh route's request
#       without a credential (its refresh token is in the body, for auth-api)
#   l   (f) with those requests: the filter allows them itself
# ext-authz runs with QUOTAS_ENABLED=false: one bench user would otherwise
# be held to the per-user quota (50/s), and the fast path counts only where
# ext-authz does.
# then ext-authz alone at a fixed 5,000 rps (handler latency).
#   bench/gateway.sh    env: DURATION (10s), CONNECTIONS (32), ROUNDS (3),
#                       VARIANTS (all; a subset by label, e.g. "a b d e f f0 g")
source "$(dirname "$0")/lib.sh"

cargo build --release -q -p caas-bench -p caas-ext-authz
cargo build -q -p caas-edge-wasm --target wasm32-wasip1 --profile edge
WASM=$PWD/${CARGO_TARGET_DIR:-target}/wasm32-wasip1/edge/caas_edge_wasm.wasm
[ -f "$WASM" ] || WASM=${CARGO_TARGET_DIR:-target}/wasm32-wasip1/edge/caas_edge_wasm.wasm
CALLER_TOKEN=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
SERVICE_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
DB="sqlite://$WORK/caas.db"
SEED=$(./target/release/caas-bench seed --database-url "$DB" --jwt-secret "$JWT_SECRET" --token-ttl 7200)
field() { echo "$SEED" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
TOKEN=$(field token); API_KEY=$(field api_key)
# Well-formed (its checksum is right), stored nowhere (edge-wasm/src/tests.rs).
UNKNOWN_KEY=caas_0123456789abcdefghijklmnopqrstuv2CRUDD
# TOKEN's claims, expired an hour ago, signed with the same secret and kid.
EXPIRED=$(python3 - "$TOKEN" "$JWT_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
token, secret = sys.argv[1], sys.argv[2]
header, payload, _ = token.split(".")
pad = lambda s: s + "=" * (-len(s) % 4)
claims = json.loads(base64.urlsafe_b64decode(pad(payload)))
claims["iat"], claims["exp"] = int(time.time()) - 7200, int(time.time()) - 3600
body = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
print(f"{header}.{body}." + base64.urlsafe_b64encode(signature).decode().rstrip("="))
PY
)
KID=$(python3 -c "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:16])" "$JWT_SECRET")
K=$(python3 -c "import base64,sys; print(base64.urlsafe_b64encode(sys.argv[1].encode()).decode().rstrip('='))" "$JWT_SECRET")

./target/release/caas-bench noop-authz --addr 127.0.0.1:9291 2>/dev/null & NOOP=$!; PIDS+=("$NOOP")
# (d) sets 6 headers (tenant, user, session, auth type, ts, sig: ~21 bytes
# each on average) and removes `authorization`.
./target/release/caas-bench noop-authz --addr 127.0.0.1:9293 --set-headers 6 --header-bytes 21 --remove-headers 1 2>/dev/null & SHAPED=$!; PIDS+=("$SHAPED")
DATABASE_URL=$DB JWT_SECRET=$JWT_SECRET SERVICE_SECRET=$SERVICE_SECRET EXT_AUTHZ_ADDR=127.0.0.1:9391 \
  EXT_AUTHZ_OPS_ADDR=127.0.0.1:9392 EXT_AUTHZ_CALLER_TOKEN=$CALLER_TOKEN QUOTAS_ENABLED=false FAILED_AUTH_LIMIT=0 \
  RUST_LOG=warn ./target/release/ext-authz >/dev/null 2>&1 & AUTHZ=$!; PIDS+=("$AUTHZ")
for _ in $(seq 100); do curl -sf http://127.0.0.1:9392/health >/dev/null && break; sleep 0.1; done

JWT_FILTER="          - name: envoy.filters.http.jwt_authn
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                caas:
                  issuer: caas
                  audiences: [caas-sdk]
                  local_jwks: { inline_string: '{\"keys\":[{\"kty\":\"oct\",\"alg\":\"HS256\",\"kid\":\"$KID\",\"k\":\"$K\"}]}' }
              rules: [ { match: { prefix: / }, requires: { provider_name: caas } } ]"
config a ""
config b "$JWT_FILTER"
config c "$(ext_authz_filter)" 9291
config c2 "$(ext_authz_filter)" 9293
config d "$(ext_authz_filter)" 9391
config f "$(edge_filter "$WASM" "$CALLER_TOKEN")
$(skipped_ext_authz_filter "$CALLER_TOKEN")" 9391
config f0 "$(edge_filter "$WASM" "$CALLER_TOKEN")
$(skipped_ext_authz_filter "$CALLER_TOKEN" eager)" 9391

metric() { curl -s http://127.0.0.1:9392/metrics | awk -v m="$1" '$1 ~ "^"m {s += $2} END {print s+0}'; }
cache_counters() { echo "$(metric auth_db_reads) $(metric auth_cache_hits) $(metric auth_cache_misses)"; }
run() { # label config path header server
  case " ${VARIANTS:-$1} " in *" $1 "*) ;; *) return 0 ;; esac
  local before after
  before=$(cache_counters)
  local line; line=$(measure "$2" "$3" "$4" "$5")
  after=$(cache_counters)
  echo "$1 ${line#* } $before $after"
}

RESULTS=$WORK/results.txt
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  run a a /bench/jwt "x-bench: $round" "$NOOP" >> "$RESULTS"
  run b b /bench/jwt "authorization: Bearer $TOKEN" "$NOOP" >> "$RESULTS"
  run c c /bench/jwt "x-bench: $round" "$NOOP" >> "$RESULTS"
  run c2 c2 /bench/jwt "x-bench: $round" "$SHAPED" >> "$RESULTS"
  run d d /bench/jwt "authorization: Bearer $TOKEN" "$AUTHZ" >> "$RESULTS"
  run e d /bench/key "x-api-key: $API_KEY" "$AUTHZ" >> "$RESULTS"
  run f f /bench/jwt "authorization: Bearer $TOKEN" "$AUTHZ" >> "$RESULTS"
  run f0 f0 /bench/jwt "authorization: Bearer $TOKEN" "$AUTHZ" >> "$RESULTS"
  run g f /bench/key "x-api-key: $API_KEY" "$AUTHZ" >> "$RESULTS"
  METHOD=OPTIONS run e2 d /bench/key "x-api-key: $API_KEY" "$AUTHZ" >> "$RESULTS"
  METHOD=OPTIONS run h f /bench/key "x-api-key: $API_KEY" "$AUTHZ" >> "$RESULTS"
  EXPECT=401 run e3 d /bench/key "x-api-key: $UNKNOWN_KEY" "$AUTHZ" >> "$RESULTS"
  EXPECT=401 run i f /bench/key "x-api-key: $UNKNOWN_KEY" "$AUTHZ" >> "$RESULTS"
  EXPECT=401 run d3 d /bench/jwt "authorization: Bearer $EXPIRED" "$AUTHZ" >> "$RESULTS"
  EXPECT=401 run k f /bench/jwt "authorization: Bearer $EXPIRED" "$AUTHZ" >> "$RESULTS"
  METHOD=OPTIONS EXPECT=204 EXTRA_HEADER="access-control-request-method: POST" run d2 d /bench/jwt "origin: https://app.bench.example" "$AUTHZ" >> "$RESULTS"
  METHOD=OPTIONS EXPECT=204 EXTRA_HEADER="access-control-request-method: POST" run j f /bench/jwt "origin: https://app.bench.example" "$AUTHZ" >> "$RESULTS"
  METHOD=POST run d4 d /bench/refresh "x-bench: $round" "$AUTHZ" >> "$RESULTS"
  METHOD=POST run l f /bench/refresh "x-bench: $round" "$AUTHZ" >> "$RESULTS"
done

python3 - "$RESULTS" "$TICK" "$CONNECTIONS" "$DURATION" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
tick = int(sys.argv[2])
by = {}
for r in rows:
    by.setdefault(r[0], []).append(r)
med = lambda k, i: statistics.median(float(r[i]) for r in by[k])
names = {"a": "Envoy, no auth", "b": "Envoy jwt_authn (HS256, local JWKS)", "c": "Envoy + do-nothing ext_authz",
         "c2": "Envoy + do-nothing ext_authz returning (d)'s header mutations",
         "d": "Envoy + caas ext-authz, JWT route", "e": "Envoy + caas ext-authz, API-key route",
         "f": "fast path (edge-wasm) + caas ext-authz, JWT route",
         "f0": "(f) with ext_authz created for every request, then skipped (before 2026-12-02)", "g": "fast path (edge-wasm) + caas ext-authz, API-key route",
         "e2": "(e) with OPTIONS requests", "h": "(g) with OPTIONS requests: the filter forwards (miss path)",
         "e3": "(e) with a key that exists nowhere (401)", "i": "(g) with that key: the filter forwards (miss path)",
         "d2": "(d) with CORS preflights (ext-authz answers 204)", "j": "(f) with those preflights: the filter answers them",
         "d3": "(d) with an expired token (ext-authz answers 401)", "k": "(f) with that token: the filter answers the 401",
         "d4": "Envoy + caas ext-authz, refresh route, no credential", "l": "(f) on that route: the filter allows it"}
print(f"wrk -t1 -c{sys.argv[3]} -d{sys.argv[4]}, Envoy --concurrency 1, median of {len(next(iter(by.values())))} interleaved rounds\n")
print("| variant | req/s | vs (a) | vs (c) | vs (c') | p99 | non-2xx | authz server CPU µs/check | Envoy CPU µs/req |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
cpu = lambda k: med(k, 5) / tick / med(k, 2) * 1e6
for k in [k for k in names if k in by]:
    rps = med(k, 1)
    authz = "—" if k in "ab" else f"{cpu(k):.1f}"
    label = {"c2": "c'", "e2": "e'", "e3": "e''", "d2": "d'", "d3": "d''", "d4": "d'''"}.get(k, k)
    vs = lambda base: f"{rps / med(base, 1):.2f}" if base in by else "—"
    print(f"| ({label}) {names[k]} | {rps:,.0f} | {vs('a')} | {vs('c')} | {vs('c2')} | {by[k][0][3]} | {int(med(k, 4))} | {authz} | {med(k, 6) / tick / med(k, 2) * 1e6:.1f} |")
for k in [k for k in "defg" if k in by]:
    reqs = sum(float(r[2]) for r in by[k])
    reads = sum(int(r[10]) - int(r[7]) for r in by[k])
    hits = sum(int(r[11]) - int(r[8]) for r in by[k]); misses = sum(int(r[12]) - int(r[9]) for r in by[k])
    rate = hits / (hits + misses) if hits + misses else 1.0
    print(f"\n({k}) cache hit rate {rate:.4%}; database reads {reads} over {reqs:,.0f} authorized requests ({reads / reqs * 1000:.3f} per 1,000)")
print()
for k, base, what in [("f", "d", "fast path, JWT route"), ("f0", "d", "fast path, JWT route, ext_authz created for every request (f0)"),
                      ("g", "e", "fast path, API-key route")]:
    if k in by and "a" in by and base in by:
        print(f"{what}: {med(k, 1) / med('a', 1):.2f}x of no auth, {med(k, 1) / med(base, 1):.2f}x of caas ext-authz ({base})")
for k, base, what in [("h", "e2", "fast path, miss path (h): {}x of caas ext-authz with the same requests (e')"),
                      ("i", "e3", "fast path, miss path (i), an unknown key: {}x of caas ext-authz with the same key (e'')"),
                      ("j", "d2", "fast path, CORS preflights (j): {}x of caas ext-authz answering them (d')"),
                      ("k", "d3", "fast path, an expired token refused (k): {}x of caas ext-authz refusing it (d'')"),
                      ("l", "d4", "fast path, a refresh route without a credential (l): {}x of caas ext-authz (d''')"),
                      ("f", "f0", "ext_authz created only to check (f) against created for every request (f0): {}x")]:
    if k in by and base in by:
        print(what.format(f"{med(k, 1) / med(base, 1):.2f}"))
if all(k in by for k in ("c", "c2", "d", "e")):
    ours = (cpu("d") + cpu("e")) / 2
    print(f"\next-authz CPU per check / do-nothing server's: {ours / cpu('c'):.2f} vs (c), {ours / cpu('c2'):.2f} vs (c') (d and e averaged)")
PY

# A chosen few variants: no handler-latency run.
[ -z "${VARIANTS:-}" ] || exit 0
echo
echo "ext-authz alone, Check at a fixed 5,000 rps for 10 s (open loop; client-side latency from dispatch, incl. the tonic client on the same 2 cores),"
echo "and the server's own time per Check (ext-authz's gateway_check_duration_seconds histogram, bucket bounds):"
hist() { curl -s http://127.0.0.1:9392/metrics | grep "^gateway_check_duration_seconds_bucket{.*policy=\"$1\"" ; }
for policy in end_user api_key; do
  before=$(hist $policy)
  if [ $policy = end_user ]; then cred=(--token "$TOKEN"); else cred=(--api-key "$API_KEY"); fi
  EXT_AUTHZ_CALLER_TOKEN=$CALLER_TOKEN ./target/release/caas-bench grpc-load --addr 127.0.0.1:9391 --rate 5000 --seconds 10 --policy $policy "${cred[@]}"
  after=$(hist $policy)
  hist_percentiles "$before" "$after"
done
