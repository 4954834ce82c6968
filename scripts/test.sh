#!/usr/bin/env bash
# The whole test suite, on a fresh machine: makes sure a `redis-server` binary exists (the tests
# start their own throwaway servers on free ports unless REDIS_URL is set), then runs every test
# of the workspace against it, then scripts/deploy-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing it (Debian/Ubuntu package redis-server)" >&2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "please install redis-server (or set REDIS_URL to a Redis you own)" >&2
    exit 2
  fi
fi

status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi

# The deploy checks (Helm chart, compose file, dashboard; see README "Deploy"), on a full run
# only; they use the binary the tests just built. SKIP_DEPLOY_CHECK=1 leaves them out.
if [ $# -eq 0 ] && [ "${SKIP_DEPLOY_CHECK:-0}" != 1 ]; then
  ./scripts/deploy-check.sh || status=1
fi
exit $status
