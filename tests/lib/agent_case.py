"""unittest base class for the agent kernel tests (tests/kernel/test_agent*.py).

Fixtures are cleaned up with addCleanup (also on failure): clusters (namespaces),
actors, agents, followers, pod map files.  Assertions compare the agent's metrics with
exact expectations per pod pair.
"""

import collections
import math
import os
import sys
import time

import agent as agentlib
from agent import PAIR, Agent, Follower, PodMapFile, metric_pair_key, pair_labels
from netns import IP, KernelTestCase

SETTLE_S = 0.7  # let the last records reach the agent before scraping

INCIDENT_LABELS = ("cause", "observer") + PAIR
RESET_LABELS = ("direction",) + PAIR
HISTOGRAMS = ("rstwatch_idle_before_failure_seconds", "rstwatch_connection_reuse_idle_seconds",
              "rstwatch_server_idle_close_seconds", "rstwatch_client_idle_close_seconds")
LABEL_ORDER = {
    "rstwatch_incidents_total": INCIDENT_LABELS,
    "rstwatch_resets_total": RESET_LABELS,
    "rstwatch_records_lost_total": (),
    "rstwatch_records_total": ("type",),
    "rstwatch_tracked_connections": (),
    "rstwatch_attribution_synced": ("source",),
    "rstwatch_build_info": ("version", "write_hook"),
    "rstwatch_incident_log_lines_suppressed_total": (),
}
for _h in HISTOGRAMS:
    LABEL_ORDER[_h + "_bucket"] = PAIR + ("le",)
    LABEL_ORDER[_h + "_sum"] = PAIR
    LABEL_ORDER[_h + "_count"] = PAIR
FAMILY_TYPES = dict({"rstwatch_incidents_total": "counter", "rstwatch_resets_total": "counter",
                     "rstwatch_records_lost_total": "counter", "rstwatch_records_total": "counter",
                     "rstwatch_tracked_connections": "gauge",
                     "rstwatch_attribution_synced": "gauge", "rstwatch_build_info": "gauge",
                     "rstwatch_incident_log_lines_suppressed_total": "counter"},
                    **{h: "histogram" for h in HISTOGRAMS})
WRITE_HOOKS = ("tp_btf", "fentry", "kprobe")




class AgentTestCase(KernelTestCase):
    """make_cluster and make_actor: netns.KernelTestCase."""

    def setUp(self):
        agentlib.require_agent()  # includes require_bpf()

    # -- fixtures
    def make_pod_map(self, entries=None, text=None):
        pm = PodMapFile(entries=entries, text=text)
        self.addCleanup(pm.cleanup)
        return pm

    def start_agent(self, args=(), **kw):
        ag = Agent(args, **kw)
        self.addCleanup(self._dump_agent_on_failure, ag)
        self.addCleanup(ag.kill)
        self.addCleanup(ag.note_exit)
        ag.start()
        return ag

    def _dump_agent_on_failure(self, ag):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        failed = result is not None and any(
            t is self for t, _ in list(getattr(result, "failures", [])) + list(
                getattr(result, "errors", [])))
        if failed or os.environ.get("RSTWATCH_TEST_VERBOSE") == "1":
            tail = ag.lines()[-40:]
            rc = ag.proc.poll() if ag.proc is not None else None
            print("\n  [%s] exit status %s (before cleanup: %s); last stderr lines:\n%s" % (
                ag.name, rc, ag.exit_before_cleanup, "".join("    " + l for l in tail)),
                file=sys.stderr)

    def start_follower(self, ag, args=(), name="follower"):
        f = Follower(ag.url, args, name=name)
        self.addCleanup(f.kill)
        f.start()
        return f

    def settle(self, seconds=SETTLE_S):
        time.sleep(seconds)

    # -- metric assertions
    def incident_counts(self, m, ours):
        """{(cause, observer, PAIR...): value} of incidents_total series for which ours(labels
        dict) is true, value > 0."""
        out = {}
        for s in m.samples_of("rstwatch_incidents_total"):
            if ours(s.labels_dict) and s.value > 0:
                out[metric_pair_key(s)] = s.value
        return out

    def assertIncidentCounts(self, m, expected, ours, context=""):
        """Every incident series touching our endpoints, with its exact value.
        expected: {(cause, observer, client_id, server_id, port): n} with ids (ns, pod, workload)."""
        want = {}
        for (cause, observer, cid, sid, port), n in expected.items():
            key = (cause, observer) + tuple(pair_labels(cid, sid, port)[k] for k in PAIR)
            want[key] = want.get(key, 0) + float(n)
        got = self.incident_counts(m, ours)
        if got != want:
            lines = ["%s: rstwatch_incidents_total differs" % (context or "incidents")]
            for k in sorted(set(got) | set(want), key=str):
                if got.get(k) != want.get(k):
                    lines.append("  %s: got %s, expected %s" % (k, got.get(k), want.get(k)))
            lines.append("  all incident series:")
            lines += ["    %r" % s for s in m.samples_of("rstwatch_incidents_total")]
            self.fail("\n".join(lines))

    def assertLabelOrder(self, m):
        """Every sample of a documented rstwatch family has exactly the documented labels, in
        order; documented families are declared with the right # TYPE."""
        bad = []
        for s in m.samples:
            if not s.name.startswith("rstwatch_"):
                continue
            order = LABEL_ORDER.get(s.name)
            if order is None:
                continue
            if s.label_names != order:
                bad.append("%s: labels %s, expected %s" % (s.name, s.label_names, order))
        self.assertEqual(bad[:10], [], "label order (%d samples wrong)" % len(bad))
        for fam, typ in FAMILY_TYPES.items():
            if not m.family_samples(fam) and not m.samples_of(fam):
                continue  # no series yet (prometheus-cpp may leave the family out)
            declared = m.types.get(fam)
            if declared is None and fam.endswith("_total"):
                declared = m.types.get(fam[:-len("_total")])
            self.assertEqual(declared, typ, "# TYPE of %s" % fam)
        for fam in HISTOGRAMS:
            for h in m.histograms(fam):
                h.check()

    def assertHistogramCount(self, m, family, labels, count, context=""):
        h = m.histogram(family, **labels)
        got = 0 if h is None else h.count
        self.assertEqual(got, count, "%s %s%s _count: got %s, expected %d; series: %s" % (
            context, family, labels, got, count, m.histograms(family)))
        return h

    def warn_lines(self, ag):
        return [l for l in ag.lines() if "warn" in l.lower()[:80] and "incident" in l.lower()]


def pair(cid, sid, port):
    return pair_labels(cid, sid, port)


def ours_by_workloads(workloads, pods=()):
    """Predicate: a PAIR labels dict touching one of these workloads or pods."""
    workloads, pods = set(workloads), set(pods)

    def pred(d):
        return (d.get("client_workload") in workloads or d.get("server_workload") in workloads
                or (d.get("client_pod") in pods and d.get("client_pod"))
                or (d.get("server_pod") in pods and d.get("server_pod")))
    return pred


def expected_from(expected_lists, ids, port):
    """Counts {(cause, observer, client_id, server_id, port): n} from scenarios' expected
    lists, every connection of them between client ids[0] and server ids[1]."""
    out = collections.Counter()
    for exp in expected_lists:
        for e in exp:
            out[(e["cause"], e["observer"], ids[0], ids[1], port)] += 1
    return dict(out)


def bucket_bound_for(idle_s, bounds=(0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 65, 75, 90,
                                     120, 300)):
    for b in bounds:
        if idle_s <= b:
            return float(b)
    return math.inf


def node_as_pod(cluster):
    """The cluster's node namespace as a Pod (bridge address): for hostNetwork endpoints."""
    from netns import Pod
    return Pod(cluster, len(cluster.pods), "node", cluster.node_ns, cluster.bridge_ip4,
               cluster.bridge_ip6, ifname=cluster.bridge)


def add_service_ip(server_pod, client_pods, ip):
    """A ClusterIP-like address: ip/32 on the server pod's eth0, a /32 route to it via the
    server pod in each client pod (only inside our namespaces)."""
    server_pod.run([IP, "addr", "add", ip + "/32", "dev", "eth0"])
    for p in client_pods:
        p.run([IP, "route", "add", ip + "/32", "via", server_pod.ip4])
