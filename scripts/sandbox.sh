#!/usr/bin/env bash
# Sets up everything (see setup.sh), starts a sandbox cluster of MariaDB servers (2 shard
# primaries, each with a GTID replica) in .sandbox/, and starts dbmesh in front of it on
# 127.0.0.1:3307. Then:  mariadb -h127.0.0.1 -P3307 -uapp -papp demo
# Stop with:  bash scripts/sandbox.sh down
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-up}" = "down" ]; then
  if [ -f .sandbox/dbmesh.pid ]; then kill "$(cat .sandbox/dbmesh.pid)" 2>/dev/null || true; rm -f .sandbox/dbmesh.pid; fi
  [ -x .venv/bin/dbmesh ] && .venv/bin/dbmesh sandbox down
  exit 0
fi

bash scripts/setup.sh
if [ -f .sandbox/dbmesh.pid ] && kill -0 "$(cat .sandbox/dbmesh.pid)" 2>/dev/null; then
  echo "dbmesh is already running (pid $(cat .sandbox/dbmesh.pid)); 'bash scripts/sandbox.sh down' first"
  exit 1
fi
.venv/bin/dbmesh sandbox down >/dev/null 2>&1 || true
.venv/bin/dbmesh sandbox up --config configs/sandbox.yaml
nohup .venv/bin/dbmesh run -c configs/sandbox.yaml > .sandbox/dbmesh.log 2>&1 &
echo $! > .sandbox/dbmesh.pid
for _ in $(seq 1 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/3307) 2>/dev/null; then
    echo "dbmesh is serving on 127.0.0.1:3307 (log: .sandbox/dbmesh.log)"
    echo "try:  mariadb -h127.0.0.1 -P3307 -uapp -papp demo"
    exit 0
  fi
  sleep 0.1
done
echo "dbmesh did not start; see .sandbox/dbmesh.log" >&2
tail -20 .sandbox/dbmesh.log >&2
exit 1
