#!/usr/bin/env bash
# Sanitizer and fuzzing checks (docs/reliability.md, "Fuzzing" and "Sanitizers").
#
#   tests/sanitizers/run.sh fuzz BUILD_DIR   build the libFuzzer targets with clang in BUILD_DIR
#                                            (e.g. build/fuzz) and run each one for
#                                            RSTWATCH_FUZZ_SECONDS (default 20) on a copy of its
#                                            seed corpus; fails on any crash, leak, timeout or
#                                            sanitizer report.
#   tests/sanitizers/run.sh asan BUILD_DIR   build rstwatch and unit_tests with
#                                            -fsanitize=address,undefined in BUILD_DIR (e.g.
#                                            build/asan), run the unit tests, then the kernel tests
#                                            RSTWATCH_ASAN_KERNEL_TESTS (default: causes agent) with
#                                            the sanitized binary; fails on any sanitizer report.
# Environment: RSTWATCH_FUZZ_SECONDS, RSTWATCH_FUZZ_TARGETS (space separated, default all),
# RSTWATCH_ASAN_KERNEL_TESTS, JOBS (default 2).
set -euo pipefail

mode=${1:-}
build=${2:-}
if [[ -z "$mode" || -z "$build" ]]; then
  echo "usage: $0 fuzz|asan BUILD_DIR" >&2
  exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
case "$build" in /*) ;; *) build="$repo/$build" ;; esac
jobs=${JOBS:-2}

# Reports sanitizer findings in the given files; returns 1 if any.
sanitizer_reports() {
  local found=0 f
  for f in "$@"; do
    [[ -f "$f" ]] || continue
    if grep -nE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|ERROR: libFuzzer|SUMMARY: (Address|Undefined|Leak)Sanitizer' "$f" | head -20; then
      echo "sanitizer report in $f" >&2
      found=1
    fi
  done
  return $found
}

run_fuzz() {
  local seconds=${RSTWATCH_FUZZ_SECONDS:-20}
  local targets=${RSTWATCH_FUZZ_TARGETS:-"fuzz_records fuzz_pod_map fuzz_watch_event fuzz_stream_line fuzz_diagnosis"}
  command -v clang++ >/dev/null || { echo "clang++ not found (scripts/deps.sh --test)" >&2; exit 1; }
  # The fuzzers build from fuzz/CMakeLists.txt on its own: no BPF toolchain needed.
  CC=clang CXX=clang++ cmake -S "$repo/fuzz" -B "$build" -DRSTWATCH_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  # shellcheck disable=SC2086
  cmake --build "$build" -j"$jobs" --target $targets

  local work failed=0 t
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  printf '%-18s %12s %10s  %s\n' target executions exec/s result
  for t in $targets; do
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    cp -r "$repo/fuzz/corpus/$t/." "$work/$t/corpus/"
    local rc=0
    (cd "$work/$t" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:hard_rss_limit_mb=1800 \
      timeout $((seconds + 120)) "$build/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -timeout=25 -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
        "$work/$t/corpus" >"$work/$t/log" 2>&1) || rc=$?
    local execs rate result=ok
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t/log" | tail -1)
    if [[ $rc -ne 0 ]] || ! sanitizer_reports "$work/$t/log" >/dev/null || \
       compgen -G "$work/$t/artifacts/*" >/dev/null; then
      result="FAILED (exit $rc)"
      failed=1
      echo "---- $t: last 60 lines of the log" >&2
      tail -60 "$work/$t/log" >&2
      local a
      for a in "$work/$t/artifacts/"*; do
        [[ -e "$a" ]] || continue
        mkdir -p "$build/artifacts"
        cp "$a" "$build/artifacts/$t-$(basename "$a")"
        echo "reproducer: $build/artifacts/$t-$(basename "$a") (run: $build/$t FILE)" >&2
      done
    fi
    printf '%-18s %12s %10s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
  done
  return $failed
}

run_asan() {
  local flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" >/dev/null
  cmake --build "$build" -j"$jobs" --target rstwatch unit_tests

  local logs="$build/sanitizer-logs"
  rm -rf "$logs" && mkdir -p "$logs"
  # Reports also go to $logs/{asan,ubsan}.PID: the kernel tests swallow rstwatch's stderr.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:log_path=$logs/asan"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
  local failed=0

  echo "== unit tests (ASan+UBSan)"
  if ! (cd "$build" && "$build/tests/unit_tests" --gtest_brief=1 >"$logs/unit_tests.log" 2>&1); then
    tail -80 "$logs/unit_tests.log" >&2
    failed=1
  fi
  sanitizer_reports "$logs/unit_tests.log" || failed=1
  tail -3 "$logs/unit_tests.log"

  local t
  for t in ${RSTWATCH_ASAN_KERNEL_TESTS:-causes agent}; do
    echo "== kernel test $t with the sanitized rstwatch"
    # The tests start rstwatch themselves; its stderr (sanitizer reports included) ends up in
    # the test output, which is kept. ASAN_OPTIONS/UBSAN_OPTIONS are inherited.
    if ! (cd "$repo" && RSTWATCH_BIN="$build/rstwatch" RSTWATCH_REQUIRE_BPF=${RSTWATCH_REQUIRE_BPF:-1} \
          python3 -m unittest -v "tests/kernel/test_$t.py" >"$logs/kernel_$t.log" 2>&1); then
      tail -80 "$logs/kernel_$t.log" >&2
      failed=1
    fi
    sanitizer_reports "$logs/kernel_$t.log" || failed=1
    tail -3 "$logs/kernel_$t.log"
  done
  local f
  for f in "$logs"/asan.* "$logs"/ubsan.*; do
    [[ -e "$f" ]] || continue
    echo "---- sanitizer report $f" >&2
    head -60 "$f" >&2
    failed=1
  done
  [[ $failed -eq 0 ]] && echo "no sanitizer reports"
  return $failed
}

case "$mode" in
  fuzz) run_fuzz ;;
  asan) run_asan ;;
  *) echo "usage: $0 fuzz|asan BUILD_DIR" >&2; exit 2 ;;
esac
