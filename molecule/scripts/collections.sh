#!/usr/bin/env bash
# Put the few collections the scenarios use (community.docker connection, ansible.posix, and
# community.general for nsupdate) into a folder, extracted from the `ansible` 12.3.0 wheel from PyPI:
# community.docker is not on PyPI by itself and Ansible Galaxy is not reachable. Cached: skip when present.
set -euo pipefail
dest="${1:?usage: collections.sh DEST_DIR}"
pip="${PIP:-pip}"
wanted=(community/docker ansible/posix community/library_inventory_filtering_v1 community/general)
if [ -f "$dest/.complete" ]; then exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "collections: downloading the ansible 12.3.0 wheel to extract ${wanted[*]}" >&2
"$pip" download --quiet --disable-pip-version-check --no-deps --dest "$tmp" 'ansible==12.3.0'
mkdir -p "$dest"
(cd "$tmp" && python3 -m zipfile -e ansible-12.3.0-py3-none-any.whl extract)
for c in "${wanted[@]}"; do
  mkdir -p "$dest/ansible_collections/$(dirname "$c")"
  rm -rf "$dest/ansible_collections/$c"
  cp -a "$tmp/extract/ansible_collections/$c" "$dest/ansible_collections/$c"
done
touch "$dest/.complete"
