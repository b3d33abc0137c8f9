#!/usr/bin/env bash
# Runs everything CI runs: formatting, lints, and every test — unit, handler,
# store conformance on SQLite and PostgreSQL, cache/bus on Redis, and the
# end-to-end tests through real Envoy. PostgreSQL (127.0.0.1:5432, database
# `test`) and Redis (127.0.0.1:6379) must be running; with CI=true a missing
# one fails the run instead of skipping its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/ensure-envoy.sh
source scripts/ensure-envoy.sh

reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
missing=()
reachable 127.0.0.1 5432 || missing+=("PostgreSQL on 127.0.0.1:5432")
reachable 127.0.0.1 6379 || missing+=("Redis on 127.0.0.1:6379")
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do echo "warning: $m is not reachable" >&2; done
  echo "  start PostgreSQL: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
  echo "  start Redis:      redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no" >&2
  if [ "${CI:-}" = "true" ]; then
    echo "error: CI=true and a service the tests need is missing; refusing to skip its tests" >&2
    exit 1
  fi
  echo "(not CI: the tests that need them will be skipped)" >&2
fi

# The troubleshooting guide's commands (run by tests/e2e/docs.rs) use these.
for tool in curl jq openssl; do
  command -v "$tool" >/dev/null 2>&1 && continue
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$tool not found: installing it (apt-get install $tool)…" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null 2>&1; } || true
  fi
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "warning: $tool is not installed; the troubleshooting guide's test needs it" >&2
    if [ "${CI:-}" = "true" ]; then
      echo "error: CI=true and $tool is missing; refusing to skip that test" >&2
      exit 1
    fi
  fi
done

# Tools nobody here wrote, checking what we ship: openapi-spec-validator and
# schemathesis (tests/e2e/openapi.rs) and kubernetes-validate
# (cli/src/tests/deploy.rs) from pip; promtool (Debian's prometheus package)
# for the alert rules in deploy/monitoring/.
for tool in openapi-spec-validator schemathesis kubernetes-validate; do
  command -v "$tool" >/dev/null 2>&1 && continue
  echo "$tool not found: installing it (pip install $tool)…" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$tool" >&2 || true
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "warning: $tool is not installed; the tests that need it will be skipped" >&2
    if [ "${CI:-}" = "true" ]; then
      echo "error: CI=true and $tool is missing; refusing to skip its tests" >&2
      exit 1
    fi
  fi
done
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "promtool not found: installing it (apt-get install prometheus)…" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null 2>&1; } || true
fi
if command -v promtool >/dev/null 2>&1; then
  promtool check rules deploy/monitoring/alerts.yml
  (cd deploy/monitoring && promtool check config prometheus.yml && promtool test rules alerts.test.yml)
else
  echo "warning: promtool is not installed; the alert rules are not checked" >&2
  if [ "${CI:-}" = "true" ]; then
    echo "error: CI=true and promtool is missing; refusing to skip the alert rules' tests" >&2
    exit 1
  fi
fi

# The console's browser tests (tests/e2e/console.rs) drive Debian's Chromium
# through chromedriver.
if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium/chromedriver not found: installing them (apt-get install chromium chromium-driver)…" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } || true
  fi
  if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
    echo "warning: chromium and chromedriver are not installed; the console's browser test needs them" >&2
    if [ "${CI:-}" = "true" ]; then
      echo "error: CI=true and chromium/chromedriver are missing; refusing to skip that test" >&2
      exit 1
    fi
  fi
fi

# The TLS tests (core/src/tests/tls.rs) start a PostgreSQL and a Redis of
# their own with ssl on, as the `postgres` user when run as root.
tls_ready() {
  { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; } \
    && command -v redis-server >/dev/null 2>&1 \
    && { [ "$(id -u)" != 0 ] || { id postgres >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; }; }
}
if ! tls_ready && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL/Redis server binaries for the TLS tests not found: installing them (apt-get install postgresql redis-server)…" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null 2>&1; } || true
fi
if ! tls_ready; then
  echo "warning: the TLS tests need initdb/pg_ctl (PostgreSQL server), redis-server and, as root, a postgres user and runuser" >&2
  if [ "${CI:-}" = "true" ]; then
    echo "error: CI=true and the TLS tests' servers are missing; refusing to skip them" >&2
    exit 1
  fi
fi

# The rules crate must stay pure enough to run inside Envoy (proxy-wasm).
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "installing the wasm32-wasip1 target (rustup target add wasm32-wasip1)…" >&2
  rustup target add wasm32-wasip1 >&2
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build -p caas-rules --target wasm32-wasip1 --locked
# The in-proxy fast path's module (edge-wasm/): linted as the wasm it is, and
# built where `caas up` and the end-to-end tests find it
# (target/wasm32-wasip1/edge/caas_edge_wasm.wasm). Every e2e flow runs
# through it (as `caas up` runs by default), then once more through
# ext_authz alone (CAAS_E2E_FAST_PATH=false, below); tests/e2e/fast_path.rs
# compares the two paths request by request.
cargo clippy -p caas-edge-wasm --target wasm32-wasip1 --locked -- -D warnings
cargo build -p caas-edge-wasm --target wasm32-wasip1 --profile edge --locked
# The end-to-end tests also run the `caas` binary itself.
cargo build -p caas --locked
cargo test --workspace --locked
# Every attack and flow again, each request decided by ext_authz alone.
CAAS_E2E_FAST_PATH=false cargo test -p caas-e2e --test e2e --locked
