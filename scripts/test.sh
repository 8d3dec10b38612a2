#!/usr/bin/env bash
# The project's one test command: set up the machine, lint, then run the test suite.
# Usage: bash scripts/test.sh [pytest arguments...]   e.g. bash scripts/test.sh -k optimize -x
# Non-interactive (works with CI=true and no standard input).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh </dev/null

# shellcheck source=scripts/uv_env.sh
source scripts/uv_env.sh

bash scripts/lint.sh </dev/null

echo "test: uv run --frozen pytest $*"
rc=0
uv run --frozen pytest "$@" </dev/null || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: FAILED: pytest collected no tests (exit code 5); this project always has tests" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || echo "test: FAILED: pytest exited with code $rc" >&2
exit "$rc"
