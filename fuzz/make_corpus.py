#!/usr/bin/env python3
"""Writes the text seeds of the fuzz corpus (pod maps, Kubernetes watch lines and list pages,
/incidents stream bodies). Kubernetes objects come from tests/lib/fake_kube.py, the shapes the
kernel tests' fake API server sends. Binary seeds: fuzz/gen_corpus.cpp.

    python3 fuzz/make_corpus.py fuzz/corpus
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import fake_kube  # noqa: E402


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


POD_MAPS = {
    "readme.yaml": """endpoints:
  - ip: 10.244.0.10                  # or cidr: 10.244.1.0/24
    namespace: ingress-nginx
    pod: ingress-nginx-controller-5d88c
    workload: ingress-nginx-controller
  - cidr: 192.168.10.0/24
    name: office-vpn                 # a non-pod endpoint: becomes the workload label, pod/namespace empty
""",
    "dual_stack.yaml": """endpoints:
  - ip: fd00::10
    namespace: shop
    pod: api-7d4b9c6f5d-abcde
  - cidr: fd00:10::/64
    name: v6-range
  - cidr: ::ffff:10.0.0.0/120
    name: mapped
  - cidr: 10.0.0.0/8
    name: cluster
  - cidr: 10.244.1.0/24
    namespace: default
    pod: web-0
    workload: web
  - ip: 0.0.0.0
    name: any
""",
    "flow.yaml": "endpoints: [{ip: 10.1.2.3, name: a}, {cidr: 10.1.0.0/16, namespace: n, pod: p}]\n",
    "empty.yaml": "endpoints: []\n",
    "bare.yaml": "endpoints:\n",
    "bad_host_bits.yaml": "endpoints:\n  - cidr: 10.244.1.5/24\n    name: typo\n",
    "bad_duplicate.yaml": "endpoints:\n  - ip: 10.0.0.1\n    name: a\n  - cidr: 10.0.0.1/32\n    name: b\n",
    "bad_keys.yaml": "endpoints:\n  - ip: 10.0.0.1\n    ip: 10.0.0.2\n    name: a\n    color: red\n",
    "bad_anchor.yaml": "x: &a {ip: 10.0.0.1, name: a}\nendpoints:\n  - *a\n  - <<: *a\n    name: b\n---\nendpoints: []\n",
}


def kube_seeds(out):
    pods = [
        fake_kube.deployment_pod(),
        fake_kube.statefulset_pod(),
        fake_kube.daemonset_pod(),
        fake_kube.cronjob_pod(),
        fake_kube.job_pod(),
        fake_kube.bare_pod(),
        fake_kube.host_network_pod(),
        fake_kube.pending_pod(),
        fake_kube.make_pod("dual", ips=["10.244.1.20", "fd00::20"]),
        fake_kube.make_pod("done", phase="Succeeded", ip="10.244.1.5"),
    ]
    services = [fake_kube.service(), fake_kube.headless_service(),
                fake_kube.service("dual", cluster_ips=("10.96.0.20", "fd00:96::20"))]
    for i, p in enumerate(pods):
        p["metadata"]["resourceVersion"] = str(1000 + i)
    for i, s in enumerate(services):
        s["metadata"]["resourceVersion"] = str(2000 + i)

    def items(objs):  # list items come without kind/apiVersion
        return [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in objs]

    write(os.path.join(out, "list_pods.json"), compact({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "1010", "continue": "eyJ2IjoxfQ", "remainingItemCount": 3},
        "items": items(pods[:6])}))
    write(os.path.join(out, "list_pods_last.json"), compact({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1011"},
        "items": items(pods[6:])}))
    write(os.path.join(out, "list_services.json"), compact({
        "kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "2003"},
        "items": items(services)}))

    # A watch stream: adds, an update, deletes, a bookmark, and a 410 Gone.
    lines = []
    for p in pods[:4]:
        lines.append(compact({"type": "ADDED", "object": p}))
    moved = json.loads(json.dumps(pods[1]))
    moved["status"]["podIP"] = "10.244.1.5"
    moved["status"]["podIPs"] = [{"ip": "10.244.1.5"}]
    lines.append(compact({"type": "MODIFIED", "object": moved}))
    lines.append(compact({"type": "DELETED", "object": pods[0]}))
    lines.append(compact({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                         "metadata": {"resourceVersion": "1020",
                                                                      "creationTimestamp": None}}}))
    write(os.path.join(out, "watch_pods.ndjson"), "\n".join(lines) + "\n")
    write(os.path.join(out, "watch_services.ndjson"), "\r\n".join(
        [compact({"type": "ADDED", "object": s}) for s in services] +
        [compact({"type": "DELETED", "object": services[0]})]) + "\r\n")
    write(os.path.join(out, "watch_gone.ndjson"), compact({
        "type": "ERROR", "object": fake_kube.status_object(410, "Expired",
                                                           "too old resource version: 1 (1020)")}) + "\n")
    write(os.path.join(out, "status_403.json"), compact(fake_kube.default_status(403)))


STREAM_INCIDENT = {
    "cause": "idle_close_race",
    "client": {"ip": "10.244.1.2", "port": 41862, "namespace": "ingress-nginx",
               "pod": "ingress-nginx-controller-5d88c", "workload": "ingress-nginx-controller"},
    "comm": "nginx", "idle_before_write_ms": 2004.0, "netns": 4026532316, "observer": "client",
    "pid": 5120, "requests": 3, "reset_reason": None,
    "server": {"ip": "10.244.2.2", "port": 8080, "namespace": "shop", "pod": "api-7d4b9c6f5d-abcde",
               "workload": "api"},
    "state": "CLOSE_WAIT", "ts": "2026-11-25T07:58:36.859Z", "write_to_reset_ms": 0.4,
}


def stream_seeds(out):
    other = dict(STREAM_INCIDENT, cause="write_after_fin", observer="server", idle_before_write_ms=None,
                 write_to_reset_ms=899.0, reset_reason="TCP_ABORT_ON_DATA", state="CLOSE",
                 ts="2026-11-25T07:58:37.000+01:00",
                 client={"ip": "fd00::2", "port": 41863, "namespace": "", "pod": "", "workload": "world"},
                 server={"ip": "fd00::3", "port": 80, "namespace": None, "pod": None, "workload": "office-vpn"})
    body = "\n".join([compact(STREAM_INCIDENT), "", compact({"dropped": 7}), "  ", compact(other)]) + "\n"
    write(os.path.join(out, "stream.ndjson"), body)
    write(os.path.join(out, "one_line.json"), compact(STREAM_INCIDENT) + "\r\n")
    # The plain `trace -o json` object (no pod fields), as in the README.
    plain = dict(STREAM_INCIDENT, client={"ip": "10.244.1.2", "port": 41862},
                 server={"ip": "10.244.2.2", "port": 8080})
    write(os.path.join(out, "readme_trace_json.json"), compact(plain) + "\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fuzz", "corpus")
    for name, text in POD_MAPS.items():
        write(os.path.join(out, "fuzz_pod_map", name), text)
    kube_seeds(os.path.join(out, "fuzz_watch_event"))
    stream_seeds(os.path.join(out, "fuzz_stream_line"))


if __name__ == "__main__":
    main()
