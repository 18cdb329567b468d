#!/usr/bin/env bash
# Build the collection mailfleet.fleet from this checkout (ansible-galaxy collection build, offline) into
# build/collection/ and install that tarball into a collections folder, as an administrator would:
#   install-collection.sh DEST_DIR     (then ANSIBLE_COLLECTIONS_PATH=DEST_DIR)
# No Galaxy server is reachable: the collection's dependency community.general must already be in DEST_DIR
# (molecule/scripts/collections.sh puts it there).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="${1:?usage: install-collection.sh DEST_DIR}"
out="$root/build/collection"
mkdir -p "$out"
rm -f "$out"/mailfleet-fleet-*.tar.gz
ansible-galaxy collection build --force --output-path "$out" "$root" >/dev/null
tarball="$(ls "$out"/mailfleet-fleet-*.tar.gz)"
ANSIBLE_COLLECTIONS_PATH="$dest" ansible-galaxy collection install --force --offline -p "$dest" "$tarball" >/dev/null
echo "collection: $(basename "$tarball") installed into $dest"
