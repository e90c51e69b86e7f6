"""The Grafana dashboard (deploy/grafana/rstwatch-dashboard.json) and its ConfigMap
(deploy/grafana/kustomization.yaml), without Grafana or a cluster:

- valid dashboard JSON: uid, title, unique panel ids, grid positions inside 24 columns, every
  panel and target on the ${datasource} variable, the panels the issue asks for (incidents per
  pair and cause, worst pairs table, idle-before-failure heatmap, reuse vs server idle close ages
  per pair, records lost, agent health);
- every query, template variables substituted, parses as PromQL (`promtool check rules` on the
  queries as recording rules) and uses only metrics the agent exports (README.md);
- `kubectl kustomize deploy/grafana` (when kubectl is installed) renders one ConfigMap labelled
  grafana_dashboard: "1" whose data is the dashboard file byte for byte.

That every query also runs and returns data against a real Prometheus is
tests/e2e/test_prometheus_e2e.py's job. No root. Needs python3-yaml and promtool (skips without
them, fails under CI=true / RSTWATCH_REQUIRE_BPF=1).
Run:  /usr/bin/python3 -m unittest -v tests/deploy/test_grafana.py
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from test_rules import pr, require_tools  # noqa: E402

GRAFANA_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "deploy", "grafana")
KUBECTL = shutil.which("kubectl")
VALUES = {"client_namespace": "ingress-nginx", "client_workload": "ingress-nginx-controller",
          "server_namespace": "shop", "server_workload": "tomcat", "job": "rstwatch",
          "window": "1h"}


class TestGrafanaDashboard(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        require_tools(pr.PROMTOOL if pr else "/usr/bin/promtool")
        with open(pr.DASHBOARD) as f:
            self.raw = f.read()
        self.dash = json.loads(self.raw)
        self.panels = pr.dashboard_panels(self.dash)

    def test_structure(self):
        d = self.dash
        self.assertEqual(d["uid"], "rstwatch-pairs")
        self.assertTrue(d["title"])
        self.assertNotIn("id", d, "provisioned dashboards carry no database id")
        ids = [p["id"] for p in self.panels]
        self.assertEqual(len(ids), len(set(ids)), "duplicate panel ids")
        names = [v["name"] for v in pr.template_variables(d)]
        self.assertEqual(names[0], "datasource")
        for p in self.panels:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
            if p["type"] == "row":
                continue
            self.assertEqual(p.get("datasource"), {"type": "prometheus", "uid": "${datasource}"},
                             p["title"])
            self.assertTrue(p.get("description"), "%s: no description" % p["title"])
            self.assertTrue(p.get("targets"), "%s: no query" % p["title"])
            for t in p["targets"]:
                self.assertEqual(t.get("datasource"), p["datasource"], p["title"])
                # Every $variable used is defined (or a Grafana macro).
                for v in re.findall(r"\$\{?([A-Za-z_]\w*)", t["expr"]):
                    self.assertTrue(v.startswith("__") or v in names,
                                    "%s: undefined variable $%s" % (p["title"], v))
        refs = [(p["title"], t["refId"]) for p in self.panels for t in p.get("targets", [])]
        self.assertEqual(len(refs), len(set(refs)), "duplicate refIds in a panel")

    def test_required_panels(self):
        def having(ptype, *needles):
            return [p["title"] for p in self.panels if p["type"] == ptype and all(
                any(n in t["expr"] for t in p["targets"]) for n in needles)]
        self.assertTrue(having("timeseries", "rstwatch_incidents_total", "cause"),
                        "incidents per pair and cause")
        worst = having("table", "topk(", "rstwatch_incidents_total")
        self.assertTrue(worst, "worst pairs table")
        heat = [p for p in self.panels if p["type"] == "heatmap"]
        self.assertTrue(heat and all(t.get("format") == "heatmap" and
                                     "rstwatch_idle_before_failure_seconds_bucket" in t["expr"]
                                     for p in heat for t in p["targets"]),
                        "idle-before-failure heatmap")
        self.assertTrue(having("timeseries", "rstwatch_connection_reuse_idle_seconds_bucket",
                               "rstwatch_server_idle_close_seconds"),
                        "reuse ages against server idle close ages")
        self.assertTrue(having("timeseries", "rstwatch_records_lost_total"), "records lost")
        self.assertTrue(having("timeseries", "up{"), "agent health: up")
        self.assertTrue(having("timeseries", "kube_pod_status_ready"), "agent health: ready")

    def test_queries_parse_and_use_exported_metrics(self):
        queries = pr.dashboard_queries(self.dash) + [
            ("annotation", "", a["expr"], False, False)
            for a in self.dash["annotations"]["list"] if a.get("expr")]
        rules = []
        known = pr.exported_metrics()
        bad = []
        for i, (title, ref, expr, _, _) in enumerate(queries):
            q = pr.substitute(expr, VALUES, interval="1m", rng="6h")
            self.assertNotIn("$", q, "%s %s" % (title, ref))
            rules.append({"record": "rstwatch_dashboard:query%d" % i, "expr": q})
            for m in set(re.findall(r"\brstwatch_[a-z0-9_]+", q)):
                if re.sub(r"_(bucket|sum|count)$", "", m) not in known:
                    bad.append("%s [%s]: %s is not exported by the agent" % (title, ref, m))
        self.assertEqual(bad, [])
        tmp = tempfile.mkdtemp(prefix="rw-grafana-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "queries.yaml")
        import yaml
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, width=10000)
        r = subprocess.run([pr.PROMTOOL, "check", "rules", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)

    def test_variables(self):
        for v in pr.template_variables(self.dash):
            if v["type"] != "query":
                continue
            q = v["query"]["query"]
            parsed = pr.label_values_query(q)
            self.assertIsNotNone(parsed, "%s: not label_values(): %s" % (v["name"], q))
            self.assertEqual(parsed[1], v["name"], "variable named after its label")
            self.assertEqual(v.get("allValue"), ".*", "%s: All must match empty labels too" % v["name"])

    def test_kustomize_configmap(self):
        if not KUBECTL:
            self.skipTest("kubectl not installed: `kubectl kustomize deploy/grafana` not checked")
        import yaml
        r = subprocess.run([KUBECTL, "kustomize", GRAFANA_DIR], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        self.assertEqual([(d["kind"], d["metadata"]["name"]) for d in docs],
                         [("ConfigMap", "rstwatch-grafana-dashboard")])
        cm = docs[0]
        self.assertEqual(cm["metadata"]["labels"].get("grafana_dashboard"), "1")
        self.assertEqual(cm["data"]["rstwatch-dashboard.json"], self.raw)


if __name__ == "__main__":
    unittest.main(verbosity=2)
