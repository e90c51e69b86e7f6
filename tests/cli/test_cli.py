"""The CLI as a user meets it: every usage or configuration error is one line
`rstwatch: <flag>: <problem>` on stderr with exit 2, before anything is attached; an agent that
cannot be reached is one line with exit 1; help, version and the defaults in --help.

Runs the real binary (RSTWATCH_BIN). No kernel needed: usage errors happen before BPF is loaded
(tests/kernel/test_agent.py checks that a failing agent leaves no BPF link attached).
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

BIN = os.environ.get("RSTWATCH_BIN", os.path.join(os.path.dirname(__file__), "../../build/rstwatch"))
# "rstwatch: --flag: ...", "rstwatch: $RSTWATCH_TOKEN_FILE: ...", "rstwatch: foo: unknown command"
USAGE_LINE = re.compile(r"^rstwatch: (-{1,2}[a-z][a-z0-9-]*|\$[A-Z_]+|[a-z][a-z0-9-]*): \S")


def run(args, env=None, timeout=30, stdin=""):
    full_env = dict(os.environ)
    full_env.pop("RSTWATCH_TOKEN_FILE", None)
    full_env.pop("RSTWATCH_CA_FILE", None)
    full_env.pop("KUBERNETES_SERVICE_HOST", None)
    full_env.update(env or {})
    p = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=full_env, input=stdin)
    return p.returncode, p.stdout, p.stderr


def write(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def cluster_document():
    """What `kubectl rstwatch diagnose` pipes into `rstwatch diagnose --merge -`: node-a's and
    node-b's diagnoses (the fake kubectl's answers in tests/deploy), node-c's agent not ready,
    node-d's exec failed."""
    fixtures = os.path.join(os.path.dirname(__file__), "../deploy/fixtures")
    nodes = []
    for node, agent in (("node-a", "rstwatch-a1b2c"), ("node-b", "rstwatch-d3e4f")):
        with open(os.path.join(fixtures, "diagnosis-%s.json" % node)) as f:
            nodes.append({"node": node, "agent": agent, "ready": True, "diagnosis": json.load(f)})
    nodes.append({"node": "node-c", "agent": "rstwatch-g5h6i", "ready": False, "error": "pod is Running but not Ready"})
    nodes.append({"node": "node-d", "agent": "rstwatch-k9m0n", "ready": True,
                  "error": "rstwatch: cannot read the diagnosis: http://127.0.0.1:9740/diagnose: HTTP 503"})
    return {"nodes": nodes}


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class UsageErrors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(BIN):
            raise unittest.SkipTest("no rstwatch binary at %s" % BIN)
        cls.tmp = tempfile.mkdtemp(prefix="rstwatch-cli-")
        cls.token = os.path.join(cls.tmp, "token")
        with open(cls.token, "w") as f:
            f.write("t0ken\n")
        cls.empty = os.path.join(cls.tmp, "empty")
        open(cls.empty, "w").close()
        # diagnose --merge inputs that are not a cluster diagnosis
        cls.not_json = write(cls.tmp, "not.json", "nodes:\n- node-a\n")
        cls.no_nodes = write(cls.tmp, "no-nodes.json", '{"pairs": []}')
        cls.bad_node = write(cls.tmp, "bad-node.json", '{"nodes": [{"node": "node-a", "ready": "yes"}]}')
        cls.merge_doc = write(cls.tmp, "nodes.json", json.dumps(cluster_document()))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def cases(self):
        t = self.token
        # (args, text the one line must contain); each must exit 2.
        return [
            # the command line itself
            ([], "command: missing, one of trace, agent, diagnose"),
            (["foo"], "foo: unknown command"),
            (["help", "nope"], "nope"),
            (["--log-level", "loud", "check"], "--log-level"),
            # trace
            (["trace", "--pod", "web-0"], "--pod: needs --from"),
            (["trace", "-n", "shop"], "--namespace: needs --from"),
            (["trace", "--namespace", "shop"], "--namespace: needs --from"),
            (["trace", "web-0"], "pod: needs --from"),
            (["trace", "--from", "node", "--pod", "shop/web-0", "-n", "other"], "--pod: 'shop/web-0' is in namespace shop"),
            (["trace", "--from", "node", "--pod", "a/b/c"], "--pod: 'a/b/c' is not NAME or NAMESPACE/NAME"),
            (["trace", "--from", "node", "--pod", "web-0", "web-1"], "--pod"),
            (["trace", "--from", "notaurl"], "--from: 'notaurl' is not an agent address"),
            (["trace", "--from", "http://agent"], "--from: 'http://agent' is not an agent address"),
            (["trace", "--from", "node", "--idle-threshold", "2"], "--from: cannot be used with --idle-threshold"),
            (["trace", "--from", "node", "--write-hook", "kprobe"], "--from: cannot be used with --write-hook"),
            (["trace", "--idle-threshold", "nan"], "--idle-threshold: 'nan': must be a number of seconds from 0.01 to 86400"),
            (["trace", "--idle-threshold", "inf"], "--idle-threshold"),
            (["trace", "--idle-threshold", "0"], "--idle-threshold"),
            (["trace", "--duration", "nan"], "--duration: 'nan': must be a number of seconds above 0"),
            (["trace", "--duration", "0"], "--duration: '0': must be a number of seconds above 0, at most 2592000"),
            (["trace", "--duration", "-1"], "--duration"),
            (["trace", "--duration", "soon"], "--duration"),
            (["trace", "--cause", "bogus"], "unknown cause 'bogus' (write_after_fin, idle_close_race"),
            (["trace", "--port", "0"], "--port"),
            (["trace", "--port", "70000"], "--port"),
            (["trace", "--port", "http"], "--port"),
            (["trace", "--pid", "x"], "--pid"),
            (["trace", "--write-hook", "uprobe"], "--write-hook: must be auto, tp_btf, fentry or kprobe"),
            (["trace", "--from", "node", "--token-file", "/nonexistent/token"], "--token-file: /nonexistent/token: No such file or directory"),
            (["trace", "--from", "https://127.0.0.1:1", "--ca-file", "/nonexistent/ca.pem"], "--ca-file: /nonexistent/ca.pem: No such file"),
            (["trace", "--from", "node", "--token-file", self.empty], "--token-file"),
            (["trace", "--token-file", t], "--token-file: needs --from"),
            (["trace", "--since", "30m"], "--since: needs --from"),
            (["trace", "--from", "node", "--since", "yesterday"], "--since: 'yesterday': expected an RFC 3339 time"),
            # the agent's own parser: units in h, m, s order, each at most once
            (["trace", "--from", "node", "--since", "30m1h"], "--since: '30m1h': expected"),
            (["trace", "--from", "node", "--last", "0"], "--last"),
            (["trace", "--from", "node", "--last", "x"], "--last"),
            (["trace", "--last", "5"], "--last: needs --from"),
            (["trace", "--from", "node", "--level", "team"], "--level"),
            (["trace", "--level", "workload"], "--level: needs --from"),
            (["trace", "-o", "xml"], "--output: xml not in {table,wide,json,yaml}"),
            (["trace", "--follow"], "--follow: unknown option for 'trace'"),
            (["trace", "--duration"], "--duration: needs a value"),
            # diagnose
            (["diagnose"], "--from: diagnose needs --from URL"),
            (["diagnose", "--duration", "0"], "--duration"),
            (["diagnose", "--duration", "nan"], "--duration"),
            (["diagnose", "--from", "node", "--duration", "5"], "--from: cannot be used with --duration"),
            (["diagnose", "--from", "notaurl"], "--from: 'notaurl' is not an agent address"),
            (["diagnose", "--duration", "5", "--pod-map", "/nonexistent/map.yaml"], "--pod-map: /nonexistent/map.yaml: No such file"),
            (["diagnose", "--from", "node", "--idle-threshold", "2"], "--from: cannot be used with --idle-threshold"),
            (["diagnose", "--from", "node", "--level", "team"], "--level"),
            (["diagnose", "--from", "node", "-o", "csv"], "--output"),
            (["diagnose", "--from", "node", "--token-file", "/nonexistent/t"], "--token-file: /nonexistent/t"),
            (["diagnose", "--workload"], "--workload: needs a value"),
            (["diagnose", "--from", "node", "--workload", ""], "--workload: needs a workload name"),
            (["diagnose", "--from", "node", "-n"], "--namespace: needs a value"),
            (["diagnose", "--from", "node", "--namespace", ""], "--namespace: needs a namespace"),
            # diagnose --merge: several agents' diagnoses
            (["diagnose", "--merge", "-", "--from", "node"], "cannot be used with"),
            (["diagnose", "--merge", "-", "--duration", "5"], "cannot be used with"),
            (["diagnose", "--merge", "-", "--pod-map", t], "cannot be used with"),
            (["diagnose", "--merge", "-", "--idle-threshold", "2"], "cannot be used with"),
            (["diagnose", "--merge"], "--merge: needs a value"),
            (["diagnose", "--merge", "/nonexistent/nodes.json"], "--merge: /nonexistent/nodes.json: No such file or directory"),
            (["diagnose", "--merge", self.tmp], "--merge: %s: is a directory" % self.tmp),
            (["diagnose", "--merge", self.empty], "--merge: %s: not a JSON document" % self.empty),
            (["diagnose", "--merge", self.not_json], "--merge: %s: not a JSON document (syntax error at byte" % self.not_json),
            (["diagnose", "--merge", self.no_nodes], '--merge: %s: not a cluster diagnosis: no "nodes" array' % self.no_nodes),
            (["diagnose", "--merge", self.bad_node], '--merge: %s: nodes[0]: needs "node" and "agent"' % self.bad_node),
            (["diagnose", "--merge", self.merge_doc, "--level", "pod"], "node-a's diagnosis is at workload level, not pod (--level)"),
            # status
            (["status", "--from", "notaurl"], "--from: 'notaurl' is not an agent address"),
            (["status", "--token-file", "/nonexistent/t"], "--token-file: /nonexistent/t"),
            (["status", "-o", "xml"], "--output"),
            (["status", "node-a"], "node-a: unexpected argument"),
            (["status", "--ca-file", "/nonexistent/ca"], "--ca-file: /nonexistent/ca"),
            # check
            (["check", "extra"], "extra: unexpected argument"),
            (["check", "--write-hook", "nope"], "--write-hook"),
            # agent
            (["agent", "--kube", "off", "--kube-api", "https://127.0.0.1:6443"], "--kube-api: cannot be used with --kube off"),
            (["agent", "--series-ttl", "nan"], "--series-ttl"),
            (["agent", "--idle-threshold", "nan"], "--idle-threshold"),
            (["agent", "--pod-map", "/nonexistent/map.yaml"], "--pod-map: /nonexistent/map.yaml"),
            (["agent", "--kube-ca-file", "/nonexistent/ca"], "--kube-ca-file: /nonexistent/ca"),
            (["agent", "--kube-token-file", "/nonexistent/t"], "--kube-token-file: /nonexistent/t"),
            (["agent", "--auth-token-file", "/nonexistent/t"], "--auth-token-file: /nonexistent/t"),
            (["agent", "--tls-cert", "/nonexistent/c", "--tls-key", "/nonexistent/k"], "--tls-cert: /nonexistent/c"),
            (["agent", "--tls-cert", t], "--tls-cert: needs --tls-key"),
            (["agent", "--ring-buffer-size", "1000"], "--ring-buffer-size: must be a power of two"),
            (["agent", "--max-connections", "5"], "--max-connections"),
            (["agent", "--pair-labels", "team"], "--pair-labels"),
            (["agent", "--kube", "maybe"], "--kube"),
            (["agent", "--listen", "127.0.0.1:0", "--kube", "off", "--kube-token-file", t], "--kube-token-file: cannot be used with --kube off"),
            (["agent", "--listen", "127.0.0.1:0", "--kube-token-file", t], "--kube-token-file: --kube-token-file/--kube-ca-file need --kube-api"),
            (["agent", "--listen", "0.0.0.0:0", "--kube", "off"], "--listen: refusing to serve"),
            (["agent", "--listen", "nonsense", "--kube", "off"], "--listen"),
            (["agent", "--kube", "off", "--kube-events"], "--kube-events: cannot be used with --kube off"),
            (["agent", "--listen", "127.0.0.1:0", "--kube-events"],
             "--kube-events: needs Kubernetes attribution: run in a cluster or pass --kube-api"),
            (["agent", "--node-name", "node-a"], "--node-name: needs --kube-events"),
        ]

    def test_usage_errors_are_one_line_exit_2_nothing_attached(self):
        problems = []
        for args, must_contain in self.cases():
            rc, out, err = run(args)
            lines = [l for l in err.splitlines() if l.strip()]
            what = "rstwatch " + " ".join(args)
            if rc != 2:
                problems.append("%s: exit %s, expected 2 (stderr %r)" % (what, rc, err))
            if len(lines) != 1:
                problems.append("%s: %d stderr lines, expected 1: %r" % (what, len(lines), err))
            elif not USAGE_LINE.match(lines[0]):
                problems.append("%s: not 'rstwatch: <flag>: <problem>': %r" % (what, lines[0]))
            if must_contain and must_contain not in err:
                problems.append("%s: stderr does not say %r: %r" % (what, must_contain, err))
            if out.strip():
                problems.append("%s: printed on stdout: %r" % (what, out))
        print("%d invocations checked" % len(self.cases()), file=sys.stderr)
        self.assertEqual(problems, [], "\n".join(problems))

    def test_unreachable_agent_is_one_line_exit_1(self):
        url = "http://127.0.0.1:%d" % closed_port()
        problems = []
        for args in (["trace", "--from", url], ["trace", "--from", url, "-o", "json", "--since", "30m"],
                     ["status", "--from", url], ["diagnose", "--from", url]):
            rc, out, err = run(args)
            lines = [l for l in err.splitlines() if l.strip()]
            what = "rstwatch " + " ".join(args)
            if rc != 1:
                problems.append("%s: exit %s, expected 1" % (what, rc))
            if len(lines) != 1 or not lines[0].startswith("rstwatch: ") or "127.0.0.1" not in lines[0]:
                problems.append("%s: expected one 'rstwatch: ...' line naming the agent: %r" % (what, err))
            if out.strip():
                problems.append("%s: printed on stdout (a table header?): %r" % (what, out))
        self.assertEqual(problems, [], "\n".join(problems))


class MergedDiagnosis(unittest.TestCase):
    """`rstwatch diagnose --merge`: one report from several agents' diagnoses."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(BIN):
            raise unittest.SkipTest("no rstwatch binary at %s" % BIN)

    def test_table_merges_pairs_and_names_missing_nodes(self):
        rc, out, err = run(["diagnose", "--merge", "-"], stdin=json.dumps(cluster_document()))
        self.assertEqual((rc, err), (0, ""))
        for line in (
            # seen on both nodes: counts summed, the estimate with the most evidence (node-a's 9 closes)
            "ingress-nginx/ingress-nginx-controller -> shop/web:8080   (seen on node-a, node-b)",
            "  verdict:  MISMATCH: 2 stale keepalive incidents confirmed; the server closes idle connections after 20.00 s",
            "  server idle timeout: 20.00 s (9 closes)   client idle timeout: unknown (0 closes)   reuse: up to 21.30 s (63 reuses)",
            "  incidents: write_after_fin=1 idle_close_race=2",
            '  fix (ingress-nginx): ingress-nginx ConfigMap: upstream-keepalive-timeout: "15"',
            "ingress-nginx/ingress-nginx-controller -> shop/cart:8080   (seen on node-a)",
            "shop/web -> billing/payments:9000   (seen on node-b)",
            "merged the diagnoses of 2 of 4 agents: node-a (2 pairs), node-b (2 pairs)",
            "node node-c: agent rstwatch-g5h6i not ready: pod is Running but not Ready; its clients are not in this report",
            "node node-d: agent rstwatch-k9m0n failed: rstwatch: cannot read the diagnosis: "
            "http://127.0.0.1:9740/diagnose: HTTP 503; its clients are not in this report",
        ):
            self.assertIn(line + "\n", out)

    def test_json_with_filters(self):
        rc, out, err = run(["diagnose", "--merge", "-", "-o", "json", "-n", "shop", "--workload", "web"],
                           stdin=json.dumps(cluster_document()))
        self.assertEqual((rc, err), (0, ""))
        report = json.loads(out)
        self.assertEqual(report["level"], "workload")
        self.assertEqual([(p["client"]["workload"], p["server"]["workload"], p["nodes"]) for p in report["pairs"]],
                         [("ingress-nginx-controller", "web", ["node-a", "node-b"]), ("web", "payments", ["node-b"])])
        self.assertEqual(report["nodes"][0], {"node": "node-a", "agent": "rstwatch-a1b2c", "ready": True, "pairs": 1})
        self.assertEqual(report["nodes"][2], {"node": "node-c", "agent": "rstwatch-g5h6i", "ready": False,
                                              "error": "pod is Running but not Ready"})
        # -n alone: an end in the namespace (billing/payments only)
        rc, out, err = run(["diagnose", "--merge", self.doc_file(), "-o", "json", "--namespace", "billing"])
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual([p["server"]["workload"] for p in json.loads(out)["pairs"]], ["payments"])

    def doc_file(self):
        directory = tempfile.mkdtemp(prefix="rstwatch-cli-")
        self.addCleanup(shutil.rmtree, directory, True)
        return write(directory, "nodes.json", json.dumps(cluster_document()))


class HelpAndVersion(unittest.TestCase):
    def test_help_lists_commands_and_help_command_shows_flags_with_defaults(self):
        rc, out, err = run(["help"])
        self.assertEqual(rc, 0, err)
        for command in ("trace", "agent", "diagnose", "status", "check", "help", "version"):
            self.assertIn(command, out)
        rc, out, err = run(["help", "trace"])
        self.assertEqual(rc, 0, err)
        for text in ("-n,--namespace", "--pod", "--since", "--last", "wide", "yaml", "idle_close_race",
                     "abort_on_close", "data_after_close"):
            self.assertIn(text, out, "help trace lacks %r" % text)
        # Defaults are shown: the idle threshold (1 s) and the output format.
        self.assertRegex(out, r"--idle-threshold \S*=1 ")
        self.assertRegex(out, r"-o,--output \S*=table")
        rc, out, err = run(["help", "diagnose"])
        self.assertEqual(rc, 0, err)
        for text in ("--from", "--duration", "--merge", "-n,--namespace", "--workload", "--level"):
            self.assertIn(text, out, "help diagnose lacks %r" % text)
        rc, agent_help, err = run(["agent", "--help"])
        self.assertEqual(rc, 0, err)
        self.assertRegex(agent_help, r"--listen \S*=127\.0\.0\.1:9740")
        self.assertRegex(agent_help, r"--series-ttl \S*=300")

    def test_version(self):
        rc, out, err = run(["version"])
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^rstwatch \S+\n$")
        rc2, out2, _ = run(["--version"])
        self.assertEqual(rc2, 0)
        self.assertIn(out.split()[1], out2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
