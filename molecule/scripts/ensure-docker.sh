#!/usr/bin/env bash
# Start Debian's dockerd when no engine answers: CI machines may be brand new (see ENVIRONMENT facts).
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "ensure-docker: dockerd missing (apt-get install docker.io)" >&2; exit 1; }
echo "ensure-docker: starting dockerd (log: /var/log/dockerd.log)"
nohup dockerd >/var/log/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "ensure-docker: dockerd did not answer within 60 s; see /var/log/dockerd.log" >&2
exit 1
