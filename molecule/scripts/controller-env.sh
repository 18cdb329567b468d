# Sourced by run-scenarios.sh and demo.sh: prepare once what every scenario shares (docker engine, the
# locally built image, the wheelhouse, the extracted collections, the mailfleet.fleet collection built and
# installed from this checkout) and export the environment Molecule and Ansible need. Expects $root (the checkout).
venv="$root/.venv"
export PATH="$venv/bin:$PATH"

"$root/molecule/scripts/ensure-docker.sh"
MAILFLEET_IMAGE="$("$root/molecule/scripts/build-image.sh")"
export MAILFLEET_IMAGE
echo "controller: image $MAILFLEET_IMAGE"

# The targets get no PyPI access: build every wheel here once (cp311, like Debian 12's python3), pip too.
export MAILFLEET_WHEELHOUSE="$root/.cache/wheelhouse"
mkdir -p "$MAILFLEET_WHEELHOUSE"
echo "controller: wheelhouse $MAILFLEET_WHEELHOUSE"
rm -f "$MAILFLEET_WHEELHOUSE"/mailfleet-*.whl
"$venv/bin/pip" wheel --quiet --disable-pip-version-check --find-links "$MAILFLEET_WHEELHOUSE" \
  --wheel-dir "$MAILFLEET_WHEELHOUSE" "$root" pip 2> >(grep -v '^WARNING: Location' >&2)

PIP="$venv/bin/pip" "$root/molecule/scripts/collections.sh" "$root/.cache/ansible-collections"
# The scenarios use the collection as an administrator does: built into a tarball and installed, never
# the checkout's roles/ and plugins/ directly.
"$root/molecule/scripts/install-collection.sh" "$root/.cache/ansible-collections"
export ANSIBLE_COLLECTIONS_PATH="$root/.cache/ansible-collections"
export ANSIBLE_PIPELINING=1
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"
export ANSIBLE_NOCOLOR="${ANSIBLE_NOCOLOR:-1}"
export PY_COLORS=0
# Molecule keeps its state under $HOME/.ansible and .cache: a scratch HOME keeps the machine clean.
export HOME="$root/.molecule-home"
mkdir -p "$HOME"
