#!/usr/bin/env bash
# Tests deploy/kubectl-rstwatch against a fake kubectl (tests/deploy/fake-kubectl/kubectl,
# canned answers in kubectl's real formats; metrics fixtures cut from a real agent's /metrics):
# the exact kubectl invocations, the printed table and stream, exit codes and usage errors.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
plugin="$here/../../deploy/kubectl-rstwatch"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PATH="$here/fake-kubectl:$PATH"
export FAKE_KUBECTL_LOG="$work/kubectl.log"
unset RSTWATCH_NAMESPACE FAKE_KUBECTL_SCENARIO FAKE_KUBECTL_NAMESPACE
# diagnose's merge runs the real rstwatch in the fake agent pod (ctest passes the one it built).
export RSTWATCH_BIN="${RSTWATCH_BIN:-$here/../../build/rstwatch}"

failures=0
passes=0
sel='app.kubernetes.io/name=rstwatch\,app.kubernetes.io/component=agent'
list_jsonpath='jsonpath=\{range\ .items\[\*\]\}\{.spec.nodeName\}\{\"\\t\"\}\{.metadata.name\}\{\"\\t\"\}\{.status.phase\}\{\"\\t\"\}\{.status.conditions\[\?\(@.type==\"Ready\"\)\].status\}\{\"\\n\"\}\{end\}'
node_jsonpath='jsonpath=\{range\ .items\[\*\]\}\{.metadata.name\}\{\"\\t\"\}\{.status.phase\}\{\"\\n\"\}\{end\}'

# run NAME ARGS...: runs the plugin (stdin from /dev/null, so never a terminal), captures
# stdout, stderr, the exit code and the kubectl log.
run() {
  name="$1"
  shift
  : >"$FAKE_KUBECTL_LOG"
  set +e
  "$plugin" "$@" </dev/null >"$work/out" 2>"$work/err"
  code=$?
  set -e
}

check() {  # check WHAT EXPECTED ACTUAL
  if [[ "$2" == "$3" ]]; then
    passes=$((passes + 1))
  else
    failures=$((failures + 1))
    printf 'FAIL %s: %s\n--- expected\n%s\n--- got\n%s\n---\n' "$name" "$1" "$2" "$3" >&2
  fi
}

check_has_lines() {  # check_has_lines WHAT FILE LINE...: each LINE is a whole line of FILE
  local what="$1" file="$2" line missing=""
  shift 2
  for line in "$@"; do
    grep -Fxq -- "$line" "$file" || missing+="$line"$'\n'
  done
  check "$what" "" "$missing"
}

check_usage_error() {  # check_usage_error NAME ARGS...: exit 2, one line, no kubectl call
  run "$@"
  check "exit code" 2 "$code"
  check "stderr lines" 1 "$(wc -l <"$work/err" | tr -d ' ')"
  check "stdout" "" "$(cat "$work/out")"
  check "kubectl calls" "" "$(cat "$FAKE_KUBECTL_LOG")"
}

# ---- status ------------------------------------------------------------------------------
run "status: mixed agents" status
check "exit code (one agent unreachable)" 1 "$code"
check "table" "$(cat <<'EOF'
NODE     POD              READY   WRITE HOOK                  LOST RECORDS   TRACKED   INCIDENTS   VERSION
<none>   rstwatch-j7k8l   no      -                           -              -         -           -
node-a   rstwatch-a1b2c   yes     tp_btf/tcp_sendmsg_locked   0              52        2           0.1.0
node-b   rstwatch-d3e4f   yes     kprobe/tcp_sendmsg          17             1204      2           0.1.0
node-c   rstwatch-g5h6i   no      -                           -              -         -           -
EOF
)" "$(cat "$work/out")"
check "stderr" "kubectl rstwatch: cannot read the status of rstwatch/rstwatch-g5h6i: rstwatch: cannot reach the agent: http://127.0.0.1:9740/readyz: Failed to connect to 127.0.0.1 port 9740 after 0 ms: Couldn't connect to server" "$(cat "$work/err")"
# The execs run in parallel: their order in the log is not fixed.
check "kubectl calls" "$(sort <<EOF
kubectl get pods -n rstwatch -l $sel -o $list_jsonpath
kubectl exec -n rstwatch rstwatch-a1b2c -c agent -- rstwatch status --no-headers
kubectl exec -n rstwatch rstwatch-d3e4f -c agent -- rstwatch status --no-headers
kubectl exec -n rstwatch rstwatch-g5h6i -c agent -- rstwatch status --no-headers
EOF
)" "$(sort "$FAKE_KUBECTL_LOG")"

FAKE_KUBECTL_SCENARIO=healthy run "status: healthy, with --context" status --context prod
check "exit code" 0 "$code"
check "table" "$(cat <<'EOF'
NODE     POD              READY   WRITE HOOK                  LOST RECORDS   TRACKED   INCIDENTS   VERSION
node-a   rstwatch-a1b2c   yes     tp_btf/tcp_sendmsg_locked   0              52        2           0.1.0
node-b   rstwatch-d3e4f   yes     kprobe/tcp_sendmsg          17             1204      2           0.1.0
EOF
)" "$(cat "$work/out")"
check "stderr" "" "$(cat "$work/err")"
check "kubectl calls" "$(sort <<EOF
kubectl --context prod get pods -n rstwatch -l $sel -o $list_jsonpath
kubectl --context prod exec -n rstwatch rstwatch-a1b2c -c agent -- rstwatch status --no-headers
kubectl --context prod exec -n rstwatch rstwatch-d3e4f -c agent -- rstwatch status --no-headers
EOF
)" "$(sort "$FAKE_KUBECTL_LOG")"

run "status: no agents" status --agent-namespace=monitoring
check "exit code" 1 "$code"
check "stderr" "kubectl rstwatch: no rstwatch agents in namespace monitoring (selector app.kubernetes.io/name=rstwatch,app.kubernetes.io/component=agent)" "$(cat "$work/err")"
check "kubectl calls" "kubectl get pods -n monitoring -l $sel -o $list_jsonpath" "$(cat "$FAKE_KUBECTL_LOG")"

# ---- trace -------------------------------------------------------------------------------
run "trace: filters" trace -n shop web-0 --port 8080 --cause idle_close_race,write_after_fin -o json
check "exit code" 0 "$code"
check "stream" "$(cat "$here/fixtures/incidents.txt")" "$(cat "$work/out")"
check "stderr" "kubectl rstwatch: following agent rstwatch/rstwatch-a1b2c on node node-a for pod shop/web-0" "$(cat "$work/err")"
check "kubectl calls" "$(cat <<EOF
kubectl get pod -n shop web-0 -o jsonpath=\{.spec.nodeName\}
kubectl get pods -n rstwatch -l $sel --field-selector spec.nodeName=node-a -o $node_jsonpath
kubectl exec -n rstwatch rstwatch-a1b2c -c agent -- rstwatch trace --from node --namespace shop --pod web-0 -o json --port 8080 --cause idle_close_race\,write_after_fin
EOF
)" "$(cat "$FAKE_KUBECTL_LOG")"

run "trace: --pod NS/NAME, history, wide" trace --pod shop/web-0 --since 30m --last 20 -o wide --level workload
check "exit code" 0 "$code"
check "kubectl calls" "$(cat <<EOF
kubectl get pod -n shop web-0 -o jsonpath=\{.spec.nodeName\}
kubectl get pods -n rstwatch -l $sel --field-selector spec.nodeName=node-a -o $node_jsonpath
kubectl exec -n rstwatch rstwatch-a1b2c -c agent -- rstwatch trace --from node --namespace shop --pod web-0 -o wide --since 30m --last 20 --level workload
EOF
)" "$(cat "$FAKE_KUBECTL_LOG")"

run "trace: --pod NAME with -n" trace -n shop --pod=web-0 -o yaml
check "exit code" 0 "$code"
check "remote command" "kubectl exec -n rstwatch rstwatch-a1b2c -c agent -- rstwatch trace --from node --namespace shop --pod web-0 -o yaml" "$(tail -n 1 "$FAKE_KUBECTL_LOG")"

FAKE_KUBECTL_NAMESPACE=shop run "trace: namespace from kubeconfig, = forms" trace web-0 --pid=5120 --comm=nginx --duration 30 --kubeconfig /tmp/kc
check "exit code" 0 "$code"
check "kubectl calls" "$(cat <<EOF
kubectl --kubeconfig /tmp/kc config view --minify -o jsonpath=\{..namespace\}
kubectl --kubeconfig /tmp/kc get pod -n shop web-0 -o jsonpath=\{.spec.nodeName\}
kubectl --kubeconfig /tmp/kc get pods -n rstwatch -l $sel --field-selector spec.nodeName=node-a -o $node_jsonpath
kubectl --kubeconfig /tmp/kc exec -n rstwatch rstwatch-a1b2c -c agent -- rstwatch trace --from node --namespace shop --pod web-0 --pid 5120 --comm nginx --duration 30
EOF
)" "$(cat "$FAKE_KUBECTL_LOG")"

FAKE_KUBECTL_NAMESPACE='' run "trace: no namespace anywhere means default" trace web-0
check "exit code (web-0 is not in default)" 1 "$code"
check "stderr" "Error from server (NotFound): pods \"web-0\" not found
kubectl rstwatch: cannot read pod default/web-0" "$(cat "$work/err")"

run "trace: no agent on the node" trace -nshop batch-1
check "exit code" 1 "$code"
check "stderr" "kubectl rstwatch: no running rstwatch agent on node node-d (kubectl -n rstwatch get pods -l app.kubernetes.io/name=rstwatch,app.kubernetes.io/component=agent -o wide)" "$(cat "$work/err")"
check "kubectl calls" "$(cat <<EOF
kubectl get pod -n shop batch-1 -o jsonpath=\{.spec.nodeName\}
kubectl get pods -n rstwatch -l $sel --field-selector spec.nodeName=node-d -o $node_jsonpath
EOF
)" "$(cat "$FAKE_KUBECTL_LOG")"

run "trace: pod not scheduled" trace --namespace=shop pending-0
check "exit code" 1 "$code"
check "stderr" "kubectl rstwatch: pod shop/pending-0 is not scheduled on a node yet" "$(cat "$work/err")"

run "trace: pod not found" trace -n shop nope
check "exit code" 1 "$code"
check "stderr" "Error from server (NotFound): pods \"nope\" not found
kubectl rstwatch: cannot read pod shop/nope" "$(cat "$work/err")"

# ---- diagnose ----------------------------------------------------------------------------
web_pair="ingress-nginx/ingress-nginx-controller -> shop/web:8080"
not_in_report="its clients are not in this report"
if [[ ! -x "$RSTWATCH_BIN" ]]; then
  [[ "${CI:-}" != "true" ]] || { echo "FAIL diagnose: no rstwatch binary at $RSTWATCH_BIN" >&2; failures=$((failures + 1)); }
  echo "test_plugin: SKIP diagnose: no rstwatch binary at $RSTWATCH_BIN (build it, or set RSTWATCH_BIN)"
else
  run "diagnose: two ready nodes, a crash-looping and a pending agent" diagnose
  check "exit code" 0 "$code"
  check "stderr" "" "$(cat "$work/err")"
  # node-a's and node-b's pairs in one report; the pair both saw is one, the fix from the mismatch
  # with the most evidence (node-a's); counts summed (41 + 22 reuses).
  check_has_lines "merged report" "$work/out" \
    "$web_pair   (seen on node-a, node-b)" \
    "  server idle timeout: 20.00 s (9 closes)   client idle timeout: unknown (0 closes)   reuse: up to 21.30 s (63 reuses)" \
    "  fix (ingress-nginx): ingress-nginx ConfigMap: upstream-keepalive-timeout: \"15\"" \
    "ingress-nginx/ingress-nginx-controller -> shop/cart:8080   (seen on node-a)" \
    "shop/web -> billing/payments:9000   (seen on node-b)" \
    "merged the diagnoses of 2 of 4 agents: node-a (2 pairs), node-b (2 pairs)" \
    "node node-c: agent rstwatch-g5h6i not ready: pod is Running but not Ready; $not_in_report" \
    "node <none>: agent rstwatch-j7k8l not ready: pod is Pending; $not_in_report"
  check "pairs" 3 "$(grep -c -- ' -> ' "$work/out")"
  check "kubectl calls" "$(sort <<EOF
kubectl get pods -n rstwatch -l $sel -o $list_jsonpath
kubectl exec -n rstwatch rstwatch-a1b2c -c agent -- rstwatch diagnose --from node -o json
kubectl exec -n rstwatch rstwatch-d3e4f -c agent -- rstwatch diagnose --from node -o json
kubectl exec -i -n rstwatch rstwatch-a1b2c -c agent -- rstwatch diagnose --merge -
EOF
)" "$(sort "$FAKE_KUBECTL_LOG")"

  FAKE_KUBECTL_SCENARIO=diagnose-fails run "diagnose: one ready agent's exec fails" diagnose
  check "exit code" 0 "$code"
  check_has_lines "report without node-b" "$work/out" \
    "$web_pair   (seen on node-a)" \
    "merged the diagnoses of 1 of 4 agents: node-a (2 pairs)" \
    "node node-b: agent rstwatch-d3e4f failed: rstwatch: cannot read the diagnosis: http://127.0.0.1:9740/diagnose: HTTP 503; $not_in_report" \
    "node node-c: agent rstwatch-g5h6i not ready: pod is Running but not Ready; $not_in_report"

  run "diagnose: -o json, filters and level passed on" diagnose -n shop --workload=web -o json --level workload --context prod
  check "exit code" 0 "$code"
  check "stderr" "" "$(cat "$work/err")"
  check "json: pairs with shop/web at an end, their nodes, every agent" "$(cat <<'EOF'
ingress-nginx-controller -> web ['node-a', 'node-b']
web -> payments ['node-b']
<none> pod is Pending
node-a 1
node-b 2
node-c pod is Running but not Ready
EOF
)" "$(python3 -c '
import json, sys
report = json.load(sys.stdin)
for p in report["pairs"]:
    print(p["client"]["workload"], "->", p["server"]["workload"], p["nodes"])
for n in report["nodes"]:
    print(n["node"], n.get("pairs", n.get("error")))
' <"$work/out" 2>&1)"
  check "kubectl calls" "$(sort <<EOF
kubectl --context prod get pods -n rstwatch -l $sel -o $list_jsonpath
kubectl --context prod exec -n rstwatch rstwatch-a1b2c -c agent -- rstwatch diagnose --from node -o json --level workload
kubectl --context prod exec -n rstwatch rstwatch-d3e4f -c agent -- rstwatch diagnose --from node -o json --level workload
kubectl --context prod exec -i -n rstwatch rstwatch-a1b2c -c agent -- rstwatch diagnose --merge - -o json --level workload --namespace shop --workload web
EOF
)" "$(sort "$FAKE_KUBECTL_LOG")"
fi

FAKE_KUBECTL_SCENARIO=none-ready run "diagnose: no ready agent" diagnose
check "exit code" 1 "$code"
check "stderr" "kubectl rstwatch: no ready rstwatch agent in namespace rstwatch (kubectl -n rstwatch get pods -l app.kubernetes.io/name=rstwatch,app.kubernetes.io/component=agent -o wide)" "$(cat "$work/err")"
check "stdout" "" "$(cat "$work/out")"
check "kubectl calls" "kubectl get pods -n rstwatch -l $sel -o $list_jsonpath" "$(cat "$FAKE_KUBECTL_LOG")"

run "diagnose: no agents" diagnose --agent-namespace monitoring
check "exit code" 1 "$code"
check "stderr" "kubectl rstwatch: no rstwatch agents in namespace monitoring (selector app.kubernetes.io/name=rstwatch,app.kubernetes.io/component=agent)" "$(cat "$work/err")"

# ---- usage -------------------------------------------------------------------------------
check_usage_error "no command"
check_usage_error "unknown command" logs
check_usage_error "trace without POD" trace -n shop
check_usage_error "trace with two PODs" trace -n shop web-0 web-1
check_usage_error "trace -n without value" trace web-0 -n
check_usage_error "trace --port not a number" trace -n shop web-0 --port http
check_usage_error "trace --pid= not a number" trace -n shop web-0 --pid=12x
check_usage_error "trace -o xml" trace -n shop web-0 -o xml
check_usage_error "trace --pod and a positional POD" trace -n shop web-0 --pod web-1
check_usage_error "trace --pod NS/NAME in another namespace" trace -n other --pod shop/web-0
check_usage_error "trace --pod a/b/c" trace --pod a/b/c
check_usage_error "trace --last not a number" trace -n shop web-0 --last ten
check_usage_error "trace --since empty" trace -n shop web-0 --since=
check_usage_error "help for no such command" help logs
check_usage_error "trace unknown option" trace -n shop web-0 --follow
check_usage_error "trace --cause empty" trace -n shop web-0 --cause ''
check_usage_error "status extra argument" status node-a
check_usage_error "status --context without value" status --context
check_usage_error "diagnose -o wide" diagnose -o wide
check_usage_error "diagnose --level team" diagnose --level team
check_usage_error "diagnose --workload without value" diagnose --workload
check_usage_error "diagnose -n empty" diagnose -n ''
check_usage_error "diagnose --namespace= empty" diagnose --namespace=
check_usage_error "diagnose with a POD" diagnose web-0
check_usage_error "diagnose --pod" diagnose --pod web-0
run "usage: diagnose message names the flag" diagnose --workload
check "message" "kubectl rstwatch: --workload: needs a value (see 'kubectl rstwatch help')" "$(cat "$work/err")"
run "usage: message" trace -n shop
check "message" "kubectl rstwatch: POD: trace needs a POD (trace -n NAMESPACE POD, or --pod NAMESPACE/NAME) (see 'kubectl rstwatch help')" "$(cat "$work/err")"
run "usage: message names the flag" trace -n shop web-0 --port http
check "message" "kubectl rstwatch: --port: needs a number, not 'http' (see 'kubectl rstwatch help')" "$(cat "$work/err")"

run "help" help
check "exit code" 0 "$code"
check "mentions every command" "3" "$(grep -cE '^  kubectl rstwatch (trace|status|diagnose)' "$work/out")"
run "help trace" help trace
check "exit code" 0 "$code"
check "lists every flag of trace" "" "$(for f in -n, --pod --since --last --port --pid --comm --cause --duration --level wide yaml idle_close_race data_after_close; do grep -q -- "$f" "$work/out" || echo "missing $f"; done)"
run "trace --help" trace --help
check "exit code" 0 "$code"
check "the same as help trace" "$("$plugin" help trace)" "$(cat "$work/out")"

run "help diagnose" help diagnose
check "exit code" 0 "$code"
check "lists every flag of diagnose" "" "$(for f in "-n," --namespace --workload --level -o --agent-namespace; do grep -q -- "$f" "$work/out" || echo "missing $f"; done)"
run "diagnose --help" diagnose --help
check "the same as help diagnose" "$("$plugin" help diagnose)" "$(cat "$work/out")"

echo "test_plugin: $passes checks passed, $failures failed"
(( failures == 0 ))
