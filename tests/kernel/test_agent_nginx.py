"""The production incident (real nginx proxy -> nginx upstream with a 2 s keepalive timeout)
through `rstwatch agent` with a pod map naming the proxy and upstream pods: per pair (one
upstream port per stream), the client-side stale-keepalive incidents counted in
rstwatch_incidents_total{observer="client"} (idle_close_race + write_after_fin) equal the
502s nginx returned on that stream, and so does the idle_before_failure histogram count.

Setup shared with test_nginx_incident.py: tests/lib/nginx_incident.py.
Run as root from the repo root:
    /usr/bin/python3 -m unittest -v tests/kernel/test_agent_nginx.py
Env: RSTWATCH_AGENT_NGINX_STREAMS (default 16), RSTWATCH_AGENT_NGINX_REQUESTS (per stream,
default 28: ~60 s of traffic).
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from agent import identity_of  # noqa: E402
from agent_case import AgentTestCase, pair  # noqa: E402
from nginx import NGINX  # noqa: E402
from nginx_incident import RACE_CAUSES, UPSTREAM_PORT, NginxIncident  # noqa: E402

STREAMS = int(os.environ.get("RSTWATCH_AGENT_NGINX_STREAMS", "16"))
REQUESTS = int(os.environ.get("RSTWATCH_AGENT_NGINX_REQUESTS", "28"))
THRESHOLD_S = 1.0

PROXY = dict(namespace="ingress-nginx", pod="ingress-nginx-controller-5d88c8b7f-x7k2p",
             workload="ingress-nginx-controller")
UPSTREAM = dict(namespace="shop", pod="tomcat-0", workload="tomcat")


class TestAgentNginx(AgentTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(NGINX, os.X_OK):
            self.skipTest("nginx not installed at %s" % NGINX)

    def test_502s_equal_counted_incidents_per_pair(self):
        c = self.make_cluster(["proxy", "upstream"])
        pm = self.make_pod_map([dict(PROXY, ip=c["proxy"].ip4), dict(UPSTREAM, ip=c["upstream"].ip4)])
        setup = NginxIncident(c, streams=STREAMS, add_cleanup=self.addCleanup).start()
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off"], idle_threshold=THRESHOLD_S)
        results = setup.run_traffic(REQUESTS)
        # The race needs the request and the upstream's idle timer to cross within about a
        # millisecond; on a loaded machine a round can miss it: at most two more rounds.
        for _ in range(2):
            if setup.stats(results)["n502"] >= 1:
                break
            more = setup.run_traffic(REQUESTS)
            results = [a + b for a, b in zip(results, more)]
        self.settle(1.0)
        m = ag.scrape()
        st = setup.stats(results)
        pid, uid = identity_of(PROXY), identity_of(UPSTREAM)

        per_stream = []
        for k in range(STREAMS):
            labels = pair(pid, uid, UPSTREAM_PORT + k)
            counted = sum(m.value("rstwatch_incidents_total", default=0, cause=cause,
                                  observer="client", **labels) for cause in RACE_CAUSES)
            h = m.histogram("rstwatch_idle_before_failure_seconds", **labels)
            per_stream.append((st["n502_by_stream"][k], counted, 0 if h is None else h.count))
        print("\n  [agent-nginx] requests=%d 502s=%d per stream (502s, counted, histogram): %s" % (
            st["total"], st["n502"], per_stream), file=sys.stderr)
        for line in st["error_lines"]:
            print("    nginx: " + line[:200], file=sys.stderr)

        self.assertEqual(st["other_failures"], [], "requests failed other than with 502")
        self.assertGreaterEqual(st["n502"], 1, "no 502 in %d requests: the race did not happen"
                                % st["total"])
        self.assertEqual(st["n502_access"], st["n502"], "access log 502s != 502s the clients saw")
        self.assertEqual([(k, n502, counted) for k, (n502, counted, _) in enumerate(per_stream)
                          if n502 != counted], [], "per pair: 502s != client race incidents")
        self.assertEqual([(k, n502, hc) for k, (n502, _, hc) in enumerate(per_stream)
                          if n502 != hc], [], "per pair: 502s != idle_before_failure count")
        # No other client-side incident on the proxy -> upstream pairs.
        others = [s for s in m.samples_of("rstwatch_incidents_total", observer="client",
                                          client_pod=PROXY["pod"], server_pod=UPSTREAM["pod"])
                  if s.labels_dict["cause"] not in RACE_CAUSES and s.value > 0]
        self.assertEqual(others, [], "other client-side incidents")
        # The clients' own connections to the proxy (inside the proxy pod) stayed healthy.
        inner = [s for s in m.samples_of("rstwatch_incidents_total", server_pod=PROXY["pod"])
                 if s.value > 0]
        self.assertEqual(inner, [], "incidents on client -> proxy connections")
        self.assertEqual(m.value("rstwatch_records_lost_total"), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
