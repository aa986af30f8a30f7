#!/usr/bin/env bash
# Install the pinned environment if needed, then run the test suite (unit + integration + slow).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${HARNESS_VENV:-.venv}
exec "$VENV/bin/python" -m pytest "$@"
