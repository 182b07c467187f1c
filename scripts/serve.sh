#!/usr/bin/env bash
# Install (first time) and start the server: bash scripts/serve.sh [sandport serve options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh server
exec .venv/bin/sandport serve "$@"
