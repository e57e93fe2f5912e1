#!/usr/bin/env bash
# Sets up everything (see setup.sh) and runs the whole test suite against real MariaDB
# servers that the tests start in a temporary sandbox. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
# The hot-path modules ran compiled above (dbmesh/native.py). Without a C compiler they run
# as Python sources: the tests that drive them hardest, once more that way.
if [ $# -eq 0 ]; then
  DBMESH_NATIVE=0 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_native.py \
    tests/test_core_smoke.py tests/test_scanner.py tests/test_robustness.py tests/test_read_write.py \
    tests/test_sharding_prepared_routes.py
fi
