#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (real-fixture tests skip with a reason when fixtures are absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -rs "$@"
