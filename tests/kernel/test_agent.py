"""Kernel tests of `rstwatch agent`: metrics, incident stream, pod map, signals, config errors.

Every test builds its own namespaces (tests/lib/netns.py), names their pods in a pod map
(namespaces "ingress-nginx", "shop", ...), starts `rstwatch agent --listen 127.0.0.1:PORT`
(a free loopback port), drives the scenarios of tests/lib/scenarios.py with real sockets and
asserts EXACT metric values per pod pair.  The agent is host-wide: only series naming this
test's pods (or addresses) are compared; other traffic on the host is ignored.
Run as root from the repo root:  /usr/bin/python3 -m unittest -v tests/kernel/test_agent.py
"""

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import prom  # noqa: E402
import scenarios  # noqa: E402
from agent import (PAIR, IncidentStream, identity_of, rw_links,  # noqa: E402
                   run_agent_expecting_failure, stream_pair_key)
from agent_case import (WRITE_HOOKS, AgentTestCase, bucket_bound_for,  # noqa: E402
                        expected_from, ours_by_workloads, pair)
from netns import rstwatch_bin  # noqa: E402

THRESHOLD = scenarios.THRESHOLD_S  # --idle-threshold of these tests (0.5 s)
IDLE_TOL_S = 0.06

CLIENT = dict(namespace="ingress-nginx", pod="ingress-nginx-controller-5d88c8b7f-x7k2p",
              workload="ingress-nginx-controller")
SERVER = dict(namespace="shop", pod="web-7d4b9c6f5d-q8r2m", workload="web")
BATCH = dict(namespace="batch", pod="reporter-28391040-h5n9c", workload="reporter")


def entry(pod, ident):
    e = dict(ident)
    e["ip"] = pod.ip4
    return e


def ids(*entries):
    return [identity_of(e) for e in entries]


class TestPromParser(unittest.TestCase):
    """tests/lib/prom.py itself (no kernel needed)."""

    def test_selftest(self):
        self.assertTrue(prom.selftest())

    def test_rstwatch_like_exposition(self):
        text = ('# HELP rstwatch_incidents_total Incidents.\n'
                '# TYPE rstwatch_incidents_total counter\n'
                'rstwatch_incidents_total{cause="idle_close_race",observer="client",'
                'client_namespace="a",client_pod="p",client_workload="w",server_namespace="b",'
                'server_pod="",server_workload="svc/web",server_port="8080"} 2\n'
                '# TYPE rstwatch_idle_before_failure_seconds histogram\n'
                'rstwatch_idle_before_failure_seconds_bucket{client_namespace="a",le="1"} 0\n'
                'rstwatch_idle_before_failure_seconds_bucket{client_namespace="a",le="2"} 2\n'
                'rstwatch_idle_before_failure_seconds_bucket{client_namespace="a",le="+Inf"} 2\n'
                'rstwatch_idle_before_failure_seconds_sum{client_namespace="a"} 3.1\n'
                'rstwatch_idle_before_failure_seconds_count{client_namespace="a"} 2\n')
        m = prom.parse(text)
        s = m.samples_of("rstwatch_incidents_total")[0]
        self.assertEqual(s.label_names, ("cause", "observer") + PAIR)
        self.assertEqual(s.labels_dict["server_workload"], "svc/web")
        h = m.histogram("rstwatch_idle_before_failure_seconds", client_namespace="a")
        h.check()
        self.assertEqual((h.count, h.bucket(1.0), h.bucket(2.0)), (2, 0, 2))
        self.assertEqual(h.bucket_of(1.5), 2.0)
        self.assertEqual(bucket_bound_for(1.5), 2.0)


class TestAgent(AgentTestCase):

    def two_pod_setup(self, extra_names=(), args=(), client=CLIENT, server=SERVER):
        c = self.make_cluster(["server", "client"] + list(extra_names))
        pm = self.make_pod_map([entry(c["server"], server), entry(c["client"], client)])
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off"] + list(args))
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        return c, pm, ag, srv, cli

    # ------------------------------------------------------------------ metrics
    def test_metrics_exact_per_pair(self):
        """idle_close_race+abort_on_close (x2), write_after_fin+data_after_close,
        reset_other (linger 0) and a healthy idle reuse, each on its own server port:
        exact incidents_total per pair/cause/observer, idle histogram count and buckets,
        resets_total, reuse histogram, self metrics, label order, one WARN line each."""
        c, pm, ag, srv, cli = self.two_pod_setup()
        host = c["server"].ip4
        cid, sid = ids(CLIENT, SERVER)
        m0 = ag.scrape()
        self.assertLabelOrder(m0)

        races = [scenarios.idle_close_rst(cli, srv, host=host, port=8081) for _ in range(2)]
        waf = scenarios.write_after_fin(cli, srv, host=host, port=8082, server_idle_s=0.7,
                                        client_delay_s=0.5)
        rst = scenarios.reset_linger0(cli, srv, host=host, port=8083)
        healthy, gaps = scenarios.healthy_reuse(cli, srv, host=host, port=8084, gaps_s=(0.8, 0.8))
        self.settle()
        m = ag.scrape()

        expected = {}
        expected.update(expected_from([e for _, e in races], (cid, sid), 8081))
        expected.update(expected_from([waf[1]], (cid, sid), 8082))
        expected.update(expected_from([rst[1]], (cid, sid), 8083))
        self.assertEqual(sum(expected.values()), 8)
        ours = ours_by_workloads({CLIENT["workload"], SERVER["workload"]})
        self.assertIncidentCounts(m, expected, ours)
        for s in m.samples_of("rstwatch_incidents_total", server_port="8084"):
            self.assertFalse(ours(s.labels_dict), "incident series for healthy traffic: %r" % s)

        # idle before failure: one observation per client stale-keepalive incident
        fam = "rstwatch_idle_before_failure_seconds"
        for port, exps in ((8081, [e for _, ex in races for e in ex]), (8082, waf[1])):
            idles = [e["idle_ms"] / 1000.0 for e in exps if e["observer"] == "client"]
            h = self.assertHistogramCount(m, fam, pair(cid, sid, port), len(idles), "port %d" % port)
            self.assertAlmostEqual(h.sum, sum(idles), delta=IDLE_TOL_S * len(idles),
                                   msg="%s sum vs measured idles %s" % (fam, idles))
            self._assert_buckets(h, idles)
        for port in (8083, 8084):
            self.assertHistogramCount(m, fam, pair(cid, sid, port), 0, "port %d" % port)

        # resets: every RST is sent by one of our sockets and received by the other
        for port, n in ((8081, 2), (8082, 1), (8083, 1), (8084, 0)):
            for direction in ("sent", "received"):
                got = m.value("rstwatch_resets_total", default=0, direction=direction,
                              **pair(cid, sid, port))
                self.assertEqual(got, n, "resets_total{direction=%s} port %d" % (direction, port))

        # healthy reuse after idle gaps
        h = self.assertHistogramCount(m, "rstwatch_connection_reuse_idle_seconds",
                                      pair(cid, sid, 8084), len(gaps), "healthy reuse")
        self._assert_buckets(h, gaps, tol=0.08)

        # self metrics
        self.assertLabelOrder(m)
        for typ in ("idle_write", "rst_sent", "rst_received"):
            self.assertGreater(m.value("rstwatch_records_total", default=0, type=typ), 0,
                               "records_total{type=%s}" % typ)
        self.assertGreater(m.total("rstwatch_records_total"), 0)
        self.assertEqual(m.value("rstwatch_records_lost_total"), 0)
        self.assertIsNotNone(m.value("rstwatch_tracked_connections"))
        synced = m.samples_of("rstwatch_attribution_synced")
        self.assertTrue(synced and any(s.value == 1 for s in synced),
                        "attribution_synced with a loaded pod map: %r" % synced)
        info = m.samples_of("rstwatch_build_info")
        self.assertEqual(len(info), 1, info)
        self.assertEqual(info[0].value, 1)
        self.assertIn(info[0].labels_dict["write_hook"].split("/")[0], WRITE_HOOKS, info)
        version = subprocess.run([rstwatch_bin(), "--version"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=10).stdout
        self.assertTrue(info[0].labels_dict["version"] and info[0].labels_dict["version"] in version,
                        "build_info version %r vs --version %r" % (info[0], version))

        # one WARN line per incident naming both ends and the cause
        warns = [l for l in self.warn_lines(ag) if CLIENT["pod"] in l and SERVER["pod"] in l]
        by_cause = collections.Counter()
        for l in warns:
            causes = [cz for cz in ("idle_close_race", "write_after_fin", "reset_other",
                                    "abort_on_close", "data_after_close") if cz in l]
            self.assertEqual(len(causes), 1, "WARN line should name one cause: %r" % l)
            by_cause[causes[0]] += 1
        want = collections.Counter()
        for (cause, _, _, _, _), n in expected.items():
            want[cause] += n
        self.assertEqual(dict(by_cause), dict(want), "WARN lines per cause:\n" + "".join(warns))
        # Eight incidents are far below the log limits: none left out.
        self.assertEqual(m.value("rstwatch_incident_log_lines_suppressed_total"), 0)

    def _assert_buckets(self, h, values, tol=IDLE_TOL_S):
        """Each observed value lands in its bucket (values within tol of a bound: either)."""
        h.check()
        bounds = [b for b, _ in h.buckets]
        lo = collections.Counter()
        hi = collections.Counter()
        for v in values:
            lo[h.bucket_of(max(v - tol, 0))] += 1
            hi[h.bucket_of(v + tol)] += 1
        for b in bounds:
            at_least = sum(n for bb, n in hi.items() if bb <= b)  # surely counted by le=b
            at_most = sum(n for bb, n in lo.items() if bb <= b)   # possibly counted by le=b
            got = h.bucket(b)
            self.assertTrue(at_least <= got <= at_most,
                            "%s le=%s: %s, expected %d..%d for observations %s" % (
                                h.name, b, got, at_least, at_most, values))

    def test_healthy_traffic_no_series_health_endpoints(self):
        """/healthz and /readyz answer; healthy keepalive traffic with idle reuses and an
        idle close the client honours creates no incident or reset series."""
        c, pm, ag, srv, cli = self.two_pod_setup()
        status, _, body = ag.get("/healthz")
        self.assertEqual((status, body.strip()), (200, "ok"))
        status, _, body = ag.get("/readyz")
        self.assertEqual((status, body.strip()), (200, "ready"))
        stream = IncidentStream(ag.url)
        self.addCleanup(stream.close)
        self.assertEqual(stream.status, 200)
        conn, gaps = scenarios.healthy_reuse(cli, srv, host=c["server"].ip4, port=8085,
                                             gaps_s=(0.7, 0.9), count=300)
        # a server idle close the client honours
        d = scenarios.connect(cli, srv, host=c["server"].ip4, port=8086)
        d.exchange(count=5)
        srv.step("sleep", seconds=THRESHOLD + 0.2)
        srv.step("close", name="c")
        r = cli.step("recv", size=10, exact=False)
        self.assertTrue(r["eof"], r)
        cli.step("close", name="c")
        srv.step("close", name="L")
        self.settle()
        m = ag.scrape()
        ours = ours_by_workloads({CLIENT["workload"], SERVER["workload"]})
        for fam in ("rstwatch_incidents_total", "rstwatch_resets_total"):
            mine = [s for s in m.samples_of(fam) if ours(s.labels_dict)]
            self.assertEqual(mine, [], "%s series without incidents" % fam)
        cid, sid = ids(CLIENT, SERVER)
        self.assertHistogramCount(m, "rstwatch_connection_reuse_idle_seconds",
                                  pair(cid, sid, 8085), 2)
        self.assertHistogramCount(m, "rstwatch_idle_before_failure_seconds",
                                  pair(cid, sid, 8085), 0)
        ips = c.ips()
        seen = [o for o in stream.incidents()
                if o["client"]["ip"] in ips or o["server"]["ip"] in ips]
        self.assertEqual(seen, [], "incidents streamed for healthy traffic")
        self.assertEqual(ag.get("/healthz")[0], 200)

    def test_refused_connect_is_not_an_incident(self):
        """A connect to a port nobody listens on is answered with RST in SYN_SENT: not an
        established connection, so no incident (README: reset_other is "any other RST on
        an established connection")."""
        c, pm, ag, srv, cli = self.two_pod_setup()
        for _ in range(3):
            r = cli.step("connect", family="inet", host=c["server"].ip4, port=8087, timeout=3,
                         expect_ok=False)
            self.assertEqual(r.get("errno"), "ECONNREFUSED", r)
        self.settle()
        m = ag.scrape()
        ours = ours_by_workloads({CLIENT["workload"], SERVER["workload"]})
        mine = [s for s in m.samples_of("rstwatch_incidents_total") if ours(s.labels_dict)]
        self.assertEqual(mine, [], "incident series for refused connects")

    # ------------------------------------------------------------------ stream / followers
    def test_trace_from_followers(self):
        """Four `trace --from` followers at once (no filter, --namespace, --pod, --namespace
        of both) and a raw /incidents reader see exactly the incidents the agent counted,
        with namespace/pod/workload filled."""
        c = self.make_cluster(["server", "client", "batch"])
        pm = self.make_pod_map([entry(c["server"], SERVER), entry(c["client"], CLIENT),
                                entry(c["batch"], BATCH)])
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off"])
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        bat = self.make_actor(c["batch"], comm="rwbatch")
        followers = {
            "all": self.start_follower(ag, name="all"),
            "ns-ingress": self.start_follower(ag, ["--namespace", CLIENT["namespace"]],
                                              name="ns-ingress"),
            "pod-batch": self.start_follower(ag, ["--pod", BATCH["pod"]], name="pod-batch"),
            "ns-shop": self.start_follower(ag, ["--namespace", SERVER["namespace"]],
                                           name="ns-shop"),
        }
        stream = IncidentStream(ag.url)
        self.addCleanup(stream.close)
        host = c["server"].ip4
        conn_a, exp_a = scenarios.idle_close_rst(cli, srv, host=host, port=8081)
        conn_b, exp_b, _ = scenarios.write_after_fin(bat, srv, host=host, port=8082)
        self.settle(1.0)
        m = ag.scrape()
        got = {name: f.stop() for name, f in followers.items()}
        cid, sid, bid = ids(CLIENT, SERVER, BATCH)
        expected = dict(expected_from([exp_a], (cid, sid), 8081))
        expected.update(expected_from([exp_b], (bid, sid), 8082))
        ours = ours_by_workloads({CLIENT["workload"], SERVER["workload"], BATCH["workload"]})
        self.assertIncidentCounts(m, expected, ours)
        want_all = collections.Counter()
        for (cause, obs, ci, si, port), n in expected.items():
            want_all[(cause, obs) + tuple(pair(ci, si, port)[k] for k in PAIR)] += n
        ips = c.ips()

        def mine(incs):
            return [i for i in incs if i["client"]["ip"] in ips or i["server"]["ip"] in ips]

        def keys(incs):
            return collections.Counter(stream_pair_key(i) for i in incs)

        def of_conn(counter, conn):
            return collections.Counter({k: n for k, n in counter.items()
                                        if k[-1] == str(conn.server_ep[1])})

        a_keys, b_keys = of_conn(want_all, conn_a), of_conn(want_all, conn_b)
        self.assertEqual(keys(mine(got["all"])), want_all, "unfiltered follower")
        self.assertEqual(keys(mine(got["ns-shop"])), want_all, "--namespace shop")
        self.assertEqual(keys(mine(got["ns-ingress"])), a_keys, "--namespace ingress-nginx")
        self.assertEqual(keys(mine(got["pod-batch"])), b_keys, "--pod " + BATCH["pod"])
        for inc in got["ns-ingress"]:
            self.assertIn(CLIENT["namespace"], (inc["client"].get("namespace"),
                                                inc["server"].get("namespace")), inc)
        for inc in got["pod-batch"]:
            self.assertIn(BATCH["pod"], (inc["client"].get("pod"), inc["server"].get("pod")), inc)
        # Endpoints, pids and pod fields of every streamed incident, against the scenario.
        for inc in mine(got["all"]):
            conn, cli_id = (conn_a, cid) if inc["server"]["port"] == conn_a.server_ep[1] else (
                conn_b, bid)
            self.assertEqual((inc["client"]["ip"], inc["client"]["port"]), conn.client_ep, inc)
            self.assertEqual((inc["server"]["ip"], inc["server"]["port"]), conn.server_ep, inc)
            self.assertEqual((inc["client"]["namespace"], inc["client"]["pod"],
                              inc["client"]["workload"]), cli_id, inc)
            self.assertEqual((inc["server"]["namespace"], inc["server"]["pod"],
                              inc["server"]["workload"]), sid, inc)
            if inc["observer"] == "client":
                actor = cli if conn is conn_a else bat
                self.assertEqual((inc["pid"], inc["comm"]), (actor.pid, actor.comm), inc)
                self.assertIsInstance(inc["idle_before_write_ms"], (int, float), inc)
        # the raw stream: chunked JSON lines, the same incidents
        self.assertEqual(stream.status, 200)
        self.assertEqual(stream.headers.get("transfer-encoding", "").lower(), "chunked",
                         stream.headers)
        self.assertEqual(keys(mine(stream.incidents())), want_all, "raw /incidents stream")

    # ------------------------------------------------------------------ attribution
    def test_without_pod_map_workload_is_ip(self):
        c = self.make_cluster(["server", "client"])
        ag = self.start_agent(["--kube", "off"])
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        _, exp = scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=8081)
        self.settle()
        m = ag.scrape()
        cid = ("", "", c["client"].ip4)
        sid = ("", "", c["server"].ip4)
        self.assertIncidentCounts(m, expected_from([exp], (cid, sid), 8081),
                                  ours_by_workloads({c["client"].ip4, c["server"].ip4}))
        self.assertHistogramCount(m, "rstwatch_idle_before_failure_seconds", pair(cid, sid, 8081), 1)
        self.assertLabelOrder(m)

    def test_address_outside_map_is_world_and_name_entries(self):
        """With a pod map: an unmapped client is "world"; a `cidr` + `name` entry labels
        workload=NAME with empty namespace/pod."""
        c = self.make_cluster(["server", "client", "stranger", "vpn"])
        vpn = {"cidr": "%s/32" % c["vpn"].ip4, "name": "office-vpn"}
        pm = self.make_pod_map([entry(c["server"], SERVER), entry(c["client"], CLIENT), vpn])
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off"])
        srv = self.make_actor(c["server"], comm="rwsrv")
        stranger = self.make_actor(c["stranger"], comm="rwstr")
        v = self.make_actor(c["vpn"], comm="rwvpn")
        host = c["server"].ip4
        _, exp_w = scenarios.idle_close_rst(stranger, srv, host=host, port=8081)
        _, exp_v, _ = scenarios.write_after_fin(v, srv, host=host, port=8082)
        self.settle()
        m = ag.scrape()
        sid = identity_of(SERVER)
        expected = dict(expected_from([exp_w], (("", "", "world"), sid), 8081))
        expected.update(expected_from([exp_v], (("", "", "office-vpn"), sid), 8082))
        self.assertIncidentCounts(m, expected, lambda d: d["server_workload"] == "web")

    def test_sighup_reload_and_broken_map(self):
        """SIGHUP with a changed map relabels new incidents (old series keep their counts);
        a broken map is refused with a log line naming the problem, the old map stays."""
        c, pm, ag, srv, cli = self.two_pod_setup()
        host = c["server"].ip4
        cid1, sid = ids(CLIENT, SERVER)
        v2 = dict(CLIENT, pod="ingress-nginx-controller-5d88c8b7f-zz9tq")
        cid2 = identity_of(v2)
        _, exp1 = scenarios.idle_close_rst(cli, srv, host=host, port=8081)
        self.settle()
        ours = ours_by_workloads({SERVER["workload"]})
        want = expected_from([exp1], (cid1, sid), 8081)
        self.assertIncidentCounts(ag.scrape(), want, ours, "before SIGHUP")

        pm.write([entry(c["server"], SERVER), entry(c["client"], v2)])
        start = len(ag.lines())
        ag.send_signal(signal.SIGHUP)
        ag.wait_log(r"(?i)pod map", start=start, timeout=5)
        time.sleep(0.5)
        self.assertTrue(ag.running(), "agent died on SIGHUP:\n" + ag.stderr)
        _, exp2 = scenarios.idle_close_rst(cli, srv, host=host, port=8081)
        self.settle()
        want2 = dict(want)
        for k, n in expected_from([exp2], (cid2, sid), 8081).items():
            want2[k] = want2.get(k, 0) + n
        self.assertIncidentCounts(ag.scrape(), want2, ours, "after SIGHUP with a new map")

        # broken: unknown key on line 4
        pm.write(text="endpoints:\n  - ip: %s\n    namespace: shop\n    colour: red\n"
                      "    pod: x\n" % c["client"].ip4)
        start = len(ag.lines())
        ag.send_signal(signal.SIGHUP)
        line = ag.wait_log(r"pod map reload failed", start=start, timeout=5)
        self.assertIsNotNone(line, "no 'pod map reload failed' line after SIGHUP with a broken "
                                   "map; stderr since:\n" + "".join(ag.lines()[start:]))
        self.assertIn("line 4", line)
        self.assertTrue(ag.running(), "agent died on a broken map:\n" + ag.stderr)
        _, exp3 = scenarios.idle_close_rst(cli, srv, host=host, port=8081)
        self.settle()
        want3 = dict(want2)
        for k, n in expected_from([exp3], (cid2, sid), 8081).items():
            want3[k] = want3.get(k, 0) + n
        self.assertIncidentCounts(ag.scrape(), want3, ours, "after SIGHUP with a broken map")

    def test_pair_labels_workload(self):
        """--pair-labels workload: pod labels empty, two pods of one workload share a series."""
        c = self.make_cluster(["server", "client1", "client2"])
        p1 = dict(CLIENT)
        p2 = dict(CLIENT, pod="ingress-nginx-controller-5d88c8b7f-m4w7d")
        pm = self.make_pod_map([entry(c["server"], SERVER), entry(c["client1"], p1),
                                entry(c["client2"], p2)])
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off", "--pair-labels", "workload"])
        srv = self.make_actor(c["server"], comm="rwsrv")
        exps = []
        for name in ("client1", "client2"):
            cli = self.make_actor(c[name], comm="rwcli")
            exps.append(scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=8081)[1])
        self.settle()
        m = ag.scrape()
        cid = (CLIENT["namespace"], "", CLIENT["workload"])
        sid = (SERVER["namespace"], "", SERVER["workload"])
        ours = ours_by_workloads({SERVER["workload"]})
        self.assertIncidentCounts(m, expected_from(exps, (cid, sid), 8081), ours)
        self.assertHistogramCount(m, "rstwatch_idle_before_failure_seconds", pair(cid, sid, 8081), 2)
        self.assertEqual(m.value("rstwatch_resets_total", default=0, direction="sent",
                                 **pair(cid, sid, 8081)), 2)
        podful = [s for s in m.samples if s.name.startswith("rstwatch_")
                  and ours(s.labels_dict) and (s.labels_dict.get("client_pod")
                                               or s.labels_dict.get("server_pod"))]
        self.assertEqual(podful, [], "pod labels with --pair-labels workload")
        self.assertLabelOrder(m)

    def test_log_format_json(self):
        c, pm, ag, srv, cli = self.two_pod_setup(args=["--log-format", "json"])
        scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=8081)
        self.settle()
        self.assertEqual(ag.stop(), 0)
        objs = []
        for line in ag.lines():
            try:
                obj = json.loads(line)
            except ValueError:
                self.fail("--log-format json: not a JSON line: %r\nstderr:\n%s" % (line, ag.stderr))
            self.assertIsInstance(obj, dict, line)
            objs.append(obj)

        def texts(o):
            return " ".join(str(v) for v in o.values())
        self.assertTrue(any("serving http://" in texts(o) for o in objs), "no serving line")
        incident_lines = [o for o in objs if CLIENT["pod"] in texts(o) and SERVER["pod"] in texts(o)
                          and "warn" in texts(o).lower()]
        causes = sorted(cz for o in incident_lines for cz in ("idle_close_race", "abort_on_close")
                        if cz in texts(o))
        self.assertEqual(causes, ["abort_on_close", "idle_close_race"], incident_lines)

    # ------------------------------------------------------------------ lifecycle
    def test_sigterm_and_sigint_exit_0_and_detach(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            ag = self.start_agent(["--kube", "off"], name="agent-%d" % sig)
            f = self.start_follower(ag, name="follower-%d" % sig)
            ag.scrape()
            held = set(ag.links)
            present = rw_links()
            self.assertTrue(held and held <= set(present),
                            "agent holds no rw_* BPF links? held %s, rw_* links %s" % (held, present))
            self.assertEqual(ag.stop(sig), 0, "exit code after signal %d; stderr:\n%s" % (
                sig, ag.stderr))
            left = set(rw_links()) & held
            self.assertEqual(left, set(), "BPF links of the agent left after signal %d" % sig)
            try:
                f.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.fail("trace --from still running 10 s after the agent exited")

    def test_config_errors_exit_2_one_line(self):
        """Config errors: exit 2, one line on stderr, nothing attached."""
        tmp = self.make_pod_map(text="endpoints:\n  - ip: 10.0.0.1\n    namespace: shop\n"
                                     "    colour: red\n    pod: web-0\n")
        token = os.path.join(tmp.dir, "token")
        with open(token, "w") as f:
            f.write("t0ken\n")
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        busy_port = busy.getsockname()[1]
        cases = [
            ("malformed pod map", ["--listen", "127.0.0.1:0", "--pod-map", tmp.path,
                                   "--kube", "off"], "line 4"),
            ("missing pod map", ["--listen", "127.0.0.1:0", "--pod-map", tmp.path + ".nope",
                                 "--kube", "off"], None),
            ("port in use", ["--listen", "127.0.0.1:%d" % busy_port, "--kube", "off"], None),
            ("token without api", ["--listen", "127.0.0.1:0", "--kube-token-file", token], None),
            ("bad pair labels", ["--listen", "127.0.0.1:0", "--pair-labels", "namespace",
                                 "--kube", "off"], "pair-labels"),
            ("unknown flag", ["--listen", "127.0.0.1:0", "--no-such-flag"], "no-such-flag"),
        ]
        problems = []
        for what, args, must_contain in cases:
            rc, err, out, leaked = run_agent_expecting_failure(args)
            lines = [l for l in err.splitlines() if l.strip()]
            print("  [%s] rc=%s stderr=%r" % (what, rc, err), file=sys.stderr)
            if rc != 2:
                problems.append("%s: exit %s, expected 2" % (what, rc))
            if len(lines) != 1:
                problems.append("%s: %d stderr lines, expected 1: %r" % (what, len(lines), err))
            if must_contain and must_contain not in err:
                problems.append("%s: stderr does not name %r: %r" % (what, must_contain, err))
            if leaked:
                problems.append("%s: BPF links left attached: %s" % (what, leaked))
            if "serving http://" in err:
                problems.append("%s: started serving" % what)
        self.assertEqual(problems, [], "\n".join(problems))


if __name__ == "__main__":
    unittest.main(verbosity=2)
