"""Docs that run: every shell command of README.md and docs/runbook.md (their ```sh blocks) is
executed here, so a doc command that fails fails CI.

- The runbook's blocks run as written (bash, `set -eo pipefail`) against a REAL agent (BPF,
  namespaces made here, a pod map naming the example pair ingress/ingress-nginx-controller ->
  shop/tomcat-0) that has seen a real stale keepalive incident, through the real kubectl plugin
  and tests/docs/kubectl-standin/kubectl, which answers what those commands ask of a cluster and
  execs into the "agent pod" by running the real rstwatch with the pod's environment.
- README's main-job command runs as written from the repository root (in CI its build is already
  there): the agent it starts must become ready on 127.0.0.1:9740 with the embedded defaults; it
  is stopped by SIGTERM and must exit 0. README's test command must be the one .ci/run runs.
- A block this file has no expectation for fails the test: a new doc command needs one here.
Run as root from the repo root: /usr/bin/python3 -m unittest -v tests/docs/test_doc_commands.py
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))

import scenarios  # noqa: E402
from agent_case import AgentTestCase  # noqa: E402
from netns import rstwatch_bin  # noqa: E402

CLIENT = dict(namespace="ingress", pod="ingress-nginx-controller-5d88c8b7f-x7k2p",
              workload="ingress-nginx-controller")
SERVER = dict(namespace="shop", pod="tomcat-0", workload="tomcat")
SERVER_PORT = 8080
SERVER_IDLE_S = 0.8  # tomcat's keepalive timeout in this example
FOLLOW_S = 12  # a block still following after this long is stopped (as a user's Ctrl-C)


def shell_blocks(path):
    """(first line, script, line number) of each ```sh block, list indentation removed."""
    text = read(os.path.join(ROOT, path))
    blocks = []
    for m in re.finditer(r"^([ \t]*)```sh\n(.*?)^[ \t]*```", text, re.S | re.M):
        indent = len(m.group(1))
        lines = [l[indent:] if l[:indent].strip() == "" else l for l in m.group(2).splitlines()]
        script = "\n".join(lines).strip() + "\n"
        commands = [l for l in lines if l.strip() and not l.strip().startswith("#")]
        blocks.append((commands[0].strip(), script, text[:m.start()].count("\n") + 1))
    return blocks


def read(path):
    with open(path) as f:
        return f.read()


def run_block(script, env, cwd, follow_s=FOLLOW_S, until=None):
    """Runs a block as a user would; stops it (SIGINT to its process group, like Ctrl-C) after
    follow_s or once `until(stdout)` holds. Returns (exit status or None if stopped, out, err)."""
    out_path = os.path.join(cwd, ".block.out")
    err_path = os.path.join(cwd, ".block.err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        p = subprocess.Popen(["bash", "-c", "set -eo pipefail\n" + script], cwd=cwd, env=env,
                             stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + follow_s
        stopped = False
        while p.poll() is None:
            if time.monotonic() > deadline or (until and until(read(out_path))):
                time.sleep(0.5)  # what follows the awaited line (a row) is printed too
                stopped = True
                os.killpg(p.pid, signal.SIGINT)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                break
            time.sleep(0.1)
        try:
            os.killpg(p.pid, signal.SIGKILL)  # a background job of the block (port-forward)
        except ProcessLookupError:
            pass
    return (None if stopped else p.returncode), read(out_path), read(err_path)


def error_lines(stderr):
    bad = []
    for line in stderr.splitlines():
        if "following agent" in line:
            continue  # the plugin's informational line
        if re.match(r"^(kubectl )?rstwatch: ", line) or "stand-in" in line or "command not found" in line \
                or re.search(r"\b(error|Error)\b", line):
            bad.append(line)
    return bad


class RunbookCommands(AgentTestCase):
    """docs/runbook.md's ```sh blocks, against a real agent that saw a real incident."""

    def setUp(self):
        super().setUp()
        c = self.make_cluster(["server", "client"])
        pm = self.make_pod_map([dict(SERVER, ip=c["server"].ip4), dict(CLIENT, ip=c["client"].ip4)])
        self.tmp = tempfile.TemporaryDirectory(prefix="rstwatch-docs-")
        self.addCleanup(self.tmp.cleanup)
        token_file = os.path.join(self.tmp.name, "agent-token")
        with open(token_file, "w") as f:
            f.write("docs-t0ken\n")
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off", "--auth-token-file", token_file],
                              token="docs-t0ken")
        srv = self.make_actor(c["server"], comm="java")
        cli = self.make_actor(c["client"], comm="nginx")
        # Healthy traffic first: tomcat closes idle keepalive connections after ~0.8 s (the
        # evidence diagnose infers its timeout from), then the race the runbook is about.
        srv.step("listen", port=SERVER_PORT, name="L")
        for k in range(6):
            conn = scenarios.connect_to(cli, srv, SERVER_PORT, host=c["server"].ip4, name="k%d" % k)
            conn.exchange()
            srv.step("sleep", seconds=SERVER_IDLE_S)
            srv.step("close", name="k%d" % k)
            r = cli.step("recv", name="k%d" % k, size=10, exact=False)
            self.assertTrue(r["eof"], r)
            cli.step("close", name="k%d" % k)
        srv.step("close", name="L")
        scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=SERVER_PORT)
        self.settle()
        cluster = {"pods": {"shop/tomcat-0": "node-a"}, "agents": {"node-a": "rstwatch-a1b2c"},
                   "agent_url": ag.url, "token_file": token_file,
                   "rstwatch_dir": os.path.dirname(os.path.abspath(rstwatch_bin()))}
        cluster_file = os.path.join(self.tmp.name, "cluster.json")
        with open(cluster_file, "w") as f:
            json.dump(cluster, f)
        self.work = os.path.join(self.tmp.name, "work")
        os.mkdir(self.work)
        bin_dir = os.path.join(self.tmp.name, "bin")  # rstwatch and kubectl-rstwatch, as installed
        os.mkdir(bin_dir)
        os.symlink(os.path.abspath(rstwatch_bin()), os.path.join(bin_dir, "rstwatch"))
        os.symlink(os.path.join(ROOT, "deploy", "kubectl-rstwatch"), os.path.join(bin_dir, "kubectl-rstwatch"))
        self.env = dict(os.environ)
        for name in ("RSTWATCH_TOKEN_FILE", "RSTWATCH_CA_FILE", "RSTWATCH_AGENT_URL", "RSTWATCH_NAMESPACE"):
            self.env.pop(name, None)
        self.env.update(PATH=os.pathsep.join([os.path.join(HERE, "kubectl-standin"), bin_dir, self.env["PATH"]]),
                        DOCS_CLUSTER=cluster_file, DOCS_KUBECTL_LOG=os.path.join(self.tmp.name, "kubectl.log"))

    def expect_rows(self, out, what):
        rows = [l for l in out.splitlines() if re.match(r"\d\d:\d\d:\d\d\.\d{3} +idle_close_race ", l)]
        self.assertTrue(rows, "%s: no idle_close_race row replayed from the agent's history:\n%s" % (what, out))
        self.assertRegex(out, r"(?m)^TIME +CAUSE +OBSERVER +CLIENT +SERVER ", what)
        for row in rows:
            self.assertIn("ingress/%s" % CLIENT["pod"], row, what)
            self.assertIn("shop/tomcat-0:%d" % SERVER_PORT, row, what)
            self.assertIn("nginx", row, what)

    def expect_diagnosis(self, out, what):
        # The pair the incident happened on, by workload (default) or by pod, with its verdict.
        self.assertRegex(out, r"(?m)^ingress/ingress-nginx-controller( \(%s\))? -> shop/tomcat( \(tomcat-0\))?:%d$" % (
                         re.escape(CLIENT["pod"]), SERVER_PORT),
                         "%s: no diagnosis of the pair:\n%s" % (what, out))
        self.assertRegex(out, r"(?m)^  verdict: ", what)
        self.assertRegex(out, r"(?m)^  incidents: .*idle_close_race=1", what)
        self.assertRegex(out, r"(?m)^  verdict:  MISMATCH: .*the server closes idle connections after 0\.8\d s", what)
        self.assertRegex(out, r"(?m)^  fix \(ingress-nginx\): ingress-nginx ConfigMap: upstream-keepalive-timeout: ", what)

    def expect_check_and_status(self, out, what):
        self.assertRegex(out, r"(?m)^result: rstwatch can run here", "%s: no check verdict:\n%s" % (what, out))
        self.assertRegex(out, r"(?m)^write hooks ", what)
        # status: one row for the agent, ready, with its write hook
        self.assertRegex(out, r"(?m)^http://127\.0\.0\.1:\d+ +yes +(tp_btf|fentry|kprobe)/", "%s: no status row:\n%s" % (
            what, out))

    def expect_merged(self, out, what):
        # kubectl rstwatch diagnose: the same report, merged from every node's agent (one here).
        self.expect_diagnosis(out.replace("   (seen on node-a)", ""), what)
        self.assertRegex(out, r"(?m)^ingress/ingress-nginx-controller -> shop/tomcat:%d   \(seen on node-a\)$" % SERVER_PORT,
                         what)
        self.assertRegex(out, r"(?m)^merged the diagnoses of 1 of 1 agents: node-a \(1 pairs?\)$", what)

    def test_every_runbook_block_runs(self):
        expectations = {
            "node=node-a   # the alert's node label": [self.expect_check_and_status],
            "kubectl rstwatch trace -n shop tomcat-0 --since 30m": [self.expect_rows],
            "kubectl rstwatch diagnose -n ingress --workload ingress-nginx-controller": [self.expect_merged],
            "node=$(kubectl get pod -n shop tomcat-0 -o jsonpath='{.spec.nodeName}')": [self.expect_rows,
                                                                                       self.expect_diagnosis],
            "kubectl -n rstwatch get secret rstwatch-auth -o jsonpath='{.data.token}' | base64 -d > rstwatch.token": [
                self.expect_rows, self.expect_diagnosis],
        }
        blocks = shell_blocks("docs/runbook.md")
        self.assertTrue(blocks, "no ```sh block in docs/runbook.md")
        problems = []
        agent = None
        for first, script, line in blocks:
            what = "docs/runbook.md:%d (%s)" % (line, first)
            if first not in expectations:
                problems.append("%s: no expectation in %s: add one" % (what, __file__))
                continue
            # A block that names $agent without setting it continues the block before (as in a
            # terminal session): give it the agent the earlier block found.
            if "$agent" in script and "agent=" not in script and agent:
                script = "agent=%s\n%s" % (agent, script)
            # Stopped (Ctrl-C) once the trace, the block's last command, printed its replayed rows.
            # A block that does not follow (no trace) must end on its own.
            rc, out, err = run_block(script, self.env, self.work, follow_s=FOLLOW_S if "trace" in script else 120,
                                     until=lambda o: re.search(r"(?m)^\d\d:\d\d:\d\d\.\d{3} +idle_close_race", o))
            print("  [%s] exit %s\n%s%s" % (what, "stopped" if rc is None else rc, out, err), file=sys.stderr)
            if rc not in (None, 0):
                problems.append("%s: exit %s; stderr:\n%s" % (what, rc, err))
            if error_lines(err):
                problems.append("%s: errors:\n%s" % (what, "\n".join(error_lines(err))))
            for check in expectations[first]:
                try:
                    check(out, what)
                except AssertionError as e:
                    problems.append(str(e))
            if "agent=$(" in script:
                agent = "pod/rstwatch-a1b2c"
            headers = [l for l in out.splitlines() if l.startswith("TIME ")]
            if headers and headers[0] not in read(os.path.join(ROOT, "README.md")):
                problems.append("%s: README's example table has another header than the command prints:\n%s" % (
                    what, headers[0]))
        self.assertEqual(problems, [], "\n".join(problems))


class ReadmeCommands(unittest.TestCase):
    """README.md's two set-up commands."""

    def test_blocks_are_the_two_setup_commands(self):
        firsts = [first for first, _, _ in shell_blocks("README.md")]
        self.assertEqual(len(firsts), 2, firsts)
        self.assertIn("build/rstwatch agent", firsts[0])
        self.assertIn("ctest", firsts[1])

    def test_test_command_is_what_ci_runs(self):
        test_command = shell_blocks("README.md")[1][0]
        ci = read(os.path.join(ROOT, ".ci", "run"))
        self.assertIn(test_command, ci, ".ci/run must run README's test command verbatim")

    def test_main_job_command_starts_the_agent_with_defaults(self):
        if os.environ.get("RSTWATCH_DOCS_MAIN_JOB", "1" if os.environ.get("CI") else "0") != "1":
            self.skipTest("builds build/ from the repo root: set RSTWATCH_DOCS_MAIN_JOB=1 (CI does)")
        from agent import require_agent
        require_agent()
        main_job = shell_blocks("README.md")[0][1]
        p = subprocess.Popen(["bash", "-c", "set -eo pipefail\n" + main_job], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        output = []
        try:
            deadline = time.monotonic() + 1200  # a build from scratch on 2 cores
            ready = False
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    with urllib.request.urlopen("http://127.0.0.1:9740/readyz", timeout=2) as r:
                        ready = r.status == 200
                except OSError:
                    pass
                if ready:
                    break
                time.sleep(1)
            self.assertTrue(ready, "the README's main-job command did not bring up /readyz on 127.0.0.1:9740 "
                                   "(exit %s)" % p.poll())
            with urllib.request.urlopen("http://127.0.0.1:9740/metrics", timeout=5) as r:
                metrics = r.read().decode()
            self.assertIn("rstwatch_build_info", metrics)
            self.assertIn("rstwatch_records_lost_total 0", metrics)
        finally:
            agent_pids = subprocess.run(["pgrep", "-s", str(p.pid), "-f", "build/rstwatch agent"],
                                        capture_output=True, text=True).stdout.split()
            for pid in agent_pids:
                os.kill(int(pid), signal.SIGTERM)
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                out, _ = p.communicate()
            output.append(out or "")
        self.assertEqual(p.returncode, 0, "after SIGTERM the agent must exit 0; output tail:\n%s" %
                         "".join(output)[-3000:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
