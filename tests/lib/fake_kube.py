#!/usr/bin/python3
"""Fake Kubernetes API server for tests: pods and services, real wire format. Stdlib only.

Speaks what the agent's client uses:
  GET /api/v1/pods|services[?limit=N&continue=TOKEN]   -> PodList/ServiceList (items without
      kind/apiVersion, as the real API answers), metadata.resourceVersion, metadata.continue +
      remainingItemCount while more pages follow; an expired continue token -> HTTP 410.
  GET /api/v1/pods|services?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=S
      -> 200, Transfer-Encoding: chunked, one JSON event per line
         {"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": {...}}; events after RV are
         replayed from history; RV "" or "0" starts with ADDED for every current object; the
         watch ends cleanly (terminating chunk) after timeoutSeconds. An RV older than the last
         expire_resource_versions() -> an ERROR event with a 410 Expired Status and a clean end
         (gone_mode "event", as the real API server does) or an HTTP 410 (gone_mode "http").
  GET /api/v1/namespaces/NS/pods|services (same, one namespace), /version, /healthz.
  Authorization: Bearer TOKEN is checked (401 Status otherwise) unless token is None.
  POST /_control {"op": ..., ...}: the control endpoint (no auth), see CONTROL below.

Python use:
    with FakeKube(token="t") as kube:                  # kube.url, kube.port
        kube.add_pod(deployment_pod(deployment="web", ip="10.244.1.5"))
        kube.fail_next(500); kube.drop_watches(); kube.expire_resource_versions()

Standalone:  /usr/bin/python3 tests/lib/fake_kube.py [--port 0] [--token T | --no-auth]
             [--gone-mode event|http] [--seed demo] [--exit-on-stdin-eof] [--verbose]
             [--tls-cert CERT.pem --tls-key KEY.pem]   (HTTPS)
  prints one JSON line {"port": N, "url": "http://127.0.0.1:N", "token": T, "pid": P} on stdout,
  then serves until SIGTERM/SIGINT (or stdin EOF with --exit-on-stdin-eof).
"""

import argparse
import base64
import copy
import json
import os
import queue
import random
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

RESOURCES = ("pods", "services")
LIST_KIND = {"pods": "PodList", "services": "ServiceList"}
ITEM_KIND = {"pods": "Pod", "services": "Service"}

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes' name generator uses


def _suffix(n=5):
    return "".join(random.choice(_SUFFIX_ALPHABET) for _ in range(n))


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def status_object(code, reason, message, details=None):
    """A metav1.Status, as the API server sends for failures."""
    st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
          "message": message, "reason": reason, "code": code}
    if details:
        st["details"] = details
    return st


_STATUS_DEFAULTS = {
    400: ("BadRequest", "bad request"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", 'pods is forbidden: User "system:serviceaccount:rstwatch:rstwatch" cannot '
                       'list resource "pods" in API group "" at the cluster scope'),
    404: ("NotFound", "the server could not find the requested resource"),
    410: ("Expired", "too old resource version"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: etcdserver: request timed out"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "Timeout: request did not complete within requested timeout"),
}


def default_status(code, resource="pods", message=None):
    reason, text = _STATUS_DEFAULTS.get(code, ("InternalError", "error %d" % code))
    if code == 403:
        text = text.replace('"pods"', '"%s"' % resource).replace("pods is", "%s is" % resource)
    return status_object(code, reason, message or text,
                         {"kind": resource} if code in (403, 404) else None)


# ---- object builders -------------------------------------------------------------------

def _meta(name, namespace, labels=None, owner=None, uid=None, generate_name=None, annotations=None):
    m = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid4()),
        "resourceVersion": "0",
        "creationTimestamp": _now(),
        "labels": dict(labels or {}),
    }
    if generate_name:
        m["generateName"] = generate_name
    if annotations:
        m["annotations"] = dict(annotations)
    if owner:
        kind, owner_name, api_version = owner
        m["ownerReferences"] = [{
            "apiVersion": api_version, "kind": kind, "name": owner_name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, "%s/%s/%s" % (namespace, kind, owner_name))),
            "controller": True, "blockOwnerDeletion": True,
        }]
    m["managedFields"] = [{
        "manager": "kube-controller-manager" if owner else "kubectl-client-side-apply",
        "operation": "Update", "apiVersion": "v1", "time": m["creationTimestamp"],
        "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}},
    }]
    return m


def make_pod(name, namespace="default", ip="10.244.1.5", ips=None, node="node-1", host_ip="172.18.0.2",
             labels=None, owner=None, host_network=False, phase="Running", uid=None, generate_name=None,
             image="nginx:1.25", container="app", port=8080, annotations=None):
    """A full Pod as the API server returns it. ip=None (and ips=None): no IP yet (Pending).
    ips: all pod IPs (dual stack), the first is status.podIP. owner: (kind, name, apiVersion)."""
    if ips is None:
        ips = [ip] if ip else []
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": _meta(name, namespace, labels, owner, uid, generate_name, annotations),
        "spec": {
            "volumes": [{"name": "kube-api-access-%s" % _suffix(), "projected": {
                "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}],
                "defaultMode": 420}}],
            "containers": [{
                "name": container, "image": image,
                "ports": [{"containerPort": port, "protocol": "TCP"}] if port else [],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirstWithHostNet" if host_network else "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": node,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300}],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": phase,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": _now()},
                {"type": "Ready", "status": "True" if phase == "Running" else "False",
                 "lastProbeTime": None, "lastTransitionTime": _now()},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": _now()}],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": _now(),
            "qosClass": "BestEffort",
        },
    }
    if host_network:
        pod["spec"]["hostNetwork"] = True
    if ips:
        pod["status"]["podIP"] = ips[0]
        pod["status"]["podIPs"] = [{"ip": a} for a in ips]
    if phase == "Running":
        pod["status"]["containerStatuses"] = [{
            "name": container, "state": {"running": {"startedAt": _now()}}, "lastState": {},
            "ready": True, "restartCount": 0, "image": "docker.io/library/" + image,
            "imageID": "docker.io/library/" + image.split(":")[0] + "@sha256:" + "0" * 64,
            "containerID": "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex, "started": True}]
    return pod


def deployment_pod(deployment="web", namespace="default", ip="10.244.1.5", template_hash="7d4b9c6f5d",
                   name=None, **kw):
    """Owned by ReplicaSet DEPLOYMENT-HASH, label pod-template-hash=HASH: workload = DEPLOYMENT."""
    rs = "%s-%s" % (deployment, template_hash)
    labels = {"app": deployment, "pod-template-hash": template_hash}
    labels.update(kw.pop("labels", None) or {})
    return make_pod(name or "%s-%s" % (rs, _suffix()), namespace, ip=ip, labels=labels,
                    owner=("ReplicaSet", rs, "apps/v1"), generate_name=rs + "-", **kw)


def statefulset_pod(statefulset="db", ordinal=0, namespace="default", ip="10.244.1.6", **kw):
    name = "%s-%d" % (statefulset, ordinal)
    labels = {"app": statefulset, "controller-revision-hash": "%s-6b8f9c7d5" % statefulset,
              "statefulset.kubernetes.io/pod-name": name, "apps.kubernetes.io/pod-index": str(ordinal)}
    labels.update(kw.pop("labels", None) or {})
    return make_pod(name, namespace, ip=ip, labels=labels, owner=("StatefulSet", statefulset, "apps/v1"),
                    generate_name=statefulset + "-", **kw)


def daemonset_pod(daemonset="node-exporter", namespace="monitoring", ip="10.244.1.7", name=None, **kw):
    labels = {"app": daemonset, "controller-revision-hash": "5c9d8f7b6d", "pod-template-generation": "1"}
    labels.update(kw.pop("labels", None) or {})
    return make_pod(name or "%s-%s" % (daemonset, _suffix()), namespace, ip=ip, labels=labels,
                    owner=("DaemonSet", daemonset, "apps/v1"), generate_name=daemonset + "-", **kw)


def job_pod(job="migrate", namespace="default", ip="10.244.1.8", name=None, **kw):
    """A pod of a Job not made by a CronJob: workload = the Job."""
    ctrl_uid = str(uuid.uuid5(uuid.NAMESPACE_DNS, "%s/Job/%s" % (namespace, job)))
    labels = {"batch.kubernetes.io/controller-uid": ctrl_uid, "batch.kubernetes.io/job-name": job,
              "controller-uid": ctrl_uid, "job-name": job}
    labels.update(kw.pop("labels", None) or {})
    kw.setdefault("phase", "Running")
    pod = make_pod(name or "%s-%s" % (job, _suffix()), namespace, ip=ip, labels=labels,
                   owner=("Job", job, "batch/v1"), generate_name=job + "-", **kw)
    pod["spec"]["restartPolicy"] = "Never"
    return pod


def cronjob_pod(cronjob="backup", scheduled=28391040, namespace="default", ip="10.244.1.9", name=None, **kw):
    """A pod of Job CRONJOB-<scheduled minutes>: workload = the CronJob."""
    return job_pod("%s-%d" % (cronjob, scheduled), namespace, ip=ip, name=name, **kw)


def bare_pod(name="debug", namespace="default", ip="10.244.1.10", **kw):
    """No ownerReferences: workload = the pod's own name."""
    labels = {"run": name}
    labels.update(kw.pop("labels", None) or {})
    return make_pod(name, namespace, ip=ip, labels=labels, **kw)


def host_network_pod(daemonset="kube-proxy", namespace="kube-system", host_ip="172.18.0.2", name=None, **kw):
    """A hostNetwork DaemonSet pod: its podIP is the node's IP."""
    labels = {"k8s-app": daemonset, "controller-revision-hash": "7f6b5d9c8", "pod-template-generation": "1"}
    return make_pod(name or "%s-%s" % (daemonset, _suffix()), namespace, ip=host_ip, host_ip=host_ip,
                    labels=labels, owner=("DaemonSet", daemonset, "apps/v1"), host_network=True,
                    generate_name=daemonset + "-", **kw)


def pending_pod(deployment="web", namespace="default", **kw):
    """Scheduled nowhere yet: no IPs, phase Pending."""
    pod = deployment_pod(deployment, namespace, ip=None, phase="Pending", **kw)
    pod["spec"].pop("nodeName", None)
    pod["status"].pop("hostIP", None)
    pod["status"].pop("hostIPs", None)
    return pod


def service(name="web", namespace="default", cluster_ips=("10.96.100.10",), ports=((80, 8080),),
            selector=None, type="ClusterIP", uid=None):
    """A Service; cluster_ips=("None",) is headless, two IPs are dual stack."""
    cluster_ips = list(cluster_ips)
    families = ["IPv6" if ":" in a else "IPv4" for a in cluster_ips if a != "None"] or ["IPv4"]
    svc = {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": _meta(name, namespace, {"app": name}, None, uid),
        "spec": {
            "ports": [{"name": "p%d" % p, "protocol": "TCP", "port": p, "targetPort": t} for p, t in ports],
            "selector": selector if selector is not None else {"app": name},
            "clusterIP": cluster_ips[0] if cluster_ips else "",
            "clusterIPs": cluster_ips,
            "type": type,
            "sessionAffinity": "None",
            "ipFamilies": families,
            "ipFamilyPolicy": "PreferDualStack" if len(families) > 1 else "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }
    if type in ("NodePort", "LoadBalancer"):
        for i, p in enumerate(svc["spec"]["ports"]):
            p["nodePort"] = 30000 + i
        svc["spec"]["externalTrafficPolicy"] = "Cluster"
    return svc


def headless_service(name="db", namespace="default", **kw):
    return service(name, namespace, cluster_ips=("None",), **kw)


BUILDERS = {
    "make_pod": make_pod, "deployment_pod": deployment_pod, "statefulset_pod": statefulset_pod,
    "daemonset_pod": daemonset_pod, "job_pod": job_pod, "cronjob_pod": cronjob_pod, "bare_pod": bare_pod,
    "host_network_pod": host_network_pod, "pending_pod": pending_pod, "service": service,
    "headless_service": headless_service,
}


def seed_demo(kube):
    """A small realistic cluster."""
    kube.add_pod(deployment_pod("web", "shop", ip="10.244.1.5", node="node-1"))
    kube.add_pod(deployment_pod("web", "shop", ip="10.244.2.5", node="node-2", host_ip="172.18.0.3"))
    kube.add_pod(deployment_pod("ingress-nginx-controller", "ingress-nginx", ip="10.244.1.20",
                                template_hash="5d88c8b7f"))
    kube.add_pod(statefulset_pod("postgres", 0, "shop", ip="10.244.2.6", node="node-2", host_ip="172.18.0.3"))
    kube.add_pod(daemonset_pod("node-exporter", "monitoring", ip="10.244.1.7"))
    kube.add_pod(cronjob_pod("backup", 28391040, "shop", ip="10.244.1.9"))
    kube.add_pod(bare_pod("debug", "default", ip="10.244.1.10"))
    kube.add_pod(host_network_pod("kube-proxy", "kube-system", host_ip="172.18.0.2", node="node-1"))
    kube.add_service(service("web", "shop", cluster_ips=("10.96.100.10",)))
    kube.add_service(service("ingress-nginx-controller", "ingress-nginx", cluster_ips=("10.96.0.50",),
                             ports=((80, 80), (443, 443)), type="LoadBalancer"))
    kube.add_service(headless_service("postgres", "shop", ports=((5432, 5432),)))
    kube.add_service(service("kubernetes", "default", cluster_ips=("10.96.0.1",), ports=((443, 6443),),
                             selector={}))


# ---- server ------------------------------------------------------------------------

class _Watch:
    def __init__(self, resource, namespace):
        self.resource = resource
        self.namespace = namespace
        self.queue = queue.Queue()


class FakeKube:
    """The fake API server. All methods are thread-safe. Mutations bump one global
    resourceVersion (as etcd does) and are sent to open watches."""

    def __init__(self, token="test-token", host="127.0.0.1", port=0, gone_mode="event", start_rv=1000,
                 verbose=False, tls_cert=None, tls_key=None):
        self.token = token
        self.host = host
        self.gone_mode = gone_mode  # "event" | "http"
        self.chunking = "line"      # "line": one chunk per event | "split": every line in two chunks
        self.verbose = verbose
        self._lock = threading.RLock()
        self._rv = start_rv
        self._objects = {r: {} for r in RESOURCES}   # "ns/name" -> object
        self._history = {r: [] for r in RESOURCES}   # (rv, type, object)
        self._compacted = {r: 0 for r in RESOURCES}  # watches from an RV below this get 410
        self._watches = set()
        self._failures = []       # [{"status", "count", "resource", "verb", "message"}]
        self._snapshots = {}      # continue id -> (rv, [objects])
        self._hang_release = threading.Event()
        self._stopping = threading.Event()
        self.requests = []        # [{"verb", "resource", "path", "query", "auth", "status"}]
        self.tls = bool(tls_cert)
        self._tls_context = None
        if tls_cert:
            import ssl
            self._tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls_context.load_cert_chain(tls_cert, tls_key)
        self._server = self._make_server(port)
        self._thread = None
        self.down = False
        self._conns = set()  # open client connections (sockets), for go_down()

    def _make_server(self, port):
        server = ThreadingHTTPServer((self.host, port), _Handler)
        server.daemon_threads = True
        server.fake = self
        if self._tls_context is not None:
            # The handshake runs in the handler thread (see _Handler.setup), not in accept().
            server.socket = self._tls_context.wrap_socket(server.socket, server_side=True,
                                                          do_handshake_on_connect=False)
        return server

    # -- lifecycle --
    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def url(self):
        return "%s://%s:%d" % ("https" if self.tls else "http", self.host, self.port)

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-kube", daemon=True)
        self._thread.start()
        return self.port

    def go_down(self):
        """The API server is gone: open watches end, the listening socket is closed, so
        connections are refused (not answered with errors) until come_back()."""
        self._close()
        # Kept-alive connections would still be answered: end them too.
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.down = True

    def come_back(self, timeout=10.0):
        """Listens again on the same port (retrying while the port is briefly unavailable)."""
        port = self.port
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._server = self._make_server(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.down = False
        self.start()

    def stop(self):
        self._stopping.set()
        self._hang_release.set()
        if not self.down:  # go_down() closed it already
            self._close()

    def _close(self):
        """Ends the open watches and closes the listening socket."""
        with self._lock:
            for w in list(self._watches):
                w.queue.put(("end",))
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- objects --
    @staticmethod
    def _key(obj):
        return "%s/%s" % (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])

    def _emit(self, resource, etype, obj):
        """With the lock held: record and broadcast one event."""
        self._history[resource].append((int(obj["metadata"]["resourceVersion"]), etype, obj))
        line = _compact({"type": etype, "object": obj}) + "\n"
        ns = obj["metadata"].get("namespace", "")
        for w in self._watches:
            if w.resource == resource and (w.namespace is None or w.namespace == ns):
                w.queue.put(("data", line))

    def _bump(self):
        self._rv += 1
        return str(self._rv)

    def add(self, resource, obj, silent=False):
        """Create or replace (ADDED if new, MODIFIED if it exists). Returns the stored object.
        silent=True: no event and no history (only a new list shows it, as after a compaction)."""
        obj = copy.deepcopy(obj)
        obj.setdefault("kind", ITEM_KIND[resource])
        obj.setdefault("apiVersion", "v1")
        with self._lock:
            key = self._key(obj)
            existing = self._objects[resource].get(key)
            if existing is not None and "uid" not in obj["metadata"]:
                obj["metadata"]["uid"] = existing["metadata"]["uid"]
            obj["metadata"].setdefault("uid", str(uuid.uuid4()))
            obj["metadata"]["resourceVersion"] = self._bump()
            self._objects[resource][key] = obj
            if not silent:
                self._emit(resource, "MODIFIED" if existing is not None else "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, resource, namespace, name, patch=None, fn=None, silent=False):
        """MODIFIED: deep-merge `patch` (dict; None values delete keys) and/or call fn(obj)."""
        with self._lock:
            obj = copy.deepcopy(self._objects[resource]["%s/%s" % (namespace, name)])
            if patch:
                _merge(obj, patch)
            if fn:
                fn(obj)
            obj["metadata"]["resourceVersion"] = self._bump()
            self._objects[resource][self._key(obj)] = obj
            if not silent:
                self._emit(resource, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def delete(self, resource, namespace, name, silent=False):
        """DELETED with the final object (deletionTimestamp set). Returns it."""
        with self._lock:
            obj = self._objects[resource].pop("%s/%s" % (namespace, name))
            obj = copy.deepcopy(obj)
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            obj["metadata"]["resourceVersion"] = self._bump()
            if not silent:
                self._emit(resource, "DELETED", obj)
            return obj

    def add_pod(self, obj, silent=False):
        return self.add("pods", obj, silent)

    def update_pod(self, namespace, name, patch=None, fn=None, silent=False):
        return self.update("pods", namespace, name, patch, fn, silent)

    def delete_pod(self, namespace, name, silent=False):
        return self.delete("pods", namespace, name, silent)

    def add_service(self, obj, silent=False):
        return self.add("services", obj, silent)

    def update_service(self, namespace, name, patch=None, fn=None, silent=False):
        return self.update("services", namespace, name, patch, fn, silent)

    def delete_service(self, namespace, name, silent=False):
        return self.delete("services", namespace, name, silent)

    def get(self, resource, namespace, name):
        with self._lock:
            obj = self._objects[resource].get("%s/%s" % (namespace, name))
            return copy.deepcopy(obj) if obj else None

    def objects(self, resource):
        with self._lock:
            return [copy.deepcopy(o) for _, o in sorted(self._objects[resource].items())]

    @property
    def resource_version(self):
        with self._lock:
            return str(self._rv)

    # -- watch control --
    def _resources(self, resource):
        return RESOURCES if resource in (None, "", "all") else (resource,)

    def _to_watches(self, resource, item):
        n = 0
        with self._lock:
            for w in self._watches:
                if w.resource in self._resources(resource):
                    w.queue.put(item)
                    n += 1
        return n

    def send_bookmark(self, resource=None):
        """BOOKMARK with the current resourceVersion to open watches. Returns the RV."""
        with self._lock:
            rv = str(self._rv)
            for w in self._watches:
                if w.resource in self._resources(resource):
                    obj = {"kind": ITEM_KIND[w.resource], "apiVersion": "v1",
                           "metadata": {"resourceVersion": rv, "creationTimestamp": None}}
                    if w.resource == "pods":
                        obj["spec"] = {"containers": None}
                        obj["status"] = {}
                    else:
                        obj["spec"] = {}
                        obj["status"] = {"loadBalancer": {}}
                    w.queue.put(("data", _compact({"type": "BOOKMARK", "object": obj}) + "\n"))
            return rv

    def send_raw(self, text, resource=None):
        """Writes `text` as one chunk into open watches (several lines, half lines, garbage)."""
        return self._to_watches(resource, ("data", text))

    def send_malformed(self, resource=None):
        """A truncated JSON event line."""
        return self.send_raw('{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":\n', resource)

    def send_error(self, code=410, reason="Expired", message=None, resource=None):
        """An ERROR event with a Status, then a clean end of the watch (as the API server does)."""
        with self._lock:
            message = message or ("too old resource version: %d (%d)" % (self._rv - 1, self._rv)
                                  if code == 410 else _STATUS_DEFAULTS.get(code, ("", "error"))[1])
        st = status_object(code, reason, message)
        return self._to_watches(resource, ("error", _compact({"type": "ERROR", "object": st}) + "\n"))

    def drop_watches(self, resource=None, partial=False, rst=False):
        """Closes open watch connections abruptly: no terminating chunk (partial=True first
        writes half an event line; rst=True resets instead of FIN)."""
        return self._to_watches(resource, ("drop", partial, rst))

    def end_watches(self, resource=None):
        """Ends open watches cleanly, as timeoutSeconds does."""
        return self._to_watches(resource, ("end",))

    def expire_resource_versions(self, resource=None, notify=True):
        """Compaction: every resourceVersion seen so far becomes too old to watch from (the
        global RV moves on by one). notify=True also sends open watches an ERROR 410 event."""
        with self._lock:
            rv = int(self._bump())
            for r in self._resources(resource):
                self._compacted[r] = rv
        if notify:
            self.send_error(410, "Expired", "too old resource version: %d (%d)" % (rv - 1, rv), resource)
        return str(rv)

    def expire_continue_tokens(self):
        with self._lock:
            self._snapshots.clear()

    def watch_count(self, resource=None):
        """Open watches."""
        with self._lock:
            return sum(1 for w in self._watches if w.resource in self._resources(resource))

    def wait_for_watches(self, resource=None, count=1, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.watch_count(resource) >= count:
                return True
            time.sleep(0.01)
        return False

    # -- failures / auth --
    def fail_next(self, status, count=1, resource=None, verb=None, message=None, seconds=None):
        """The next `count` matching requests fail. status: an HTTP code (answered with a Status
        body), "drop" (200 and half a body, then the connection closes), "close" (the connection
        is reset without an answer: libcurl silently retries that once on a reused connection),
        "garbage" (200 with a non-JSON body), or "hang" (no answer for `seconds`, default until
        stop() or release_hangs()). resource: "pods" |
        "services" | None (any); verb: "list" | "watch" | None (any)."""
        with self._lock:
            self._failures.append({"status": status, "count": int(count), "resource": resource,
                                   "verb": verb, "message": message, "seconds": seconds})

    def clear_failures(self):
        with self._lock:
            self._failures.clear()

    def set_token(self, token):
        """The accepted bearer token (None: no check), e.g. to simulate rotation."""
        self.token = token

    def set_gone_mode(self, mode):
        assert mode in ("event", "http")
        self.gone_mode = mode

    def set_chunking(self, mode):
        assert mode in ("line", "split")
        self.chunking = mode

    def release_hangs(self):
        self._hang_release.set()
        self._hang_release = threading.Event()

    def _take_failure(self, resource, verb):
        with self._lock:
            for f in self._failures:
                if (f["resource"] in (None, resource)) and (f["verb"] in (None, verb)):
                    f["count"] -= 1
                    if f["count"] <= 0:
                        self._failures.remove(f)
                    return f
        return None

    # -- stats --
    def request_count(self, verb=None, resource=None, status=None):
        with self._lock:
            return sum(1 for r in self.requests
                       if (verb is None or r["verb"] == verb) and (resource is None or r["resource"] == resource)
                       and (status is None or r["status"] == status))

    def state(self):
        with self._lock:
            return {
                "resourceVersion": str(self._rv),
                "pods": sorted(self._objects["pods"]),
                "services": sorted(self._objects["services"]),
                "watches": {r: self.watch_count(r) for r in RESOURCES},
                "requests": {"%s %s" % (v, r): self.request_count(v, r) for v in ("list", "watch") for r in RESOURCES},
                "failures_pending": len(self._failures),
                "gone_mode": self.gone_mode,
                "token": self.token,
            }

    def reset(self):
        """Removes all objects (no events), failures and history; ends open watches."""
        with self._lock:
            for r in RESOURCES:
                self._objects[r].clear()
                self._history[r].clear()
                self._compacted[r] = self._rv + 1
            self._failures.clear()
            self._snapshots.clear()
            self._bump()
            self.requests.clear()
        self.end_watches()

    # -- control endpoint --
    def control(self, cmd):
        """Runs one control command (a dict, see CONTROL). Returns a JSON-able result."""
        op = cmd.get("op")

        def obj_arg():
            if "object" in cmd:
                return cmd["object"]
            return BUILDERS[cmd["builder"]](**cmd.get("args", {}))

        silent = bool(cmd.get("silent"))
        if op in ("add_pod", "add_service"):
            return getattr(self, op)(obj_arg(), silent=silent)
        if op in ("update_pod", "update_service"):
            return getattr(self, op)(cmd["namespace"], cmd["name"], cmd.get("patch"), silent=silent)
        if op in ("delete_pod", "delete_service"):
            return getattr(self, op)(cmd["namespace"], cmd["name"], silent=silent)
        if op == "build":
            return BUILDERS[cmd["builder"]](**cmd.get("args", {}))
        if op == "send_bookmark":
            return self.send_bookmark(cmd.get("resource"))
        if op == "send_raw":
            return self.send_raw(cmd["text"], cmd.get("resource"))
        if op == "send_malformed":
            return self.send_malformed(cmd.get("resource"))
        if op == "send_error":
            return self.send_error(cmd.get("code", 410), cmd.get("reason", "Expired"), cmd.get("message"),
                                   cmd.get("resource"))
        if op == "drop_watches":
            return self.drop_watches(cmd.get("resource"), bool(cmd.get("partial")), bool(cmd.get("rst")))
        if op == "end_watches":
            return self.end_watches(cmd.get("resource"))
        if op == "expire_resource_versions":
            return self.expire_resource_versions(cmd.get("resource"), cmd.get("notify", True))
        if op == "expire_continue_tokens":
            return self.expire_continue_tokens()
        if op == "fail_next":
            return self.fail_next(cmd["status"], cmd.get("count", 1), cmd.get("resource"), cmd.get("verb"),
                                  cmd.get("message"), cmd.get("seconds"))
        if op == "clear_failures":
            return self.clear_failures()
        if op == "release_hangs":
            return self.release_hangs()
        if op == "set_token":
            return self.set_token(cmd.get("token"))
        if op == "set_gone_mode":
            return self.set_gone_mode(cmd["mode"])
        if op == "set_chunking":
            return self.set_chunking(cmd["mode"])
        if op == "wait_for_watches":
            return self.wait_for_watches(cmd.get("resource"), cmd.get("count", 1), cmd.get("timeout", 5.0))
        if op == "state":
            return self.state()
        if op == "request_count":
            return self.request_count(cmd.get("verb"), cmd.get("resource"), cmd.get("status"))
        if op == "seed":
            return seed_demo(self)
        if op == "reset":
            return self.reset()
        raise ValueError("unknown op %r" % (op,))


CONTROL = """POST /_control with one JSON object; answer {"ok": true, "result": ...} or
HTTP 400 {"ok": false, "error": "..."}. Ops (arguments as in the Python methods):
  add_pod / add_service        {"object": {...}} or {"builder": NAME, "args": {...}}  -> stored object
  update_pod / update_service  {"namespace", "name", "patch": {... deep merge, null deletes}}
  delete_pod / delete_service  {"namespace", "name"}                                   -> final object
    (all five take "silent": true: change the store without an event, seen only by a new list)
  build                        {"builder": NAME, "args": {...}}                         -> object (not stored)
  send_bookmark {"resource"?} | send_raw {"text", "resource"?} | send_malformed {"resource"?}
  send_error {"code"?, "reason"?, "message"?, "resource"?} | drop_watches {"resource"?, "partial"?, "rst"?}
  end_watches {"resource"?} | expire_resource_versions {"resource"?, "notify"?} | expire_continue_tokens
  fail_next {"status": CODE|"drop"|"close"|"garbage"|"hang", "count"?, "resource"?, "verb"?, "message"?, "seconds"?}
  clear_failures | release_hangs | set_token {"token": STR|null} | set_gone_mode {"mode": "event"|"http"}
  set_chunking {"mode": "line"|"split"} | wait_for_watches {"resource"?, "count"?, "timeout"?} -> bool
  state -> {resourceVersion, pods, services, watches, requests, ...} | request_count {"verb"?, "resource"?, "status"?}
  seed (a small demo cluster) | reset
Builders: """ + ", ".join(sorted(BUILDERS))


def _merge(dst, patch):
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def _encode_continue(rv, snapshot_id, start):
    raw = _compact({"v": "meta.k8s.io/v1", "rv": rv, "start": start, "id": snapshot_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token):
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        d = json.loads(raw)
        return d["id"], int(d["start"])
    except Exception:
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver"
    sys_version = ""

    def setup(self):
        with self.server.fake._lock:
            self.server.fake._conns.add(self.request)
        self._tls_failed = None
        if self.server.fake.tls:
            try:
                self.request.settimeout(10)
                self.request.do_handshake()
                self.request.settimeout(None)
            except OSError as e:
                self._tls_failed = e
        super().setup()

    def handle(self):
        if self._tls_failed is not None:
            if self.server.fake.verbose:
                sys.stderr.write("fake_kube: TLS handshake: %s\n" % self._tls_failed)
            return
        try:
            super().handle()
        except OSError as e:  # TLS handshake failures, resets
            if self.server.fake.verbose:
                sys.stderr.write("fake_kube: connection: %s\n" % e)

    def finish(self):
        with self.server.fake._lock:
            self.server.fake._conns.discard(self.request)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, fmt, *args):
        if self.server.fake.verbose:
            sys.stderr.write("fake_kube: " + (fmt % args) + "\n")

    # -- helpers --
    def _send_json(self, code, obj, headers=None):
        body = (_compact(obj) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _log(self, verb, resource, query, status):
        fake = self.server.fake
        with fake._lock:
            fake.requests.append({"verb": verb, "resource": resource, "path": self.path.split("?")[0],
                                  "query": query, "auth": self.headers.get("Authorization"), "status": status})

    def _chunk(self, data):
        if isinstance(data, str):
            data = data.encode()
        if not data:
            return
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _write_line(self, line):
        if self.server.fake.chunking == "split" and len(line) > 2:
            half = len(line) // 2
            self._chunk(line[:half])
            self._chunk(line[half:])
        else:
            self._chunk(line)

    def _abort(self, rst=False):
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            if rst:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    # -- routing --
    def do_POST(self):
        path = urlsplit(self.path).path
        if path != "/_control":
            self._send_json(405, status_object(405, "MethodNotAllowed", "the server does not allow this method"))
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            cmd = json.loads(raw or b"{}")
            result = self.server.fake.control(cmd)
            self._send_json(200, {"ok": True, "result": result})
        except Exception as e:  # noqa: BLE001 - report anything to the caller
            self._send_json(400, {"ok": False, "error": "%s: %s" % (type(e).__name__, e)})

    def do_GET(self):
        fake = self.server.fake
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if path == "/_control/state":
            self._send_json(200, {"ok": True, "result": fake.state()})
            return
        if path == "/_control/help":
            body = CONTROL.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        segs = path.strip("/").split("/")
        namespace = None
        resource = None
        if len(segs) == 3 and segs[:2] == ["api", "v1"] and segs[2] in RESOURCES:
            resource = segs[2]
        elif len(segs) == 5 and segs[:3] == ["api", "v1", "namespaces"] and segs[4] in RESOURCES:
            namespace, resource = segs[3], segs[4]
        verb = "watch" if query.get("watch") in ("1", "true", "True") else "list"

        if fake.token is not None and self.headers.get("Authorization") != "Bearer " + fake.token:
            self._log(verb, resource, query, 401)
            self._send_json(401, default_status(401))
            return
        if path == "/version":
            self._send_json(200, {"major": "1", "minor": "29", "gitVersion": "v1.29.2", "platform": "linux/amd64"})
            return
        if path in ("/healthz", "/readyz", "/livez"):
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(body)
            return
        if resource is None:
            self._log(verb, None, query, 404)
            self._send_json(404, default_status(404, "", "the server could not find the requested resource"))
            return

        failure = fake._take_failure(resource, verb)
        if failure is not None:
            st = failure["status"]
            self._log(verb, resource, query, st)
            if st == "drop":
                body = (_compact({"kind": LIST_KIND[resource], "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(fake._rv)}, "items": []}) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if verb == "watch":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self._chunk(body[:len(body) // 2])
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:len(body) // 2])
                self._abort()
            elif st == "close":
                self._abort(rst=True)
            elif st == "hang":
                release = fake._hang_release
                release.wait(failure["seconds"] if failure["seconds"] is not None else 3600)
                self._abort()
            elif st == "garbage":
                body = b"<html><body>502 Bad Gateway</body></html>\nnot json at all\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                code = int(st)
                headers = {"Retry-After": "1"} if code in (429, 503) else None
                self._send_json(code, default_status(code, resource, failure["message"]), headers)
            return

        if verb == "watch":
            self._watch(resource, namespace, query)
        else:
            self._list(resource, namespace, query)

    def _list(self, resource, namespace, query):
        fake = self.server.fake
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            self._log("list", resource, query, 400)
            self._send_json(400, default_status(400, resource, "invalid limit"))
            return
        cont = query.get("continue") or ""
        with fake._lock:
            if cont:
                decoded = _decode_continue(cont)
                snap = fake._snapshots.get(decoded[0]) if decoded else None
                if snap is None:
                    self._log("list", resource, query, 410)
                    self._send_json(410, status_object(
                        410, "Expired",
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter."))
                    return
                snapshot_id, start = decoded
                rv, objs = snap
            else:
                rv = fake._rv
                objs = [copy.deepcopy(o) for _, o in sorted(fake._objects[resource].items())
                        if namespace is None or o["metadata"].get("namespace") == namespace]
                snapshot_id, start = uuid.uuid4().hex, 0
            end = start + limit if limit > 0 else len(objs)
            page = objs[start:end]
            meta = {"resourceVersion": str(rv)}
            if end < len(objs):
                fake._snapshots[snapshot_id] = (rv, objs)
                meta["continue"] = _encode_continue(rv, snapshot_id, end)
                meta["remainingItemCount"] = len(objs) - end
            else:
                fake._snapshots.pop(snapshot_id, None)
        items = []
        for o in page:
            item = copy.deepcopy(o)
            item.pop("kind", None)        # the API server leaves these out of list items
            item.pop("apiVersion", None)
            items.append(item)
        self._log("list", resource, query, 200)
        self._send_json(200, {"kind": LIST_KIND[resource], "apiVersion": "v1", "metadata": meta, "items": items})

    def _watch(self, resource, namespace, query):
        fake = self.server.fake
        rv_text = query.get("resourceVersion", "")
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            timeout = 1800.0
        try:
            rv = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError:
            self._log("watch", resource, query, 400)
            self._send_json(400, default_status(400, resource, 'invalid resourceVersion "%s"' % rv_text))
            return
        w = _Watch(resource, namespace)
        initial = []
        gone = None
        with fake._lock:
            if rv is not None and rv < fake._compacted[resource]:
                gone = "too old resource version: %d (%d)" % (rv, fake._compacted[resource])
            else:
                if rv is None:
                    src = [("ADDED", o) for _, o in sorted(fake._objects[resource].items())]
                else:
                    src = [(t, o) for (r, t, o) in fake._history[resource] if r > rv]
                for t, o in src:
                    if namespace is None or o["metadata"].get("namespace") == namespace:
                        initial.append(_compact({"type": t, "object": o}) + "\n")
                fake._watches.add(w)
        if gone and fake.gone_mode == "http":
            self._log("watch", resource, query, 410)
            self._send_json(410, status_object(410, "Gone", gone))
            return
        self._log("watch", resource, query, 200)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.send_header("Audit-Id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.flush()
            if gone:
                self._chunk(_compact({"type": "ERROR", "object": status_object(410, "Expired", gone)}) + "\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            for line in initial:
                self._write_line(line)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or fake._stopping.is_set():
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                try:
                    item = w.queue.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                if item[0] == "data":
                    self._write_line(item[1])
                elif item[0] == "error":
                    self._chunk(item[1])
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                elif item[0] == "end":
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                elif item[0] == "drop":
                    _, partial, rst = item
                    if partial:
                        self._chunk('{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","meta')
                    self._abort(rst)
                    return
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            with fake._lock:
                fake._watches.discard(w)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Kubernetes API server (pods, services).",
                                 epilog=CONTROL, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default="test-token")
    ap.add_argument("--no-auth", action="store_true", help="accept requests without a token")
    ap.add_argument("--gone-mode", choices=("event", "http"), default="event")
    ap.add_argument("--seed", choices=("none", "demo"), default="none")
    ap.add_argument("--exit-on-stdin-eof", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (chain)")
    ap.add_argument("--tls-key", help="the certificate's PEM private key")
    args = ap.parse_args(argv)

    kube = FakeKube(token=None if args.no_auth else args.token, host=args.host, port=args.port,
                    gone_mode=args.gone_mode, verbose=args.verbose, tls_cert=args.tls_cert,
                    tls_key=args.tls_key)
    if args.seed == "demo":
        seed_demo(kube)
    kube.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.exit_on_stdin_eof:
        def watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except OSError:
                pass
            done.set()
        threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"port": kube.port, "url": kube.url, "token": kube.token, "pid": os.getpid()}), flush=True)
    while not done.wait(0.5):
        pass
    kube.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
