#!/usr/bin/env bash
# Run Molecule scenarios (default: the green list in molecule/scenarios.txt) with everything they share prepared once:
# the docker engine, the locally built image, the wheelhouse and the extracted collections.
#   molecule/scripts/run-scenarios.sh [SCENARIO ...]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
  # shellcheck disable=SC2207
  scenarios=($(grep -v '^#' molecule/scenarios.txt))
fi
venv="$root/.venv"
export PATH="$venv/bin:$PATH"

molecule/scripts/ensure-docker.sh
MAILFLEET_IMAGE="$(molecule/scripts/build-image.sh)"
export MAILFLEET_IMAGE
echo "run-scenarios: image $MAILFLEET_IMAGE"

export MAILFLEET_WHEELHOUSE="$root/.cache/wheelhouse"
mkdir -p "$MAILFLEET_WHEELHOUSE"
echo "run-scenarios: wheelhouse $MAILFLEET_WHEELHOUSE"
"$venv/bin/pip" wheel --quiet --disable-pip-version-check --find-links "$MAILFLEET_WHEELHOUSE" \
  --wheel-dir "$MAILFLEET_WHEELHOUSE" "$root" pip 2> >(grep -v '^WARNING: Location' >&2)

PIP="$venv/bin/pip" molecule/scripts/collections.sh "$root/.cache/ansible-collections"
export ANSIBLE_COLLECTIONS_PATH="$root/.cache/ansible-collections"
export ANSIBLE_ROLES_PATH="$root/roles"
export ANSIBLE_FILTER_PLUGINS="$root/playbooks/filter_plugins"
export ANSIBLE_PIPELINING=1
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"
export ANSIBLE_NOCOLOR="${ANSIBLE_NOCOLOR:-1}"
# Molecule keeps its state under $HOME/.ansible and .cache: a scratch HOME keeps the machine clean.
export HOME="$root/.molecule-home"
mkdir -p "$HOME"

failed=()
summary=()
for s in "${scenarios[@]}"; do
  start=$(date +%s)
  echo "=== molecule test -s $s"
  # MOLECULE_STEPS="create converge" runs single steps instead of the full test sequence (debugging).
  verdict=ok
  for step in ${MOLECULE_STEPS:-test}; do
    molecule "$step" -s "$s" || { verdict=FAILED; failed+=("$s"); break; }
  done
  summary+=("$(printf '%-18s %-6s %4ss' "$s" "$verdict" "$(( $(date +%s) - start ))")")
done
echo "=== molecule summary"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run-scenarios: failed: ${failed[*]}" >&2
  exit 1
fi
