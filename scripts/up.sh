#!/usr/bin/env bash
# Runs the whole stack: builds `caas`, installs Envoy if missing, then
# `caas up` (auth-api, ext-authz and Envoy on the embedded default: SQLite
# under ./data and an in-process bus). Extra arguments go to `caas up`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/ensure-envoy.sh
source scripts/ensure-envoy.sh
cargo build --release -p caas
exec ./target/release/caas up "$@"
