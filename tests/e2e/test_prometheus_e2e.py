"""End to end with a real Prometheus: the nginx incident (tests/lib/nginx_incident.py) in
network namespaces, `rstwatch agent` naming the proxy and upstream namespaces as pods (pod map),
Debian's /usr/bin/prometheus on 127.0.0.1:<free port> scraping the agent every second and
evaluating the alerting rules of deploy/alerts/prometheusrule.yaml (every `for` shortened to 5 s,
a test-only transformation; expressions unchanged). Through Prometheus's HTTP API:

- per pair (one upstream port per stream), sum of rstwatch_incidents_total{observer="client",
  cause=~"idle_close_race|write_after_fin"} == the 502s in the proxy nginx's access log;
- RstwatchStaleKeepalive reaches `firing` for an incident pair, its summary naming the pair,
  with severity and runbook_url; so does RstwatchKeepaliveTimeoutMismatch (the agent's
  rstwatch_keepalive_mismatch: nginx reuses connections up to the upstream's 2 s timeout);
- the agent alerts stay silent (the agent is up);
- a TLS agent (deploy/components/tls's shape) is scraped over verified https with the token,
  and the resets Prometheus's own TLS closes cause (seen by a separate tracer) are not counted;
- every query of deploy/grafana/rstwatch-dashboard.json (template variables set to the pair's
  values, $__rate_interval/$window = 1m, $__range = the test's span) runs without error, and
  the queries on rstwatch's metrics return data; the variables' label_values() list the pair.
- then the runbook's fix (the proxy's upstream keepalive_timeout 1s, below the upstream's 2 s):
  no new 502 and no new stale keepalive incident; the client now closes idle connections itself.

Prometheus is started and stopped (by PID) by the test, its port chosen free, its config and
TSDB in a temp dir removed afterwards; namespaces, nginx, actors and the agent are cleaned up by
the harness (also on failure and SIGINT/SIGTERM).

Run as root from the repo root:
    /usr/bin/python3 -m unittest -v tests/e2e/test_prometheus_e2e.py
Needs: a kernel rstwatch can trace on (skips, or fails with RSTWATCH_REQUIRE_BPF=1), nginx,
prometheus (Debian package `prometheus`), python3-yaml.
Env: RSTWATCH_E2E_STREAMS (default 8), RSTWATCH_E2E_REQUESTS (per stream and round, default 12:
~25 s), RSTWATCH_E2E_MAX_ROUNDS (default 4): rounds of traffic run until 3 502s were seen (the race
hits about 1 request in 40), so the test takes ~1-2 minutes, at most ~2.5.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "deploy"))

from agent import free_port, identity_of  # noqa: E402
from agent_case import AgentTestCase  # noqa: E402
from netns import Tracer, _install_handlers, _register_proc, _unregister_proc, kill_proc  # noqa: E402
from nginx import NGINX  # noqa: E402
from nginx_incident import RACE_CAUSES, UPSTREAM_PORT, NginxIncident  # noqa: E402

try:
    import prometheus_rules as pr  # noqa: E402  (needs python3-yaml)
    YAML_ERROR = None
except ImportError as e:  # pragma: no cover
    pr = None
    YAML_ERROR = e

STREAMS = int(os.environ.get("RSTWATCH_E2E_STREAMS", "8"))
REQUESTS = int(os.environ.get("RSTWATCH_E2E_REQUESTS", "12"))  # per stream and round
MIN_502 = 3
MAX_ROUNDS = int(os.environ.get("RSTWATCH_E2E_MAX_ROUNDS", "4"))
FIX_REQUESTS = 6  # >= 5 client idle closes per pair: the client's timeout gets inferred
THRESHOLD_S = 1.0
SHORT_FOR = "5s"
FIRING_TIMEOUT_S = 60.0
PROMETHEUS_BIN = os.environ.get("RSTWATCH_PROMETHEUS", "/usr/bin/prometheus")

PROXY = dict(namespace="ingress-nginx", pod="ingress-nginx-controller-5d88c8b7f-x7k2p",
             workload="ingress-nginx-controller")
UPSTREAM = dict(namespace="shop", pod="tomcat-0", workload="tomcat")
PAIR_VALUES = {"client_namespace": PROXY["namespace"], "client_workload": PROXY["workload"],
               "server_namespace": UPSTREAM["namespace"], "server_workload": UPSTREAM["workload"],
               "job": "rstwatch", "window": "1m"}
STALE_ALERT = "RstwatchStaleKeepalive"
MISMATCH_ALERT = "RstwatchKeepaliveTimeoutMismatch"
PAIR_ALERTS = (STALE_ALERT, MISMATCH_ALERT)
AGENT_ALERTS = ("RstwatchAgentDown", "RstwatchAgentAbsent", "RstwatchRecordsLost")


def missing_tool(msg):
    """Skip, or fail where the test environment promises everything (CI, RSTWATCH_REQUIRE_BPF)."""
    if os.environ.get("RSTWATCH_REQUIRE_BPF") == "1" or os.environ.get("CI") == "true":
        raise AssertionError(msg + " (install with scripts/deps.sh --test)")
    raise unittest.SkipTest(msg)


class Prometheus:
    """/usr/bin/prometheus on 127.0.0.1:<free port> with a temp config, rules and TSDB."""

    def __init__(self, targets, rules_file, binary=PROMETHEUS_BIN, scrape_lines=()):
        """scrape_lines: more lines of the job (indented 4), e.g. scheme and tls_config."""
        self.binary = binary
        self.scrape_lines = list(scrape_lines)
        self.dir = tempfile.mkdtemp(prefix="rw-prometheus-")
        self.rules = os.path.join(self.dir, "rules.yaml")
        shutil.copy(rules_file, self.rules)
        self.config = os.path.join(self.dir, "prometheus.yml")
        self.targets = targets
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.dir, "prometheus.log")

    def _write_config(self):
        lines = [
            "global:",
            "  scrape_interval: 1s",
            "  scrape_timeout: 1s",
            "  evaluation_interval: 1s",
            "rule_files:",
            "  - %s" % self.rules,
            "scrape_configs:",
            "  - job_name: rstwatch",  # as the ServiceMonitor: job, namespace, pod, node
        ] + self.scrape_lines + [
            "    static_configs:",
            "      - targets: [%s]" % ", ".join('"%s"' % t for t in self.targets),
            "        labels:",
            "          namespace: rstwatch",
            "          pod: rstwatch-e2e",
            "          node: e2e-node",
        ]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=30.0):
        _install_handlers()
        self._write_config()
        for _ in range(3):
            self.port = free_port()
            log = open(self.log_path, "w")
            self.proc = subprocess.Popen(
                [self.binary, "--config.file=" + self.config,
                 "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                 "--web.listen-address=127.0.0.1:%d" % self.port,
                 "--web.console.templates=" + os.path.join(self.dir, "consoles"),
                 "--web.console.libraries=" + os.path.join(self.dir, "console_libraries"),
                 "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir)
            log.close()
            _register_proc(self.proc)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                        if r.status == 200:
                            return self
                except (OSError, urllib.error.URLError):
                    pass
                time.sleep(0.1)
            rc = self.proc.poll()
            self.stop()
            if rc is not None and "address already in use" in self.log().lower():
                continue  # lost the free port race: another port
            raise AssertionError("prometheus not ready on %s (exit %s); log:\n%s" % (
                self.url, rc, self.log()[-3000:]))
        raise AssertionError("prometheus: no free port after 3 attempts")

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        """SIGTERM by PID, SIGKILL after 10 s."""
        if self.proc is not None:
            kill_proc(self.proc, sig=signal.SIGTERM, timeout=10.0)
            _unregister_proc(self.proc)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- HTTP API
    def api(self, path, **params):
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read().decode() or "{}")
            body.setdefault("status", "error")
            body.setdefault("error", "HTTP %d" % e.code)
        return body

    def query(self, expr, t=None):
        params = {"query": expr}
        if t is not None:
            params["time"] = "%.3f" % t
        return self.api("/api/v1/query", **params)

    def query_range(self, expr, start, end, step):
        return self.api("/api/v1/query_range", query=expr, start="%.3f" % start,
                        end="%.3f" % end, step=step)

    def value_by(self, expr, label):
        """{label value: float} of an instant query (raises on error)."""
        res = self.query(expr)
        if res.get("status") != "success":
            raise AssertionError("query %s: %s" % (expr, res))
        return {s["metric"].get(label): float(s["value"][1]) for s in res["data"]["result"]}

    def alerts(self):
        res = self.api("/api/v1/alerts")
        if res.get("status") != "success":
            raise AssertionError("/api/v1/alerts: %s" % res)
        return res["data"]["alerts"]


def access_502_by_port(nginx_proxy):
    """{upstream port: 502 count} from the proxy's access log ($msec $status $upstream_addr ...)."""
    out = {}
    for line in nginx_proxy.read("access.log").splitlines():
        f = line.split()
        if len(f) >= 3 and f[1] == "502":
            port = int(f[2].split(",")[-1].strip().rsplit(":", 1)[1])
            out[port] = out.get(port, 0) + 1
    return out


class TestPrometheusE2E(AgentTestCase):

    def setUp(self):
        super().setUp()  # require_bpf() semantics: skip, or fail with RSTWATCH_REQUIRE_BPF=1
        if not os.access(NGINX, os.X_OK):
            missing_tool("nginx not installed at %s" % NGINX)
        if not os.access(PROMETHEUS_BIN, os.X_OK):
            missing_tool("prometheus not installed at %s (Debian package prometheus)" % PROMETHEUS_BIN)
        if pr is None:
            missing_tool("python3-yaml missing: %s" % YAML_ERROR)

    def start_prometheus(self, agent_url, scrape_lines=()):
        rules = pr.shorten_for(pr.load_prometheusrule(), SHORT_FOR)
        tmp = tempfile.mkdtemp(prefix="rw-rules-")
        self.addCleanup(shutil.rmtree, tmp, True)
        rules_path = pr.write_rules_file(rules, os.path.join(tmp, "rules.yaml"))
        target = urllib.parse.urlsplit(agent_url).netloc
        prom = Prometheus([target], rules_path, scrape_lines=scrape_lines)
        self.addCleanup(self._dump_prometheus_on_failure, prom)
        self.addCleanup(prom.cleanup)
        prom.start()
        return prom

    def _dump_prometheus_on_failure(self, prom):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        failed = result is not None and any(
            t is self for t, _ in list(getattr(result, "failures", [])) + list(
                getattr(result, "errors", [])))
        if failed:
            print("\n  [prometheus] log tail:\n" + prom.log()[-3000:], file=sys.stderr)

    def wait_until(self, fn, timeout, what, interval=0.5):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last[0]:
                return last[1]
            time.sleep(interval)
        self.fail("%s within %.0fs; last: %s" % (what, timeout, last[1]))

    def test_incidents_alert_and_dashboard_through_prometheus(self):
        t_begin = time.time()
        c = self.make_cluster(["proxy", "upstream"])
        pm = self.make_pod_map([dict(PROXY, ip=c["proxy"].ip4), dict(UPSTREAM, ip=c["upstream"].ip4)])
        setup = NginxIncident(c, streams=STREAMS, add_cleanup=self.addCleanup).start()
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off"], idle_threshold=THRESHOLD_S)
        prom = self.start_prometheus(ag.url)
        self.wait_until(lambda: (prom.value_by('up{job="rstwatch"}', "job").get("rstwatch") == 1.0,
                                 prom.value_by('up{job="rstwatch"}', "job")),
                        20, "Prometheus scraping the agent (up == 1)")

        # Watch the pair alerts while traffic runs: the time from the first request to `firing`.
        firing = {}  # alertname -> (time, alert) of its first firing alert on one of our pairs
        stop_watch = threading.Event()

        def watch():
            while not stop_watch.is_set():
                try:
                    for a in prom.alerts():
                        name = a["labels"].get("alertname")
                        if name in PAIR_ALERTS and a["state"] == "firing" and self._is_ours(a["labels"]) \
                                and "server_port" in a["labels"]:
                            firing.setdefault(name, (time.time(), a))
                except Exception:  # Prometheus stopped: the test ends anyway
                    pass
                if all(n in firing for n in PAIR_ALERTS):
                    return
                stop_watch.wait(0.5)
        watcher = threading.Thread(target=watch, daemon=True)
        t_traffic = time.time()
        watcher.start()
        self.addCleanup(stop_watch.set)
        # Rounds of traffic until MIN_502 502s (the race is ~1 in 40 requests here), at most
        # MAX_ROUNDS: usually 1-2 rounds of ~25 s.
        results = [[] for _ in range(STREAMS)]
        rounds = 0
        while rounds < MAX_ROUNDS:
            rounds += 1
            for k, rs in enumerate(setup.run_traffic(REQUESTS)):
                results[k].extend(rs)
            if sum(1 for rs in results for r in rs if r["status"] == 502) >= MIN_502:
                break
        st = setup.stats(results)
        ports = [UPSTREAM_PORT + k for k in range(STREAMS)]
        from_log = access_502_by_port(setup.proxy)
        from_log = {p: from_log.get(p, 0) for p in ports}

        # Per pair: the agent's counters, once Prometheus has scraped their final values.
        pid, uid = identity_of(PROXY), identity_of(UPSTREAM)
        sel = ('client_namespace="%s", client_pod="%s", client_workload="%s", server_namespace="%s", '
               'server_pod="%s", server_workload="%s"' % (pid + uid))
        count_expr = ('sum by (server_port) (rstwatch_incidents_total{observer="client", cause=~"%s", %s})'
                      % ("|".join(RACE_CAUSES), sel))

        def agent_counts():
            m = ag.scrape()
            out = {}
            for s in m.samples_of("rstwatch_incidents_total", observer="client", client_pod=pid[1],
                                  server_pod=uid[1]):
                if s.labels_dict["cause"] in RACE_CAUSES:
                    p = int(s.labels_dict["server_port"])
                    out[p] = out.get(p, 0) + int(s.value)
            return {p: out.get(p, 0) for p in ports}

        def prom_counts():
            got = prom.value_by(count_expr, "server_port")
            return {p: int(got.get(str(p), 0)) for p in ports}

        time.sleep(1.0)  # last records reach the agent
        agent_side = agent_counts()
        in_prom = self.wait_until(lambda: (prom_counts() == agent_side, prom_counts()), 15,
                                  "Prometheus has the agent's counts %s" % agent_side)
        t_counted = time.time()
        print("\n  [e2e] rounds=%d requests=%d 502s(clients)=%d per port: 502s in nginx log %s, "
              "incidents in Prometheus %s" % (rounds, st["total"], st["n502"], from_log, in_prom),
              file=sys.stderr)
        self.assertEqual(st["other_failures"], [], "requests failed other than with 502")
        self.assertGreaterEqual(st["n502"], 1, "no 502 in %d requests: the race did not happen"
                                % st["total"])
        self.assertEqual(sum(from_log.values()), st["n502"], "access log 502s != clients' 502s")
        self.assertEqual(in_prom, from_log, "per pair: incidents in Prometheus != nginx 502s")

        # The stale keepalive alert fires for a pair with incidents, and the keepalive timeout
        # mismatch alert (the agent's prediction from healthy traffic) for one of our pairs.
        self.wait_until(lambda: (all(n in firing for n in PAIR_ALERTS), [
            (a["labels"].get("alertname"), a["labels"].get("server_port"), a["state"])
            for a in prom.alerts()]),
            max(1.0, FIRING_TIMEOUT_S - (time.time() - t_counted)),
            "%s firing on one of our pairs" % " and ".join(PAIR_ALERTS))
        stop_watch.set()
        for name in PAIR_ALERTS:
            at, a = firing[name]
            print("  [e2e] %s firing %.1f s after the first request (for: %s): %s" % (
                name, at - t_traffic, SHORT_FOR, a["annotations"]["summary"]), file=sys.stderr)
            self.assertEqual(a["labels"]["severity"], "warning")
            self.assertIn("%s/%s:%s" % (UPSTREAM["namespace"], UPSTREAM["workload"],
                                        a["labels"]["server_port"]), a["annotations"]["summary"])
            self.assertTrue(a["annotations"]["runbook_url"].endswith("#" + name.lower()))
        mismatch = prom.value_by('max by (server_port) (rstwatch_keepalive_mismatch{%s})' % sel,
                                 "server_port")
        print("  [e2e] rstwatch_keepalive_mismatch per port: %s" % mismatch, file=sys.stderr)
        alert = firing[STALE_ALERT][1]
        port = alert["labels"]["server_port"]
        self.assertGreater(from_log[int(port)], 0, "alert for a port without 502s: %s" % alert)
        self.assertEqual(alert["labels"]["severity"], "warning")
        self.assertIn("%s/%s" % (PROXY["namespace"], PROXY["workload"]), alert["annotations"]["summary"])
        self.assertIn("%s/%s:%s" % (UPSTREAM["namespace"], UPSTREAM["workload"], port),
                      alert["annotations"]["summary"])
        self.assertTrue(alert["annotations"]["runbook_url"].endswith("#rstwatchstalekeepalive"))
        # The agent is host-wide: other tests' pairs (labelled world) may alert too; ours only.
        firing_ports = sorted(a["labels"]["server_port"] for a in prom.alerts()
                              if a["labels"].get("alertname") == STALE_ALERT
                              and self._is_ours(a["labels"]))
        self.assertTrue(set(firing_ports) <= {str(p) for p, n in from_log.items() if n > 0},
                        "stale keepalive alert on a pair without 502s: %s" % firing_ports)
        # The agent is healthy: its alerts stay silent.
        noisy = [(a["labels"]["alertname"], a["state"]) for a in prom.alerts()
                 if a["labels"].get("alertname") in AGENT_ALERTS]
        self.assertEqual(noisy, [], "agent alerts on a healthy agent")

        # The fix from the runbook: the proxy's upstream keepalive_timeout below the upstream's.
        setup.start_proxy(keepalive_timeout="1s")
        before_fix = agent_side
        fixed = setup.run_traffic(FIX_REQUESTS)
        st_fixed = setup.stats(fixed)
        time.sleep(1.0)
        after_fix = self.wait_until(lambda: (prom_counts() == agent_counts(), prom_counts()), 15,
                                    "Prometheus has the agent's counts after the fix")
        print("  [e2e] after keepalive_timeout 1s: requests=%d 502s=%d incidents %s -> %s; "
              "inferred client idle timeout per port %s" % (
                  st_fixed["total"], st_fixed["n502"], before_fix, after_fix, prom.value_by(
                      "max by (server_port) (rstwatch_client_idle_timeout_seconds{%s})" % sel,
                      "server_port")), file=sys.stderr)
        self.assertEqual(st_fixed["n502"], 0, "502s after the fix")
        self.assertEqual(after_fix, before_fix, "new stale keepalive incidents after the fix")

        # Every dashboard query, as Grafana would send it for this pair.
        self.check_dashboard(prom, t_begin)
        prom.stop()
        self.assertIsNotNone(prom.proc.poll(), "prometheus still running")

    def test_scrapes_a_tls_agent_and_its_own_resets_are_not_counted(self):
        """components/tls as Prometheus meets it: https verified with the CA and serverName,
        bearer token, up == 1. Go's TLS client answers the agent's close (close_notify + FIN)
        with its own close_notify, reset by the closed socket: a separate tracer sees those
        resets, the agent counts none of them."""
        tmp = tempfile.mkdtemp(prefix="rw-e2e-tls-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cert, key, token_file = (os.path.join(tmp, n) for n in ("tls.crt", "tls.key", "token"))
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=rstwatch.rstwatch.svc",
                            "-addext", "subjectAltName=DNS:rstwatch.rstwatch.svc,IP:127.0.0.1",
                            "-keyout", key, "-out", cert], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        token = os.urandom(16).hex()
        with open(token_file, "w") as f:
            f.write(token + "\n")
        tracer = Tracer(name="host-tracer")
        self.addCleanup(tracer.kill)
        tracer.start()
        ag = self.start_agent(["--auth-token-file", token_file, "--tls-cert", cert, "--tls-key", key,
                               "--kube", "off"], cafile=cert, token=token)
        prom = self.start_prometheus(ag.url, scrape_lines=[
            "    scheme: https",
            "    tls_config: {ca_file: %s, server_name: rstwatch.rstwatch.svc}" % cert,
            "    authorization: {credentials_file: %s}" % token_file,
        ])
        def scrapes():
            n = prom.value_by('count_over_time(up{job="rstwatch"}[1m])', "job").get("rstwatch", 0)
            return n >= 8, n
        self.wait_until(scrapes, 40, "8 scrapes")
        self.assertEqual(prom.value_by('up{job="rstwatch"}', "job"), {"rstwatch": 1.0})
        self.assertIn("rstwatch", prom.value_by('rstwatch_records_lost_total{job="rstwatch"}', "job"))
        traced = tracer.stop()
        # The tracer saw the TLS teardowns (Go answering the agent's close with close_notify,
        # reset by the closed socket) and counted them as what they are: no request was lost.
        summary = tracer.summary_line()
        m = re.search(r"(\d+) TLS close_notify teardowns", summary)
        self.assertTrue(m and int(m.group(1)) > 0,
                        "the tracer saw no TLS teardown of Prometheus's scrapes: %s" % summary)
        own = [i for i in traced if i["server"]["port"] == ag.port]
        self.assertEqual(own, [], "TLS teardowns of Prometheus's scrapes reported as incidents")
        others = [i for i in traced if i["server"]["port"] != ag.port]
        counted = sum(s.value for s in ag.scrape().samples_of("rstwatch_incidents_total"))
        # The host is otherwise quiet; whatever else happened is all the agent may count.
        self.assertLessEqual(counted, len(others), "own-port incidents were counted; others: %r" % others)
        self.assertEqual(ag.stop(), 0)

    def check_dashboard(self, prom, t_begin):
        dash = pr.load_dashboard()
        now = time.time()
        rng = "%ds" % (int(now - t_begin) + 5)
        values = dict(PAIR_VALUES)
        problems, empty, checked = [], [], 0
        # Template variables: label_values() as Grafana's Prometheus data source runs them.
        for v in pr.template_variables(dash):
            if v.get("type") != "query":
                continue
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            match, label = pr.label_values_query(q)
            params = {"start": "%.3f" % t_begin, "end": "%.3f" % now}
            if match:
                params["match[]"] = pr.substitute(match, values, interval="1m", rng=rng)
            res = prom.api("/api/v1/label/%s/values" % label, **params)
            checked += 1
            if res.get("status") != "success":
                problems.append("variable %s (%s): %s" % (v["name"], q, res))
            elif values.get(v["name"]) not in res["data"]:
                empty.append("variable %s (%s) lists %s, not %r" % (
                    v["name"], q, res["data"], values.get(v["name"])))
        queries = pr.dashboard_queries(dash) + [
            ("annotation " + a.get("name", ""), "", a["expr"], False, False)
            for a in dash.get("annotations", {}).get("list", []) if a.get("expr")]
        for title, ref, expr, instant, about_pair in queries:
            q = pr.substitute(expr, values, interval="1m", rng=rng)
            self.assertNotIn("$", q, "unsubstituted variable in %s %s: %s" % (title, ref, q))
            if instant:
                res = prom.query(q, t=now)
            else:
                res = prom.query_range(q, t_begin, now, "2s")
            checked += 1
            where = "%s [%s]: %s" % (title, ref, q)
            if res.get("status") != "success":
                problems.append("%s -> %s" % (where, res.get("error", res)))
                continue
            result = res["data"]["result"]
            # Queries on rstwatch's metrics (and on the agent's `up`) must return data; only
            # kube-state-metrics panels may not (no kube-state-metrics here).
            wants_data = about_pair or "rstwatch_" in q or "up{" in q
            if "kube_" in q:
                wants_data = False
            if wants_data and not result:
                empty.append(where)
            elif about_pair and not any(self._is_ours(s["metric"]) for s in result):
                empty.append("%s: no series of the pair: %s" % (where, result[:3]))
        print("  [e2e] dashboard: %d queries and variables checked against Prometheus" % checked,
              file=sys.stderr)
        self.assertEqual(problems, [], "dashboard queries failing")
        self.assertEqual(empty, [], "dashboard queries without data for the incident pair")

    @staticmethod
    def _is_ours(metric):
        """No pair label of the series names another pair than ours (aggregates count)."""
        for k in ("client_namespace", "client_workload", "server_namespace", "server_workload"):
            if k in metric and metric[k] != PAIR_VALUES[k]:
                return False
        return True


if __name__ == "__main__":
    unittest.main(verbosity=2)
