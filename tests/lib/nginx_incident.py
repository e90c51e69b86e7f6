"""The production incident with real nginx (see tests/kernel/test_nginx_incident.py for the
why of every number): pods "proxy" and "upstream"; upstream = nginx with
`keepalive_timeout 2s` on UPSTREAM_PORT+k; proxy = nginx with one upstream keepalive pool
per stream k (PROXY_PORT+k -> upstream UPSTREAM_PORT+k, default 60 s pool idle timeout);
one POST client actor per stream in the proxy pod, sending every ~2.0 s (swept, phase-shifted).

Shared by the tracer test and the agent test:

    setup = NginxIncident(cluster, streams=8, add_cleanup=self.addCleanup).start()
    results = setup.run_traffic(requests=32)      # per stream: [{"status", "w0", "w1", ...}]
    stats = setup.stats(results)                  # counts: total, 502s per stream, error lines
"""

import re

from nginx import Nginx

UPSTREAM_PORT = 8080
PROXY_PORT = 8000
SWEEP = [2.0 + 0.0002 * i for i in range(15)]  # request spacings (s), around 2.0 s
RACE_CAUSES = ("idle_close_race", "write_after_fin")
ERROR_RE = re.compile(r"Connection reset by peer|prematurely closed")


class NginxIncident:
    def __init__(self, cluster, streams=8, add_cleanup=None, proxy="proxy", upstream="upstream",
                 upstream_keepalive_timeout="2s"):
        self.cluster = cluster
        self.streams = streams
        self.proxy_pod = cluster[proxy]
        self.upstream_pod = cluster[upstream]
        self.upstream_keepalive_timeout = upstream_keepalive_timeout
        self._add_cleanup = add_cleanup or (lambda fn: None)
        self.upstream = None
        self.proxy = None
        self.actors = []

    def _nginx(self, n):
        self._add_cleanup(n.cleanup)
        return n

    def start(self, proxy_keepalive_timeout=None):
        """Upstream nginx, proxy nginx and the client actors."""
        up = self.upstream_pod
        self.upstream = self._nginx(Nginx.upstream(
            up, up.ip4, [UPSTREAM_PORT + k for k in range(self.streams)],
            keepalive_timeout=self.upstream_keepalive_timeout))
        self.upstream.start(up.ip4, UPSTREAM_PORT)
        for _ in range(self.streams):
            a = self.proxy_pod.actor(comm="rwhttp")
            self._add_cleanup(a.stop)
            self.actors.append(a)
        self.start_proxy(proxy_keepalive_timeout)
        return self

    def start_proxy(self, keepalive_timeout=None):
        """(Re)starts the proxy nginx; keepalive_timeout: its upstream pool idle timeout."""
        if self.proxy is not None:
            self.proxy.stop()
        routes = [(PROXY_PORT + k, "%s:%d" % (self.upstream_pod.ip4, UPSTREAM_PORT + k))
                  for k in range(self.streams)]
        self.proxy = self._nginx(Nginx.proxy(self.proxy_pod, self.proxy_pod.ip4, routes,
                                             upstream_keepalive_timeout=keepalive_timeout))
        self.proxy.start(self.proxy_pod.ip4, PROXY_PORT)
        return self.proxy

    def worker_pids(self):
        return set(self.proxy.worker_pids())

    def run_traffic(self, requests):
        """Every stream's request series in parallel, phase-shifted; per-stream results."""
        n = len(self.actors)
        for k, actor in enumerate(self.actors):
            sweep = SWEEP[k % len(SWEEP):] + SWEEP[:k % len(SWEEP)]
            spacings = [2.0 * k / n] + [sweep[i % len(sweep)] for i in range(requests - 1)]
            actor.start("http_series", host=self.proxy_pod.ip4, port=PROXY_PORT + k,
                        spacings=spacings, method="POST", body="rstwatch", timeout=5)
        return [actor.result(timeout=requests * 2.1 + 60)["results"] for actor in self.actors]

    def stats(self, results):
        """Counts from the clients' results and the proxy's logs."""
        failed = [(k, r) for k, rs in enumerate(results) for r in rs if r["status"] != 200]
        access = self.proxy.read("access.log").splitlines()
        errors = [line for line in self.proxy.read("error.log").splitlines()
                  if ERROR_RE.search(line)]
        return {
            "total": sum(len(r) for r in results),
            "failed": failed,
            "other_failures": [f for f in failed if f[1]["status"] != 502],
            "n502": sum(1 for _, r in failed if r["status"] == 502),
            "n502_by_stream": [sum(1 for r in rs if r["status"] == 502) for rs in results],
            "n502_access": sum(1 for line in access if line.split()[1:2] == ["502"]),
            "error_lines": errors,
        }
