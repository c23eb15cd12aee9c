#!/usr/bin/env bash
# Installs arvision with its test extras (CPU torch pinned here, not in pyproject) and runs lint + tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -m ruff check src tests benchmarks scripts
python -m pytest
