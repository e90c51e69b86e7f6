"""The agent image as shipped, run the way deploy/base/daemonset.yaml runs it (ctest image_daemonset).

Builds deploy/Dockerfile once with scripts/build-image.sh (podman + runc; base images made with
mmdebstrap, tests/lib/container.py says why), then runs the DaemonSet's agent container as
`kubectl kustomize deploy/` renders it: uid 65532, capabilities dropped and exactly the
manifest's added, read-only root, privilege escalation allowed (file capabilities), the
runtime's default seccomp profile, the token Secret as a mounted file, the service account
files and KUBERNETES_SERVICE_* of an in-cluster pod (a fake API server over https on the
test's node namespace), the manifest's args, env, limits and grace period. The container
joins a pod network namespace of the test's own small cluster; a stale-keepalive race is
driven between two other pods and checked from outside the container:
  /readyz 200, the incidents on /metrics with the pods' names, /incidents streaming them with
  the token and 401 without it, `rstwatch trace --from node` and `rstwatch status` inside the
  container (what the kubectl plugin runs), SIGTERM within the grace period, no BPF link left.
Bad paths, one line each naming the privilege and the field that grants it: no CAP_BPF,
allowPrivilegeEscalation: false, and CRI-O's/podman's own default seccomp profile.
The TLS component (deploy/components/tls) runs too: https probes, `rstwatch status` inside.

Run as root from the repo root:  /usr/bin/python3 -m unittest -v tests/image/test_image.py
(RSTWATCH_TEST_IMAGE=TAG uses an image built before and leaves it in place.)
Needs podman, runc, mmdebstrap, kubectl (kustomize), curl, openssl (scripts/deps.sh --test);
without podman it skips, or fails when CI=true or RSTWATCH_REQUIRE_BPF=1.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import agent as agentlib  # noqa: E402
import container  # noqa: E402
import netns  # noqa: E402
import prom  # noqa: E402
import scenarios  # noqa: E402
from netns import IP, KernelTestCase  # noqa: E402

ROOT = container.ROOT
TOKEN = "image-test-token-%d" % os.getpid()
KUBE_TOKEN = "image-test-kube-token"
READY_TIMEOUT = 120.0  # attach + list pods; generous: this runs on a shared, loaded host
BUILD = None


def required():
    return os.environ.get("CI") == "true" or os.environ.get("RSTWATCH_REQUIRE_BPF") == "1"


def setUpModule():
    global BUILD
    if not container.podman_available():
        msg = "podman not available (scripts/deps.sh --test installs it) or not root"
        if required():
            raise AssertionError(msg)
        raise unittest.SkipTest(msg)
    netns.require_bpf()
    if os.environ.get("RSTWATCH_TEST_IMAGE"):  # development: an image built before, kept
        BUILD = container.ImageBuild(None, tag=os.environ["RSTWATCH_TEST_IMAGE"])
        return
    BUILD = container.ImageBuild(os.path.join(os.environ.get("RSTWATCH_BUILD_DIR", os.path.join(ROOT, "build")),
                                              "image-cache"))
    try:
        BUILD.build()
    except BaseException:
        BUILD.cleanup()
        raise
    size_mb = BUILD.size_bytes() / 1e6
    packages = BUILD.packages()
    print("\nimage %s: %.1f MB, %d packages, built in %.0f s (base images %.0f s)" % (
        BUILD.tag, size_mb, len(packages), BUILD.timings["image build"], BUILD.timings["base images"]),
        file=sys.stderr)
    print("image packages: " + ", ".join(packages), file=sys.stderr)


def tearDownModule():
    if BUILD is not None and not os.environ.get("RSTWATCH_TEST_IMAGE"):
        BUILD.cleanup()


def make_cert(directory, ip):
    """A self-signed certificate for IP (it is also its own CA): (cert path, key path, pem)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=" + ip, "-addext", "subjectAltName=IP:%s,DNS:rstwatch.rstwatch.svc" % ip,
                        "-keyout", key, "-out", cert], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise AssertionError("openssl req: " + r.stderr)
    with open(cert) as f:
        return cert, key, f.read()


def ns_http(ns, url, token=None, cafile=None, timeout=10, method="GET", data=None):
    """An HTTP request made inside network namespace ns (curl): (status, body)."""
    cmd = [IP, "netns", "exec", ns, "curl", "-sS", "--max-time", str(timeout), "-X", method, "-o", "-",
           "-w", "\n%{http_code}"]
    if token:
        cmd += ["-H", "Authorization: Bearer " + token]
    if cafile:
        cmd += ["--cacert", cafile]
    if data is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(data)]
    r = subprocess.run(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout + 10)
    body, _, code = r.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body + r.stderr


class NsStream:
    """`curl -N` of /incidents inside a namespace, lines collected on a thread."""

    def __init__(self, ns, url, token):
        cmd = [IP, "netns", "exec", ns, "curl", "-sS", "-N", "--max-time", "300", "-H",
               "Authorization: Bearer " + token, url]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.strip())

    def incidents(self):
        with self._lock:
            out = []
            for line in self.lines:
                if line.startswith("{") and '"cause"' in line:
                    out.append(json.loads(line))
            return out

    def close(self):
        netns.kill_proc(self.proc, timeout=3.0)
        self._t.join(timeout=5)


class FakeApiServer:
    """tests/lib/fake_kube.py over https in the node namespace, pods added through /_control; it
    enforces deploy/base's ClusterRole for the agent's service account, as a cluster would."""

    def __init__(self, cluster, tmp):
        self.ns = cluster.node_ns
        self.host = cluster.bridge_ip4
        self.cert, self.key, self.ca_pem = make_cert(tmp, self.host)
        cmd = [IP, "netns", "exec", self.ns, sys.executable, os.path.join(ROOT, "tests", "lib", "fake_kube.py"),
               "--host", self.host, "--port", "0", "--token", KUBE_TOKEN, "--tls-cert", self.cert, "--tls-key",
               self.key, "--rbac", os.path.join(ROOT, "deploy", "base", "clusterrole.yaml"), "--exit-on-stdin-eof"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("fake_kube did not start: " + self.proc.stderr.read())
        self.port = json.loads(line)["port"]
        self.url = "https://%s:%d" % (self.host, self.port)

    def control(self, op, **args):
        status, body = ns_http(self.ns, self.url + "/_control", cafile=self.cert, method="POST",
                               data=dict(op=op, **args))
        if status != 200:
            raise AssertionError("fake_kube %s: HTTP %d %s" % (op, status, body))
        return json.loads(body)["result"]

    def add_pod(self, builder, **args):
        return self.control("add_pod", builder=builder, args=args)

    def kube(self):
        """What DaemonSetRun needs to play the in-cluster configuration."""
        return (self.host, self.port, KUBE_TOKEN, self.ca_pem)

    def close(self):
        netns.kill_proc(self.proc, timeout=5.0)


def error_lines(text):
    return [l for l in text.splitlines() if " error " in l or '"level":"error"' in l or l.startswith("rstwatch:")]


class ImageTestCase(KernelTestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="rw-image-")
        os.chmod(self.tmp, 0o755)
        self.addCleanup(subprocess.run, ["rm", "-rf", self.tmp])
        self.links_before = set(agentlib.rw_links())

    def start_container(self, cluster, pod, secrets, kube=None, components=(), **overrides):
        # A DaemonSet always runs with the API server (and the manifest's --kube-events needs it).
        if kube is None:
            api = FakeApiServer(cluster, self.tmp)
            self.addCleanup(api.close)
            kube = api.kube()
        ds = container.rendered_daemonset(components)
        run = container.DaemonSetRun(ds, BUILD.tag, "/run/netns/" + pod.ns, secrets, kube=kube, **overrides)
        self.addCleanup(run.remove)
        self.addCleanup(self._dump_logs_on_failure, run)
        run.start()
        return run

    def _dump_logs_on_failure(self, run):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        failed = result is not None and any(t is self for t, _ in list(result.failures) + list(result.errors))
        if failed or os.environ.get("RSTWATCH_TEST_VERBOSE") == "1":
            print("\n  [container %s] podman run %s\n  logs:\n%s" % (
                run.name, " ".join(run.run_args() if run.args is None else ["..."] + run.args),
                "".join("    " + l + "\n" for l in run.logs().splitlines()[-40:])), file=sys.stderr)

    def wait_ready(self, cluster, run, url, cafile=None):
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            status, code = run.state()
            if status in ("exited", "stopped"):
                self.fail("the agent exited (%s) before /readyz answered 200:\n%s" % (code, run.logs()[-3000:]))
            last = ns_http(cluster.node_ns, url, cafile=cafile, timeout=5)
            if last[0] == 200:
                return
            time.sleep(0.5)
        self.fail("/readyz never answered 200 within %.0f s (last: %r)\n%s" % (READY_TIMEOUT, last, run.logs()[-3000:]))

    def assert_no_link_left(self):
        leaked = set(agentlib.rw_links()) - self.links_before
        self.assertEqual(leaked, set(), "rw_* BPF links left after the container stopped")

    def run_expecting_failure(self, cluster, **overrides):
        """Starts the container expecting the agent to refuse: (exit code, logs)."""
        run = self.start_container(cluster, cluster["agent"], {"rstwatch-auth": {"token": TOKEN + "\n"}},
                                   **overrides)
        code = run.wait_exit(60)
        self.assertIsNotNone(code, "the agent did not exit:\n" + run.logs())
        return code, run.logs()


class DaemonSetImageTest(ImageTestCase):
    def test_daemonset_run_counts_streams_and_stops_cleanly(self):
        cluster = self.make_cluster(("server", "client", "agent"))
        server_pod, client_pod, agent_pod = cluster["server"], cluster["client"], cluster["agent"]
        api = FakeApiServer(cluster, self.tmp)
        self.addCleanup(api.close)
        srv = api.add_pod("statefulset_pod", statefulset="tomcat", ordinal=0, namespace="shop", ip=server_pod.ip4)
        cli = api.add_pod("deployment_pod", deployment="ingress-nginx-controller", namespace="ingress-nginx",
                          ip=client_pod.ip4)
        api.add_pod("daemonset_pod", daemonset="rstwatch", namespace="rstwatch", ip=agent_pod.ip4)
        server_id = ("shop", srv["metadata"]["name"], "tomcat")
        client_id = ("ingress-nginx", cli["metadata"]["name"], "ingress-nginx-controller")

        run = self.start_container(cluster, agent_pod, {"rstwatch-auth": {"token": TOKEN + "\n"}},
                                   kube=api.kube(), node_name="node-a")
        # What the manifest says, as run: read from the rendered DaemonSet, not restated here.
        self.assertEqual(BUILD.image_user(), "65532:65532")
        self.assertIn("--auth-token-file", run.args)
        path, port, scheme = run.probe("readinessProbe")
        base = "http://%s:%d" % (agent_pod.ip4, port)
        self.assertEqual(scheme, "HTTP")
        self.wait_ready(cluster, run, base + path)
        live_path = run.probe("livenessProbe")[0]
        self.assertEqual(ns_http(cluster.node_ns, base + live_path)[0], 200)
        logs = run.logs()
        self.assertIn("dropped capabilities", logs)
        self.assertEqual(error_lines(logs), [], logs)

        stream = NsStream(cluster.node_ns, base + "/incidents", TOKEN)
        self.addCleanup(stream.close)
        status, body = ns_http(cluster.node_ns, base + "/incidents", timeout=5)
        self.assertEqual(status, 401, body)
        status, body = ns_http(cluster.node_ns, base + "/metrics", timeout=5)
        self.assertEqual(status, 401, body)
        # The in-container follower, as `kubectl rstwatch trace` runs it (env from the manifest).
        inside = run.exec_popen(["rstwatch", "trace", "--from", "node", "-o", "json", "--duration", "60"])
        self.addCleanup(netns.kill_proc, inside)
        time.sleep(2.0)  # both followers connected before the incident

        client = self.make_actor(client_pod, comm="nginx")
        server = self.make_actor(server_pod, comm="java")
        conn, expected = scenarios.idle_close_rst(client, server, host=server_pod.ip4, idle_s=1.5)

        def ours(labels):
            return labels.get("server_namespace") == "shop" or labels.get("client_namespace") == "ingress-nginx"

        want = {("idle_close_race", "client") + tuple(agentlib.pair_labels(client_id, server_id, conn.listen_port)[k]
                                                      for k in agentlib.PAIR): 1.0,
                ("abort_on_close", "server") + tuple(agentlib.pair_labels(client_id, server_id, conn.listen_port)[k]
                                                     for k in agentlib.PAIR): 1.0}
        got = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body = ns_http(cluster.node_ns, base + "/metrics", token=TOKEN)
            self.assertEqual(status, 200, body)
            m = prom.parse(body)
            got = {agentlib.metric_pair_key(s): s.value for s in m.samples_of("rstwatch_incidents_total")
                   if ours(s.labels_dict) and s.value > 0}
            if got == want:
                break
            time.sleep(0.5)
        self.assertEqual(got, want, "incidents on /metrics (exact, with the pods' names)")
        self.assertEqual(m.value("rstwatch_attribution_synced", source="kubernetes"), 1.0)

        def streamed(incidents):
            return sorted((i["cause"], i["observer"], i["client"].get("pod"), i["server"].get("pod"))
                          for i in incidents if i["server"].get("namespace") == "shop")

        want_streamed = sorted([("abort_on_close", "server", client_id[1], server_id[1]),
                                ("idle_close_race", "client", client_id[1], server_id[1])])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and streamed(stream.incidents()) != want_streamed:
            time.sleep(0.3)
        self.assertEqual(streamed(stream.incidents()), want_streamed, "/incidents with the token")

        # The manifest's --kube-events: the reset as an Event on the client's pod, from this node,
        # written over https under the ClusterRole of deploy/base (the fake refuses anything else).
        def reset_events():
            return [e for e in api.control("events") if e.get("reason") == "StaleKeepaliveReset"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not reset_events():
            time.sleep(0.5)
        events = reset_events()
        self.assertEqual(len(events), 1, api.control("events"))
        self.assertEqual((events[0]["regarding"]["name"], events[0]["regarding"]["uid"]),
                         (cli["metadata"]["name"], cli["metadata"]["uid"]))
        self.assertEqual((events[0]["reportingController"], events[0]["reportingInstance"]), ("rstwatch", "node-a"))
        self.assertEqual([u for u in api.control("rbac_usage") if u["forbidden"]], [])

        # `rstwatch status` inside the container (kubectl rstwatch status runs exactly this).
        r = run.exec(["rstwatch", "status", "-o", "json"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        st = json.loads(r.stdout)
        self.assertEqual(st.get("ready"), True, st)
        self.assertGreaterEqual(st.get("incidents", 0), 2, st)

        # SIGTERM within the grace period: exit 0, nothing attached. The in-container follower
        # sees the stream end and has printed both incidents first.
        code, elapsed = run.stop()
        self.assertEqual(code, 0, run.logs()[-3000:])
        self.assertLess(elapsed, run.grace_s, "podman stop waited for the grace period (SIGKILL)")
        out, err = inside.communicate(timeout=30)
        inside_incidents = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        self.assertEqual(streamed(inside_incidents), want_streamed, "trace --from node inside: " + err)
        self.assert_no_link_left()

    def test_tls_component_serves_https_probes_and_status_inside(self):
        cluster = self.make_cluster(("agent",))
        agent_pod = cluster["agent"]
        cert, key, pem = make_cert(self.tmp, "127.0.0.1")
        with open(key) as f:
            key_pem = f.read()
        secrets = {"rstwatch-auth": {"token": TOKEN + "\n"},
                   "rstwatch-tls": {"tls.crt": pem, "tls.key": key_pem, "ca.crt": pem}}
        run = self.start_container(cluster, agent_pod, secrets, components=("tls",))
        path, port, scheme = run.probe("readinessProbe")
        self.assertEqual(scheme, "HTTPS")
        # The probe as the kubelet makes it (https, certificate not verified), from outside.
        deadline = time.monotonic() + READY_TIMEOUT
        status = 0
        while time.monotonic() < deadline and status != 200:
            status, _ = self._insecure_get(cluster, agent_pod.ip4, port, path)
            if status != 200:
                self.assertEqual(run.state()[0], "running", run.logs())
                time.sleep(0.5)
        self.assertEqual(status, 200, run.logs())
        status, body = self._insecure_get(cluster, agent_pod.ip4, port, "/metrics")
        self.assertEqual(status, 401, body)
        # Inside: RSTWATCH_AGENT_URL=https://127.0.0.1:9740 and RSTWATCH_CA_FILE from the component.
        self.assertTrue(run.env()["RSTWATCH_AGENT_URL"].startswith("https://"), run.env())
        r = run.exec(["rstwatch", "status", "-o", "json"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(json.loads(r.stdout).get("ready"), True, r.stdout)
        code, elapsed = run.stop()
        self.assertEqual(code, 0, run.logs()[-3000:])
        self.assert_no_link_left()

    def test_allow_privilege_escalation_false_still_attaches_here(self):
        # Measured: with no_new_privs (allowPrivilegeEscalation: false) podman, like containerd,
        # has already given the process the permitted set of its added capabilities, and the
        # kernel lets execve keep file capabilities within it; the agent raises them and runs.
        cluster = self.make_cluster(("agent",))
        run = self.start_container(cluster, cluster["agent"], {"rstwatch-auth": {"token": TOKEN + "\n"}},
                                   allow_privilege_escalation=False)
        path, port, _ = run.probe("readinessProbe")
        self.wait_ready(cluster, run, "http://%s:%d%s" % (cluster["agent"].ip4, port, path))
        self.assertIn("capabilities CAP_BPF, CAP_PERFMON (raised from the permitted set", run.logs())
        self.assertEqual(run.exec(["grep", "NoNewPrivs", "/proc/1/status"]).stdout.split(), ["NoNewPrivs:", "1"])
        code, _ = run.stop()
        self.assertEqual(code, 0, run.logs()[-3000:])
        self.assert_no_link_left()

    def _insecure_get(self, cluster, ip, port, path):
        cmd = [IP, "netns", "exec", cluster.node_ns, "curl", "-sS", "-k", "--max-time", "5", "-o", "-", "-w",
               "\n%{http_code}", "https://%s:%d%s" % (ip, port, path)]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=20)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body + r.stderr


class BadPrivilegesImageTest(ImageTestCase):
    """Each refusal: non-zero exit, one error line naming the privilege and the field, nothing attached."""

    def assert_one_line(self, code, logs, needles):
        self.assertNotEqual(code, 0, logs)
        lines = error_lines(logs)
        self.assertEqual(len(lines), 1, logs)
        for needle in needles:
            self.assertIn(needle, lines[0])
        self.assert_no_link_left()

    def test_without_cap_bpf(self):
        cluster = self.make_cluster(("agent",))
        caps = [c for c in container.DaemonSetRun(container.rendered_daemonset(), BUILD.tag, "", {}).capabilities_add()
                if c != "BPF"]
        code, logs = self.run_expecting_failure(cluster, caps_add=caps)
        self.assert_one_line(code, logs, ["missing CAP_BPF", "securityContext.capabilities.add"])

    def test_runtime_without_a_permitted_set_and_no_new_privs(self):
        # no_new_privs lets execve grant file capabilities only within the permitted set the
        # process already had. containerd, Docker and podman give the container's process its
        # capabilities' permitted set before exec, so allowPrivilegeEscalation: false alone does
        # not stop the agent there (DaemonSetImageTest.test_allow_privilege_escalation_false_*).
        # A runtime that starts the process without one is modelled by exec_unprivileged
        # (tests/image/exec_unprivileged.c): from root to 65532 without keeping capabilities,
        # no_new_privs, exec: the file capabilities are then ignored.
        helper = os.environ.get("RSTWATCH_EXEC_UNPRIVILEGED",
                                os.path.join(ROOT, "build", "tests", "exec_unprivileged"))
        self.assertTrue(os.access(helper, os.X_OK), "%s: build it (cmake --build build)" % helper)
        cluster = self.make_cluster(("agent",))
        caps = container.DaemonSetRun(container.rendered_daemonset(), BUILD.tag, "", {}).capabilities_add()
        code, logs = self.run_expecting_failure(
            cluster, user="0:0", caps_add=caps + ["SETUID", "SETGID"], extra_volumes=[(helper, "/exec-unprivileged")],
            entrypoint=["/exec-unprivileged", "/usr/local/bin/rstwatch"])
        self.assert_one_line(code, logs, ["CAP_BPF", "no_new_privs", "allowPrivilegeEscalation: true"])

    def test_cri_o_and_podman_default_seccomp_profile(self):
        cluster = self.make_cluster(("agent",))
        code, logs = self.run_expecting_failure(cluster, seccomp="podman-default")
        self.assert_one_line(code, logs, ["bpf() refused", "seccomp profile", "docs/deploy.md#seccomp"])


if __name__ == "__main__":
    unittest.main()
