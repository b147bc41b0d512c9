#!/usr/bin/env bash
# Churn benchmark; --quick for the short CI version. Needs many sockets, hence the limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec node --import tsx bench/churn/run.ts "$@"
