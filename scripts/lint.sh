#!/usr/bin/env bash
# Static checks, in order, stopping at the first failure:
#   1. generated code in proto/stratopt/v1 matches the .proto files (scripts/gen_proto.sh --check)
#   2. buf lint (STANDARD rules, buf.yaml) and buf format of proto/ (skipped with a warning only when buf
#      is not installed: scripts/setup.sh installs it with npm)
#   3. ruff check, 4. ruff format --check, 5. mypy (strict; settings in pyproject.toml),
#   6. import contracts (import-linter's lint-imports; contracts in pyproject.toml: rooms, layers, private modules,
#      no import cycles)
# Usage: bash scripts/lint.sh   (run scripts/setup.sh first; scripts/test.sh does both)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "lint: $*"; }
fail() {
  echo "lint: FAILED: $*" >&2
  exit 1
}

# shellcheck source=scripts/uv_env.sh
source scripts/uv_env.sh
uv --version >/dev/null 2>&1 || fail "uv not found: run scripts/setup.sh"

step "generated code is up to date (scripts/gen_proto.sh --check)"
bash scripts/gen_proto.sh --check || fail "generated code under proto/stratopt/v1 is stale: run scripts/gen_proto.sh"

buf="node_modules/.bin/buf"
if "$buf" --version >/dev/null 2>&1; then
  step "buf lint (buf $("$buf" --version))"
  "$buf" lint || fail "buf lint reported the problems above (rules: buf.yaml)"
  step "buf format"
  "$buf" format --diff --exit-code || fail "proto files are not buf-formatted: run node_modules/.bin/buf format -w"
else
  echo "lint: WARNING: buf is not installed (scripts/setup.sh installs it with npm); skipping buf lint and buf format" >&2
fi

step "ruff check"
uv run --frozen ruff check . || fail "ruff check (fix with: uv run ruff check --fix .)"
step "ruff format --check"
uv run --frozen ruff format --check . || fail "ruff format (fix with: uv run ruff format .)"
step "mypy"
uv run --frozen mypy || fail "mypy"
step "import contracts (lint-imports)"
uv run --frozen lint-imports --no-cache >/tmp/stratopt-lint-imports.$$ 2>&1 || {
  cat /tmp/stratopt-lint-imports.$$ >&2
  rm -f /tmp/stratopt-lint-imports.$$
  fail "import contracts broken (see above; contracts in pyproject.toml [tool.importlinter])"
}
grep -E "KEPT|BROKEN|Contracts:" /tmp/stratopt-lint-imports.$$ || true
rm -f /tmp/stratopt-lint-imports.$$
step "all checks passed"
