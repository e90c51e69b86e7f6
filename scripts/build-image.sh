#!/usr/bin/env bash
# Builds the agent image (deploy/Dockerfile) with docker or podman, whichever is present.
#
#   scripts/build-image.sh [--tag REGISTRY/rstwatch:TAG] [--engine docker|podman] [-- ENGINE-BUILD-ARGS...]
#
# Default tag: rstwatch:<version from CMakeLists.txt>. docker is preferred when its daemon
# answers, else podman. Arguments after "--" go to the engine's build command unchanged
# (e.g. --platform, --pull=never). Prints the image ID on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/build-image.sh [--tag REGISTRY/rstwatch:TAG] [--engine docker|podman] [-- BUILD-ARGS...]" >&2
  exit 2
}

version=$(sed -n 's/^project(rstwatch VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
tag="rstwatch:${version:-dev}"
engine=""
extra=()
while (($#)); do
  case "$1" in
    --tag) [[ $# -ge 2 && -n "$2" ]] || { echo "build-image.sh: --tag needs a value" >&2; exit 2; }; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#--tag=}"; [[ -n "$tag" ]] || { echo "build-image.sh: --tag needs a value" >&2; exit 2; }; shift ;;
    --engine) [[ $# -ge 2 ]] || usage; engine="$2"; shift 2 ;;
    --engine=*) engine="${1#--engine=}"; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image.sh: unknown argument '$1'" >&2; usage ;;
  esac
done

if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null 2>&1; then
    engine=podman
  else
    echo "build-image.sh: neither a running docker daemon nor podman found (install docker.io or podman)" >&2
    exit 1
  fi
fi
case "$engine" in
  docker|podman) command -v "$engine" >/dev/null 2>&1 || { echo "build-image.sh: --engine $engine: not installed" >&2; exit 1; } ;;
  *) echo "build-image.sh: --engine: must be docker or podman, not '$engine'" >&2; exit 2 ;;
esac

echo "build-image.sh: building $tag with $engine" >&2
iidfile=$(mktemp)
trap 'rm -f "$iidfile"' EXIT
"$engine" build -f deploy/Dockerfile -t "$tag" --iidfile "$iidfile" ${extra[@]+"${extra[@]}"} .
cat "$iidfile"
echo
