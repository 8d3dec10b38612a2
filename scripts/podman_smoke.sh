#!/usr/bin/env bash
# Start the Helm chart for real with podman and call it: build (or reuse) the images, run the TimescaleDB image
# as the external database, render helm/stratopt, run the migration Job's pod, `podman kube play` the command
# and query Deployments, optimize through the command pod, read the result back through the query pod, and
# tear everything down. Exit 0 on success. Steps and the podman 4.3 work-arounds: tests/helm/podman_start.py.
#
# Usage (after scripts/setup.sh, as root): bash scripts/podman_smoke.sh
# The same start runs in the test command as tests/helm/test_podman_start.py (pytest marker `podman`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/uv_env.sh
source scripts/uv_env.sh
exec uv run --frozen python -m tests.helm.podman_start
