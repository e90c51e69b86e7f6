"""The rstwatch alerting rules, from their single source of truth
(deploy/alerts/prometheusrule.yaml, a monitoring.coreos.com/v1 PrometheusRule), for promtool
and for a real Prometheus in tests:

    rules = load_prometheusrule()                   # the parsed PrometheusRule
    write_rules_file(rules, path)                   # {"groups": spec.groups} for promtool/Prometheus
    write_rules_file(shorten_for(rules, "5s"), p)   # test-only: every `for` at most 5s
    problems = lint(rules, runbook_text)            # [] when every alert is well-formed

Also the runbook anchors (GitHub's slugs of docs/runbook.md's headings) and the Grafana
dashboard's queries with template variables substituted (used by the Grafana tests and the
Prometheus end-to-end test).  Needs python3-yaml (Debian) for the YAML.
"""

import copy
import json
import os
import re

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PROMETHEUSRULE = os.path.join(REPO, "deploy", "alerts", "prometheusrule.yaml")
RUNBOOK = os.path.join(REPO, "docs", "runbook.md")
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "rstwatch-dashboard.json")
RUNBOOK_BASE = "https://github.com/rstwatch/rstwatch/blob/main/docs/runbook.md"
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"

SEVERITIES = ("critical", "warning", "info")
# The pair labels an alert keeps when it aggregates pod pairs to workload pairs.
WORKLOAD_PAIR = ("client_namespace", "client_workload", "server_namespace", "server_workload",
                 "server_port")
PAIR_METRICS = ("rstwatch_incidents_total", "rstwatch_resets_total",
                "rstwatch_idle_before_failure_seconds", "rstwatch_connection_reuse_idle_seconds",
                "rstwatch_server_idle_close_seconds", "rstwatch_client_idle_close_seconds",
                "rstwatch_server_idle_timeout_seconds", "rstwatch_client_idle_timeout_seconds",
                "rstwatch_keepalive_mismatch")


def load_prometheusrule(path=PROMETHEUSRULE):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if len(docs) != 1:
        raise ValueError("%s: expected one YAML document, found %d" % (path, len(docs)))
    return docs[0]


def groups_of(rule):
    return rule["spec"]["groups"]


def alerts_of(rule):
    return [r for g in groups_of(rule) for r in g.get("rules", []) if "alert" in r]


def write_rules_file(rule, path):
    """The plain Prometheus rules file ({"groups": ...}) of a PrometheusRule."""
    with open(path, "w") as f:
        yaml.safe_dump({"groups": groups_of(rule)}, f, sort_keys=False, default_flow_style=False,
                       width=1000)
    return path


def _seconds(duration):
    """Prometheus duration ("15m", "1h30m", "10s") -> seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+)(ms|s|m|h|d|w|y)", duration):
        if m.start() != pos:
            raise ValueError("bad duration %r" % duration)
        total += int(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(duration) or not duration:
        raise ValueError("bad duration %r" % duration)
    return total


def shorten_for(rule, short="5s"):
    """Test-only copy: every alert's `for` capped at `short` (expressions unchanged)."""
    out = copy.deepcopy(rule)
    for a in alerts_of(out):
        if "for" in a and _seconds(a["for"]) > _seconds(short):
            a["for"] = short
    return out


# ---------------------------------------------------------------- runbook anchors

def github_anchor(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def runbook_anchors(text):
    anchors = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_code:
            anchors.add(github_anchor(m.group(1)))
    return anchors


def _template_labels(text):
    return set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text or ""))


def lint(rule, runbook_text):
    """Problems (strings) with the PrometheusRule's alerts; [] when all is well."""
    problems = []
    if rule.get("apiVersion") != "monitoring.coreos.com/v1" or rule.get("kind") != "PrometheusRule":
        problems.append("not a monitoring.coreos.com/v1 PrometheusRule")
    md = rule.get("metadata", {})
    if md.get("name") != "rstwatch" or md.get("namespace") != "rstwatch":
        problems.append("metadata: expected name rstwatch in namespace rstwatch, got %s/%s" % (
            md.get("namespace"), md.get("name")))
    anchors = runbook_anchors(runbook_text)
    names = [a["alert"] for a in alerts_of(rule)]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append("%s: defined more than once" % dup)
    if not names:
        problems.append("no alerts")
    for a in alerts_of(rule):
        name = a["alert"]
        labels = a.get("labels") or {}
        ann = a.get("annotations") or {}
        expr = a.get("expr", "")
        if labels.get("severity") not in SEVERITIES:
            problems.append("%s: severity label %r not one of %s" % (name, labels.get("severity"),
                                                                       SEVERITIES))
        for key in ("summary", "description", "runbook_url"):
            if not str(ann.get(key, "")).strip():
                problems.append("%s: no %s annotation" % (name, key))
        summary = str(ann.get("summary", ""))
        used = _template_labels(summary)
        if any(m in expr for m in PAIR_METRICS):
            missing = [l for l in WORKLOAD_PAIR if l not in used]
            if missing:
                problems.append("%s: summary does not name the pair (missing %s)" % (
                    name, ", ".join(missing)))
        elif not used:
            problems.append("%s: summary names no label (which agent/pod?)" % name)
        url = str(ann.get("runbook_url", ""))
        if not url.startswith(RUNBOOK_BASE + "#"):
            problems.append("%s: runbook_url %r not under %s#" % (name, url, RUNBOOK_BASE))
        else:
            anchor = url[len(RUNBOOK_BASE) + 1:]
            if anchor not in anchors:
                problems.append("%s: runbook anchor #%s is not a heading of docs/runbook.md" % (
                    name, anchor))
            elif anchor != github_anchor(name):
                problems.append("%s: runbook anchor #%s is not the alert's own section (#%s)" % (
                    name, anchor, github_anchor(name)))
        if "for" not in a:
            problems.append("%s: no `for` (a single bad evaluation would page)" % name)
    # No alert on a metric the agent does not export (e.g. rstwatch_keepalive_mismatch before
    # the prediction issue lands): such an alert can never fire.
    known = exported_metrics()
    for a in alerts_of(rule):
        for metric in sorted(set(re.findall(r"\brstwatch_[a-z0-9_]+", a.get("expr", "")))):
            if _family(metric) not in known:
                problems.append("%s: uses %s, which the agent does not export (README.md "
                                "metrics table)" % (a["alert"], metric))
    return problems


def _family(metric):
    return re.sub(r"_(bucket|sum|count)$", "", metric)


def exported_metrics(readme=os.path.join(REPO, "README.md")):
    """Metric families documented in README.md's metrics table (`| `name{...}` | type |`)."""
    with open(readme) as f:
        text = f.read()
    return set(re.findall(r"^\|\s*`(rstwatch_[a-z0-9_]+)", text, re.M))


# ---------------------------------------------------------------- Grafana dashboard queries

def load_dashboard(path=DASHBOARD):
    with open(path) as f:
        return json.load(f)


def dashboard_panels(dash):
    """Every panel, rows' nested panels included."""
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_queries(dash):
    """[(panel title, refId, expr, instant, about_pair)] of every Prometheus target.
    about_pair: the panel's description or title marks it as about pod pairs
    (its query must return data for a pair with incidents)."""
    out = []
    for p in dashboard_panels(dash):
        for t in p.get("targets", []) or []:
            expr = t.get("expr")
            if not expr:
                continue
            about_pair = any(m in expr for m in PAIR_METRICS)
            out.append((p.get("title", ""), t.get("refId", ""), expr, bool(t.get("instant")),
                        about_pair))
    return out


def template_variables(dash):
    return [v for v in dash.get("templating", {}).get("list", [])]


def substitute(expr, values, interval="1m", rng="5m"):
    """A dashboard query as Prometheus would receive it: $var / ${var} / ${var:regex} from
    values (missing variables: ".*"), Grafana's interval/range macros."""
    macros = {"__rate_interval": interval, "__interval": interval, "__range": rng,
              "__range_s": str(int(_seconds(rng))), "__interval_ms": str(int(_seconds(interval) * 1000))}

    def repl(m):
        name = m.group(1) or m.group(2)
        if name in macros:
            return macros[name]
        return values.get(name, ".*")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, expr)


def label_values_query(query):
    """Grafana's label_values(METRIC, LABEL) / label_values(LABEL) -> (match or None, label)."""
    m = re.match(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", query)
    if not m:
        return None
    return m.group(1), m.group(2)
