#!/usr/bin/env bash
# One command for every performance budget (docs/performance.md):
#   bench/run.sh [--no-build] [run.py options, e.g. --churn-minutes 10 | --reps 7 | --only http
#                | --only httpserver --httpserver-baseline OTHER_TREE/build]
# Installs what is missing (scripts/deps.sh --test plus wrk, bpftrace, tcpdump,
# libbenchmark-dev), configures and builds into build/ (rstwatch, connload, correlator_bench),
# then runs bench/run.py as root. The table goes to stdout and bench/results/latest.md.
# --no-build: use the existing build/rstwatch (RSTWATCH_BIN to override) and build only the
# benchmark helpers (into build/bench-standalone when the top level has no bench/ target).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${RSTWATCH_BUILD_DIR:-$root/build}

no_build=0
args=()
for a in "$@"; do
  if [[ $a == --no-build ]]; then no_build=1; else args+=("$a"); fi
done

sudo=""
if (( EUID != 0 )); then sudo="sudo"; fi

# Packages: the project's (build + test harness) and the benchmark's own.
scripts/deps.sh --test
extra=()
for package in wrk bpftrace tcpdump libbenchmark-dev; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    extra+=("$package")
  fi
done
if (( ${#extra[@]} > 0 )); then
  echo "bench: installing ${extra[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${extra[@]}"
fi

jobs=$(nproc)
if (( no_build == 0 )); then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
  cmake --build "$build" -j"$jobs"
fi
# The benchmark helpers: from the main tree when it includes bench/ (add_subdirectory),
# else standalone against the main tree's librstwatch_core.a.
if [[ ! -x $build/bench/connload ]] || (( no_build )); then
  if (( no_build == 0 )) && [[ -f $build/bench/Makefile ]]; then
    cmake --build "$build" -j"$jobs" --target connload correlator_bench hookfloor httpserver_bench || true
  fi
  if [[ ! -x $build/bench/connload ]]; then
    cmake -S bench -B "$build/bench-standalone" -DRSTWATCH_BUILD_DIR="$build" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build/bench-standalone" -j"$jobs"
  fi
fi

export RSTWATCH_BIN=${RSTWATCH_BIN:-$build/rstwatch}
exec $sudo env RSTWATCH_BIN="$RSTWATCH_BIN" /usr/bin/python3 bench/run.py --build-dir "$build" "${args[@]}"
