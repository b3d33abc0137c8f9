#!/usr/bin/env bash
# auth-api benchmarks: in-process costs of the hot rules, and SDK
# sessions created per second through the HTTP API on PostgreSQL.
#   bench/auth.sh            (PostgreSQL on 127.0.0.1:5432, database `test`)
set -euo pipefail
cd "$(dirname "$0")/.."
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/test}
DB=caas_bench_$$
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
SERVICE_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
PORT=${PORT:-3907}

cargo build --release -q -p caas-bench -p caas-auth-api
echo "## In-process (release build, warm caches)"
./target/release/caas-bench micro

psql -q "$PG_ADMIN" -c "CREATE DATABASE $DB" >/dev/null
URL="postgres://postgres@127.0.0.1:5432/$DB"
cleanup() {
  [ -n "${API_PID:-}" ] && kill "$API_PID" 2>/dev/null && wait "$API_PID" 2>/dev/null || true
  psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
SEED=$(./target/release/caas-bench seed --database-url "$URL" --jwt-secret "$JWT_SECRET")
TENANT=$(echo "$SEED" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant"])')
KEY_ID=$(echo "$SEED" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key_id"])')

DATABASE_URL=$URL JWT_SECRET=$JWT_SECRET SERVICE_SECRET=$SERVICE_SECRET AUTH_API_ADDR=127.0.0.1:$PORT \
  DATABASE_MAX_CONNECTIONS=${DB_CONNECTIONS:-32} RUST_LOG=warn ./target/release/auth-api >/dev/null 2>&1 &
API_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done

echo
echo "## SDK sessions through the HTTP API on PostgreSQL (auth-api release, DATABASE_MAX_CONNECTIONS=${DB_CONNECTIONS:-32})"
for c in ${CONCURRENCY:-16 64}; do
  ./target/release/caas-bench sessions --url "http://127.0.0.1:$PORT" --service-secret "$SERVICE_SECRET" \
    --tenant "$TENANT" --key-id "$KEY_ID" --concurrency "$c" --seconds "${SECONDS_PER_RUN:-10}"
done
