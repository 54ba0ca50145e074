#!/usr/bin/env bash
# Sets up .venv, lints (ruff, the project's own config in pyproject.toml), and runs the whole test suite
# (real-fixture tests skip with a reason when fixtures are absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -rs "$@"
