#!/usr/bin/env bash
# Sets up everything (see setup.sh) and runs the whole test suite against real MariaDB
# servers that the tests start in a temporary sandbox. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
