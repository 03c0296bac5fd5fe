#!/usr/bin/env bash
# The main job: sets up .venv on a fresh machine (.ci/setup-venv), then samples 16 hypotheses of the lung
# nodule of a whole chest CT (LIDC-IDRI-0001, in HU) from a point inside it with the shipped model and
# compares them with the four radiologists' readings (--crops: the former crop-based case).
# Extra arguments go to `python -m training.demo` (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/setup-venv
exec .venv/bin/python -m training.demo "$@"
