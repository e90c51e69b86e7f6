#!/usr/bin/python3
"""Fake Kubernetes API server for tests: pods, services and events.k8s.io/v1 Events, real wire
format. Stdlib only (PyYAML only for YAML --rbac files and YAML Event bodies).

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
  POST /apis/events.k8s.io/v1/namespaces/NS/events -> 201 with the stored Event (uid,
      resourceVersion, creationTimestamp set; generateName honoured); 409 AlreadyExists, 400
      BadRequest (body namespace, kind/apiVersion, types), 415, 422 Invalid: the apiserver's own
      events.k8s.io/v1 validation (see "events.k8s.io/v1 Events" below for the sources).
  PATCH /apis/events.k8s.io/v1/namespaces/NS/events/NAME (application/json-patch+json,
      merge-patch+json, strategic-merge-patch+json) -> 200; 404 NotFound, 409 Conflict (stale
      metadata.resourceVersion), 415, 422 (immutable fields, a bad series, ...).
  GET /apis/events.k8s.io/v1/events, .../namespaces/NS/events (EventList), .../events/NAME.
  Authorization: Bearer TOKEN is checked (401 Status otherwise) unless token is None.
  RBAC (--rbac FILE, set_rbac): requests the rules do not allow get the apiserver's 403.
  POST /_control {"op": ..., ...}: the control endpoint (no auth), see CONTROL below.

Python use:
    with FakeKube(token="t") as kube:                  # kube.url, kube.port
        kube.add_pod(deployment_pod(deployment="web", ip="10.244.1.5"))
        kube.fail_next(500); kube.drop_watches(); kube.expire_resource_versions()
        kube.set_rbac(rules); kube.events(); kube.event_requests(); kube.rbac_usage()

Standalone:  /usr/bin/python3 tests/lib/fake_kube.py [--port 0] [--token T | --no-auth]
             [--gone-mode event|http] [--seed demo] [--exit-on-stdin-eof] [--verbose]
             [--tls-cert CERT.pem --tls-key KEY.pem]   (HTTPS)
             [--rbac deploy/base/clusterrole.yaml [--rbac-user USER]]
  prints one JSON line {"port": N, "url": "http://127.0.0.1:N", "token": T, "pid": P} on stdout,
  then serves until SIGTERM/SIGINT (or stdin EOF with --exit-on-stdin-eof).
"""

import argparse
import base64
import copy
import datetime
import json
import os
import queue
import random
import re
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


# ---- events.k8s.io/v1 Events ---------------------------------------------------------------
#
# What a kube-apiserver does with events.k8s.io/v1 Event writes, mirrored from its sources:
#  - validation: kubernetes/kubernetes pkg/apis/core/validation/events.go (ValidateEventCreate,
#    ValidateEventUpdate, legacyValidateEvent, validateV1EventSeries; read at commit 04791b4, the
#    same rules since v1.19 made them strict for events.k8s.io/v1 requests). It runs on the
#    internal core.Event, so its field paths are the core ones: regarding -> involvedObject,
#    note -> message, deprecatedSource -> source, deprecatedFirstTimestamp -> firstTimestamp,
#    deprecatedLastTimestamp -> lastTimestamp, deprecatedCount -> count
#    (pkg/apis/events/v1/conversion.go). Limits: reportingInstance/action/reason <= 128 bytes,
#    note <= 1024 bytes; reportingController a qualified name.
#  - metadata: ValidateObjectMeta / ValidateObjectMetaUpdate (apimachinery
#    pkg/api/validation/objectmeta.go), names as DNS-1123 subdomains (NameIsDNSSubdomain).
#  - message texts: apimachinery pkg/util/validation (IsQualifiedName, IsDNS1123Subdomain,
#    IsDNS1123Label, RegexError, MaxLenError) and pkg/util/validation/field/errors.go (ErrorBody,
#    ToAggregate's de-duplication) as of v1.29, the version /version reports here.
#  - Status shapes: apimachinery pkg/api/errors (NewInvalid, NewAlreadyExists, NewNotFound,
#    NewForbidden, NewConflict, NewBadRequest); RBAC's wording: apiserver
#    pkg/endpoints/handlers/responsewriters/errors.go (forbiddenMessage). The store names
#    resources by the request (events.events.k8s.io), the Invalid error by the object's first
#    registered kind, core's "Event" (Event "NAME" is invalid: ...), as real clusters answer
#    (kubernetes/kubernetes#100119, fabric8io/kubernetes-client#2219).
#  - PATCH: apiserver pkg/endpoints/handlers/patch.go: json-patch, merge-patch, strategic-merge-
#    patch and apply-patch+yaml accepted (this fake answers apply with 415), a missing object ->
#    404 from the patcher, checkName -> 400, an undecodable result -> 422 on field "patch".

EVENTS_GROUP = "events.k8s.io"
EVENTS_API_VERSION = "events.k8s.io/v1"
EVENTS_RESOURCE = "events"
DEFAULT_RBAC_USER = "system:serviceaccount:rstwatch:rstwatch"
PATCH_CONTENT_TYPES = ("application/json-patch+json", "application/merge-patch+json",
                       "application/strategic-merge-patch+json", "application/apply-patch+yaml")
CREATE_CONTENT_TYPES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")

REPORTING_INSTANCE_LIMIT = 128
ACTION_LIMIT = 128
REASON_LIMIT = 128
NOTE_LIMIT = 1024

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _QUALIFIED_NAME_FMT + ")?"


def _go_quote(s):
    """Go's %q for a string (strconv.Quote)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7f:
            out.append("\\x%02x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _regex_error(msg, fmt, *examples):
    if not examples:
        return msg + " (regex used for validation is '" + fmt + "')"
    msg += " (e.g. "
    for i, ex in enumerate(examples):
        if i > 0:
            msg += " or "
        msg += "'" + ex + "', "
    return msg + "regex used for validation is '" + fmt + "')"


def _max_len_error(n):
    return "must be no more than %d characters" % n


def _fullmatch(fmt, value):
    return re.fullmatch(fmt, value) is not None


def is_dns1123_subdomain(value):
    errs = []
    if len(value.encode()) > 253:
        errs.append(_max_len_error(253))
    if not _fullmatch(_DNS1123_SUBDOMAIN_FMT, value):
        errs.append(_regex_error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                                 "characters, '-' or '.', and must start and end with an alphanumeric character",
                                 _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def is_dns1123_label(value):
    errs = []
    if len(value.encode()) > 63:
        errs.append(_max_len_error(63))
    if not _fullmatch(_DNS1123_LABEL_FMT, value):
        if _fullmatch(_DNS1123_SUBDOMAIN_FMT, value):
            errs.append("must not contain dots")
        else:
            errs.append(_regex_error("a lowercase RFC 1123 label must consist of lower case alphanumeric "
                                     "characters or '-', and must start and end with an alphanumeric character",
                                     _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


_QNAME_MSG = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
              "alphanumeric character")


def is_qualified_name(value):
    errs = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in is_dns1123_subdomain(prefix))
    else:
        return ["a qualified name " + _regex_error(_QNAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name.encode()) > 63:
        errs.append("name part " + _max_len_error(63))
    if not _fullmatch(_QUALIFIED_NAME_FMT, name):
        errs.append("name part " + _regex_error(_QNAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def is_valid_label_value(value):
    errs = []
    if len(value.encode()) > 63:
        errs.append(_max_len_error(63))
    if not _fullmatch(_LABEL_VALUE_FMT, value):
        errs.append(_regex_error("a valid label must be an empty string or consist of alphanumeric characters, "
                                 "'-', '_' or '.', and must start and end with an alphanumeric character",
                                 _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


class GoValue(str):
    """A bad value already rendered as Go's field.ErrorBody prints it (structs, times)."""


class FieldError:
    """field.Error: type is the CauseType (FieldValueRequired, FieldValueInvalid, ...)."""
    _TYPE_TEXT = {"FieldValueRequired": "Required value", "FieldValueInvalid": "Invalid value",
                  "FieldValueForbidden": "Forbidden", "FieldValueTooLong": "Too long",
                  "FieldValueNotSupported": "Unsupported value", "UnexpectedServerResponse": ""}

    def __init__(self, type_, field, value="", detail=""):
        self.type, self.field, self.value, self.detail = type_, field, value, detail

    def body(self):
        text = self._TYPE_TEXT[self.type]
        if self.type not in ("FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong"):
            v = self.value
            if isinstance(v, GoValue):
                text += ": " + v
            elif v is None:
                text += ": null"
            elif isinstance(v, bool):
                text += ": " + ("true" if v else "false")
            elif isinstance(v, (int, float)):
                text += ": %s" % v
            else:
                text += ": " + _go_quote(str(v))
        if self.detail:
            text += ": " + self.detail
        return text

    def __str__(self):
        return "%s: %s" % (self.field, self.body())


def Required(field, detail=""):
    return FieldError("FieldValueRequired", field, "", detail)


def Invalid(field, value, detail):
    return FieldError("FieldValueInvalid", field, value, detail)


def _details(name=None, group=None, kind=None, causes=None, retry_after=None):
    """metav1.StatusDetails in Go's field order, empty fields left out."""
    d = {}
    if name:
        d["name"] = name
    if group:
        d["group"] = group
    if kind:
        d["kind"] = kind
    if causes:
        d["causes"] = causes
    if retry_after:
        d["retryAfterSeconds"] = int(retry_after)
    return d


def _qualified(resource, group):
    return resource + ("." + group if group else "")


def invalid_status(name, errs, kind="Event", group=""):
    """errors.NewInvalid: 422 with one cause per error, the message de-duplicated."""
    msgs = []
    for e in errs:
        if str(e) not in msgs:
            msgs.append(str(e))
    agg = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
    causes = []
    for e in errs:
        c = {"reason": e.type, "message": e.body()}
        if e.field:
            c["field"] = e.field
        causes.append(c)
    return status_object(422, "Invalid", "%s %s is invalid: %s" % (_qualified(kind, group), _go_quote(name), agg),
                         _details(name, group, kind, causes))


def not_found_status(name, resource=EVENTS_RESOURCE, group=EVENTS_GROUP):
    return status_object(404, "NotFound", "%s %s not found" % (_qualified(resource, group), _go_quote(name)),
                         _details(name, group, resource))


def already_exists_status(name, resource=EVENTS_RESOURCE, group=EVENTS_GROUP):
    return status_object(409, "AlreadyExists",
                         "%s %s already exists" % (_qualified(resource, group), _go_quote(name)),
                         _details(name, group, resource))


def conflict_status(name, resource=EVENTS_RESOURCE, group=EVENTS_GROUP):
    return status_object(409, "Conflict", "Operation cannot be fulfilled on %s %s: the object has been modified; "
                         "please apply your changes to the latest version and try again"
                         % (_qualified(resource, group), _go_quote(name)), _details(name, group, resource))


def bad_request_status(message):
    return status_object(400, "BadRequest", message)


def unsupported_media_type_status(accepted):
    return status_object(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                         "accepted media types include: " + ", ".join(accepted))


def forbidden_status(user, verb, group, resource, namespace=None, name=None):
    """What the apiserver answers when the authorizer says no (NewForbidden + forbiddenMessage)."""
    why = "User %s cannot %s resource %s in API group %s " % (_go_quote(user), verb, _go_quote(resource),
                                                                _go_quote(group))
    why += ("in the namespace %s" % _go_quote(namespace)) if namespace else "at the cluster scope"
    qual = _qualified(resource, group)
    message = ("%s %s is forbidden: %s" % (qual, _go_quote(name), why)) if name else ("%s is forbidden: %s" % (qual, why))
    return status_object(403, "Forbidden", message, _details(name, group, resource))


# -- times --

_MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"   # metav1.RFC3339Micro
_SECONDS_LAYOUT = "2006-01-02T15:04:05Z07:00"        # time.RFC3339


def _parse_go_time(value, micro):
    """time.Parse(RFC3339Micro or RFC3339, value) -> aware datetime, or raises ValueError with
    Go's message. RFC3339Micro needs exactly 6 fractional digits; RFC3339 takes any (or none)."""
    layout = _MICRO_LAYOUT if micro else _SECONDS_LAYOUT
    elems = [("2006", r"\d{4}"), ("-", "-"), ("01", r"\d{2}"), ("-", "-"), ("02", r"\d{2}"), ("T", "T"),
             ("15", r"\d{2}"), (":", ":"), ("04", r"\d{2}"), (":", ":"), ("05", r"\d{2}")]
    elems.append((".000000", r"[.,]\d{6}") if micro else ("", r"(?:[.,]\d+)?"))
    elems.append(("Z07:00", r"Z|[+-]\d{2}:\d{2}"))
    rest = value
    parts = []
    for elem, rx in elems:
        m = re.match(rx, rest)
        if not m:
            raise ValueError("parsing time %s as %s: cannot parse %s as %s"
                             % (_go_quote(value), _go_quote(layout), _go_quote(rest), _go_quote(elem)))
        parts.append(m.group(0))
        rest = rest[m.end():]
    if rest:
        raise ValueError("parsing time %s: extra text: %s" % (_go_quote(value), _go_quote(rest)))
    year, month, day, hour, minute, sec = (int(parts[i]) for i in (0, 2, 4, 6, 8, 10))
    frac = parts[11][1:] if parts[11] else ""
    for what, v, lo, hi in (("month", month, 1, 12), ("hour", hour, 0, 23), ("minute", minute, 0, 59),
                            ("second", sec, 0, 59)):
        if not lo <= v <= hi:
            raise ValueError("parsing time %s: %s out of range" % (_go_quote(value), what))
    try:
        datetime.date(year, month, day)
    except ValueError:
        raise ValueError("parsing time %s: day out of range" % _go_quote(value)) from None
    tz = parts[12]
    offset = datetime.timedelta(0) if tz == "Z" else \
        (1 if tz[0] == "+" else -1) * datetime.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    micro_s = int((frac + "000000")[:6]) if frac else 0
    dt = datetime.datetime(year, month, day, hour, minute, sec, micro_s, datetime.timezone(offset))
    return dt.astimezone(datetime.timezone.utc)


def _format_micro(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%06dZ" % dt.microsecond


def _format_seconds(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _go_time_string(text, micro):
    """time.Time.String() of a stored (normalized) time, "" or None meaning the zero time."""
    if not text:
        return "0001-01-01 00:00:00 +0000 UTC"
    dt = _parse_go_time(text, micro)
    s = dt.strftime("%Y-%m-%d %H:%M:%S")
    if dt.microsecond:
        s += ("." + "%06d" % dt.microsecond).rstrip("0")
    return s + " +0000 UTC"


# -- the events.k8s.io/v1 Event type: decoding as the apiserver's JSON decoder does --

_OBJREF_FIELDS = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
_META_ORDER = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
               "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
               "annotations", "ownerReferences", "finalizers", "managedFields")
# field -> (Go struct name for error messages, {json field: type}); types: "string", "int32", "int64",
# "micro" (MicroTime), "time" (Time), "map" (map[string]string), "list" (any list), or a nested struct name.
_TYPES = {
    "Event": {"kind": "string", "apiVersion": "string", "metadata": "ObjectMeta", "eventTime": "micro",
              "series": "EventSeries", "reportingController": "string", "reportingInstance": "string",
              "action": "string", "reason": "string", "regarding": "ObjectReference", "related": "ObjectReference",
              "note": "string", "type": "string", "deprecatedSource": "EventSource",
              "deprecatedFirstTimestamp": "time", "deprecatedLastTimestamp": "time", "deprecatedCount": "int32"},
    "ObjectMeta": {"name": "string", "generateName": "string", "namespace": "string", "selfLink": "string",
                   "uid": "string", "resourceVersion": "string", "generation": "int64", "creationTimestamp": "time",
                   "deletionTimestamp": "time", "deletionGracePeriodSeconds": "int64", "labels": "map",
                   "annotations": "map", "ownerReferences": "list", "finalizers": "list", "managedFields": "list"},
    "EventSeries": {"count": "int32", "lastObservedTime": "micro"},
    "ObjectReference": {f: "string" for f in _OBJREF_FIELDS},
    "EventSource": {"component": "string", "host": "string"},
}
_GO_TYPE = {"string": "string", "int32": "int32", "int64": "int64", "map": "map[string]string", "list": "[]"}


def _json_kind(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


class DecodeError(ValueError):
    pass


def _decode_struct(struct, obj, path, warnings):
    """Type-checks and normalizes one JSON object of Go struct `struct`; unknown fields are dropped
    with a warning (fieldValidation=Warn, the default). Raises DecodeError with Go's message."""
    fields = _TYPES[struct]
    out = {}
    for key, value in obj.items():
        where = (path + "." + key) if path else key
        typ = fields.get(key)
        if typ is None:
            warnings.append("unknown field %s" % _go_quote(where))
            continue
        if value is None:
            continue  # null: the zero value
        if typ in _TYPES:
            if not isinstance(value, dict):
                raise DecodeError("json: cannot unmarshal %s into Go struct field %s.%s of type v1.%s"
                                  % (_json_kind(value), struct, where, typ))
            out[key] = _decode_struct(typ, value, where, warnings)
        elif typ in ("micro", "time"):
            if not isinstance(value, str):
                raise DecodeError("json: cannot unmarshal %s into Go value of type string" % _json_kind(value))
            try:
                dt = _parse_go_time(value, typ == "micro")
            except ValueError as e:
                raise DecodeError(str(e)) from None
            out[key] = _format_micro(dt) if typ == "micro" else _format_seconds(dt)
        elif typ == "string":
            if not isinstance(value, str):
                raise DecodeError("json: cannot unmarshal %s into Go struct field %s.%s of type string"
                                  % (_json_kind(value), struct, where))
            if value:
                out[key] = value
        elif typ in ("int32", "int64"):
            bits = 31 if typ == "int32" else 63
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (isinstance(value, float) and not value.is_integer()) or not -2 ** bits <= value < 2 ** bits:
                shown = _json_kind(value) + (" %s" % json.dumps(value) if _json_kind(value) == "number" else "")
                raise DecodeError("json: cannot unmarshal %s into Go struct field %s.%s of type %s"
                                  % (shown, struct, where, typ))
            if int(value):
                out[key] = int(value)
        elif typ == "map":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                bad = value if not isinstance(value, dict) else next(v for v in value.values() if not isinstance(v, str))
                raise DecodeError("json: cannot unmarshal %s into Go struct field %s.%s of type %s"
                                  % (_json_kind(bad), struct, where, "map[string]string" if not isinstance(value, dict)
                                     else "string"))
            if value:
                out[key] = dict(value)
        elif typ == "list":
            if not isinstance(value, list):
                raise DecodeError("json: cannot unmarshal %s into Go struct field %s.%s of type []"
                                  % (_json_kind(value), struct, where))
            if value:
                out[key] = copy.deepcopy(value)
    return out


def encode_event(ev):
    """The stored Event as the API serves it: Go's field order and omitempty rules (regarding and
    deprecatedSource are structs, always present; the deprecated timestamps are null when unset)."""
    out = {"kind": "Event", "apiVersion": EVENTS_API_VERSION}
    meta = ev.get("metadata", {})
    out["metadata"] = {k: copy.deepcopy(meta[k]) for k in _META_ORDER if k in meta}
    out["eventTime"] = ev.get("eventTime")
    if "series" in ev:
        out["series"] = {"count": ev["series"].get("count", 0), "lastObservedTime": ev["series"].get("lastObservedTime")}
    for k in ("reportingController", "reportingInstance", "action", "reason"):
        if ev.get(k):
            out[k] = ev[k]
    out["regarding"] = {k: ev["regarding"][k] for k in _OBJREF_FIELDS if ev.get("regarding", {}).get(k)}
    if "related" in ev:
        out["related"] = {k: ev["related"][k] for k in _OBJREF_FIELDS if ev["related"].get(k)}
    for k in ("note", "type"):
        if ev.get(k):
            out[k] = ev[k]
    src = ev.get("deprecatedSource", {})
    out["deprecatedSource"] = {k: src[k] for k in ("component", "host") if src.get(k)}
    out["deprecatedFirstTimestamp"] = ev.get("deprecatedFirstTimestamp")
    out["deprecatedLastTimestamp"] = ev.get("deprecatedLastTimestamp")
    if ev.get("deprecatedCount"):
        out["deprecatedCount"] = ev["deprecatedCount"]
    return out


# -- validation (pkg/apis/core/validation/events.go, events.k8s.io/v1 request version) --

def _objref_go(ref):
    """%#v of a core.ObjectReference."""
    ref = ref or {}
    names = (("Kind", "kind"), ("Namespace", "namespace"), ("Name", "name"), ("UID", "uid"),
             ("APIVersion", "apiVersion"), ("ResourceVersion", "resourceVersion"), ("FieldPath", "fieldPath"))
    return GoValue("core.ObjectReference{" + ", ".join("%s:%s" % (g, _go_quote(ref.get(j, ""))) for g, j in names) + "}")


def _source_go(src):
    src = src or {}
    return GoValue("core.EventSource{Component:%s, Host:%s}" % (_go_quote(src.get("component", "")),
                                                                 _go_quote(src.get("host", ""))))


def _validate_object_meta(meta):
    errs = []
    gen = meta.get("generateName", "")
    if gen:
        masked = gen[:-1] + "a" if gen.endswith("-") else gen   # maskTrailingDash
        errs += [Invalid("metadata.generateName", gen, m) for m in is_dns1123_subdomain(masked)]
    name = meta.get("name", "")
    if not name:
        errs.append(Required("metadata.name", "name or generateName is required"))
    else:
        errs += [Invalid("metadata.name", name, m) for m in is_dns1123_subdomain(name)]
    ns = meta.get("namespace", "")
    if not ns:
        errs.append(Required("metadata.namespace"))
    else:
        errs += [Invalid("metadata.namespace", ns, m) for m in is_dns1123_label(ns)]
    errs += _validate_labels(meta.get("labels") or {})
    for key in sorted(meta.get("annotations") or {}):
        errs += [Invalid("metadata.annotations", key, m) for m in is_qualified_name(key.lower())]
    return errs


def _validate_labels(labels):
    errs = []
    for key in sorted(labels):
        errs += [Invalid("metadata.labels", key, m) for m in is_qualified_name(key)]
        errs += [Invalid("metadata.labels", labels[key], m) for m in is_valid_label_value(labels[key])]
    return errs


def _validate_series(ev):
    errs = []
    if "series" in ev:
        if ev["series"].get("count", 0) < 2:
            errs.append(Invalid("series.count", "", "should be at least 2"))
        if not ev["series"].get("lastObservedTime"):
            errs.append(Required("series.lastObservedTime"))
    return errs


def _legacy_validate(ev):
    errs = []
    ns = ev.get("metadata", {}).get("namespace", "")
    inv_ns = ev.get("regarding", {}).get("namespace", "")
    if not ev.get("eventTime"):
        if not inv_ns:
            if ns not in ("", "default"):
                errs.append(Invalid("involvedObject.namespace", inv_ns, "does not match event.namespace"))
        elif ns != inv_ns:
            errs.append(Invalid("involvedObject.namespace", inv_ns, "does not match event.namespace"))
    else:
        if not inv_ns and ns not in ("default", "kube-system"):
            errs.append(Invalid("involvedObject.namespace", inv_ns, "does not match event.namespace"))
        rc = ev.get("reportingController", "")
        if not rc:
            errs.append(Required("reportingController"))
        errs += [Invalid("reportingController", rc, m) for m in is_qualified_name(rc)]
        for field, key, limit in (("reportingInstance", "reportingInstance", REPORTING_INSTANCE_LIMIT),
                                  ("action", "action", ACTION_LIMIT), ("reason", "reason", REASON_LIMIT)):
            value = ev.get(key, "")
            if not value:
                errs.append(Required(field))
            if len(value.encode()) > limit:
                errs.append(Invalid(field, "", "can have at most %d characters" % limit))
        if len(ev.get("note", "").encode()) > NOTE_LIMIT:
            errs.append(Invalid("message", "", "can have at most %d characters" % NOTE_LIMIT))
    errs += [Invalid("namespace", ns, m) for m in is_dns1123_subdomain(ns)]
    return errs


def validate_event_create(ev):
    """ValidateEventCreate(event, events.k8s.io/v1): a list of FieldErrors."""
    errs = _legacy_validate(ev)
    errs += _validate_object_meta(ev.get("metadata", {}))
    errs += _validate_series(ev)
    if not ev.get("eventTime"):
        errs.append(Required("eventTime"))
    if ev.get("type", "") not in ("Normal", "Warning"):
        errs.append(Invalid("type", "", "has invalid value: %s" % ev.get("type", "")))
    if ev.get("deprecatedFirstTimestamp"):
        errs.append(Invalid("firstTimestamp", "", "needs to be unset"))
    if ev.get("deprecatedLastTimestamp"):
        errs.append(Invalid("lastTimestamp", "", "needs to be unset"))
    if ev.get("deprecatedCount"):
        errs.append(Invalid("count", "", "needs to be unset"))
    src = ev.get("deprecatedSource", {})
    if src.get("component") or src.get("host"):
        errs.append(Invalid("source", "", "needs to be unset"))
    return errs


# The fields ValidateEventUpdate keeps immutable, in its order (reason is checked twice there, so an
# update of reason gets two causes and one message): (core path, v1 key, renders the new value).
IMMUTABLE_EVENT_FIELDS = (
    ("involvedObject", "regarding", lambda v: _objref_go(v)),
    ("reason", "reason", None),
    ("message", "note", None),
    ("source", "deprecatedSource", lambda v: _source_go(v)),
    ("firstTimestamp", "deprecatedFirstTimestamp", lambda v: GoValue(_go_time_string(v, False))),
    ("lastTimestamp", "deprecatedLastTimestamp", lambda v: GoValue(_go_time_string(v, False))),
    ("count", "deprecatedCount", lambda v: v or 0),
    ("reason", "reason", None),
    ("type", "type", None),
    ("eventTime", "eventTime", lambda v: GoValue(_go_time_string(v, True))),
    ("action", "action", None),
    ("related", "related", lambda v: None if v is None else _objref_go(v)),
    ("reportingController", "reportingController", None),
    ("reportingInstance", "reportingInstance", None),
)


def validate_event_update(new, old):
    """ValidateEventUpdate(new, old, events.k8s.io/v1): a list of FieldErrors."""
    errs = _legacy_validate(new)
    nm, om = new.get("metadata", {}), old.get("metadata", {})
    for key in ("name", "namespace", "uid"):
        if nm.get(key, "") != om.get(key, ""):
            errs.append(Invalid("metadata." + key, nm.get(key, ""), "field is immutable"))
    if nm.get("creationTimestamp") != om.get("creationTimestamp"):
        errs.append(Invalid("metadata.creationTimestamp", GoValue(_go_time_string(nm.get("creationTimestamp"), False)),
                            "field is immutable"))
    errs += _validate_labels(nm.get("labels") or {})
    if new.get("series") != old.get("series"):
        errs += _validate_series(new)
    for field, key, render in IMMUTABLE_EVENT_FIELDS:
        empty = {} if key in ("regarding", "deprecatedSource") else None
        nv, ov = new.get(key, empty), old.get(key, empty)
        if key in ("regarding", "related", "deprecatedSource") and nv is not None and ov is not None:
            same = all(nv.get(f, "") == ov.get(f, "") for f in set(nv) | set(ov))
        else:
            same = (nv or None) == (ov or None)
        if not same:
            value = render(nv) if render else (nv or "")
            errs.append(Invalid(field, value, "field is immutable"))
    return errs


# -- patches --

class PatchError(Exception):
    def __init__(self, status):
        super().__init__(status.get("message"))
        self.status = status


def merge_patch(target, patch, strategic=False):
    """RFC 7386 JSON merge patch; strategic=True also honours {"$patch": "delete"|"replace"} in maps
    (Event has no list with a merge strategy, so the rest is a merge patch)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if strategic and patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue
        if value is None or (strategic and isinstance(value, dict) and value.get("$patch") == "delete"):
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value, strategic)
    return out


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError("JSON pointer must be empty or start with a \"/")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_equal(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    return type(a) in (int, float) and type(b) in (int, float) and a == b or \
        (type(a) is type(b) and a == b)


def json_patch(doc, ops):
    """RFC 6902 (add, remove, replace, move, copy, test). Raises ValueError with
    evanphx/json-patch's wording (what the apiserver puts in the 422)."""
    doc = copy.deepcopy(doc)

    def parent(path, op):
        keys = _pointer(path)
        if not keys:
            return None, None
        node = doc
        for k in keys[:-1]:
            if isinstance(node, dict) and k in node:
                node = node[k]
            elif isinstance(node, list) and k.isdigit() and int(k) < len(node):
                node = node[int(k)]
            else:
                raise ValueError("%s operation does not apply: doc is missing path: \"%s\": missing value" % (op, path))
        return node, keys[-1]

    def get(path, op):
        if path == "":
            return doc
        node, key = parent(path, op)
        if isinstance(node, dict) and key in node:
            return node[key]
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            return node[int(key)]
        raise ValueError("%s operation does not apply: doc is missing key: %s: missing value" % (op, path))

    def remove(path, op):
        node, key = parent(path, op)
        if isinstance(node, dict) and key in node:
            return node.pop(key)
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            return node.pop(int(key))
        raise ValueError("%s operation does not apply: doc is missing key: %s: missing value" % (op, path))

    def add(path, value, op):
        nonlocal doc
        if path == "":
            doc = value
            return
        node, key = parent(path, op)
        if isinstance(node, dict):
            node[key] = value
        elif isinstance(node, list) and (key == "-" or (key.isdigit() and int(key) <= len(node))):
            node.insert(len(node) if key == "-" else int(key), value)
        else:
            raise ValueError("%s operation does not apply: doc is missing path: \"%s\": missing value" % (op, path))

    for op in ops:
        if not isinstance(op, dict):
            raise ValueError("invalid operation")
        kind = op.get("op")
        path = op.get("path")
        if not isinstance(path, str):
            raise ValueError("operation missing path")
        if kind == "add":
            add(path, copy.deepcopy(op.get("value")), kind)
        elif kind == "remove":
            remove(path, kind)
        elif kind == "replace":
            get(path, kind)
            if path == "":
                doc = copy.deepcopy(op.get("value"))
            else:
                node, key = parent(path, kind)
                node[int(key) if isinstance(node, list) else key] = copy.deepcopy(op.get("value"))
        elif kind == "move":
            value = remove(op.get("from", ""), kind)
            add(path, value, kind)
        elif kind == "copy":
            add(path, copy.deepcopy(get(op.get("from", ""), kind)), kind)
        elif kind == "test":
            try:
                current = get(path, kind)
            except ValueError:
                raise ValueError("testing value %s failed: test failed" % path) from None
            if not _json_equal(current, op.get("value")):
                raise ValueError("testing value %s failed: test failed" % path)
        else:
            raise ValueError("Unexpected kind: %s" % kind)
    return doc


def _generate_name(base):
    """SimpleNameGenerator: the prefix (at most 58 bytes) and 5 random characters."""
    return base[:58] + _suffix(5)


def load_rbac_rules(path):
    """RBAC rules from a file: JSON or YAML, a list of rules, a ClusterRole (its rules) or a YAML
    stream holding one (deploy/base/clusterrole.yaml as it is)."""
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
        docs = [data]
    except ValueError:
        import yaml  # PyYAML, only for YAML files
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for d in docs:
        if isinstance(d, list):
            return d
        if isinstance(d, dict) and d.get("kind") in ("ClusterRole", "Role"):
            return d.get("rules") or []
        if isinstance(d, dict) and "rules" in d:
            return d["rules"]
    raise ValueError("%s: no RBAC rules (a list of rules or a ClusterRole)" % path)


def rbac_allows(rules, group, resource, verb, name=None):
    """The RBAC authorizer's rule match (apiGroups, resources, verbs, resourceNames; "*" wildcards)."""
    for rule in rules or []:
        groups, resources, verbs = rule.get("apiGroups") or [], rule.get("resources") or [], rule.get("verbs") or []
        if not ("*" in groups or group in groups):
            continue
        if not ("*" in resources or resource in resources):
            continue
        if not ("*" in verbs or verb in verbs):
            continue
        names = rule.get("resourceNames") or []
        if names and (not name or name not in names):
            continue
        return True
    return False


def _events_discovery(versioned):
    if not versioned:
        gv = {"groupVersion": EVENTS_API_VERSION, "version": "v1"}
        return {"kind": "APIGroup", "apiVersion": "v1", "name": EVENTS_GROUP, "versions": [gv], "preferredVersion": gv}
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": EVENTS_API_VERSION, "resources": [{
        "name": "events", "singularName": "event", "namespaced": True, "kind": "Event",
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        "shortNames": ["ev"]}]}


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
                 verbose=False, tls_cert=None, tls_key=None, rbac_rules=None, rbac_user=DEFAULT_RBAC_USER):
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
        # events.k8s.io/v1 Events: their own resourceVersion counter, so that writing Events
        # leaves the pods' and services' resourceVersions exactly as before.
        self._events = {}         # "ns/name" -> stored Event (encode_event form)
        self._event_rv = start_rv
        self._event_requests = []  # [{"method", "path", "query", "content_type", "body", "status"}]
        # RBAC: None = everything allowed; else a ClusterRole's rules, enforced for every request.
        self.rbac_rules = copy.deepcopy(rbac_rules)
        self.rbac_user = rbac_user
        self._rbac_usage = {}     # (apiGroup, resource, verb) -> {"count", "forbidden"}
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
    def fail_next(self, status, count=1, resource=None, verb=None, message=None, seconds=None,
                  retry_after=None):
        """The next `count` matching requests fail. status: an HTTP code (answered with a Status
        body), "drop" (200 and half a body, then the connection closes), "close" (the connection
        is reset without an answer: libcurl silently retries that once on a reused connection),
        "garbage" (200 with a non-JSON body), or "hang" (no answer for `seconds`, default until
        stop() or release_hangs()). resource: "pods" | "services" | "events" | None (any);
        verb: "list" | "watch" | "get" | "create" | "patch" | None (any). retry_after: the
        Retry-After seconds of a 429/503 (default 1), also put in details.retryAfterSeconds.
        Events get the Status the apiserver would send for the code (403 in RBAC's words,
        409 AlreadyExists on create / Conflict on patch, 404 NotFound, ...)."""
        with self._lock:
            self._failures.append({"status": status, "count": int(count), "resource": resource,
                                   "verb": verb, "message": message, "seconds": seconds,
                                   "retry_after": retry_after})

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
            self._events.clear()
            self._event_requests.clear()
            self._rbac_usage.clear()
        self.end_watches()

    # -- events.k8s.io/v1 Events --
    def events(self, namespace=None):
        """The stored Events (as the API serves them), sorted by namespace/name."""
        with self._lock:
            return [copy.deepcopy(e) for k, e in sorted(self._events.items())
                    if namespace is None or e["metadata"].get("namespace") == namespace]

    def event(self, namespace, name):
        with self._lock:
            e = self._events.get("%s/%s" % (namespace, name))
            return copy.deepcopy(e) if e else None

    def add_event(self, obj):
        """Stores an Event as given (no validation; metadata completed), e.g. one an agent of a
        previous run created. Returns the stored object."""
        warnings = []
        ev = _decode_struct("Event", obj, "", warnings)
        with self._lock:
            meta = ev.setdefault("metadata", {})
            meta.setdefault("namespace", "default")
            if not meta.get("name"):
                meta["name"] = _generate_name(meta.get("generateName") or "event-")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            self._event_rv += 1
            meta["resourceVersion"] = str(self._event_rv)
            stored = encode_event(ev)
            self._events["%s/%s" % (meta["namespace"], meta["name"])] = stored
            return copy.deepcopy(stored)

    def event_requests(self):
        """The Event writes received (POST/PATCH under /apis/events.k8s.io), refused ones too:
        [{"method", "path", "query", "content_type", "body" (as received), "status"}]; status is
        the HTTP code answered, or the fail_next mode ("hang", "close", ...)."""
        with self._lock:
            return copy.deepcopy(self._event_requests)

    def clear_events(self):
        """Removes every stored Event and the log of Event writes."""
        with self._lock:
            self._events.clear()
            self._event_requests.clear()

    def _store_event(self, ev):
        """With the lock held: a new resourceVersion, stored; returns the served object."""
        self._event_rv += 1
        ev["metadata"]["resourceVersion"] = str(self._event_rv)
        stored = encode_event(ev)
        self._events["%s/%s" % (ev["metadata"]["namespace"], ev["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def _create_event(self, namespace, body, ctype):
        """POST /apis/events.k8s.io/v1/namespaces/NS/events: (code, object, warnings)."""
        if ctype not in ("", "application/json", "application/yaml"):
            return 415, unsupported_media_type_status(CREATE_CONTENT_TYPES), None
        try:
            if ctype == "application/yaml":
                import yaml  # PyYAML, only for YAML bodies
                obj = yaml.safe_load(body.decode())
            else:
                obj = json.loads(body)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's
            summary = "<empty>" if not body else \
                (body[:30].decode("utf-8", "replace") + (" ..." if len(body) > 30 else "")) if body[:1] == b"{" \
                else (body[:30].hex() + (" ..." if len(body) > 30 else ""))
            return 400, bad_request_status("the object provided is unrecognized (must be of type Event): "
                                           "couldn't get version/kind; json parse error: %s (%s)" % (e, summary)), None
        api, kind = obj.get("apiVersion") or "", obj.get("kind") or ""
        if kind and kind != "Event":
            version = api.split("/")[-1] if api else "v1"
            return 400, bad_request_status(
                "%s in version %s cannot be handled as a Event: no kind %s is registered for version %s in scheme "
                "\"pkg/api/legacyscheme/scheme.go:30\"" % (kind, _go_quote(version), _go_quote(kind),
                                                          _go_quote(api or EVENTS_API_VERSION))), None
        if api and api != EVENTS_API_VERSION:
            if api in ("v1", "events.k8s.io/v1beta1"):
                return 400, bad_request_status("the API version in the data (%s) does not match the expected API "
                                               "version (%s)" % (api, EVENTS_API_VERSION)), None
            return 400, bad_request_status(
                "Event in version %s cannot be handled as a Event: no kind \"Event\" is registered for version %s "
                "in scheme \"pkg/api/legacyscheme/scheme.go:30\"" % (_go_quote(api.split("/")[-1]), _go_quote(api))), None
        warnings = []
        try:
            ev = _decode_struct("Event", obj, "", warnings)
        except DecodeError as e:
            return 400, bad_request_status('Event in version "v1" cannot be handled as a Event: %s' % e), None
        ev.pop("kind", None)
        ev.pop("apiVersion", None)
        meta = ev.setdefault("metadata", {})
        if meta.get("namespace") and meta["namespace"] != namespace:
            return 400, bad_request_status("the namespace of the provided object does not match the namespace "
                                           "sent on the request"), None
        meta["namespace"] = namespace
        # rest.BeforeCreate: system fields set, the name generated before validation.
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if meta.get("generateName") and not meta.get("name"):
            meta["name"] = _generate_name(meta["generateName"])
        errs = validate_event_create(ev)
        if errs:
            return 422, invalid_status(meta.get("name", ""), errs), warnings
        if meta.get("resourceVersion"):
            msg = "resourceVersion should not be set on objects to be created"
            return 500, status_object(500, "InternalError", "Internal error occurred: " + msg,
                                      {"causes": [{"message": msg}]}), warnings
        with self._lock:
            if "%s/%s" % (namespace, meta["name"]) in self._events:
                return 409, already_exists_status(meta["name"]), warnings
            return 201, self._store_event(ev), warnings

    def _patch_event(self, namespace, name, body, ctype):
        """PATCH /apis/events.k8s.io/v1/namespaces/NS/events/NAME: (code, object, warnings)."""
        if ctype not in PATCH_CONTENT_TYPES[:3]:
            # apply-patch+yaml is accepted by a real apiserver; this fake does not do server-side apply.
            return 415, unsupported_media_type_status(PATCH_CONTENT_TYPES), None
        try:
            patch = json.loads(body)
        except ValueError as e:
            return 400, bad_request_status("error decoding patch: %s" % e), None
        if ctype == "application/json-patch+json" and not isinstance(patch, list):
            return 400, bad_request_status("json: cannot unmarshal %s into Go value of type jsonpatch.Patch"
                                           % _json_kind(patch)), None
        if ctype != "application/json-patch+json" and not isinstance(patch, dict):
            return 400, bad_request_status("json: cannot unmarshal %s into Go value of type map[string]interface {}"
                                           % _json_kind(patch)), None
        with self._lock:
            current = self._events.get("%s/%s" % (namespace, name))
            if current is None:
                return 404, not_found_status(name), None
            try:
                if ctype == "application/json-patch+json":
                    patched = json_patch(current, patch)
                else:
                    patched = merge_patch(current, patch, strategic=ctype.startswith("application/strategic"))
            except ValueError as e:
                return 422, status_object(422, "Invalid", "the server rejected our request due to an error in our "
                                          "request", {"causes": [{"reason": "UnexpectedServerResponse",
                                                                  "message": str(e)}]}), None
            warnings = []
            try:
                if not isinstance(patched, dict):
                    raise DecodeError("json: cannot unmarshal %s into Go value of type v1.Event" % _json_kind(patched))
                new = _decode_struct("Event", patched, "", warnings)
            except DecodeError as e:
                return 422, invalid_status("", [Invalid("patch", _compact(patched), str(e))], kind=""), None
            old = _decode_struct("Event", current, "", [])
            for ev in (new, old):
                ev.pop("kind", None)
                ev.pop("apiVersion", None)
            meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
            # handlers/rest.go checkName
            if not meta.get("name"):
                return 400, bad_request_status("the name of the object (%s based on URL) was undeterminable: name "
                                               "must be provided" % name), None
            if meta["name"] != name:
                return 400, bad_request_status("the name of the object (%s) does not match the name on the URL (%s)"
                                               % (meta["name"], name)), None
            if meta.get("namespace") and meta["namespace"] != namespace:
                return 400, bad_request_status("the namespace of the object (%s) does not match the namespace on the "
                                               "request (%s)" % (meta["namespace"], namespace)), None
            meta["namespace"] = namespace
            if meta.get("resourceVersion") and meta["resourceVersion"] != old_meta.get("resourceVersion"):
                return 409, conflict_status(name), None
            # rest.BeforeUpdate: uid defaults to the old one, creationTimestamp changes are ignored.
            meta["resourceVersion"] = old_meta.get("resourceVersion")
            meta.setdefault("uid", old_meta.get("uid"))
            if old_meta.get("creationTimestamp"):
                meta["creationTimestamp"] = old_meta["creationTimestamp"]
            errs = validate_event_update(new, old)
            if errs:
                return 422, invalid_status(name, errs), warnings
            if new == old:  # nothing changed: no write, same resourceVersion
                return 200, copy.deepcopy(current), warnings
            return 200, self._store_event(new), warnings

    # -- RBAC --
    def set_rbac(self, rules, user=None):
        """Enforce these RBAC rules (a ClusterRole's `rules`); None: allow everything."""
        with self._lock:
            self.rbac_rules = copy.deepcopy(rules)
            if user:
                self.rbac_user = user

    def rbac_usage(self):
        """Every (apiGroup, resource, verb) requested since the start (or reset), allowed or not:
        [{"apiGroup", "resource", "verb", "count", "forbidden"}], sorted."""
        with self._lock:
            return [{"apiGroup": g, "resource": r, "verb": v, "count": u["count"], "forbidden": u["forbidden"]}
                    for (g, r, v), u in sorted(self._rbac_usage.items())]

    def _record_use(self, group, resource, verb):
        """Every authenticated resource request, before failures are injected or RBAC is asked."""
        with self._lock:
            use = self._rbac_usage.setdefault((group, resource, verb), {"count": 0, "forbidden": 0})
            use["count"] += 1

    def _authorize(self, group, resource, verb, namespace=None, name=None):
        """None if RBAC allows the request, else the 403 Status to answer."""
        with self._lock:
            if self.rbac_rules is None or rbac_allows(self.rbac_rules, group, resource, verb, name):
                return None
            self._rbac_usage.setdefault((group, resource, verb), {"count": 0, "forbidden": 0})["forbidden"] += 1
            user = self.rbac_user
        return forbidden_status(user, verb, group, resource, namespace, name)

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
                                  cmd.get("message"), cmd.get("seconds"), cmd.get("retry_after"))
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
        if op == "events":
            return self.events(cmd.get("namespace"))
        if op == "add_event":
            return self.add_event(cmd["object"])
        if op == "event_requests":
            return self.event_requests()
        if op == "clear_events":
            return self.clear_events()
        if op == "set_rbac":
            return self.set_rbac(cmd.get("rules"), cmd.get("user"))
        if op == "rbac_usage":
            return self.rbac_usage()
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
  seed (a small demo cluster) | reset (also Events, their request log and the RBAC usage)
  events {"namespace"?} -> [Event, ...] as served (sorted by namespace/name)
  add_event {"object": {...}} -> stored Event (not validated: an Event left by an earlier run)
  event_requests -> [{"method", "path", "query", "content_type", "body" (as received), "status"}]
    (every POST/PATCH to /apis/events.k8s.io, refused ones included) | clear_events (both)
  set_rbac {"rules": [{"apiGroups", "resources", "verbs", "resourceNames"?}, ...] | null, "user"?}
    enforce a ClusterRole's rules (null: allow all); refusals are the apiserver's 403
  rbac_usage -> [{"apiGroup", "resource", "verb", "count", "forbidden"}]: every request since start/reset
Events (events.k8s.io/v1): POST /apis/events.k8s.io/v1/namespaces/NS/events -> 201 (409 AlreadyExists,
  400 BadRequest, 415, 422 Invalid with the apiserver's events.k8s.io/v1 validation); PATCH .../events/NAME
  (json-patch, merge-patch, strategic-merge-patch) -> 200 (404, 409 Conflict, 415, 422: immutable
  fields); GET .../events/NAME, GET .../namespaces/NS/events and /apis/events.k8s.io/v1/events (EventList).
  fail_next takes "resource": "events", "verb": "create"|"patch"|"get"|"list", "retry_after": SECONDS.
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
    def _send_json(self, code, obj, headers=None, warnings=None):
        self._note_event_status(code)
        body = (_compact(obj) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        for w in warnings or ():   # as the apiserver sends them: 299 - "TEXT"
            self.send_header("Warning", "299 - " + _go_quote(w))
        self.end_headers()
        self.wfile.write(body)

    def _note_event_status(self, status):
        """The answer to an Event write, in its event_requests record."""
        record = getattr(self, "_event_record", None)
        if record is not None and record["status"] is None:
            record["status"] = status

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
        if path.startswith("/apis/"):
            self._events_request("POST")
            return
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
        if path.startswith("/apis/events.k8s.io"):
            self._events_request("GET")
            return
        if resource is None:
            self._log(verb, None, query, 404)
            self._send_json(404, default_status(404, "", "the server could not find the requested resource"))
            return

        fake._record_use("", resource, verb)
        failure = fake._take_failure(resource, verb)
        if failure is not None:
            self._answer_failure(failure, resource, verb, query)
            return

        forbidden = fake._authorize("", resource, verb, namespace)
        if forbidden is not None:
            self._log(verb, resource, query, 403)
            self._send_json(403, forbidden)
            return

        if verb == "watch":
            self._watch(resource, namespace, query)
        else:
            self._list(resource, namespace, query)

    # -- events.k8s.io/v1 --
    def do_PATCH(self):
        self._events_request("PATCH")

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _events_request(self, method):
        fake = self.server.fake
        parts = urlsplit(self.path)
        body = self._read_body() if method in ("POST", "PATCH") else b""
        self._event_record = None
        if method in ("POST", "PATCH"):
            record = {"method": method, "path": parts.path, "query": parts.query,
                      "content_type": self.headers.get("Content-Type") or "",
                      "body": body.decode("utf-8", "replace"), "status": None}
            with fake._lock:
                fake._event_requests.append(record)
            self._event_record = record
        try:
            self._events_dispatch(method, parts, body)
        finally:
            self._event_record = None

    def _events_dispatch(self, method, parts, body):
        fake = self.server.fake
        path = parts.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segs = path.strip("/").split("/")
        namespace = name = None
        routed = False
        if segs[:3] == ["apis", EVENTS_GROUP, "v1"]:
            rest = segs[3:]
            if rest == [EVENTS_RESOURCE]:
                routed = True
            elif len(rest) in (3, 4) and rest[0] == "namespaces" and rest[2] == EVENTS_RESOURCE and rest[1]:
                namespace, name, routed = rest[1], (rest[3] if len(rest) == 4 else None), True
        if fake.token is not None and self.headers.get("Authorization") != "Bearer " + fake.token:
            self._log(method.lower(), EVENTS_RESOURCE if routed else None, query, 401)
            self._send_json(401, default_status(401))
            return
        if method == "GET" and segs in (["apis", EVENTS_GROUP], ["apis", EVENTS_GROUP, "v1"]):
            self._send_json(200, _events_discovery(len(segs) == 3))
            return
        if not routed:
            self._log(method.lower(), None, query, 404)
            self._send_json(404, default_status(404, "", "the server could not find the requested resource"))
            return
        if method == "GET":
            verb = "watch" if query.get("watch") in ("1", "true", "True") else ("get" if name else "list")
        else:
            verb = {"POST": "create", "PATCH": "patch"}[method]
        if (method == "POST" and (namespace is None or name is not None)) or (method == "PATCH" and name is None):
            self._log(verb, EVENTS_RESOURCE, query, 405)
            self._send_json(405, status_object(405, "MethodNotAllowed",
                                               "the server does not allow this method on the requested resource"))
            return
        if verb == "watch":
            self._log(verb, EVENTS_RESOURCE, query, 405)
            self._send_json(405, status_object(405, "MethodNotAllowed",
                                               "this fake API server does not serve watches of events"))
            return
        fake._record_use(EVENTS_GROUP, EVENTS_RESOURCE, verb)
        failure = fake._take_failure(EVENTS_RESOURCE, verb)
        if failure is not None:
            shown = name
            if verb == "create":
                try:
                    meta = json.loads(body).get("metadata") or {}
                    shown = meta.get("name") or meta.get("generateName") or ""
                except (ValueError, AttributeError):
                    shown = ""
            self._answer_failure(failure, EVENTS_RESOURCE, verb, query, namespace, shown)
            return
        forbidden = fake._authorize(EVENTS_GROUP, EVENTS_RESOURCE, verb, namespace,
                                    name if verb in ("get", "patch") else None)
        if forbidden is not None:
            self._log(verb, EVENTS_RESOURCE, query, 403)
            self._send_json(403, forbidden)
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if verb == "create":
            code, obj, warnings = fake._create_event(namespace, body, ctype)
        elif verb == "patch":
            code, obj, warnings = fake._patch_event(namespace, name, body, ctype)
        elif verb == "get":
            obj = fake.event(namespace, name)
            code, obj, warnings = (200, obj, None) if obj else (404, not_found_status(name), None)
        else:
            with fake._lock:
                items = []
                for e in fake.events(namespace):
                    e.pop("kind", None)
                    e.pop("apiVersion", None)
                    items.append(e)
                obj = {"kind": "EventList", "apiVersion": EVENTS_API_VERSION,
                       "metadata": {"resourceVersion": str(fake._event_rv)}, "items": items}
            code, warnings = 200, None
        self._log(verb, EVENTS_RESOURCE, query, code)
        self._send_json(code, obj, warnings=warnings)

    def _answer_failure(self, failure, resource, verb, query, namespace=None, name=None):
        """Answers an injected failure (fail_next). Pods and services get the generic Status of
        the code; Events the Status the apiserver sends for it."""
        fake = self.server.fake
        st = failure["status"]
        self._log(verb, resource, query, st)
        if resource == EVENTS_RESOURCE:
            self._note_event_status(st)
        if st == "drop":
            if resource == EVENTS_RESOURCE:
                list_obj = {"kind": "EventList", "apiVersion": EVENTS_API_VERSION,
                            "metadata": {"resourceVersion": str(fake._event_rv)}, "items": []}
            else:
                list_obj = {"kind": LIST_KIND[resource], "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(fake._rv)}, "items": []}
            body = (_compact(list_obj) + "\n").encode()
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
            retry_after = failure.get("retry_after")
            headers = {"Retry-After": str(retry_after if retry_after is not None else 1)} if code in (429, 503) else None
            if resource == EVENTS_RESOURCE:
                status = self._event_failure_status(code, verb, namespace, name, failure["message"])
            else:
                status = default_status(code, resource, failure["message"])
            if retry_after is not None and code in (429, 503):
                status.setdefault("details", {})["retryAfterSeconds"] = int(retry_after)
            self._send_json(code, status, headers)

    def _event_failure_status(self, code, verb, namespace, name, message):
        fake = self.server.fake
        if code == 403:
            st = forbidden_status(fake.rbac_user, verb, EVENTS_GROUP, EVENTS_RESOURCE, namespace, name)
        elif code == 404 and name:
            st = not_found_status(name)
        elif code == 409 and verb == "patch":
            st = conflict_status(name or "")
        elif code == 409:
            st = already_exists_status(name or "")
        elif code == 422:
            st = invalid_status(name or "", [FieldError("FieldValueInvalid", "metadata.name", name or "",
                                                        "injected by fail_next")])
        else:
            return default_status(code, EVENTS_RESOURCE, message)
        if message:
            st["message"] = message
        return st

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
    ap = argparse.ArgumentParser(description="Fake Kubernetes API server: pods and services (list, watch), "
                                             "events.k8s.io/v1 Events (create, patch, get, list) with the "
                                             "apiserver's validation, RBAC enforcement (--rbac).",
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
    ap.add_argument("--rbac", metavar="FILE",
                    help="enforce these RBAC rules (JSON or YAML: a list of rules or a ClusterRole, e.g. "
                         "deploy/base/clusterrole.yaml); refused requests get the apiserver's 403")
    ap.add_argument("--rbac-user", default=DEFAULT_RBAC_USER, help="the user named in 403s (default %(default)s)")
    args = ap.parse_args(argv)

    kube = FakeKube(token=None if args.no_auth else args.token, host=args.host, port=args.port,
                    gone_mode=args.gone_mode, verbose=args.verbose, tls_cert=args.tls_cert,
                    tls_key=args.tls_key, rbac_rules=load_rbac_rules(args.rbac) if args.rbac else None,
                    rbac_user=args.rbac_user)
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
