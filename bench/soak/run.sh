#!/usr/bin/env bash
# Soak; --quick for the short CI version. Thousands of sockets come and go, hence the limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec node --import tsx bench/soak/run.ts "$@"
