#!/usr/bin/env bash
# Ceiling benchmark; --quick for the short CI version. The server holds as many sockets as the
# open-file limit lets it, so the soft limit is raised to the hard one.
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n "$(ulimit -Hn)"
exec node --import tsx bench/ceiling/run.ts "$@"
