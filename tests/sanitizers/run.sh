#!/usr/bin/env bash
# Sanitizer and fuzzing checks (docs/reliability.md, "Fuzzing" and "Sanitizers").
#
#   tests/sanitizers/run.sh fuzz BUILD_DIR   build the libFuzzer targets with clang in BUILD_DIR
#                                            (e.g. build/fuzz) and run each one for
#                                            RSTWATCH_FUZZ_SECONDS (default 20) on a copy of its
#                                            seed corpus; fails on any crash, leak, timeout or
#                                            sanitizer report.
#   tests/sanitizers/run.sh churn BUILD_DIR  the ASan build of rstwatch agent through a churn of
#                                            RSTWATCH_CHURN_CONNECTIONS (default 1M) loopback
#                                            connections at RSTWATCH_CHURN_RATE/s (bench/connload,
#                                            own namespace; each ends in an RST, so each becomes
#                                            records the correlator remembers and later evicts),
#                                            then SIGTERM: LeakSanitizer at exit.
#   tests/sanitizers/run.sh asan BUILD_DIR   build rstwatch and the unit tests (one per stage) with
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
  echo "usage: $0 fuzz|asan|churn BUILD_DIR" >&2
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

# Prints the report files the sanitizers wrote to DIR (log_path=DIR/asan, DIR/ubsan); returns 1 if any.
report_files() {
  local found=0 f
  for f in "$1"/asan.* "$1"/ubsan.*; do
    [[ -e "$f" ]] || continue
    echo "---- sanitizer report $f" >&2
    head -60 "$f" >&2
    found=1
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

build_asan() {
  local flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" >/dev/null
  cmake --build "$build" -j"$jobs" --target rstwatch unit_tests
}

run_asan() {
  build_asan

  local logs="$build/sanitizer-logs"
  rm -rf "$logs" && mkdir -p "$logs"
  # Reports also go to $logs/{asan,ubsan}.PID: the kernel tests swallow rstwatch's stderr.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:log_path=$logs/asan"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
  local failed=0

  echo "== unit tests (ASan+UBSan)"
  local unit
  for unit in "$build"/tests/unit_*; do
    [[ -x "$unit" && ! -d "$unit" ]] || continue
    local name
    name=$(basename "$unit")
    if ! (cd "$build" && "$unit" --gtest_brief=1 >"$logs/$name.log" 2>&1); then
      tail -80 "$logs/$name.log" >&2
      failed=1
    fi
    sanitizer_reports "$logs/$name.log" || failed=1
    echo "$name: $(grep -E '^\[  PASSED  \]|FAILED TEST' "$logs/$name.log" | head -1)"
  done

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
  report_files "$logs" || failed=1
  [[ $failed -eq 0 ]] && echo "no sanitizer reports"
  return $failed
}

# A long connection churn through the sanitized agent: LeakSanitizer checks it at its SIGTERM
# exit. Loopback in a namespace of its own; every process by PID, the namespace removed.
run_churn() {
  local total=${RSTWATCH_CHURN_CONNECTIONS:-1000000} rate=${RSTWATCH_CHURN_RATE:-8000}
  local connload=${RSTWATCH_CONNLOAD:-$repo/build/bench/connload}
  [[ -x "$connload" ]] || { echo "build bench/connload first (cmake --build build --target connload)" >&2; exit 1; }
  build_asan
  local logs="$build/sanitizer-logs" port
  # Globals: the cleanup trap may run after this function's locals are gone.
  churn_ns="rwlsan$$" agent_pid="" load_pid=""
  local ns=$churn_ns
  rm -rf "$logs" && mkdir -p "$logs"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  # shellcheck disable=SC2317
  cleanup_churn() {
    if [[ -n "${load_pid:-}" ]]; then kill "$load_pid" 2>/dev/null || true; fi
    if [[ -n "${agent_pid:-}" ]]; then kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true; fi
    load_pid="" agent_pid=""
    if [[ -n "${churn_ns:-}" ]]; then ip netns del "$churn_ns" 2>/dev/null || true; fi
    churn_ns=""
  }
  trap cleanup_churn EXIT
  ASAN_OPTIONS="detect_leaks=1:log_path=$logs/asan" UBSAN_OPTIONS="print_stacktrace=1:log_path=$logs/ubsan" \
    "$build/rstwatch" agent --listen "127.0.0.1:$port" --kube off >"$logs/agent.log" 2>&1 &
  agent_pid=$!
  local i
  for i in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.2
  done
  local t0=$SECONDS
  ip netns exec "$ns" "$connload" churn --port 999 --rate "$rate" --count "$total" \
    --seconds $(( total / rate * 2 + 60 )) --rst-every 1 >"$logs/connload.log" 2>&1 &
  load_pid=$!
  local load_rc=0
  wait "$load_pid" || load_rc=$?
  load_pid=""
  sleep 2
  local metrics rss
  metrics=$(curl -fs "http://127.0.0.1:$port/metrics" || true)
  rss=$(awk '/^VmRSS/ {print $2 / 1024 " MiB"}' "/proc/$agent_pid/status")
  echo "churned: $(tail -1 "$logs/connload.log")"
  echo "in $(( SECONDS - t0 )) s; agent (ASan) RSS $rss"
  printf '%s\n' "$metrics" | grep -E '^rstwatch_records_lost_total|^rstwatch_tracked_connections'
  printf '%s\n' "$metrics" | awk '/^rstwatch_records_total/ {n += $NF} END {print "records read: " n}'
  kill -TERM "$agent_pid"
  local rc=0
  wait "$agent_pid" || rc=$?
  agent_pid=""
  echo "agent exit status $rc"
  local failed=0
  [[ $rc -eq 0 && $load_rc -eq 0 ]] || failed=1
  [[ $load_rc -eq 0 ]] || echo "connload failed ($load_rc): $(tail -3 "$logs/connload.log")" >&2
  sanitizer_reports "$logs/agent.log" || failed=1
  report_files "$logs" || failed=1
  cleanup_churn
  [[ $failed -eq 0 ]] && echo "no sanitizer reports (LeakSanitizer ran at exit)"
  return $failed
}

case "$mode" in
  fuzz) run_fuzz ;;
  asan) run_asan ;;
  churn) run_churn ;;
  *) echo "usage: $0 fuzz|asan|churn BUILD_DIR" >&2; exit 2 ;;
esac
