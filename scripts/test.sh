#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite.
#
# Needs Debian's prometheus and promtool for the tests that scrape with a
# real Prometheus; as root this script installs them with apt-get. As root
# it also runs the suite in a network namespace with only a loopback
# interface, so no test can reach another host. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq prometheus >/dev/null
  else
    echo "prometheus and promtool are missing: run 'sudo apt-get install prometheus'" >&2
    exit 1
  fi
fi
bash scripts/setup.sh

echo "static checks: ruff and mypy"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy

export RAY_USAGE_STATS_ENABLED=0
pytest=(.venv/bin/python -m pytest "$@")
if [ "$(id -u)" -eq 0 ] && unshare --net true 2>/dev/null; then
  echo "running the tests in a loopback-only network namespace"
  exec unshare --net bash -c 'ip link set lo up && exec "$@"' bash "${pytest[@]}"
fi
exec "${pytest[@]}"
