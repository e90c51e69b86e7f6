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
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from netns import (KernelTestCase, Tracer, client_ep, describe, incidents_for,  # noqa: E402
                   server_ep)
from nginx import NGINX  # noqa: E402
from nginx_incident import RACE_CAUSES, UPSTREAM_PORT, NginxIncident  # noqa: E402

STREAMS = int(os.environ.get("RSTWATCH_NGINX_STREAMS", "8"))
REQUESTS = int(os.environ.get("RSTWATCH_NGINX_REQUESTS", "32"))  # per stream, buggy config
FIXED_REQUESTS = 8  # per stream, corrected config
THRESHOLD_S = 1.0


def parse_ts(ts):
    """Incident "ts" (RFC 3339, ms) -> unix seconds."""
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class TestNginxIncident(KernelTestCase):
    """Setup (nginx pair, client actors, traffic, counts): tests/lib/nginx_incident.py."""

    def setUp(self):
        super().setUp()
        if not os.access(NGINX, os.X_OK):
            self.skipTest("nginx not installed at %s" % NGINX)

    def traced_traffic(self, setup, phase, requests):
        """Traffic through the running proxy under a tracer, then the proxy stopped:
        (per-stream results, incidents touching the cluster)."""
        tracer = Tracer(["--idle-threshold", str(THRESHOLD_S)], name=phase)
        tracer.start()
        self.addCleanup(tracer.kill)
        results = setup.run_traffic(requests)
        time.sleep(0.5)
        incidents = tracer.stop()
        print("\n  [%s] %s" % (phase, tracer.summary_line()), file=sys.stderr)
        setup.proxy.stop()
        return results, incidents_for(incidents, ips=setup.cluster.ips())

    def test_stale_keepalive_502_then_fix(self):
        c = self.make_cluster(["proxy", "upstream"])
        proxy_pod, upstream_pod = c["proxy"], c["upstream"]

        # ---- phase 1: the incident (proxy pool idle timeout 60 s > upstream's 2 s)
        setup = NginxIncident(c, streams=STREAMS, add_cleanup=self.addCleanup).start()
        workers = setup.worker_pids()
        results, ours = self.traced_traffic(setup, "buggy", REQUESTS)
        st = setup.stats(results)
        total, failed, n502, errors = st["total"], st["failed"], st["n502"], st["error_lines"]
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

        self.assertEqual(st["other_failures"], [], "requests failed other than with 502")
        self.assertGreaterEqual(n502, 1, "no 502 in %d requests: the race did not happen" % total)
        self.assertEqual(st["n502_access"], n502, "access log 502s != 502s the clients saw")
        self.assertEqual(len(errors), n502, "error-log reset/prematurely-closed lines != 502s:\n"
                         + setup.proxy.read("error.log"))

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
        setup.upstream.truncate_logs()
        setup.start_proxy(keepalive_timeout="1s")
        results, ours = self.traced_traffic(setup, "fixed", FIXED_REQUESTS)
        total = sum(len(r) for r in results)
        n_bad = sum(1 for rs in results for r in rs if r["status"] != 200)
        print("  [fixed] requests=%d 502s=%d incidents=%d" % (total, n_bad, len(ours)),
              file=sys.stderr)
        for inc in ours:
            print("    " + describe(inc), file=sys.stderr)
        self.assertEqual(n_bad, 0,
                         "failed requests with the fix:\n" + setup.proxy.read("error.log"))
        self.assertEqual(ours, [], "incidents with the fix")


if __name__ == "__main__":
    unittest.main(verbosity=2)
