#!/usr/bin/env bash
# Regenerate the Python modules of the stratopt.v1 contract from proto/stratopt/v1/*.proto.
# Generated modules sit beside their .proto files and import as `stratopt.v1.*` (proto/ is the import root).
# Usage: scripts/gen_proto.sh [--check]   (--check fails when the committed code is stale)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-uv run --frozen python}"
site="$($py -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))')"
out="proto"
if [ "${1:-}" = "--check" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
# protoc's mypy plugin reports every file it writes; show its output only when protoc fails.
if ! log="$($py -m grpc_tools.protoc -I proto -I "$site" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/stratopt/v1/*.proto 2>&1)"; then
  echo "$log" >&2
  exit 1
fi
if [ "${1:-}" = "--check" ]; then
  for f in "$out"/stratopt/v1/*; do
    name="$(basename "$f")"
    if ! cmp -s "$f" "proto/stratopt/v1/$name"; then
      echo "generated code is stale: proto/stratopt/v1/$name (run scripts/gen_proto.sh)" >&2
      exit 1
    fi
  done
  echo "generated code is up to date"
fi
