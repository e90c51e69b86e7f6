"""Kernel tests of `rstwatch agent --kube-events`: Kubernetes Events from real incidents.

Real sockets in this test's pod namespaces (an ingress-nginx Deployment pod as the client, a
tomcat StatefulSet pod as the server), a real agent, and tests/lib/fake_kube.py as the API
server: it speaks events.k8s.io/v1 with the API server's validation, and enforces the RBAC
rules of deploy/base/clusterrole.yaml exactly as they are in the manifests. Every Event the
agent wrote is then validated against the Kubernetes schema (tests/deploy/validate_event.js).
Run as root from the repo root:  /usr/bin/python3 -m unittest -v tests/kernel/test_agent_events.py
"""

import json
import os
import re
import subprocess
import sys
import time
import unittest

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import scenarios  # noqa: E402
from agent_case import AgentTestCase  # noqa: E402
from fake_kube import FakeKube, deployment_pod, statefulset_pod  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOKEN = "rstwatch-events-token"
SERVER_PORT = 8080
SERVER_IDLE_S = 0.8   # tomcat's keepalive timeout in this test (the agent infers it)
IDLE_THRESHOLD_S = 0.5
# The agent's per-Event interval: a series is patched at most once a minute.
PER_EVENT_INTERVAL_S = 60
STALE_CAUSES = ("write_after_fin", "idle_close_race", "abort_on_close", "data_after_close")


def clusterrole_rules():
    with open(os.path.join(REPO, "deploy", "base", "clusterrole.yaml")) as f:
        return yaml.safe_load(f)["rules"]


def rule_set(rules):
    """{(apiGroup, resource, verb)} granted by RBAC rules."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def validate_events(events):
    """Problems found by the Kubernetes schema (kubernetes-models), one per line; "" if none."""
    # This test may run before the deploy tests that would otherwise install kubernetes-models.
    subprocess.run([os.path.join(REPO, "tests", "deploy", "npm_packages.sh")], check=True, timeout=600)
    proc = subprocess.run(["node", os.path.join(REPO, "tests", "deploy", "validate_event.js"), "-"],
                          input=json.dumps(events), capture_output=True, text=True, timeout=60)
    return "" if proc.returncode == 0 else (proc.stdout + proc.stderr).strip() or "exit %d" % proc.returncode


class TestAgentEvents(AgentTestCase):

    def setUp(self):
        super().setUp()
        c = self.make_cluster(["server", "client"])
        self.c = c
        self.kube = FakeKube(token=TOKEN)
        self.kube.start()
        self.addCleanup(self.kube.stop)
        self.server_pod = self.kube.add_pod(statefulset_pod("tomcat", 0, "shop", ip=c["server"].ip4))
        self.client_pod = self.kube.add_pod(deployment_pod("ingress-nginx-controller", "ingress-nginx",
                                                           ip=c["client"].ip4, template_hash="5d88c8b7f"))
        self.client_name = self.client_pod["metadata"]["name"]
        self.srv = self.make_actor(c["server"], comm="java")
        self.cli = self.make_actor(c["client"], comm="nginx")

    def start_events_agent(self, rules):
        self.kube.set_rbac(rules)
        token_file = os.path.join(self.make_pod_map().dir, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        return self.start_agent(["--kube-api", self.kube.url, "--kube-token-file", token_file,
                                 "--kube-events", "--node-name", "node-a"], idle_threshold=IDLE_THRESHOLD_S)

    def healthy_closes(self, count=6):
        """tomcat closes idle keepalive connections after SERVER_IDLE_S: the evidence the agent
        infers its timeout from (and, nginx never closing first, the mismatch)."""
        self.srv.step("listen", port=SERVER_PORT, name="L")
        for k in range(count):
            conn = scenarios.connect_to(self.cli, self.srv, SERVER_PORT, host=self.c["server"].ip4, name="k%d" % k)
            conn.exchange()
            self.srv.step("sleep", seconds=SERVER_IDLE_S)
            self.srv.step("close", name="k%d" % k)
            r = self.cli.step("recv", name="k%d" % k, size=10, exact=False)
            self.assertTrue(r["eof"], r)
            self.cli.step("close", name="k%d" % k)
        self.srv.step("close", name="L")

    def races(self, count):
        for _ in range(count):
            scenarios.idle_close_rst(self.cli, self.srv, host=self.c["server"].ip4, port=SERVER_PORT,
                                     idle_s=IDLE_THRESHOLD_S + 0.3)

    def stale_incidents(self, ag):
        """Stale-keepalive incidents the client saw (one per failed request), client pod -> tomcat."""
        total = 0
        for s in ag.scrape().samples_of("rstwatch_incidents_total"):
            d = s.labels_dict
            if d.get("client_pod") == self.client_name and d.get("server_workload") == "tomcat" \
                    and d.get("cause") in STALE_CAUSES and d.get("observer") == "client":
                total += s.value
        return int(total)

    def events_of(self, reason):
        return [e for e in self.kube.events() if e.get("reason") == reason]

    def wait_until(self, what, cond, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(0.2)
        self.fail("timed out after %.0f s waiting for %s; events: %s" % (
            timeout, what, json.dumps(self.kube.events(), indent=1)[:3000]))

    @staticmethod
    def series_count(event):
        return event.get("series", {}).get("count", 1)

    def test_events_on_the_client_pod_under_the_manifests_rbac(self):
        """The prediction (with ingress-nginx's fix) and the resets become Events on the ingress pod that
        `kubectl describe pod` finds (regarding.uid), the resets aggregated into one series whose
        count reaches the agent's own incident count; the ClusterRole covers exactly what the
        agent asks, and every Event passes the Kubernetes schema."""
        rules = clusterrole_rules()
        ag = self.start_events_agent(rules)
        self.healthy_closes()
        mismatch = self.wait_until("KeepaliveTimeoutMismatch",
                                   lambda: self.events_of("KeepaliveTimeoutMismatch"), 20)
        self.assertEqual(len(mismatch), 1, mismatch)
        m = mismatch[0]
        self.assertEqual(m["type"], "Warning")
        self.assertEqual(m["metadata"]["namespace"], "ingress-nginx")
        self.assertEqual(m["regarding"]["name"], self.client_name)
        self.assertEqual(m["regarding"]["uid"], self.client_pod["metadata"]["uid"])
        self.assertEqual((m["reportingController"], m["reportingInstance"]), ("rstwatch", "node-a"))
        self.assertIn("ingress-nginx/ingress-nginx-controller -> shop/tomcat:%d" % SERVER_PORT, m["note"])
        self.assertRegex(m["note"], r'Fix \(ingress-nginx\): ingress-nginx ConfigMap: upstream-keepalive-timeout: "0\.6"\.')

        self.races(2)
        reset = self.wait_until("StaleKeepaliveReset", lambda: self.events_of("StaleKeepaliveReset"), 20)
        self.assertEqual(len(reset), 1, reset)
        self.assertEqual(reset[0]["regarding"]["uid"], self.client_pod["metadata"]["uid"])
        self.assertEqual(reset[0]["related"]["name"], "tomcat-0")
        self.assertIn("idle_close_race", reset[0]["note"])
        # More resets: one Event, its series advanced (within a minute) to what the agent counted.
        self.races(3)
        time.sleep(3)  # the agent holds incidents up to 2 s while it names their ends
        counted = self.stale_incidents(ag)
        self.assertEqual(counted, 5)
        self.wait_until("the series to reach %d" % counted,
                        lambda: [e for e in self.events_of("StaleKeepaliveReset")
                                 if self.series_count(e) == counted], PER_EVENT_INTERVAL_S + 20)
        self.assertEqual(len(self.events_of("StaleKeepaliveReset")), 1)

        requests = self.kube.event_requests()
        self.assertEqual([r for r in requests if r["status"] >= 300], [], "refused writes")
        self.assertTrue(any(r["method"] == "PATCH" and r["content_type"] == "application/merge-patch+json"
                            for r in requests), requests)
        # As posted and as stored: both valid against the Kubernetes schema.
        posted = [json.loads(r["body"]) for r in requests if r["method"] == "POST"]
        self.assertEqual(len(posted), 2, requests)
        self.assertEqual(validate_events(posted), "")
        self.assertEqual(validate_events(self.kube.events()), "")
        used = {(u["apiGroup"], u["resource"], u["verb"]) for u in self.kube.rbac_usage()}
        self.assertEqual(used, rule_set(rules), "the ClusterRole must grant exactly what the agent uses")
        # The agent's metrics follow within its next tick (a second).
        def writes():
            return {(s.labels_dict["verb"], s.labels_dict["result"]): s.value
                    for s in ag.scrape().samples_of("rstwatch_kube_event_writes_total")}
        self.wait_until("the patch in rstwatch_kube_event_writes_total", lambda: writes().get(("patch", "ok")), 10)
        self.assertEqual(writes().get(("create", "ok")), 2, writes())
        m = ag.scrape()
        self.assertEqual(sum(s.value for s in m.samples_of("rstwatch_kube_event_occurrences_dropped_total")), 0)
        self.assertEqual(sum(s.value for s in m.samples_of("rstwatch_kube_events_pending")), 0)

    def test_api_refusing_events_loses_no_incident(self):
        """Without create/patch on events the agent stays ready, counts every incident, counts the
        refused writes, says so once; granted again, the Event arrives with every occurrence."""
        rules = [r for r in clusterrole_rules() if "events" not in r["resources"]]
        ag = self.start_events_agent(rules)
        start = len(ag.lines())
        self.races(2)

        def forbidden():
            m = ag.scrape()
            return sum(s.value for s in m.samples_of("rstwatch_kube_event_writes_total")
                       if s.labels_dict["result"] == "forbidden")
        self.wait_until("two refused writes", lambda: forbidden() >= 2, 30)
        self.assertEqual(ag.get("/readyz")[0], 200)
        counted = self.stale_incidents(ag)
        self.assertEqual(counted, 2)
        warnings = [l for l in ag.lines()[start:] if "Kubernetes Events:" in l]
        self.assertEqual(len(warnings), 1, "one warning per outage:\n" + "".join(warnings))
        self.assertRegex(warnings[0], r"403.*forbidden.*create and patch on events")
        self.assertEqual(self.kube.events(), [])

        self.kube.set_rbac(clusterrole_rules())
        self.wait_until("the Event with every occurrence",
                        lambda: [e for e in self.events_of("StaleKeepaliveReset")
                                 if self.series_count(e) == counted], 90)
        self.assertIsNotNone(ag.wait_log(r"Kubernetes Events: the API accepts writes again", start, timeout=5))
        self.assertEqual(validate_events(self.kube.events()), "")


if __name__ == "__main__":
    unittest.main()
