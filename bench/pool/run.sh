#!/usr/bin/env bash
# Pool benchmark; --quick for the short CI version.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec node --import tsx bench/pool/run.ts "$@"
