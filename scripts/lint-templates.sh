#!/usr/bin/env bash
# Lints the CloudFormation templates and the state machine definition.
# Expects cfn-lint and checkov (pip) and asl-validator (npm) on PATH.
# Runs every tool, then exits non-zero naming each one that failed.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

definition="cf-templates/state-machine.asl.json"
failed=()

run() {
  local name="$1"
  shift
  echo "==> $name"
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "$name: '$1' not found on PATH" >&2
    failed+=("$name (not installed)")
    return
  fi
  if "$@"; then
    echo "$name: ok"
  else
    echo "$name: FAILED" >&2
    failed+=("$name")
  fi
}

shopt -s nullglob
templates=(cf-templates/*.yaml)
shopt -u nullglob
if [[ ${#templates[@]} -eq 0 ]]; then
  echo "no templates found in cf-templates/" >&2
  exit 1
fi

# cfn-lint exits non-zero on warnings as well as errors.
run cfn-lint cfn-lint "${templates[@]}"
# --skip-download keeps checkov offline; every check still runs from its bundled rules.
run checkov checkov -d cf-templates --framework cloudformation --quiet --compact --skip-download
run asl-validator asl-validator --json-path "$definition"

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "lint-templates: failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint-templates: all checks passed"
