"""The rstwatch alerting rules (deploy/alerts/prometheusrule.yaml, the single source of truth):

- lint: every alert has a severity label, a summary naming its subject (the workload pair's
  labels for alerts on pair metrics), a description, a `for`, and a runbook_url whose anchor is
  the alert's own heading in docs/runbook.md; no alert uses a metric the agent does not export
  (README.md's metrics table): an alert on a metric that does not exist never fires;
- the spec.groups extracted into a plain rules file pass `promtool check rules`;
- `promtool test rules tests/deploy/rules_test.yaml` passes, and that file has, for every alert,
  a test where it fires (with severity, summary naming the pair or agent, runbook_url) and a
  test of healthy series only where it stays silent.

No root, no kernel. Needs promtool (Debian package `prometheus`) and python3-yaml: without them
the test skips, or fails under CI=true / RSTWATCH_REQUIRE_BPF=1 (.ci/run).
Run from anywhere:  /usr/bin/python3 -m unittest -v tests/deploy/test_rules.py
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

try:
    import yaml  # noqa: F401
    import prometheus_rules as pr
    IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover
    pr = None
    IMPORT_ERROR = e

RULES_TEST = os.path.join(HERE, "rules_test.yaml")
RULES_FILE_NAME = "rstwatch-rules.yaml"  # rule_files entry of rules_test.yaml


def require_tools(*tools):
    missing = []
    if pr is None:
        missing.append("python3-yaml (%s)" % IMPORT_ERROR)
    for t in tools:
        if not os.access(t, os.X_OK):
            missing.append(t)
    if not missing:
        return
    msg = "missing: %s (Debian packages prometheus, python3-yaml; scripts/deps.sh --test)" % (
        ", ".join(missing))
    if os.environ.get("CI") == "true" or os.environ.get("RSTWATCH_REQUIRE_BPF") == "1":
        raise AssertionError(msg)
    raise unittest.SkipTest(msg)


class TestRules(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        require_tools(pr.PROMTOOL if pr else "/usr/bin/promtool")
        self.rule = pr.load_prometheusrule()
        with open(pr.RUNBOOK) as f:
            self.runbook = f.read()
        self.tmp = tempfile.mkdtemp(prefix="rw-rules-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def promtool(self, *args):
        return subprocess.run([pr.PROMTOOL] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120, cwd=self.tmp)

    def test_lint(self):
        self.assertEqual(pr.lint(self.rule, self.runbook), [])

    def test_expected_alerts(self):
        self.assertEqual(sorted(a["alert"] for a in pr.alerts_of(self.rule)), sorted([
            "RstwatchStaleKeepalive", "RstwatchResetsSurge", "RstwatchRecordsLost",
            "RstwatchAgentDown", "RstwatchAgentAbsent", "RstwatchAgentNotReady",
            "RstwatchKeepaliveTimeoutMismatch"]))

    def test_lint_catches_bad_alerts(self):
        """The lint itself: each kind of mistake is reported."""
        import copy
        bad = copy.deepcopy(self.rule)
        alerts = pr.alerts_of(bad)
        stale = next(a for a in alerts if a["alert"] == "RstwatchStaleKeepalive")
        down = next(a for a in alerts if a["alert"] == "RstwatchAgentDown")
        surge = next(a for a in alerts if a["alert"] == "RstwatchResetsSurge")
        lost = next(a for a in alerts if a["alert"] == "RstwatchRecordsLost")
        del stale["labels"]["severity"]
        stale["annotations"]["summary"] = "stale keepalive to {{ $labels.server_workload }}"
        down["annotations"]["runbook_url"] = pr.RUNBOOK_BASE + "#no-such-section"
        surge["expr"] = "rstwatch_keepalive_mismatch_ratio > 0"
        del lost["for"]
        problems = "\n".join(pr.lint(bad, self.runbook))
        for want in ("RstwatchStaleKeepalive: severity", "RstwatchStaleKeepalive: summary does not name the pair",
                     "RstwatchAgentDown: runbook anchor #no-such-section",
                     "RstwatchResetsSurge: uses rstwatch_keepalive_mismatch_ratio",
                     "RstwatchRecordsLost: no `for`"):
            self.assertIn(want, problems)

    def test_promtool_check_rules(self):
        path = pr.write_rules_file(self.rule, os.path.join(self.tmp, RULES_FILE_NAME))
        r = self.promtool("check", "rules", path)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("SUCCESS: %d rules found" % len(pr.alerts_of(self.rule)), r.stdout)

    def test_promtool_test_rules(self):
        pr.write_rules_file(self.rule, os.path.join(self.tmp, RULES_FILE_NAME))
        shutil.copy(RULES_TEST, os.path.join(self.tmp, "rules_test.yaml"))
        r = self.promtool("test", "rules", "rules_test.yaml")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("SUCCESS", r.stdout)

    def test_shortened_rules_still_valid(self):
        """The e2e test's transformation (every `for` capped) keeps a valid rules file."""
        short = pr.shorten_for(self.rule, "5s")
        self.assertTrue(all(a["for"] == "5s" for a in pr.alerts_of(short)))
        self.assertNotEqual(pr.alerts_of(self.rule)[0]["for"], "5s")  # the source is untouched
        path = pr.write_rules_file(short, os.path.join(self.tmp, "short.yaml"))
        r = self.promtool("check", "rules", path)
        self.assertEqual(r.returncode, 0, r.stdout)

    def test_every_alert_has_firing_and_healthy_tests(self):
        import yaml
        with open(RULES_TEST) as f:
            spec = yaml.safe_load(f)
        self.assertEqual(spec["rule_files"], [RULES_FILE_NAME])
        fires, silent = {}, {}
        for test in spec["tests"]:
            by_alert = {}
            for art in test.get("alert_rule_test", []):
                by_alert.setdefault(art["alertname"], []).append(art["exp_alerts"] or [])
            for name, expectations in by_alert.items():
                firing = [e for exp in expectations for e in exp]
                if firing:
                    fires.setdefault(name, []).extend(firing)
                else:
                    silent.setdefault(name, []).append(test.get("name"))
        problems = []
        for a in pr.alerts_of(self.rule):
            name = a["alert"]
            if name not in fires:
                problems.append("%s: no test where it fires" % name)
            if name not in silent:
                problems.append("%s: no test with healthy series only where it stays silent" % name)
            for e in fires.get(name, []):
                labels, ann = e.get("exp_labels", {}), e.get("exp_annotations", {})
                if labels.get("severity") != a["labels"]["severity"]:
                    problems.append("%s: a firing test does not check severity" % name)
                if ann.get("runbook_url") != a["annotations"]["runbook_url"]:
                    problems.append("%s: a firing test does not check runbook_url" % name)
                if "summary" not in ann:
                    problems.append("%s: a firing test does not check the summary" % name)
                    continue
                subject = [k for k in pr.WORKLOAD_PAIR if k in labels] or \
                    [k for k in ("pod", "namespace") if k in labels]
                missing = [k for k in subject if str(labels[k]) not in ann["summary"]]
                if not subject or missing:
                    problems.append("%s: summary %r does not name %s" % (
                        name, ann["summary"], missing or "its subject"))
        self.assertEqual(problems, [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
