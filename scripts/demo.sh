#!/usr/bin/env bash
# Quick start, step 1: install everything (scripts/setup.sh), then run the main job on real data:
# start stratopt on the embedded PostgreSQL + TimescaleDB, ingest the bundled S&P 500 prices, optimize real
# portfolios over gRPC, print them, query latest/history/analytics from the query side, stop everything.
# Usage: bash scripts/demo.sh [stratopt demo options...]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh </dev/null

# shellcheck source=scripts/uv_env.sh
source scripts/uv_env.sh
exec uv run --frozen stratopt demo "$@"
