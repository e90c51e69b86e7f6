#!/usr/bin/env bash
# Installs tests/deploy's npm packages (package-lock.json, npm ci) unless node_modules already
# holds every dependency package.json names. Used by run.sh and by the kernel tests that validate
# Events with validate_event.js, whichever runs first. Fails with one line if node/npm are missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "tests/deploy: $tool not found (node >= 18 and npm are needed)" >&2; exit 1; }
done
missing=$(node -e '
  const fs = require("fs");
  const deps = Object.keys(require("./package.json").dependencies);
  console.log(deps.filter((d) => !fs.existsSync("node_modules/" + d + "/package.json")).join(" "));')
if [[ -n "$missing" ]]; then
  echo "tests/deploy: installing npm packages (npm ci: $missing missing)" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
