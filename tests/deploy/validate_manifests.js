#!/usr/bin/env node
// Builds rstwatch's kustomizations with `kubectl kustomize` and checks every object offline:
//   1. schema: each object validates against the Kubernetes (kubernetes-models) or
//      prometheus-operator (@kubernetes-models/prometheus-operator) schema of its kind; a kind
//      without a schema here is an error, not a skip;
//   2. structure: the properties deploy/ promises (RBAC, privileges, probes, resources, ...);
//   3. self-tests: deliberately broken manifests must be rejected by 1 and 2.
// Exit 0 when everything holds, 1 otherwise (each problem printed on one line).
"use strict";

const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const YAML = require("yaml");

const REPO = path.resolve(__dirname, "..", "..");
const DEPLOY = path.join(REPO, "deploy");
const NAMESPACE = "rstwatch";
const CAPABILITIES = ["BPF", "PERFMON"]; // docs/deploy.md explains each
// components/memlock adds this one for kernels before 5.11 (BPF maps charged to RLIMIT_MEMLOCK).
const MEMLOCK_CAPABILITY = "SYS_RESOURCE";
const BOOT = "/boot"; // the only host path: CONFIG_HZ from /boot/config-$(uname -r)
// The ClusterRole, exactly: the agent lists and watches pods and services (never a GET of one)
// and, with --kube-events, creates Events and patches their series (never reads or deletes one).
const RBAC_RULES = [
  { apiGroups: [""], resources: ["pods", "services"], verbs: ["list", "watch"] },
  { apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"] },
];

// ---- schemas ------------------------------------------------------------------------------

const MODEL_MODULES = {
  v1: "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "rbac.authorization.k8s.io/v1": "kubernetes-models/rbac.authorization.k8s.io/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

function modelFor(object) {
  const moduleName = MODEL_MODULES[object.apiVersion];
  if (!moduleName) return null;
  const Model = require(moduleName)[object.kind];
  return typeof Model === "function" ? Model : null;
}

function describe(object) {
  const meta = (object && object.metadata) || {};
  return `${object && object.kind}/${meta.namespace ? meta.namespace + "/" : ""}${meta.name}`;
}

// Parses a multi-document YAML stream and validates every object: [objects, problems].
function parseAndValidate(text, source) {
  const problems = [];
  const objects = [];
  const documents = YAML.parseAllDocuments(text);
  for (const document of documents) {
    if (document.errors.length) {
      problems.push(`${source}: YAML: ${document.errors[0].message.split("\n")[0]}`);
      continue;
    }
    const object = document.toJS();
    if (object === null || object === undefined) continue;
    if (typeof object !== "object" || !object.apiVersion || !object.kind) {
      problems.push(`${source}: a document that is not a Kubernetes object`);
      continue;
    }
    objects.push(object);
    const Model = modelFor(object);
    if (!Model) {
      problems.push(`${source}: ${describe(object)}: no schema for ${object.apiVersion} ${object.kind}`);
      continue;
    }
    try {
      new Model(object).validate();
    } catch (error) {
      problems.push(`${source}: ${describe(object)}: schema: ${String(error.message).split("\n")[0]}`);
    }
  }
  if (!objects.length && !problems.length) problems.push(`${source}: no objects`);
  return [objects, problems];
}

// ---- structure ------------------------------------------------------------------------------

function find(objects, kind, name) {
  return objects.filter((o) => o.kind === kind && o.metadata && o.metadata.name === name);
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function sortedSet(list) {
  return [...new Set(list || [])].sort();
}

// Checks the agent's objects (deploy/base or anything built on it): a list of problems.
function checkAgent(objects, capabilities = CAPABILITIES) {
  const p = [];
  const one = (kind, name) => {
    const found = find(objects, kind, name);
    if (found.length !== 1) p.push(`expected exactly one ${kind}/${name}, found ${found.length}`);
    return found[0];
  };

  for (const o of objects) {
    const labels = (o.metadata && o.metadata.labels) || {};
    if (labels["app.kubernetes.io/name"] !== "rstwatch")
      p.push(`${describe(o)}: label app.kubernetes.io/name is not rstwatch`);
    const clusterScoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(o.kind);
    if (!clusterScoped && o.metadata.namespace !== NAMESPACE)
      p.push(`${describe(o)}: namespace is ${o.metadata.namespace}, not ${NAMESPACE}`);
  }

  const ns = one("Namespace", NAMESPACE);
  if (ns && ns.metadata.labels["pod-security.kubernetes.io/enforce"] !== "privileged")
    p.push("Namespace: pod-security.kubernetes.io/enforce must be privileged (added capabilities, hostPath)");

  one("ServiceAccount", "rstwatch");

  const role = one("ClusterRole", "rstwatch");
  if (role) {
    const rules = role.rules || [];
    const normalize = (r) => {
      const n = {};
      for (const key of Object.keys(r).sort()) n[key] = Array.isArray(r[key]) ? sortedSet(r[key]) : r[key];
      return JSON.stringify(n);
    };
    const got = rules.map(normalize).sort();
    const expected = RBAC_RULES.map(normalize).sort();
    if (!same(got, expected))
      p.push(
        "ClusterRole: rules must be exactly list/watch on pods and services and create/patch on events.k8s.io " +
          `events, got ${JSON.stringify(rules)}`,
      );
  }

  const binding = one("ClusterRoleBinding", "rstwatch");
  if (binding) {
    if (!same(binding.roleRef, { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "rstwatch" }))
      p.push(`ClusterRoleBinding: roleRef is ${JSON.stringify(binding.roleRef)}`);
    if (!same(binding.subjects, [{ kind: "ServiceAccount", name: "rstwatch", namespace: NAMESPACE }]))
      p.push(`ClusterRoleBinding: subjects are ${JSON.stringify(binding.subjects)}`);
  }

  const ds = one("DaemonSet", "rstwatch");
  let podLabels = {};
  if (ds) {
    const spec = ds.spec || {};
    const template = spec.template || {};
    const pod = template.spec || {};
    podLabels = (template.metadata && template.metadata.labels) || {};
    for (const [key, value] of Object.entries((spec.selector && spec.selector.matchLabels) || {}))
      if (podLabels[key] !== value) p.push(`DaemonSet: selector ${key}=${value} does not match the pod template`);
    if (!spec.updateStrategy || spec.updateStrategy.type !== "RollingUpdate")
      p.push("DaemonSet: updateStrategy.type must be RollingUpdate");
    if (pod.serviceAccountName !== "rstwatch") p.push("DaemonSet: serviceAccountName must be rstwatch");
    for (const host of ["hostNetwork", "hostPID", "hostIPC"])
      if (pod[host]) p.push(`DaemonSet: ${host} must not be set (docs/deploy.md: not needed)`);
    const tolerations = pod.tolerations || [];
    if (!tolerations.some((t) => t.operator === "Exists" && !t.key && !t.effect))
      p.push("DaemonSet: needs a toleration {operator: Exists} to run on every node");
    const podSecurity = pod.securityContext || {};
    const initContainers = pod.initContainers || [];
    if (initContainers.length) p.push("DaemonSet: unexpected init containers");
    const containers = pod.containers || [];
    if (containers.length !== 1) p.push(`DaemonSet: expected one container, found ${containers.length}`);
    const hostPaths = new Map();
    for (const v of pod.volumes || []) {
      if (v.hostPath) hostPaths.set(v.name, v.hostPath.path);
    }
    for (const [name, hostPath] of hostPaths)
      if (hostPath !== BOOT) p.push(`DaemonSet: hostPath volume ${name} (${hostPath}): only ${BOOT} is needed`);
    for (const c of containers) {
      const where = `DaemonSet container ${c.name}`;
      const sc = c.securityContext || {};
      if (sc.privileged !== false) p.push(`${where}: securityContext.privileged must be false`);
      if (sc.readOnlyRootFilesystem !== true) p.push(`${where}: readOnlyRootFilesystem must be true`);
      const runAsNonRoot = sc.runAsNonRoot !== undefined ? sc.runAsNonRoot : podSecurity.runAsNonRoot;
      const runAsUser = sc.runAsUser !== undefined ? sc.runAsUser : podSecurity.runAsUser;
      if (runAsNonRoot !== true || !(runAsUser > 0)) p.push(`${where}: must run as a non-root uid`);
      const caps = sc.capabilities || {};
      if (!same(caps.drop, ["ALL"])) p.push(`${where}: capabilities.drop must be [ALL], got ${JSON.stringify(caps.drop)}`);
      if (!same(sortedSet(caps.add), sortedSet(capabilities)) || (caps.add || []).length !== capabilities.length)
        p.push(`${where}: capabilities.add must be exactly ${capabilities.join(", ")}, got ${JSON.stringify(caps.add)}`);
      const args = c.args || [];
      const listen = args.indexOf("--listen");
      const listenValue = listen >= 0 ? args[listen + 1] : (args.find((a) => a.startsWith("--listen=")) || "").slice(9);
      if (args[0] !== "agent") p.push(`${where}: args must start with the agent command`);
      // Kubernetes Events on the client pods (the ClusterRole's events rule is for this), with the
      // node's name as their reportingInstance.
      if (!args.includes("--kube-events")) p.push(`${where}: args must include --kube-events, got ${JSON.stringify(args)}`);
      const nodeName = (c.env || []).filter((e) => e.name === "NODE_NAME");
      const fieldRef = nodeName.length === 1 && nodeName[0].valueFrom && nodeName[0].valueFrom.fieldRef;
      if (!fieldRef || fieldRef.fieldPath !== "spec.nodeName" || nodeName[0].value !== undefined)
        p.push(`${where}: needs env NODE_NAME from fieldRef spec.nodeName, got ${JSON.stringify(nodeName)}`);
      if (listenValue !== "0.0.0.0:9740") p.push(`${where}: must run with --listen 0.0.0.0:9740, got ${JSON.stringify(args)}`);
      const port = (c.ports || []).find((x) => x.containerPort === 9740);
      if (!port || port.name !== "metrics") p.push(`${where}: needs containerPort 9740 named metrics`);
      const probe = (kind, wanted) => {
        const get = c[kind] && c[kind].httpGet;
        if (!get || get.path !== wanted || !(get.port === "metrics" || get.port === 9740))
          p.push(`${where}: ${kind} must be httpGet ${wanted} on port metrics`);
      };
      probe("livenessProbe", "/healthz");
      probe("readinessProbe", "/readyz");
      const resources = c.resources || {};
      for (const kind of ["requests", "limits"])
        for (const resource of ["cpu", "memory"])
          if (!resources[kind] || !resources[kind][resource]) p.push(`${where}: resources.${kind}.${resource} is not set`);
      if (resources.requests && resources.limits) {
        for (const resource of ["cpu", "memory"]) {
          const request = quantity(resources.requests[resource]);
          const limit = quantity(resources.limits[resource]);
          if (request > limit) p.push(`${where}: ${resource} request above its limit`);
        }
      }
      for (const m of c.volumeMounts || []) {
        if (hostPaths.has(m.name) && m.readOnly !== true) p.push(`${where}: host path ${m.name} must be mounted readOnly`);
      }
    }
  }

  const service = one("Service", "rstwatch");
  let portName = null;
  if (service) {
    const spec = service.spec || {};
    if (spec.clusterIP !== "None") p.push("Service: must be headless (clusterIP: None)");
    for (const [key, value] of Object.entries(spec.selector || {}))
      if (podLabels[key] !== value) p.push(`Service: selector ${key}=${value} does not select the agent pods`);
    if (!spec.selector || !Object.keys(spec.selector).length) p.push("Service: no selector");
    const port = (spec.ports || []).find((x) => x.port === 9740);
    if (!port || !port.name) p.push("Service: needs a named port 9740");
    else portName = port.name;
  }

  const monitor = one("ServiceMonitor", "rstwatch");
  if (monitor && service) {
    const spec = monitor.spec || {};
    const match = (spec.selector && spec.selector.matchLabels) || {};
    if (!Object.keys(match).length) p.push("ServiceMonitor: selector.matchLabels is empty");
    for (const [key, value] of Object.entries(match))
      if ((service.metadata.labels || {})[key] !== value)
        p.push(`ServiceMonitor: selector ${key}=${value} does not select the Service`);
    const names = (spec.namespaceSelector && spec.namespaceSelector.matchNames) || [monitor.metadata.namespace];
    if (!names.includes(service.metadata.namespace)) p.push("ServiceMonitor: namespaceSelector misses the Service's namespace");
    const endpoints = spec.endpoints || [];
    if (endpoints.length !== 1 || endpoints[0].port !== portName || (endpoints[0].path || "/metrics") !== "/metrics")
      p.push(`ServiceMonitor: must scrape the Service's ${portName} port at /metrics`);
  }
  return p;
}

// Kubernetes quantities enough for cpu and memory comparisons.
function quantity(text) {
  const match = /^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(String(text));
  if (!match) return NaN;
  const factor = { m: 1e-3, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return parseFloat(match[1]) * (match[2] ? factor[match[2]] : 1);
}

// The full install (deploy/): the agent plus the alerting rules and the dashboard.
function checkFull(objects, capabilities = CAPABILITIES) {
  const p = checkAgent(objects.filter((o) => !["PrometheusRule", "ConfigMap"].includes(o.kind)), capabilities);
  const rules = objects.filter((o) => o.kind === "PrometheusRule");
  if (rules.length !== 1) p.push(`deploy: expected one PrometheusRule, found ${rules.length}`);
  for (const o of objects.filter((x) => ["PrometheusRule", "ConfigMap"].includes(x.kind)))
    if (o.metadata.namespace !== NAMESPACE) p.push(`${describe(o)}: namespace is not ${NAMESPACE}`);
  if (!objects.some((o) => o.kind === "ConfigMap" && (o.metadata.labels || {}).grafana_dashboard))
    p.push("deploy: no Grafana dashboard ConfigMap (deploy/grafana)");
  return p;
}

// The image gives the binary the capabilities the DaemonSet (and components/memlock) can grant,
// permitted only ("=p"): with the effective bit, a file capability missing from the pod's
// bounding set (SYS_RESOURCE without components/memlock) would make execve fail with EPERM.
function checkDockerfile() {
  const p = [];
  const text = fs.readFileSync(path.join(DEPLOY, "Dockerfile"), "utf8");
  const setcap = /setcap\s+(\S+)=(\S*)\s+\/usr\/local\/bin\/rstwatch/.exec(text);
  if (!setcap) return ["Dockerfile: no `setcap CAPS=p /usr/local/bin/rstwatch`"];
  if (setcap[2] !== "p") p.push(`Dockerfile: file capabilities must be permitted only (=p), got =${setcap[2]}`);
  const fileCaps = setcap[1].split(",").map((c) => c.replace(/^cap_/, "").toUpperCase()).sort();
  if (!same(fileCaps, sortedSet([...CAPABILITIES, MEMLOCK_CAPABILITY])))
    p.push(`Dockerfile: file capabilities ${fileCaps} differ from ${[...CAPABILITIES, MEMLOCK_CAPABILITY]}`);
  if (!/^USER\s+65532/m.test(text)) p.push("Dockerfile: must run as USER 65532 (the DaemonSet's runAsUser)");
  if (!/^FROM debian:12 AS build/m.test(text) || !/^FROM debian:12-slim\s*$/m.test(text))
    p.push("Dockerfile: expected a debian:12 build stage and a debian:12-slim runtime stage");
  const docsPath = path.join(REPO, "docs", "deploy.md");
  if (!fs.existsSync(docsPath)) return [...p, "docs/deploy.md is missing"];
  const docs = fs.readFileSync(docsPath, "utf8");
  for (const cap of [...CAPABILITIES, MEMLOCK_CAPABILITY])
    if (!docs.includes(`CAP_${cap}`)) p.push(`docs/deploy.md does not explain CAP_${cap}`);
  return p;
}

// ---- builds --------------------------------------------------------------------------------

function kustomize(dir) {
  return execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

// An overlay as a user would write one, outside deploy/ (kustomize refuses an overlay inside
// the directory it builds on): deploy/ plus one of deploy/components/.
function buildOverlay(component) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "rstwatch-overlay-"));
  try {
    const rel = (p) => path.relative(dir, p);
    fs.writeFileSync(
      path.join(dir, "kustomization.yaml"),
      YAML.stringify({
        apiVersion: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        resources: [rel(DEPLOY)],
        components: [rel(path.join(DEPLOY, "components", component))],
      }),
    );
    return kustomize(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// components/tls: https everywhere a client meets the agent, from the Secret rstwatch-tls.
function checkTls(objects) {
  const p = [];
  const ds = find(objects, "DaemonSet", "rstwatch")[0];
  if (!ds) return ["no DaemonSet rstwatch"];
  const pod = ds.spec.template.spec;
  const c = pod.containers[0];
  const argAfter = (flag) => {
    const i = c.args.indexOf(flag);
    return i >= 0 ? c.args[i + 1] : undefined;
  };
  if (argAfter("--tls-cert") !== "/etc/rstwatch/tls/tls.crt") p.push(`--tls-cert: ${argAfter("--tls-cert")}`);
  if (argAfter("--tls-key") !== "/etc/rstwatch/tls/tls.key") p.push(`--tls-key: ${argAfter("--tls-key")}`);
  if (!argAfter("--auth-token-file")) p.push("the token is no longer required");
  const env = Object.fromEntries((c.env || []).map((e) => [e.name, e.value]));
  if (env.RSTWATCH_AGENT_URL !== "https://127.0.0.1:9740") p.push(`RSTWATCH_AGENT_URL: ${env.RSTWATCH_AGENT_URL}`);
  if (env.RSTWATCH_CA_FILE !== "/etc/rstwatch/tls/ca.crt") p.push(`RSTWATCH_CA_FILE: ${env.RSTWATCH_CA_FILE}`);
  if (!env.RSTWATCH_TOKEN_FILE) p.push("RSTWATCH_TOKEN_FILE lost");
  for (const probe of ["livenessProbe", "readinessProbe"]) {
    if (c[probe]?.httpGet?.scheme !== "HTTPS") p.push(`${probe} is not HTTPS`);
  }
  const mount = (c.volumeMounts || []).find((m) => m.mountPath === "/etc/rstwatch/tls");
  const volume = mount && (pod.volumes || []).find((v) => v.name === mount.name);
  if (!mount || !mount.readOnly) p.push("no read-only mount at /etc/rstwatch/tls");
  if (!volume || volume.secret?.secretName !== "rstwatch-tls" || volume.secret?.optional !== false) {
    p.push(`the tls volume is not the required Secret rstwatch-tls: ${JSON.stringify(volume)}`);
  }
  const sm = find(objects, "ServiceMonitor", "rstwatch")[0];
  const ep = sm && sm.spec.endpoints[0];
  if (!ep || ep.scheme !== "https") p.push("ServiceMonitor scheme is not https");
  if (!ep?.tlsConfig?.ca?.secret || ep.tlsConfig.ca.secret.name !== "rstwatch-tls" || ep.tlsConfig.ca.secret.key !== "ca.crt") {
    p.push(`ServiceMonitor does not verify with rstwatch-tls ca.crt: ${JSON.stringify(ep && ep.tlsConfig)}`);
  }
  if (ep?.tlsConfig?.insecureSkipVerify) p.push("ServiceMonitor skips verification");
  if (ep?.tlsConfig?.serverName !== "rstwatch.rstwatch.svc") p.push(`serverName: ${ep?.tlsConfig?.serverName}`);
  if (!ep?.authorization) p.push("ServiceMonitor no longer sends the token");
  return p;
}

function agentArgs(objects) {
  const ds = find(objects, "DaemonSet", "rstwatch")[0];
  return ds ? ds.spec.template.spec.containers[0].args : [];
}

// ---- self-tests: broken input must be rejected ------------------------------------------------

function selfTests(baseObjects) {
  const p = [];
  let tried = 0;
  const expectRejected = (what, problems) => {
    tried += 1;
    if (!problems.length) p.push(`self-test: ${what} was accepted`);
  };
  const schemaOf = (text) => parseAndValidate(text, "self-test")[1];

  expectRejected("a DaemonSet whose image is a number", schemaOf(`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: broken}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: agent, image: 42}]}
`));
  expectRejected("a DaemonSet without selector", schemaOf(`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: broken}
spec:
  template: {spec: {containers: [{name: agent, image: x}]}}
`));
  expectRejected("capabilities.add as a string", schemaOf(`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: broken}
spec:
  selector: {matchLabels: {a: b}}
  template:
    spec: {containers: [{name: agent, image: x, securityContext: {capabilities: {add: BPF}}}]}
`));
  expectRejected("a ServiceMonitor with a malformed interval and no selector", schemaOf(`
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: broken}
spec:
  endpoints: [{port: metrics, interval: every-minute}]
`));
  expectRejected("a PrometheusRule group without a name", schemaOf(`
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: broken}
spec:
  groups: [{rules: [{alert: X, expr: up == 0}]}]
`));
  expectRejected("a ClusterRole rule with verbs as a string", schemaOf(`
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: broken}
rules: [{apiGroups: [""], resources: [pods], verbs: get}]
`));
  expectRejected("an object of a kind without a schema", schemaOf(`
apiVersion: example.com/v1
kind: Widget
metadata: {name: broken}
`));
  expectRejected("YAML that does not parse", schemaOf("apiVersion: v1\nkind: [Service\n"));

  // Structural checks: each mutation of the real base must be reported.
  const mutations = {
    "a privileged container": (o) => (ds(o).containers[0].securityContext.privileged = true),
    "CAP_SYS_ADMIN added": (o) => ds(o).containers[0].securityContext.capabilities.add.push("SYS_ADMIN"),
    "CAP_PERFMON missing": (o) => ds(o).containers[0].securityContext.capabilities.add.pop(),
    "CAP_SYS_RESOURCE granted everywhere": (o) => ds(o).containers[0].securityContext.capabilities.add.push("SYS_RESOURCE"),
    "drop ALL missing": (o) => delete ds(o).containers[0].securityContext.capabilities.drop,
    "a writable root filesystem": (o) => (ds(o).containers[0].securityContext.readOnlyRootFilesystem = false),
    "hostPID": (o) => (ds(o).hostPID = true),
    "no tolerations": (o) => delete ds(o).tolerations,
    "OnDelete updates": (o) => (find(o, "DaemonSet", "rstwatch")[0].spec.updateStrategy = { type: "OnDelete" }),
    "liveness on /readyz": (o) => (ds(o).containers[0].livenessProbe.httpGet.path = "/readyz"),
    "no readiness probe": (o) => delete ds(o).containers[0].readinessProbe,
    "no memory limit": (o) => delete ds(o).containers[0].resources.limits.memory,
    "listening on localhost": (o) => {
      const args = ds(o).containers[0].args;
      args[args.indexOf("--listen") + 1] = "127.0.0.1:9740";
    },
    "a tracefs host mount": (o) => ds(o).volumes.push({ name: "tracefs", hostPath: { path: "/sys/kernel/tracing" } }),
    "secrets readable": (o) => find(o, "ClusterRole", "rstwatch")[0].rules[0].resources.push("secrets"),
    "pods writable": (o) => rule(o, "pods").verbs.push("delete"),
    "pods readable one by one (get)": (o) => rule(o, "pods").verbs.push("get"),
    "a third RBAC rule": (o) =>
      find(o, "ClusterRole", "rstwatch")[0].rules.push({ apiGroups: ["apps"], resources: ["replicasets"], verbs: ["get"] }),
    "events deletable": (o) => rule(o, "events").verbs.push("delete"),
    "events readable": (o) => rule(o, "events").verbs.push("list"),
    "events not patchable": (o) => (rule(o, "events").verbs = ["create"]),
    "events in the core group": (o) => (rule(o, "events").apiGroups = [""]),
    "events in both groups": (o) => rule(o, "events").apiGroups.push(""),
    "no events rule": (o) => {
      const role = find(o, "ClusterRole", "rstwatch")[0];
      role.rules = role.rules.filter((r) => !r.resources.includes("events"));
    },
    "events folded into the pods rule": (o) => {
      const role = find(o, "ClusterRole", "rstwatch")[0];
      role.rules = [{ apiGroups: ["", "events.k8s.io"], resources: ["pods", "services", "events"],
                      verbs: ["list", "watch", "create", "patch"] }];
    },
    "no --kube-events": (o) => {
      const args = ds(o).containers[0].args;
      args.splice(args.indexOf("--kube-events"), 1);
    },
    "no NODE_NAME": (o) => {
      const c = ds(o).containers[0];
      c.env = c.env.filter((e) => e.name !== "NODE_NAME");
    },
    "NODE_NAME from the pod's name": (o) =>
      (ds(o).containers[0].env.find((e) => e.name === "NODE_NAME").valueFrom.fieldRef.fieldPath = "metadata.name"),
    "a ServiceMonitor on another port": (o) => (find(o, "ServiceMonitor", "rstwatch")[0].spec.endpoints[0].port = "http"),
    "a Service selecting nothing of ours": (o) =>
      (find(o, "Service", "rstwatch")[0].spec.selector = { "app.kubernetes.io/name": "other" }),
  };
  function ds(objects) {
    return find(objects, "DaemonSet", "rstwatch")[0].spec.template.spec;
  }
  function rule(objects, resource) {
    return find(objects, "ClusterRole", "rstwatch")[0].rules.find((r) => r.resources.includes(resource));
  }
  if (checkAgent(baseObjects).length) return p; // reported by the real checks already
  for (const [what, mutate] of Object.entries(mutations)) {
    const copy = JSON.parse(JSON.stringify(baseObjects));
    mutate(copy);
    expectRejected(`structure: ${what}`, checkAgent(copy));
  }
  selfTests.tried = tried;
  return p;
}

// ---- main ------------------------------------------------------------------------------------

function main() {
  const problems = [];
  const report = (label, list) => {
    console.log(`${list.length ? "FAIL" : "ok  "} ${label}`);
    for (const line of list) console.log(`     ${line}`);
    problems.push(...list);
  };
  const build = (label, produce) => {
    try {
      return produce();
    } catch (error) {
      report(label, [`kubectl kustomize failed: ${String(error.stderr || error.message).trim().split("\n")[0]}`]);
      return null;
    }
  };

  const baseText = build("kustomize deploy/base", () => kustomize(path.join(DEPLOY, "base")));
  let baseObjects = [];
  if (baseText !== null) {
    const [objects, schemaProblems] = parseAndValidate(baseText, "deploy/base");
    baseObjects = objects;
    report(`deploy/base: ${objects.length} objects validate against their schemas`, schemaProblems);
    report("deploy/base: RBAC, privileges, probes, resources, Service and ServiceMonitor", checkAgent(objects));
  }

  const fullText = build("kustomize deploy", () => kustomize(DEPLOY));
  if (fullText !== null) {
    const [objects, schemaProblems] = parseAndValidate(fullText, "deploy");
    report(`deploy: ${objects.length} objects (with alerts and dashboard) validate against their schemas`, schemaProblems);
    report("deploy: the agent's objects, one PrometheusRule, the dashboard ConfigMap", checkFull(objects));
  }

  const tlsText = build("kustomize overlay with components/tls", () => buildOverlay("tls"));
  if (tlsText !== null) {
    const [objects, schemaProblems] = parseAndValidate(tlsText, "tls overlay");
    report(`tls overlay: ${objects.length} objects validate; https with the Secret rstwatch-tls, token kept`, [
      ...schemaProblems,
      ...checkFull(objects),
      ...checkTls(objects),
    ]);
    // Self-test: the same checks reject the plain deploy/.
    const plain = fullText === null ? [] : parseAndValidate(fullText, "deploy")[0];
    if (plain.length && !checkTls(plain).length) report("self-test: checkTls accepts plain http", ["checkTls found nothing"]);
  }

  const overlayText = build("kustomize overlay with components/workload-labels", () => buildOverlay("workload-labels"));
  if (overlayText !== null) {
    const [objects, schemaProblems] = parseAndValidate(overlayText, "workload-labels overlay");
    const args = agentArgs(objects);
    const i = args.indexOf("--pair-labels");
    const own = i >= 0 && args[i + 1] === "workload" ? [] : [`agent args lack --pair-labels workload: ${JSON.stringify(args)}`];
    report(`workload-labels overlay: ${objects.length} objects validate, --pair-labels workload`, [
      ...schemaProblems,
      ...checkFull(objects),
      ...own,
    ]);
  }

  const memlockText = build("kustomize overlay with components/memlock", () => buildOverlay("memlock"));
  if (memlockText !== null) {
    const [objects, schemaProblems] = parseAndValidate(memlockText, "memlock overlay");
    report(`memlock overlay: ${objects.length} objects validate, capabilities ${[...CAPABILITIES, MEMLOCK_CAPABILITY]}`, [
      ...schemaProblems,
      ...checkFull(objects, [...CAPABILITIES, MEMLOCK_CAPABILITY]),
    ]);
  }

  report("Dockerfile: file capabilities and user match the DaemonSet; docs explain each capability", checkDockerfile());
  if (baseObjects.length) {
    const selfProblems = selfTests(baseObjects);
    report(`self-tests: ${selfTests.tried} broken manifests and weakened settings are rejected`, selfProblems);
  }

  console.log(problems.length ? `validate_manifests: ${problems.length} problem(s)` : "validate_manifests: all checks passed");
  process.exit(problems.length ? 1 : 0);
}

main();
