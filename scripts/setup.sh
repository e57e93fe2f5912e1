#!/usr/bin/env bash
# Installs what dbmesh needs on a fresh Debian machine: MariaDB server binaries (for the
# sandbox), the mariadb client, and a virtualenv in .venv with dbmesh and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need_apt+=(mariadb-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test,native]'
# The hot-path modules compiled with mypyc (dbmesh/native.py); without a C compiler dbmesh
# runs them as Python sources, only slower.
if ! .venv/bin/python -m dbmesh native build > .venv/native-build.log 2>&1; then
  tail -20 .venv/native-build.log >&2
  echo "setup: compiling the hot-path modules failed (above); dbmesh runs them as Python sources" >&2
fi
