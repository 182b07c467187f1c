#!/usr/bin/env bash
# Install the test dependencies, then lint, type-check and run the whole suite (as root:
# the integration tests run real containers). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff check src tests scripts bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
