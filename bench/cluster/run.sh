#!/usr/bin/env bash
# Cross-node fan-out benchmark; --quick for the short CI version. Needs redis-server on PATH
# (Debian package redis-server) and many sockets, hence the limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec node --import tsx bench/cluster/run.ts "$@"
