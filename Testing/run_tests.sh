#!/usr/bin/env bash
# The test command: sets up .venv on a fresh machine (CPU torch first, so no other package can pull a
# different build) and runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[scene,train,test]"
exec .venv/bin/python -m pytest -q "$@"
