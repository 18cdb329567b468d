#!/usr/bin/env bash
# Lint the roles, then run Molecule scenarios (default: the green list in molecule/scenarios.txt) with
# everything they share prepared once: docker engine, image, wheelhouse, collections.
#   molecule/scripts/run-scenarios.sh [SCENARIO ...]
#   MOLECULE_STEPS="create converge" ... runs single steps instead of `molecule test` (debugging).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
  mapfile -t scenarios < <(grep -v -e '^#' -e '^$' molecule/scenarios.txt)
fi
# shellcheck source=molecule/scripts/controller-env.sh
source molecule/scripts/controller-env.sh

if [ -z "${MOLECULE_STEPS:-}" ] && [ "${MAILFLEET_SKIP_LINT:-0}" != 1 ]; then
  start=$(date +%s)
  echo "=== ansible-lint (production profile): roles playbooks molecule"
  ansible-lint -q -c molecule/ansible-lint.yml roles playbooks molecule
  echo "ansible-lint: clean in $(( $(date +%s) - start ))s"
fi

failed=()
summary=()
total_start=$(date +%s)
for s in "${scenarios[@]}"; do
  start=$(date +%s)
  echo "=== molecule ${MOLECULE_STEPS:-test} -s $s"
  verdict=ok
  for step in ${MOLECULE_STEPS:-test}; do
    molecule "$step" -s "$s" || { verdict=FAILED; failed+=("$s"); break; }
  done
  summary+=("$(printf '%-18s %-6s %4ss' "$s" "$verdict" "$(( $(date +%s) - start ))")")
done
echo "=== molecule summary ($(( $(date +%s) - total_start ))s)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run-scenarios: failed: ${failed[*]}" >&2
  exit 1
fi
