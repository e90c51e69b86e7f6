#!/usr/bin/env bash
# Deployment checks: the kustomizations build with kubectl, every object validates against the
# Kubernetes and prometheus-operator schemas offline (tests/deploy/validate_manifests.js), the
# Event validator used by the kernel tests rejects broken Events (validate_event.js --self-test),
# and the kubectl plugin behaves (tests/deploy/test_plugin.sh, fake kubectl).
# Installs the npm packages from package-lock.json when node_modules lacks one (npm_packages.sh).
# Without kubectl: fails when CI=true, else skips (exit 0) with a message; node/npm likewise.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

missing=()
for tool in kubectl node npm; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if (( ${#missing[@]} )); then
  if [[ "${CI:-}" == "true" ]]; then
    echo "deploy tests: FAIL: ${missing[*]} not found (needed in CI: kubectl >= 1.27 with kustomize, node >= 18)" >&2
    exit 1
  fi
  echo "deploy tests: SKIP: ${missing[*]} not found (kubectl >= 1.27 with kustomize, node >= 18 and npm run these tests)"
  exit 0
fi

"$here/npm_packages.sh"

status=0
node validate_manifests.js || status=1
node validate_event.js --self-test || status=1
"$here/test_plugin.sh" || status=1
if (( status )); then
  echo "deploy tests: FAILED"
else
  echo "deploy tests: passed"
fi
exit "$status"
