"""The production incident, reproduced with real nginx, and its fix.

Namespaces "proxy" and "upstream".  upstream = nginx with `keepalive_timeout 2s`;
proxy = nginx with an upstream keepalive pool (`keepalive 8`, HTTP/1.1, default 60 s
idle timeout).  Clients in the proxy namespace send one request every ~2.0 s, the
upstream's idle timeout: the proxy sometimes writes a request on a pooled connection
the upstream is closing -> 502.  Every 502 must be explained by exactly one client-side
incident (idle_close_race / write_after_fin) on the proxy's upstream connection, written
by nginx; no such incident without a 502.  Then the fix (upstream `keepalive_timeout 1s`
in the proxy, below the upstream's 2 s): zero 502s, zero incidents.

Why POST: nginx retries an idempotent request (GET) on a fresh connection when a
*cached* keepalive connection fails (ngx_http_upstream_next), so a GET race logs the
error but usually returns 200.  POST is not retried (non_idempotent is not in
proxy_next_upstream): the race becomes the 502 the write-up describes.

Why several streams: the race window is tens of microseconds against ~1-2 ms of jitter
in nginx's keepalive timer (one 502 per ~40 requests here).  STREAMS independent
proxy->upstream pairs (own ports, own keepalive pools) run in parallel, phase-shifted,
each sweeping its spacing over 2.0000-2.0028 s, to make several 502s practically
certain within ~1 minute of traffic.

Run as root from the repo root:
    /usr/bin/python3 -m unittest -v tests/kernel/test_nginx_incident.py
Env: RSTWATCH_NGINX_STREAMS (default 8), RSTWATCH_NGINX_REQUESTS (per stream, default 32).
"""

import datetime
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from netns import Cluster, Tracer, client_ep, describe, incidents_for, require_bpf, server_ep  # noqa: E402
from nginx import NGINX, Nginx  # noqa: E402

STREAMS = int(os.environ.get("RSTWATCH_NGINX_STREAMS", "8"))
REQUESTS = int(os.environ.get("RSTWATCH_NGINX_REQUESTS", "32"))  # per stream, buggy config
FIXED_REQUESTS = 8  # per stream, corrected config
SWEEP = [2.0 + 0.0002 * i for i in range(15)]  # request spacings (s), around 2.0 s
UPSTREAM_PORT = 8080
PROXY_PORT = 8000
THRESHOLD_S = 1.0
RACE_CAUSES = ("idle_close_race", "write_after_fin")
ERROR_RE = re.compile(r"Connection reset by peer|prematurely closed")


def parse_ts(ts):
    """Incident "ts" (RFC 3339, ms) -> unix seconds."""
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class TestNginxIncident(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        require_bpf()
        if not os.access(NGINX, os.X_OK):
            self.skipTest("nginx not installed at %s" % NGINX)

    def _nginx(self, n):
        self.addCleanup(n.cleanup)
        return n

    def _run_traffic(self, proxy_pod, actors, requests):
        """STREAMS request series in parallel, phase-shifted; returns per-stream results."""
        for k, actor in enumerate(actors):
            sweep = SWEEP[k % len(SWEEP):] + SWEEP[:k % len(SWEEP)]
            spacings = [2.0 * k / len(actors)] + [sweep[i % len(sweep)]
                                                   for i in range(requests - 1)]
            actor.start("http_series", host=proxy_pod.ip4, port=PROXY_PORT + k,
                        spacings=spacings, method="POST", body="rstwatch", timeout=5)
        out = []
        for actor in actors:
            out.append(actor.result(timeout=requests * 2.1 + 60)["results"])
        return out

    def _start_proxy(self, cluster, keepalive_timeout=None):
        proxy, upstream = cluster["proxy"], cluster["upstream"]
        routes = [(PROXY_PORT + k, "%s:%d" % (upstream.ip4, UPSTREAM_PORT + k))
                  for k in range(STREAMS)]
        p = self._nginx(Nginx.proxy(proxy, proxy.ip4, routes,
                                    upstream_keepalive_timeout=keepalive_timeout))
        return p.start(proxy.ip4, PROXY_PORT)

    def test_stale_keepalive_502_then_fix(self):
        c = Cluster(names=["proxy", "upstream"])
        c.__enter__()
        self.addCleanup(c.close)
        proxy_pod, upstream_pod = c["proxy"], c["upstream"]
        up = self._nginx(Nginx.upstream(upstream_pod, upstream_pod.ip4,
                                        [UPSTREAM_PORT + k for k in range(STREAMS)],
                                        keepalive_timeout="2s"))
        up.start(upstream_pod.ip4, UPSTREAM_PORT)
        actors = []
        for k in range(STREAMS):
            a = proxy_pod.actor(comm="rwhttp")
            self.addCleanup(a.stop)
            actors.append(a)

        # ---- phase 1: the incident (proxy pool idle timeout 60 s > upstream's 2 s)
        px = self._start_proxy(c)
        workers = set(px.worker_pids())
        tracer = Tracer(["--idle-threshold", str(THRESHOLD_S)], name="buggy")
        tracer.start()
        self.addCleanup(tracer.kill)
        results = self._run_traffic(proxy_pod, actors, REQUESTS)
        time.sleep(0.5)
        incidents = tracer.stop()
        print("\n  [buggy] %s" % tracer.summary_line(), file=sys.stderr)
        px.stop()

        total = sum(len(r) for r in results)
        failed = [(k, r) for k, rs in enumerate(results) for r in rs if r["status"] != 200]
        n502 = sum(1 for _, r in failed if r["status"] == 502)
        access = px.read("access.log").splitlines()
        n502_access = sum(1 for line in access if line.split()[1:2] == ["502"])
        errors = [line for line in px.read("error.log").splitlines() if ERROR_RE.search(line)]
        ours = incidents_for(incidents, ips=c.ips())
        race = [i for i in ours if i.get("observer") == "client" and i.get("cause") in RACE_CAUSES]
        client_side = [i for i in ours if i.get("observer") == "client"]
        server_side = [i for i in ours if i.get("observer") == "server"]
        print("  [buggy] requests=%d 502s=%d (%.1f%%) error-log lines=%d (reset=%d, "
              "prematurely closed=%d) client-side race incidents=%d, other client-side=%d, "
              "server-side incidents=%d" % (
                  total, n502, 100.0 * n502 / max(total, 1), len(errors),
                  sum("reset by peer" in e for e in errors),
                  sum("prematurely" in e for e in errors), len(race),
                  len(client_side) - len(race), len(server_side)), file=sys.stderr)
        for inc in ours:
            print("    " + describe(inc), file=sys.stderr)
        for line in errors:
            print("    nginx: " + line[:200], file=sys.stderr)

        self.assertEqual([f for f in failed if f[1]["status"] != 502], [],
                         "requests failed other than with 502")
        self.assertGreaterEqual(n502, 1, "no 502 in %d requests: the race did not happen" % total)
        self.assertEqual(n502_access, n502, "access log 502s != 502s the clients saw")
        self.assertEqual(len(errors), n502, "error-log reset/prematurely-closed lines != 502s:\n"
                         + px.read("error.log"))

        # Every client-side incident must be one of the race causes, on a proxy->upstream
        # connection, written by the proxy's nginx worker.
        for inc in client_side:
            self.assertIn(inc.get("cause"), RACE_CAUSES, describe(inc))
            self.assertEqual(client_ep(inc)[0], proxy_pod.ip4, describe(inc))
            sip, sport = server_ep(inc)
            self.assertEqual(sip, upstream_pod.ip4, describe(inc))
            self.assertIn(sport, range(UPSTREAM_PORT, UPSTREAM_PORT + STREAMS), describe(inc))
            self.assertEqual(inc.get("comm"), "nginx", describe(inc))
            self.assertIn(inc.get("pid"), workers, "pid is not the proxy worker's: "
                          + describe(inc))
        self.assertEqual(len(race), n502, "client-side race incidents != 502s")

        # One-to-one: each 502 of stream k <-> one incident on upstream port 8080+k
        # whose time falls within that request.
        unmatched = list(race)
        for k, r in failed:
            cands = [i for i in unmatched
                     if server_ep(i)[1] == UPSTREAM_PORT + k
                     and r["w0"] - 0.05 <= parse_ts(i["ts"]) <= r["w1"] + 0.5]
            self.assertEqual(len(cands), 1, "502 of stream %d at %.3f-%.3f matched by %s" % (
                k, r["w0"], r["w1"], [describe(i) for i in cands]))
            unmatched.remove(cands[0])
        self.assertEqual(unmatched, [], "incidents without a 502")

        # ---- phase 2: the fix (pool idle timeout 1 s < upstream's 2 s)
        up.truncate_logs()
        px = self._start_proxy(c, keepalive_timeout="1s")
        tracer = Tracer(["--idle-threshold", str(THRESHOLD_S)], name="fixed")
        tracer.start()
        self.addCleanup(tracer.kill)
        results = self._run_traffic(proxy_pod, actors, FIXED_REQUESTS)
        time.sleep(0.5)
        incidents = tracer.stop()
        print("\n  [fixed] %s" % tracer.summary_line(), file=sys.stderr)
        px.stop()
        total = sum(len(r) for r in results)
        n_bad = sum(1 for rs in results for r in rs if r["status"] != 200)
        ours = incidents_for(incidents, ips=c.ips())
        print("  [fixed] requests=%d 502s=%d incidents=%d" % (total, n_bad, len(ours)),
              file=sys.stderr)
        for inc in ours:
            print("    " + describe(inc), file=sys.stderr)
        self.assertEqual(n_bad, 0, "failed requests with the fix:\n" + px.read("error.log"))
        self.assertEqual(ours, [], "incidents with the fix")


if __name__ == "__main__":
    unittest.main(verbosity=2)
