#!/usr/bin/env bash
# The test command: sets up .venv on a fresh machine (.ci/setup-venv) and runs the whole suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/setup-venv
exec .venv/bin/python -m pytest -q "$@"
