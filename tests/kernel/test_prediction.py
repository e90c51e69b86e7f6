"""Predicting stale-keepalive 502s: the agent's inferred idle timeouts, the mismatch verdict,
its log line, /diagnose and `rstwatch diagnose`, against real nginx in network namespaces.

Every scenario is one "cluster" (pods "proxy" and "upstream", named by the pod map; their
traffic uses extra 10.245.S.0/24 addresses, a range the other tests' clusters never use, so
that no host-wide agent attributes a concurrent test's traffic to our pods or ours to theirs):
upstream = nginx with `keepalive_timeout T` on port 8080; proxy = nginx with one route per
client stream (port 8000+k), each route its own `upstream` block (own keepalive pool) pointing
at upstream:8080.  So all streams of a scenario are ONE rstwatch pair (proxy pod -> upstream
pod:8080), and every stream idles independently: S streams with a gap > T give S server idle
closes per gap on the pair (one shared pool would instead keep reusing
its connections).  That is how T = 5 s collects 20 idle closes in ~25 s.

All scenarios run in parallel under one `rstwatch agent` (setUpClass, ~1.5 min); the tests then
check the recorded outcome.  A watcher polls /metrics and /diagnose?level=pod every 200 ms and
scans the agent's log, recording per pair the wall-clock time each signal was first seen
(read after the poll's requests: never earlier than the signal itself).

  t1, t2, t5   the mismatch, T = 1, 2, 5 s (proxy pools keep idle connections 60 s, nginx's
               default).  Phase 1: 5 streams x 4 POSTs with gaps 1.3T/1.4T/1.5T, clearly above
               T: the upstream closes every idle connection cleanly (no race, no 502), and each
               stream's trailing idle period ends in one more close: exactly 5 x 4 = 20 server
               idle closes, by construction.  Snapshot once the agent has counted them.
               Phase 2: the 502 pattern of test_nginx_incident.py (POST, several streams,
               spacing T + 0..2.8 ms, phase-shifted) until a round has produced 502s (at most
               RSTWATCH_PREDICTION_ROUNDS rounds).  The t5 client is named ingress-nginx-*.
  half         T = 2 s, proxy pool `keepalive_timeout 1s` (T/2): gaps 0.75T..1.25T including
               the 502 pattern's T + 0.2 ms: the proxy closes every idle connection first.
  mixed        t2's phase 1 plus 2 busy streams (a request every 50 ms: their pooled
               connections never idle) on the same pair, in parallel with t2.

Run as root from the repo root (RSTWATCH_BIN: the binary, default build/rstwatch):
    /usr/bin/python3 -m unittest -v tests/kernel/test_prediction.py
Env: RSTWATCH_PREDICTION_ROUNDS (max phase-2 rounds, default 3), RSTWATCH_REQUIRE_BPF=1 (fail
instead of skipping without BPF / agent / diagnose), RSTWATCH_TEST_VERBOSE=1 (agent log).
"""

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import traceback
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import agent as agentlib  # noqa: E402
from agent import Agent, PodMapFile, pair_labels  # noqa: E402
from netns import Cluster, rstwatch_bin  # noqa: E402
from nginx import NGINX  # noqa: E402
from prediction import (PRIVATE_PREFIX, UPSTREAM_PORT, BackgroundDiagnose, FanIn,  # noqa: E402
                        Watcher, diagnose_cli, first_502, free_subnets, mismatch_log_regex,
                        nginx_fix_value, pod_pair_key, use_private_range)

THRESHOLD_S = 0.5  # agent --idle-threshold: closes are observed from 0.25 s idle
TOL = 0.05  # the requirement: within 5 % of the true timeout
MIXED_TOL = 0.01  # busy streams may move the estimate by jiffy noise only (HZ=250: 4 ms)
P1_STREAMS = 5
P1_REQUESTS = 4  # 3 gaps + the trailing idle period = 4 server idle closes per stream
P1_CLOSES = P1_STREAMS * P1_REQUESTS  # 20
P1_GAPS = (1.3, 1.4, 1.5)  # x T
SWEEP_STEP = 0.0002  # phase 2: spacing T + 0 .. 2.8 ms (test_nginx_incident.py)
P2 = {1.0: (8, 40), 2.0: (10, 24), 5.0: (20, 8)}  # T -> (streams, requests per stream and round)
P2_MAX_ROUNDS = int(os.environ.get("RSTWATCH_PREDICTION_ROUNDS", "3"))
HALF_GAPS = (1.0, 1.0001, 0.75, 1.0002, 1.25, 1.0003)  # x T, all > the client's T/2
BUSY_STREAMS = 2
BUSY_SPACING = 0.05
RACE_CAUSES = ("idle_close_race", "write_after_fin")
NO_INCIDENT_CAUSES = ("reset_other",)  # every other cause is a stale keepalive incident

SCENARIOS = {
    "t1": dict(kind="mismatch", t=1.0,
               client=("shop", "web-proxy-t1-6b7f9c4d8-q2w8x", "web-proxy-t1"),
               server=("shop", "api-t1-0", "api-t1")),
    "t2": dict(kind="mismatch", t=2.0,
               client=("shop", "web-proxy-t2-6b7f9c4d8-z9k3m", "web-proxy-t2"),
               server=("shop", "api-t2-0", "api-t2")),
    "t5": dict(kind="mismatch", t=5.0,
               client=("ingress-nginx", "ingress-nginx-controller-t5-5d88c8b7f-x7k2p",
                       "ingress-nginx-controller-t5"),
               server=("shop", "api-t5-0", "api-t5")),
    "half": dict(kind="half", t=2.0, pool=1.0,
                 client=("shop", "web-proxy-half-7d4c9b6f5-h4l2n", "web-proxy-half"),
                 server=("shop", "api-half-0", "api-half")),
    "mixed": dict(kind="mixed", t=2.0,
                  client=("shop", "web-proxy-mixed-58c7d9f6b-m3p8r", "web-proxy-mixed"),
                  server=("shop", "api-mixed-0", "api-mixed")),
}
MISMATCH = ("t1", "t2", "t5")


def within(x, t, tol):
    return x is not None and abs(x - t) <= tol * t


def value_text(v):
    return "%.0f" % v if v == math.floor(v) else "%.1f" % v


def statuses(results):
    return [r["status"] for rs in results.values() for r in rs]


def wall(t, t0):
    return "%+.2fs" % (t - t0) if t is not None else "-"


class Scenario:
    """One cluster, its nginx pair, its streams and what the agent said about the pair."""

    def __init__(self, name, spec, cluster, add_cleanup):
        self.name = name
        self.spec = spec
        self.t = spec["t"]
        self.cluster = cluster
        self.client_id, self.server_id = spec["client"], spec["server"]
        self.key = pod_pair_key(self.client_id, self.server_id, UPSTREAM_PORT)
        self.labels = pair_labels(self.client_id, self.server_id, UPSTREAM_PORT)
        self.log_rx = mismatch_log_regex(self.client_id, self.server_id, UPSTREAM_PORT)
        streams = P1_STREAMS
        if spec["kind"] == "mismatch":
            streams = max(streams, P2[self.t][0])
        elif spec["kind"] == "mixed":
            streams = P1_STREAMS + BUSY_STREAMS
        self.fanin = FanIn(cluster, streams, self.t, add_cleanup,
                           client_pool_timeout_s=spec.get("pool"))
        self.watcher = None
        self.error = None
        self.t_start = None
        self.phase1 = None  # results
        self.snap1 = None  # snapshot after phase 1 (all its idle closes counted)
        self.phase2 = []  # results per round
        self.t_phase2 = None
        self.busy = None
        self.final = None
        self.t_end = None

    def pod_map_entries(self):
        out = []
        for pod, ident in ((self.cluster["proxy"], self.client_id),
                           (self.cluster["upstream"], self.server_id)):
            out.append(dict(ip=pod.ip4, namespace=ident[0], pod=ident[1], workload=ident[2]))
        return out

    # -- agent views
    def snapshot(self):
        m = self.watcher.agent.scrape()
        return {
            "t": time.time(),
            "pod": self.watcher.diagnose(self.key, "pod"),
            "workload": self.watcher.diagnose(self.key, "workload"),
            "server_s": m.value("rstwatch_server_idle_timeout_seconds", **self.labels),
            "client_s": m.value("rstwatch_client_idle_timeout_seconds", **self.labels),
            "mismatch": m.value("rstwatch_keepalive_mismatch", **self.labels),
            "incidents": {s.labels_dict["cause"] + "/" + s.labels_dict["observer"]: s.value
                          for s in m.samples_of("rstwatch_incidents_total", **self.labels)
                          if s.value > 0},
            "records_lost": m.value("rstwatch_records_lost_total"),
        }

    def wait_count(self, field, n, deadline):
        """Until /diagnose counts n `field` (server_closes/client_closes) or deadline; then a
        little longer (an extra close would show) and a snapshot."""
        while time.time() < deadline:
            d = self.watcher.diagnose(self.key, "pod")
            if d is not None and d[field] >= n:
                break
            time.sleep(0.2)
        time.sleep(1.2)  # > the agent's 1 s inference tick: gauges are current
        return self.snapshot()

    # -- traffic
    def phase1_plans(self, first=0):
        t = self.t
        return {first + k: (k * 0.25 * t, [0.0] + [g * t for g in P1_GAPS])
                for k in range(P1_STREAMS)}

    def run(self):
        try:
            self.t_start = time.time()
            getattr(self, "_run_" + self.spec["kind"])()
        except BaseException:
            self.error = traceback.format_exc()
        finally:
            self.t_end = time.time()

    def _run_mismatch(self):
        t = self.t
        self.phase1 = self.fanin.series(self.phase1_plans())
        last = max(r["w1"] for rs in self.phase1.values() for r in rs)
        self.snap1 = self.wait_count("server_closes", P1_CLOSES, last + t + 5)
        n, requests = P2[t]
        self.t_phase2 = time.time()
        for _ in range(P2_MAX_ROUNDS):
            plans = {k: (t * k / n, [0.0] + [t + SWEEP_STEP * ((i + k) % 15)
                                             for i in range(requests - 1)])
                     for k in range(n)}
            res = self.fanin.series(plans)
            self.phase2.append(res)
            if 502 in statuses(res):
                break
        last = max(r["w1"] for res in self.phase2 for rs in res.values() for r in rs)
        time.sleep(max(0.0, last + t + 1.5 - time.time()))  # trailing idle closes
        self.final = self.snapshot()

    def _run_half(self):
        t = self.t
        plans = {k: (k * 0.4, [0.0] + [g * t for g in HALF_GAPS]) for k in range(P1_STREAMS)}
        self.phase1 = self.fanin.series(plans)
        last = max(r["w1"] for rs in self.phase1.values() for r in rs)
        self.expected_client_closes = P1_STREAMS * (len(HALF_GAPS) + 1)
        self.snap1 = self.wait_count("client_closes", self.expected_client_closes,
                                     last + self.spec["pool"] + 5)
        self.final = self.snap1

    def _run_mixed(self):
        t = self.t
        idle = self.phase1_plans()
        length = max(o + sum(sp[1:]) for o, sp in idle.values())
        # Busy until well after the snapshot below (checked by the test).
        count = int((length + t + 8.0) / BUSY_SPACING)
        busy = {P1_STREAMS + j: (0.013 * j, [0.0] + [BUSY_SPACING] * (count - 1))
                for j in range(BUSY_STREAMS)}
        self.fanin.start_series(busy)
        self.fanin.start_series(idle)
        self.phase1 = self.fanin.collect(idle)
        last = max(r["w1"] for rs in self.phase1.values() for r in rs)
        self.snap1 = self.wait_count("server_closes", P1_CLOSES, last + t + 5)
        self.busy = self.fanin.collect(busy)
        # Now the busy pools' connections idle too: one more server idle close each.
        last = max(r["w1"] for rs in self.busy.values() for r in rs)
        self.final = self.wait_count("server_closes", P1_CLOSES + BUSY_STREAMS, last + t + 5)


def _require_diagnose():
    try:
        r = subprocess.run([rstwatch_bin(), "diagnose", "--help"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=20)
        ok = r.returncode == 0 and "--from" in r.stdout
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        msg = "`%s diagnose --help` does not document --from: no diagnose subcommand" % (
            rstwatch_bin())
        if os.environ.get("RSTWATCH_REQUIRE_BPF") == "1":
            raise AssertionError(msg)
        raise unittest.SkipTest(msg)


def _table_blocks(text):
    """`rstwatch diagnose` table -> {header line: [lines]} (blocks split by blank lines)."""
    out = {}
    for block in text.strip("\n").split("\n\n"):
        lines = block.splitlines()
        if lines:
            out[lines[0].strip()] = lines[1:]
    return out


def _histogram_row(line, width=22):
    """A histogram row of the table ("  {label:>8}  " then three bars, each "#... N" padded
    to at least width, two spaces apart) -> [reuses, server closes, client closes]."""
    pos, counts = 12, []
    for _ in range(3):
        m = re.compile(r"(#+ (\d+))?").match(line, pos)
        if m.group(1):
            counts.append(int(m.group(2)))
            pos += max(width, len(m.group(1))) + 2
        else:
            counts.append(0)
            pos += width + 2
    return counts


class TestPrediction(unittest.TestCase):
    maxDiff = None
    run_error = None

    @classmethod
    def setUpClass(cls):
        agentlib.require_agent()
        if not os.access(NGINX, os.X_OK):
            raise unittest.SkipTest("nginx not installed at %s" % NGINX)
        _require_diagnose()
        t0 = time.time()
        cls.scenarios = {}
        start = (os.getpid() * 7) % 250 + 1
        subnets = free_subnets(len(SCENARIOS), start)
        private = free_subnets(len(SCENARIOS), start, prefix=PRIVATE_PREFIX)
        for (name, spec), subnet, priv in zip(SCENARIOS.items(), subnets, private):
            c = Cluster(names=["proxy", "upstream"], subnet=subnet)
            c.__enter__()
            cls.addClassCleanup(c.close)
            use_private_range(c, priv)
            cls.scenarios[name] = Scenario(name, spec, c, cls.addClassCleanup)
        entries = [e for s in cls.scenarios.values() for e in s.pod_map_entries()]
        cls.pod_map = PodMapFile(entries)
        cls.addClassCleanup(cls.pod_map.cleanup)
        cls.agent = Agent(["--pod-map", cls.pod_map.path, "--kube", "off"],
                          idle_threshold=THRESHOLD_S)
        cls.addClassCleanup(cls._dump_agent)
        cls.addClassCleanup(cls.agent.kill)
        cls.agent.start()
        # nginx after the agent: every upstream connection has its history.
        for s in cls.scenarios.values():
            s.fanin.start_nginx()
            s.fanin.start_actors()
        pairs = {s.key: {"labels": s.labels, "log": s.log_rx} for s in cls.scenarios.values()}
        cls.watcher = Watcher(cls.agent, pairs)
        cls.addClassCleanup(cls.watcher.stop)
        for s in cls.scenarios.values():
            s.watcher = cls.watcher
        # The standalone command watches the node itself while t1 runs its phase 1.
        cls.standalone = BackgroundDiagnose(["--duration", "20", "--pod-map", cls.pod_map.path,
                                             "--idle-threshold", str(THRESHOLD_S), "-o", "json"])
        cls.addClassCleanup(cls.standalone.kill)
        cls.watcher.start()
        cls.t_setup = time.time() - t0
        t1 = time.time()
        threads = [threading.Thread(target=s.run, daemon=True) for s in cls.scenarios.values()]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 480
        for th in threads:
            th.join(timeout=max(1.0, deadline - time.monotonic()))
        if any(th.is_alive() for th in threads):
            cls.run_error = "scenario threads still running after 480 s"
        cls.watcher.stop()
        cls.t_traffic = time.time() - t1
        cls.standalone_out = cls.standalone.wait(timeout=60)
        url = cls.agent.url
        cls.cli_table = diagnose_cli(["--from", url])
        cls.cli_json = diagnose_cli(["--from", url, "-o", "json"])
        cls.cli_json_pod = diagnose_cli(["--from", url, "-o", "json", "--level", "pod"])
        cls.api_workload = json.loads(cls.agent.get("/diagnose?level=workload")[2])
        cls.api_pod = json.loads(cls.agent.get("/diagnose?level=pod")[2])
        cls.agent_lines = cls.agent.lines()
        cls.t_total = time.time() - t0
        cls._print_summary()

    @classmethod
    def _dump_agent(cls):
        if os.environ.get("RSTWATCH_TEST_VERBOSE") == "1":
            lines = cls.agent.lines()
            print("\n  [agent] keepalive lines and the last 15 log lines:\n" + "".join(
                "    " + l for l in [l for l in lines if "keepalive timeout" in l] + lines[-15:]),
                file=sys.stderr)

    @classmethod
    def _print_summary(cls):
        p = lambda *a: print(*a, file=sys.stderr)  # noqa: E731
        p("\n  [prediction] setup %.1fs, traffic %.1fs, total %.1fs, watcher polls %d (errors %d)"
          % (cls.t_setup, cls.t_traffic, cls.t_total, cls.watcher.polls, len(cls.watcher.errors)))
        for s in cls.scenarios.values():
            if s.error:
                p("  [%s] ERROR:\n%s" % (s.name, s.error))
                continue
            d1, df = (s.snap1 or {}).get("pod") or {}, (s.final or {}).get("pod") or {}
            f = cls.watcher.first[s.key]
            n_lines = sum(1 for l in cls.agent_lines if s.log_rx.search(l))
            p("  [%s] T=%.1fs: after phase 1: server %s s (evidence %s, closes %s) client %s s "
              "(evidence %s, closes %s) reuses %s mismatch %s; final: server %s s (evidence %s, "
              "closes %s) client %s s mismatch %s incidents %s; log lines %d" % (
                  s.name, s.t, d1.get("server_idle_timeout_s"),
                  d1.get("server_idle_timeout_evidence"), d1.get("server_closes"),
                  d1.get("client_idle_timeout_s"), d1.get("client_idle_timeout_evidence"),
                  d1.get("client_closes"), d1.get("reuses"), d1.get("mismatch"),
                  df.get("server_idle_timeout_s"), df.get("server_idle_timeout_evidence"),
                  df.get("server_closes"), df.get("client_idle_timeout_s"), df.get("mismatch"),
                  df.get("incidents"), n_lines))
            pub = cls.published(s)
            if pub:
                p("      published estimates while <= %d closes (closes, evidence, s): %s" % (
                    P1_CLOSES, sorted(set(pub))[:12]))
            if s.spec["kind"] == "mismatch":
                st = [x for res in s.phase2 for x in statuses(res)]
                t502 = cls.first_502_time(s)
                p("      phase 2: %d round(s), %d requests, %d x 502; mismatch first seen: metric %s,"
                  " log %s, /diagnose %s; first 502 %s (times from phase-2 start)" % (
                      len(s.phase2), len(st), st.count(502),
                      wall(f.get("mismatch_metric"), s.t_phase2), wall(f.get("mismatch_log"),
                                                                       s.t_phase2),
                      wall(f.get("diag_mismatch"), s.t_phase2), wall(t502, s.t_phase2)))
                if df.get("fix"):
                    p("      fix: %s" % df["fix"]["setting"])
            end = cls._api_pair(s)
            if end and df and (end["server_closes"], end["client_closes"], end["reuses"]) != (
                    df["server_closes"], df["client_closes"], df["reuses"]):
                p("      after the final snapshot: server_closes %s -> %s, client_closes %s -> %s, "
                  "reuses %s -> %s; server_close histogram %s -> %s (buckets %s)" % (
                      df["server_closes"], end["server_closes"], df["client_closes"],
                      end["client_closes"], df["reuses"], end["reuses"],
                      df["histograms"]["server_close"], end["histograms"]["server_close"],
                      end["histograms"]["buckets_s"]))
            for l in cls.agent_lines:
                if s.log_rx.search(l):
                    p("      log: %s" % l.strip()[:400])
        if os.environ.get("RSTWATCH_TEST_VERBOSE") == "1":
            p("  [prediction] `rstwatch diagnose --from` (rc %d):\n%s" % (
                cls.cli_table[0], cls.cli_table[1]))

    @classmethod
    def _api_pair(cls, s):
        for p in cls.api_pod["pairs"]:
            if (p["client"]["pod"], p["server"]["pod"], p["server_port"]) == s.key:
                return p
        return None

    @classmethod
    def published(cls, s):
        """(server_closes, evidence, estimate) of every watcher poll that saw a published
        server estimate while /diagnose counted at most P1_CLOSES server closes."""
        out = []
        for _, snap in cls.watcher.snaps[s.key]:
            d = snap["diag"]
            if d and d["server_idle_timeout_s"] is not None and d["server_closes"] <= P1_CLOSES:
                out.append((d["server_closes"], d["server_idle_timeout_evidence"],
                            d["server_idle_timeout_s"]))
        return out

    @classmethod
    def first_502_time(cls, s):
        ts = [first_502(res) for res in s.phase2]
        ts = [t for t in ts if t is not None]
        return min(ts) if ts else None

    def setUp(self):
        if self.run_error:
            self.fail(self.run_error)
        self.assertEqual(self.watcher.errors[:5], [], "watcher poll errors")

    def scenario(self, name):
        s = self.scenarios[name]
        if s.error:
            self.fail("scenario %s failed:\n%s" % (name, s.error))
        return s

    # ------------------------------------------------------------------ accuracy

    def test_server_timeout_within_5pct_after_at_most_20_idle_closes(self):
        """T = 1, 2, 5 s.  Phase 1 makes exactly 20 server idle closes (5 streams x (3 gaps
        + the trailing idle period), gaps 1.3-1.5 T); once the agent has counted them (and
        the inference tick has run), the published estimate is within 5 % of T, it rests
        on at most 20 observations, and server_closes is exactly 20 (no close missed, none
        counted twice although both ends are on this node).  Also every estimate the
        watcher saw published while <= 20 closes were counted was within 5 %, and after
        phase 2 (gaps around T, 502s) the estimate is still within 5 %."""
        for name in MISMATCH:
            with self.subTest(scenario=name):
                s = self.scenario(name)
                t = s.t
                self.assertEqual(set(statuses(s.phase1)), {200}, "phase 1 must be clean")
                d = s.snap1["pod"]
                self.assertIsNotNone(d, "pair not in /diagnose after phase 1")
                ctx = json.dumps(d)
                self.assertEqual(d["server_closes"], P1_CLOSES, ctx)
                self.assertLessEqual(d["server_idle_timeout_evidence"], P1_CLOSES, ctx)
                self.assertGreaterEqual(d["server_idle_timeout_evidence"], 5, ctx)
                self.assertTrue(within(d["server_idle_timeout_s"], t, TOL),
                                "estimate %s not within 5%% of %s: %s" % (
                                    d["server_idle_timeout_s"], t, ctx))
                self.assertEqual((d["client_closes"], d["reuses"], d["incidents"]), (0, 0, {}),
                                 ctx)
                self.assertIsNone(d["client_idle_timeout_s"], ctx)
                # The metric carries the same estimate (pod level = the default labels).
                self.assertIsNotNone(s.snap1["server_s"], "no server timeout gauge")
                self.assertAlmostEqual(s.snap1["server_s"], d["server_idle_timeout_s"], places=6)
                self.assertIsNone(s.snap1["client_s"], "client timeout gauge without evidence")
                # Every estimate seen while at most 20 closes were counted.
                pub = self.published(s)
                self.assertTrue(pub, "no estimate published at <= 20 closes")
                bad = [x for x in pub if not within(x[2], t, TOL)]
                self.assertEqual(bad, [], "estimates outside 5%% of %s at <= 20 closes" % t)
                # After the 502 phase (gaps around T).
                df = s.final["pod"]
                self.assertTrue(within(df["server_idle_timeout_s"], t, TOL), json.dumps(df))

    def test_mismatch_flagged_before_first_502(self):
        """The rstwatch_keepalive_mismatch gauge, /diagnose and the log line all said
        "mismatch" before the first request that got a 502 was even sent (client-side
        wall clock w0 of that request vs the watcher's poll time), in runs that did produce
        502s; phase 1 had none."""
        for name in MISMATCH:
            with self.subTest(scenario=name):
                s = self.scenario(name)
                self.assertNotIn(502, statuses(s.phase1))
                st = [x for res in s.phase2 for x in statuses(res)]
                self.assertEqual(set(st) - {200, 502}, set(), "other failures than 502")
                t502 = self.first_502_time(s)
                self.assertIsNotNone(t502, "no 502 in %d phase-2 requests (%d rounds): the race "
                                     "did not happen" % (len(st), len(s.phase2)))
                f = self.watcher.first[s.key]
                for signal_name in ("mismatch_metric", "diag_mismatch", "mismatch_log"):
                    self.assertIn(signal_name, f, "%s never seen" % signal_name)
                    self.assertLess(f[signal_name], t502, "%s first seen %.2f s after the first "
                                    "502" % (signal_name, f[signal_name] - t502))
                self.assertEqual(s.snap1["mismatch"], 1)
                self.assertIs(s.snap1["pod"]["mismatch"], True)
                # Afterwards the pair carries the confirmed incidents: every 502 is one
                # client-side race incident (test_agent_nginx.py checks that 1:1 per pair).
                df = s.final["pod"]
                stale = sum(n for c, n in df["incidents"].items() if c not in NO_INCIDENT_CAUSES)
                self.assertGreaterEqual(stale, st.count(502), json.dumps(df))
                self.assertEqual(s.final["mismatch"], 1)

    def test_client_pool_below_server_timeout_no_mismatch(self):
        """Proxy pool keepalive_timeout T/2 = 1 s, upstream T = 2 s, gaps 0.75-1.25 T
        (including the 502 pattern's T + 0.1..0.3 ms): the proxy closes every idle
        connection first.  mismatch 0, no incidents, client timeout within 5 % of 1 s,
        exactly one client idle close per gap and trailing period, no server timeout."""
        s = self.scenario("half")
        pool = s.spec["pool"]
        self.assertEqual(set(statuses(s.phase1)), {200})
        d = s.final["pod"]
        self.assertIsNotNone(d, "pair not in /diagnose")
        ctx = json.dumps(d)
        self.assertEqual(d["client_closes"], s.expected_client_closes, ctx)
        self.assertTrue(within(d["client_idle_timeout_s"], pool, TOL),
                        "client estimate %s not within 5%% of %s: %s" % (
                            d["client_idle_timeout_s"], pool, ctx))
        self.assertIs(d["mismatch"], False, ctx)
        self.assertEqual(d["incidents"], {}, ctx)
        self.assertEqual(d["server_closes"], 0, ctx)
        self.assertIsNone(d["server_idle_timeout_s"], ctx)
        self.assertIsNone(d["fix"], ctx)
        self.assertEqual(s.final["mismatch"], 0)
        self.assertIsNotNone(s.final["client_s"])
        self.assertAlmostEqual(s.final["client_s"], d["client_idle_timeout_s"], places=6)
        self.assertIsNone(s.final["server_s"])
        self.assertEqual(s.final["incidents"], {}, "rstwatch_incidents_total on the pair")
        f = self.watcher.first[s.key]
        self.assertEqual({k: v for k, v in f.items() if "mismatch" in k}, {},
                         "mismatch seen at some point; log lines: %s" % [
                             l.strip() for l in self.agent_lines if s.log_rx.search(l)])
        w = s.final["workload"]
        self.assertIs(w["mismatch"], False, json.dumps(w))

    def test_mixed_busy_and_idle_traffic_estimates_unchanged(self):
        """t2's phase 1 plus 2 busy streams (a request every 50 ms) on the same pair, run in
        parallel with t2: while the busy streams ran, the pair counted exactly the 20 idle
        closes, no reuse and no client close, and the server estimate equals t2's within
        1 % (jiffy noise); after the busy streams stopped, their two pooled connections
        idled out too: 22 closes, estimate still within 1 %."""
        s, ref = self.scenario("mixed"), self.scenario("t2")
        self.assertEqual(set(statuses(s.phase1)), {200})
        busy = statuses(s.busy)
        self.assertEqual(set(busy), {200}, "busy requests failed")
        busy_end = max(r["w1"] for rs in s.busy.values() for r in rs)
        self.assertGreater(busy_end, s.snap1["t"], "busy streams ended before the snapshot")
        d, dr = s.snap1["pod"], ref.snap1["pod"]
        ctx = "mixed %s\nt2 %s" % (json.dumps(d), json.dumps(dr))
        self.assertEqual((d["server_closes"], d["client_closes"], d["reuses"], d["incidents"]),
                         (P1_CLOSES, 0, 0, {}), ctx)
        self.assertLessEqual(d["server_idle_timeout_evidence"], P1_CLOSES, ctx)
        self.assertTrue(within(d["server_idle_timeout_s"], s.t, TOL), ctx)
        self.assertTrue(within(d["server_idle_timeout_s"], dr["server_idle_timeout_s"], MIXED_TOL),
                        ctx)
        self.assertEqual(sum(d["histograms"]["server_close"]), P1_CLOSES, ctx)
        self.assertEqual(sum(d["histograms"]["reuse"]), 0, ctx)
        df = s.final["pod"]
        self.assertEqual(df["server_closes"], P1_CLOSES + BUSY_STREAMS, json.dumps(df))
        self.assertTrue(within(df["server_idle_timeout_s"], dr["server_idle_timeout_s"],
                               MIXED_TOL), json.dumps(df))
        self.assertEqual(s.snap1["mismatch"], 1)

    # ------------------------------------------------------------------ gauges and log

    def test_gauges_absent_until_five_observations(self):
        """For every watcher poll (metrics read before /diagnose): when /diagnose still
        counted < 5 server closes, no server-timeout gauge existed; with < 5 closes of either
        kind and no incident, no mismatch gauge either; whenever the server gauge existed,
        /diagnose had >= 5 server closes."""
        seen_early = 0
        for s in self.scenarios.values():
            if s.error:
                continue
            for t, snap in self.watcher.snaps[s.key]:
                d = snap["diag"]
                closes = d["server_closes"] if d else 0
                cl = d["client_closes"] if d else 0
                inc = sum(d["incidents"].values()) if d else 0
                if closes < 5:
                    self.assertIsNone(snap["server_s"], "%s: server gauge at %d closes" % (
                        s.name, closes))
                if cl < 5:
                    self.assertIsNone(snap["client_s"], "%s: client gauge at %d closes" % (
                        s.name, cl))
                if closes < 5 and cl < 5 and inc == 0:
                    self.assertIsNone(snap["mismatch"], "%s: mismatch gauge without evidence"
                                      % s.name)
                    if 0 < closes or 0 < cl:
                        seen_early += 1
                if snap["server_s"] is not None:
                    self.assertGreaterEqual(closes, 5, s.name)
        self.assertGreater(seen_early, 0, "no poll saw a pair with 1-4 closes")

    def test_mismatch_logged_once_per_pair(self):
        """Exactly one "keepalive timeout mismatch: NS/WORKLOAD -> NS/WORKLOAD:8080: ..." line
        per mismatched pair in the whole run: hundreds of scrapes and /diagnose requests, 20
        to 270 observations, and the 502 phase whose confirmed incidents change the reason
        (not the verdict nor the value) all came after it.  (The healthy pair: see
        test_client_pool_below_server_timeout_no_mismatch.)"""
        for name in MISMATCH + ("mixed",):
            with self.subTest(scenario=name):
                s = self.scenario(name)
                lines = [l.strip() for l in self.agent_lines if s.log_rx.search(l)]
                self.assertEqual(len(lines), 1, "\n".join(lines))

    def test_mismatch_log_names_the_fix(self):
        """The mismatch line ends with "; set <the fix>", the nginx setting with 75 % of T
        for these nginx clients (the ingress-nginx ConfigMap key for the ingress-named
        one), as /diagnose gives it."""
        for name in MISMATCH + ("mixed",):
            with self.subTest(scenario=name):
                s = self.scenario(name)
                lines = [l.strip() for l in self.agent_lines if s.log_rx.search(l)]
                self.assertTrue(lines)
                fix = value_text(nginx_fix_value(s.t))
                if name == "t5":
                    want = '; set ingress-nginx ConfigMap: upstream-keepalive-timeout: "%s"' % fix
                else:
                    want = "; set nginx upstream block: keepalive_timeout %ss;" % fix
                self.assertTrue(lines[0].endswith(want), "%r does not end with %r" % (
                    lines[0], want))

    # ------------------------------------------------------------------ diagnose

    def test_fix_value(self):
        """/diagnose: fix = 75 % of the server's timeout in tenths (1 s -> 0.7, 2 s -> 1.5,
        5 s -> 3.7), nginx upstream keepalive_timeout; ingress-nginx's ConfigMap key for the
        ingress-named client."""
        for name in MISMATCH + ("mixed",):
            with self.subTest(scenario=name):
                s = self.scenario(name)
                d = s.final["pod"]
                fix = nginx_fix_value(s.t)
                self.assertEqual(d["client_comm"], "nginx", json.dumps(d))
                self.assertIsNotNone(d["fix"], json.dumps(d))
                self.assertAlmostEqual(d["fix"]["value_s"], fix, places=6, msg=json.dumps(d))
                if name == "t5":
                    self.assertEqual(d["fix"]["client_kind"], "ingress-nginx")
                    self.assertEqual(d["fix"]["setting"],
                                     'ingress-nginx ConfigMap: upstream-keepalive-timeout: "%s"'
                                     % value_text(fix))
                else:
                    self.assertEqual(d["fix"]["client_kind"], "nginx")
                    self.assertEqual(d["fix"]["setting"],
                                     "nginx upstream block: keepalive_timeout %ss;"
                                     % value_text(fix))

    def test_diagnose_levels_agree(self):
        """/diagnose?level=workload (empty pods) and ?level=pod say the same for each pair
        (one pod per workload here)."""
        fields = ("server_idle_timeout_s", "server_idle_timeout_evidence", "client_idle_timeout_s",
                  "client_idle_timeout_evidence", "server_closes", "client_closes", "reuses",
                  "mismatch", "fix", "incidents")
        for name, s in self.scenarios.items():
            with self.subTest(scenario=name):
                w, p = s.final["workload"], s.final["pod"]
                self.assertIsNotNone(w)
                self.assertEqual((w["client"]["pod"], w["server"]["pod"]), ("", ""))
                self.assertEqual((p["client"]["pod"], p["server"]["pod"]),
                                 (s.client_id[1], s.server_id[1]))
                self.assertEqual({k: w[k] for k in fields}, {k: p[k] for k in fields})

    def _cli_pair(self, doc, s, level):
        for p in doc["pairs"]:
            if (p["client"]["workload"], p["server"]["workload"], p["server_port"]) == (
                    s.client_id[2], s.server_id[2], UPSTREAM_PORT) and (
                    level == "workload" or p["client"]["pod"] == s.client_id[1]):
                return p
        return None

    def test_diagnose_from_json(self):
        """`rstwatch diagnose --from URL -o json [--level pod]` exits 0, prints one JSON
        document equal to the agent's /diagnose (traffic over: nothing changes)."""
        for args, (rc, out, err), api, level in (
                ("workload", self.cli_json, self.api_workload, "workload"),
                ("pod", self.cli_json_pod, self.api_pod, "pod")):
            with self.subTest(level=level):
                self.assertEqual(rc, 0, err)
                doc = json.loads(out)
                self.assertEqual(doc["level"], level)
                for s in self.scenarios.values():
                    got, want = self._cli_pair(doc, s, level), self._cli_pair(api, s, level)
                    self.assertIsNotNone(got, "%s missing in `diagnose -o json`" % s.name)
                    self.assertEqual(got, want, s.name)
                    keys = {"client", "server", "server_port", "server_idle_timeout_s",
                            "server_idle_timeout_evidence", "client_idle_timeout_s",
                            "client_idle_timeout_evidence", "max_reuse_idle_s", "reuses",
                            "server_closes", "client_closes", "incidents", "mismatch", "reason",
                            "client_comm", "fix", "histograms"}
                    self.assertEqual(set(got), keys)
                    h = got["histograms"]
                    self.assertEqual(len(h["server_close"]), len(h["buckets_s"]) + 1)
                    self.assertEqual(sum(h["server_close"]), got["server_closes"])
                    self.assertEqual(sum(h["client_close"]), got["client_closes"])

    def test_diagnose_from_table(self):
        """`rstwatch diagnose --from URL`: per pair the verdict, the inferred timeouts with
        their evidence, the fix line with the right value, and the idle-age histogram with
        the server closes in T's bucket."""
        rc, out, err = self.cli_table
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.cli_json[0], 0, self.cli_json[2])
        doc = json.loads(self.cli_json[1])  # fetched right after the table
        blocks = _table_blocks(out)
        for name, s in self.scenarios.items():
            with self.subTest(scenario=name):
                head = "%s/%s -> %s/%s:%d" % (s.client_id[0], s.client_id[2], s.server_id[0],
                                              s.server_id[2], UPSTREAM_PORT)
                self.assertIn(head, blocks, out)
                body = "\n".join(blocks[head])
                w = self._cli_pair(doc, s, "workload")
                if name == "half":
                    self.assertIn("verdict:  ok: ", body)
                    self.assertNotIn("fix", body)
                    m = re.search(r"client idle timeout: ([0-9.]+) s \((\d+) closes\)", body)
                    self.assertIsNotNone(m, body)
                    self.assertTrue(within(float(m.group(1)), s.spec["pool"], TOL), body)
                    self.assertEqual(int(m.group(2)), w["client_idle_timeout_evidence"])
                    continue
                self.assertIn("verdict:  MISMATCH: ", body)
                m = re.search(r"server idle timeout: ([0-9.]+) s \((\d+) closes\)", body)
                self.assertIsNotNone(m, body)
                self.assertTrue(within(float(m.group(1)), s.t, TOL), body)
                self.assertEqual(int(m.group(2)), w["server_idle_timeout_evidence"])
                fix = value_text(nginx_fix_value(s.t))
                if name == "t5":
                    self.assertIn('fix (ingress-nginx): ingress-nginx ConfigMap: '
                                  'upstream-keepalive-timeout: "%s"' % fix, body)
                else:
                    self.assertIn("fix (nginx): nginx upstream block: keepalive_timeout %ss;"
                                  % fix, body)
                # Histogram: the "server closes" column sums to the closes.
                rows = [l for l in blocks[head] if re.match(r"\s+(<=|>)[0-9.]+s ", l)]
                counts = [_histogram_row(l)[1] for l in rows]
                self.assertEqual(sum(counts), w["server_closes"], body)
                self.assertTrue(any("client reuses" in l and "server closes" in l
                                    for l in blocks[head]), body)

    def test_diagnose_standalone(self):
        """`rstwatch diagnose --duration 20 --pod-map F -o json` (no agent; it ran alongside
        the agent while t1 had its phase 1 and half its client closes): t1's server timeout
        within 5 % of 1 s and a mismatch with fix 0.7 s; half: client timeout within 5 % of
        1 s, no mismatch."""
        rc, out, err = self.standalone_out
        self.assertEqual(rc, 0, err)
        # The shared capture loop's account (records read, lost ones told to the correlator):
        # standalone diagnose once ran its own loop without it.
        watched = re.search(r"watched: (\d+) records, (\d+) incidents, (\d+) records lost", err)
        self.assertIsNotNone(watched, err)
        self.assertGreater(int(watched.group(1)), P1_CLOSES, err)
        self.assertEqual(int(watched.group(3)), 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["level"], "workload")
        s = self.scenario("t1")
        p = self._cli_pair(doc, s, "workload")
        self.assertIsNotNone(p, out)
        self.assertGreaterEqual(p["server_closes"], P1_CLOSES, json.dumps(p))
        self.assertTrue(within(p["server_idle_timeout_s"], s.t, TOL), json.dumps(p))
        self.assertIs(p["mismatch"], True, json.dumps(p))
        self.assertAlmostEqual(p["fix"]["value_s"], nginx_fix_value(s.t), places=6)
        h = self._cli_pair(doc, self.scenario("half"), "workload")
        self.assertIsNotNone(h, out)
        self.assertTrue(within(h["client_idle_timeout_s"], 1.0, TOL), json.dumps(h))
        self.assertIs(h["mismatch"], False, json.dumps(h))
        self.assertEqual(h["incidents"], {})

    def test_no_records_lost(self):
        for s in self.scenarios.values():
            if s.final:
                self.assertEqual(s.final["records_lost"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
