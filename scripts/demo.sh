#!/usr/bin/env bash
# Install the pinned environment if needed, then run the main job: the `demo` study on the default model.
# Extra arguments go to `harness study`, e.g. `scripts/demo.sh --output-dir results/my-demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${HARNESS_VENV:-.venv}
exec "$VENV/bin/harness" study --preset demo "$@"
