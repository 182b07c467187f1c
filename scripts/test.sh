#!/usr/bin/env bash
# Install the test dependencies, then lint, type-check and run the whole suite (as root:
# the integration tests run real containers). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff check src tests scripts bench
.venv/bin/mypy
# One fixed base for the tests' temporary directories, removed by GNU rm first: the suite
# makes trees deeper than Python's recursion limit, which pytest's own clean-up of old
# numbered runs (shutil.rmtree) cannot remove. A --basetemp given here wins.
BASETEMP="${TMPDIR:-/tmp}/sandport-pytest"
rm -rf -- "$BASETEMP"
.venv/bin/python -m pytest --basetemp="$BASETEMP" "$@"
