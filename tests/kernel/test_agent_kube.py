"""Kernel tests of `rstwatch agent --kube-api`: attribution from a (fake) Kubernetes API.

tests/lib/fake_kube.py serves pods and services in the real wire format on 127.0.0.1;
its pods carry the IPs of this test's pod namespaces (a Deployment client, a StatefulSet
server, a CronJob, a DaemonSet and a bare pod, a hostNetwork pod on the node namespace's
address) and a Service whose ClusterIP is an extra address on the server's namespace.
The agent lists and watches them with a bearer token; incidents from real sockets must
carry the right namespace/pod/workload, also across pod IP reuse and API outages.
Run as root from the repo root:  /usr/bin/python3 -m unittest -v tests/kernel/test_agent_kube.py
"""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import scenarios  # noqa: E402
from agent_case import (AgentTestCase, add_service_ip, expected_from,  # noqa: E402
                        node_as_pod, pair)
from fake_kube import (FakeKube, bare_pod, cronjob_pod, daemonset_pod,  # noqa: E402
                       deployment_pod, host_network_pod, service, statefulset_pod)

TOKEN = "rstwatch-test-token"
IDLE_S = 0.8  # idle before the racing write (threshold 0.5 s): keeps the tests short
RELIST_TIMEOUT = 90.0  # the agent's backoff after a long outage may be long
# How long the API outage of test_api_outage_capture_continues_labels_catch_up lasts at least
# (500s, then 401s): past the agent's 30 s backoff cap.
OUTAGE_S = float(os.environ.get("RSTWATCH_KUBE_OUTAGE_S", "125"))
# With Kubernetes the agent holds an event up to 2 s while an end is unknown, and delivers in
# arrival order: any RST on the host with an end outside the cluster (loopback API calls,
# other traffic) delays the events behind it by up to 2 s.  Scrape after that.
KUBE_SETTLE_S = 2.7


def refused_loopback_connect():
    """A connect to a closed loopback port: the kernel answers RST (no socket)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connecting to it is refused
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.connect(("127.0.0.1", port))
        except OSError:
            pass
        finally:
            t.close()
    finally:
        s.close()


def ident(pod_obj, workload):
    md = pod_obj["metadata"]
    return (md["namespace"], md["name"], workload)


class KubeAgentTestCase(AgentTestCase):

    def start_kube(self, token=TOKEN, **kw):
        kube = FakeKube(token=token, **kw)
        kube.start()
        self.addCleanup(kube.stop)
        return kube

    def token_file(self, token=TOKEN):
        pm = self.make_pod_map()  # just for its private temp dir (cleaned up)
        path = os.path.join(pm.dir, "token")
        with open(path, "w") as f:
            f.write(token + "\n")
        return path

    def kube_agent(self, kube, wait_ready=True, extra=()):
        return self.start_agent(["--kube-api", kube.url, "--kube-token-file", self.token_file()]
                                + list(extra), wait_ready=wait_ready)

    def race(self, client, server, host, port):
        return scenarios.idle_close_rst(client, server, host=host, port=port, idle_s=IDLE_S)[1]

    def wait_for(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.1)
        self.fail("timed out after %.0fs waiting for %s" % (timeout, what))

    def wait_counted(self, ag, expected, ours, timeout):
        """Until the incident counts equal expected (then asserted by the caller's next
        assertion anyway); returns silently at the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.assertIncidentCounts(ag.scrape(), expected, ours)
                return
            except AssertionError:
                time.sleep(0.1)

    @staticmethod
    def ours_server(server_workloads):
        return lambda d: d.get("server_workload") in server_workloads


class TestAgentKube(KubeAgentTestCase):

    def test_readyz_then_workloads_services_and_node(self):
        """/readyz is 503 until pods and services are listed, then 200; incidents from a
        Deployment, CronJob, DaemonSet, bare and hostNetwork client to a StatefulSet server,
        and to a Service ClusterIP, carry the right namespace/pod/workload."""
        c = self.make_cluster(["server", "client", "cron", "exporter", "debug"])
        node = node_as_pod(c)
        svc_ip = "10.96.%d.10" % c.subnet
        add_service_ip(c["server"], [c["client"]], svc_ip)
        kube = self.start_kube()
        objs = {
            "server": kube.add_pod(statefulset_pod("web", 0, "shop", ip=c["server"].ip4)),
            "client": kube.add_pod(deployment_pod("ingress-nginx-controller", "ingress-nginx",
                                                  ip=c["client"].ip4, template_hash="5d88c8b7f")),
            "cron": kube.add_pod(cronjob_pod("backup", 28391040, "shop", ip=c["cron"].ip4)),
            "exporter": kube.add_pod(daemonset_pod("node-exporter", "monitoring",
                                                   ip=c["exporter"].ip4)),
            "debug": kube.add_pod(bare_pod("debug", "default", ip=c["debug"].ip4)),
            "node": kube.add_pod(host_network_pod("kube-proxy", "kube-system",
                                                  host_ip=c.bridge_ip4)),
        }
        kube.add_service(service("web", "shop", cluster_ips=(svc_ip,), ports=((80, 8090),)))
        ids = {
            "server": ident(objs["server"], "web"),
            "client": ident(objs["client"], "ingress-nginx-controller"),
            "cron": ident(objs["cron"], "backup"),
            "exporter": ident(objs["exporter"], "node-exporter"),
            "debug": ident(objs["debug"], "debug"),
            "node": ("", "", "node"),
        }
        kube.fail_next("hang", count=1, resource="pods", verb="list")
        ag = self.kube_agent(kube, wait_ready=False)
        status, _, body = ag.get("/readyz")
        self.assertEqual(status, 503, "/readyz before the pod list: %d %r" % (status, body))
        self.assertTrue(body.strip() and body.strip() != "ready", "503 without a reason: %r" % body)
        kube.release_hangs()
        ag.wait_readyz(timeout=30)
        self.assertEqual(ag.get("/healthz")[0], 200)
        self.assertGreaterEqual(kube.request_count(verb="list", resource="services", status=200), 1)

        srv = self.make_actor(c["server"], comm="rwsrv")
        expected = {}
        for k, name in enumerate(("client", "cron", "exporter", "debug")):
            a = self.make_actor(c[name], comm="rw" + name[:8])
            expected.update(expected_from([self.race(a, srv, c["server"].ip4, 8081 + k)],
                                          (ids[name], ids["server"]), 8081 + k))
        na = self.make_actor(node, comm="rwnode")
        expected.update(expected_from([self.race(na, srv, c["server"].ip4, 8085)],
                                      (ids["node"], ids["server"]), 8085))
        # via the Service ClusterIP: the server end is the service
        cli = self.make_actor(c["client"], comm="rwcli2")
        exp = self.race(cli, srv, svc_ip, 8090)
        expected.update(expected_from([exp], (ids["client"], ("shop", "", "svc/web")), 8090))
        self.settle(KUBE_SETTLE_S)
        m = ag.scrape()
        self.assertIncidentCounts(m, expected, self.ours_server({"web", "svc/web"}))
        self.assertHistogramCount(m, "rstwatch_idle_before_failure_seconds",
                                  pair(ids["client"], ("shop", "", "svc/web"), 8090), 1)
        synced = {s.labels_dict.get("source"): s.value
                  for s in m.samples_of("rstwatch_attribution_synced")}
        self.assertTrue(any(v == 1 for v in synced.values()), synced)
        self.assertLabelOrder(m)

    def _ip_reuse(self, swap_at_once):
        c = self.make_cluster(["server", "client"])
        kube = self.start_kube()
        s_obj = kube.add_pod(statefulset_pod("web", 0, "shop", ip=c["server"].ip4))
        old = kube.add_pod(deployment_pod("frontend", "shop", ip=c["client"].ip4,
                                          template_hash="7d4b9c6f5d"))
        ag = self.kube_agent(kube)
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        sid = ident(s_obj, "web")
        oid = ident(old, "frontend")
        ours = self.ours_server({"web"})
        if swap_at_once:
            refused_loopback_connect()  # an RST with unknown (loopback) ends, just before
        expected = dict(expected_from([self.race(cli, srv, c["server"].ip4, 8081)],
                                      (oid, sid), 8081))
        if not swap_at_once:
            self.wait_counted(ag, expected, ours, KUBE_SETTLE_S)
        kube.delete_pod("shop", old["metadata"]["name"])
        new = kube.add_pod(deployment_pod("reports", "batch", ip=c["client"].ip4,
                                          template_hash="6f7c9d8b4a"))
        nid = ident(new, "reports")
        time.sleep(1.0)  # watch events are pushed at once; give the agent a moment
        for k, n in expected_from([self.race(cli, srv, c["server"].ip4, 8081)],
                                  (nid, sid), 8081).items():
            expected[k] = expected.get(k, 0) + n
        self.settle(KUBE_SETTLE_S)
        self.assertIncidentCounts(ag.scrape(), expected, ours)

    def test_pod_ip_reused_by_new_pod(self):
        """The client pod is deleted (after its incident was counted) and a new pod gets its
        IP: new incidents carry the new pod; the old pod's series keeps its count."""
        self._ip_reuse(swap_at_once=False)

    def test_pod_ip_reused_right_after_incident(self):
        """As above, but the pod is replaced right after the first incident, while the agent
        may still hold it (an RST with loopback ends, unknown to Kubernetes, was captured
        just before): the incident happened while the old pod held the IP and must be
        labelled with the old pod."""
        self._ip_reuse(swap_at_once=True)

    def test_pod_ip_reused_while_the_incident_waits_for_its_server(self):
        """Deterministic form of the race above (seen once in CI): the incident is held because
        its server's pod is not known yet, and while it waits the client pod is replaced on
        its IP. Delivered only after that, it must still carry the pod that held the IP when
        it happened (the agent names events by their record's time); the next incident on
        that IP is the new pod's."""
        c = self.make_cluster(["server", "client"])
        kube = self.start_kube()
        old = kube.add_pod(deployment_pod("frontend", "shop", ip=c["client"].ip4,
                                          template_hash="7d4b9c6f5d"))
        ag = self.kube_agent(kube)
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        oid = ident(old, "frontend")
        ours = self.ours_server({"web"})
        exp = self.race(cli, srv, c["server"].ip4, 8081)  # held: its server is unknown
        # In the watch's order, within the agent's 2 s hold: the client pod goes, a new pod
        # takes its IP, and only then the server's pod appears (which releases the incident).
        kube.delete_pod("shop", old["metadata"]["name"])
        new = kube.add_pod(deployment_pod("reports", "batch", ip=c["client"].ip4,
                                          template_hash="6f7c9d8b4a"))
        s_obj = kube.add_pod(statefulset_pod("web", 0, "shop", ip=c["server"].ip4))
        sid, nid = ident(s_obj, "web"), ident(new, "reports")
        expected = dict(expected_from([exp], (oid, sid), 8081))
        self.settle(KUBE_SETTLE_S)
        self.assertIncidentCounts(ag.scrape(), expected, ours, "the held incident")
        for k, n in expected_from([self.race(cli, srv, c["server"].ip4, 8081)], (nid, sid), 8081).items():
            expected[k] = expected.get(k, 0) + n
        self.settle(KUBE_SETTLE_S)
        self.assertIncidentCounts(ag.scrape(), expected, ours, "the new pod's incident")

    def test_api_outage_capture_continues_labels_catch_up(self):
        """500s and dropped watches, then no API server at all (connections refused), then
        401s (token rotated) while a pod is silently replaced and resource versions expire:
        incidents are still captured and counted; once the API answers again the agent
        relists (410 on its old resourceVersion) and new incidents carry the new pod."""
        c = self.make_cluster(["server", "client"])
        kube = self.start_kube()
        s_obj = kube.add_pod(statefulset_pod("web", 0, "shop", ip=c["server"].ip4))
        old = kube.add_pod(bare_pod("debug", "default", ip=c["client"].ip4))
        ag = self.kube_agent(kube)
        self.assertTrue(kube.wait_for_watches("pods", timeout=15), "agent never watched pods")
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        sid, oid = ident(s_obj, "web"), ident(old, "debug")
        host = c["server"].ip4
        ours = self.ours_server({"web"})

        # phase 1: every API request fails with 500, watches dropped
        outage_started = time.monotonic()
        kube.fail_next(500, count=100000)
        kube.drop_watches()
        self.wait_for(lambda: kube.request_count(status=500) >= 1, 30,
                      "the agent to retry against the failing API")
        expected = dict(expected_from([self.race(cli, srv, host, 8081)], (oid, sid), 8081))
        self.settle(KUBE_SETTLE_S)
        m = ag.scrape()
        self.assertIncidentCounts(m, expected, ours, "during 500s")
        self.assertEqual(ag.get("/healthz")[0], 200)

        # phase 2: the API server is gone (connections refused) for a third of the outage, and
        # at least until the agent, whose backoff may be near its 30 s cap by now, tried again
        down_s = OUTAGE_S / 3.0
        down_started = time.monotonic()
        log_mark = len(ag.lines())
        refused = r"(?i)kubernetes.*connect"
        kube.go_down()
        port = 8200
        while True:
            elapsed = time.monotonic() - down_started
            tried = ag.wait_log(refused, start=log_mark, timeout=0)
            if (elapsed >= down_s and tried) or elapsed >= down_s + 45.0:
                break
            for k, n in expected_from([self.race(cli, srv, host, port)], (oid, sid), port).items():
                expected[k] = expected.get(k, 0) + n
            self.settle(KUBE_SETTLE_S)
            self.assertIncidentCounts(ag.scrape(), expected, ours,
                                      "%.0f s into refused connections" % (time.monotonic() - down_started))
            self.assertEqual(ag.get("/healthz")[0], 200)
            remaining = down_s - (time.monotonic() - down_started)
            if tried:
                time.sleep(min(15.0, max(0.0, remaining)))
            else:  # a race at most every 5 s while waiting for the agent's retry
                ag.wait_log(refused, start=log_mark, timeout=min(15.0, max(5.0, remaining)))
            port += 1
        self.assertTrue(ag.running(), "agent exited while the API was gone:\n" + ag.stderr)
        self.assertTrue(ag.wait_log(refused, start=log_mark, timeout=0),
                        "no log line about the refused connections:\n" + ag.stderr)

        # phase 3: back, but the token was rotated (401), the pod replaced silently, history
        # compacted
        kube.clear_failures()
        kube.set_token("rotated-elsewhere")
        kube.drop_watches()
        kube.delete_pod("default", "debug", silent=True)
        new = kube.add_pod(deployment_pod("reports", "batch", ip=c["client"].ip4,
                                          template_hash="6f7c9d8b4a"), silent=True)
        nid = ident(new, "reports")
        kube.expire_resource_versions(notify=False)
        kube.come_back()
        self.wait_for(lambda: kube.request_count(status=401) >= 1, 60,
                      "the agent to retry against the API answering 401")
        for k, n in expected_from([self.race(cli, srv, host, 8082)], (oid, sid), 8082).items():
            expected[k] = expected.get(k, 0) + n
        self.settle(KUBE_SETTLE_S)
        self.assertIncidentCounts(ag.scrape(), expected, ours, "during 401s (old labels kept)")
        self.assertTrue(ag.running(), "agent exited during the outage:\n" + ag.stderr)
        # The outage goes on (OUTAGE_S in all, past the 30 s backoff cap): a race every 20 s
        # is still counted, /metrics keeps answering, the agent keeps retrying.
        port = 8090
        retries = []  # (when, 401s answered so far)
        while time.monotonic() - outage_started < OUTAGE_S:
            retries.append((time.monotonic(), kube.request_count(status=401)))
            for k, n in expected_from([self.race(cli, srv, host, port)], (oid, sid), port).items():
                expected[k] = expected.get(k, 0) + n
            self.settle(KUBE_SETTLE_S)
            self.assertIncidentCounts(ag.scrape(), expected, ours,
                                      "%.0f s into the outage" % (time.monotonic() - outage_started))
            time.sleep(max(0.0, min(20.0, OUTAGE_S - (time.monotonic() - outage_started))))
            port += 1
        outage_s = time.monotonic() - outage_started
        # Backoff capped at 30 s (jitter up to 1.5x): it still retried in the last 50 s.
        before = [n for when, n in retries if when <= time.monotonic() - 50.0]
        if before:
            self.assertGreater(kube.request_count(status=401), before[-1], "the agent stopped retrying")

        # phase 4: the API is back: relist, new labels
        lists_before = kube.request_count(verb="list", resource="pods", status=200)
        kube.set_token(TOKEN)
        self.wait_for(lambda: kube.request_count(verb="list", resource="pods", status=200)
                      > lists_before, RELIST_TIMEOUT, "a pod relist after the outage")
        time.sleep(1.0)
        for k, n in expected_from([self.race(cli, srv, host, 8083)], (nid, sid), 8083).items():
            expected[k] = expected.get(k, 0) + n
        self.settle(KUBE_SETTLE_S)
        m = ag.scrape()
        self.assertIncidentCounts(m, expected, ours, "after the relist")
        ag.wait_readyz(timeout=30)
        print("\n  API outage %.0f s; API requests: %s" % (outage_s, kube.state()["requests"]), file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
