#!/usr/bin/env bash
# Print the address of a scenario container on its project network (for inventory variables that name
# a peer outside the fleet's groups, such as the DNS server).
set -euo pipefail
docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${1:?usage: container-ip.sh NAME}"
