"""Helpers for the keepalive-timeout prediction tests (tests/kernel/test_prediction.py).

- FanIn: one "cluster" (pods "proxy" and "upstream"): an upstream nginx with
  `keepalive_timeout T` on ONE port, a proxy nginx with N routes (proxy port PROXY_PORT+k),
  each its own `upstream` block, i.e. its own keepalive pool, all pointing at that one
  upstream port, and one client actor per route in the proxy pod.  All routes therefore form
  ONE rstwatch pair (proxy pod -> upstream pod:UPSTREAM_PORT) while every route idles and
  gets idle-closed independently: N streams with gaps > T give N server idle closes per gap
  on one pair (one pool shared by N streams would keep reusing its connections instead).
- series(): runs one http_series per stream in parallel, each after its own start offset.
- Watcher: polls an agent every POLL_S (/metrics and /diagnose?level=pod and its log) and
  records, per pair, every snapshot and the wall-clock time each signal was first seen.
- diagnose_cli(): `rstwatch diagnose ...` as a subprocess (ended by PID on timeout).

Standard library only; processes are registered with netns.py's cleanup registry.
"""

import json
import math
import re
import signal
import subprocess
import threading
import time

from netns import _install_handlers, _register_proc, _unregister_proc, kill_proc, rstwatch_bin, run_rstwatch
from nginx import Nginx

UPSTREAM_PORT = 8080
PROXY_PORT = 8000
POLL_S = 0.2


def seconds_text(t):
    """nginx duration text for t seconds: "2s", "500ms"."""
    ms = int(round(t * 1000))
    return "%ds" % (ms // 1000) if ms % 1000 == 0 else "%dms" % ms


def nginx_fix_value(t):
    """What the agent should recommend for a server timeout t: 75 % of it, whole seconds
    from 10 s up, tenths (rounded down) below."""
    v = 0.75 * t
    return math.floor(v) if v >= 10 else math.floor(v * 10 + 1e-9) / 10


class FanIn:
    def __init__(self, cluster, streams, server_timeout_s, add_cleanup, client_pool_timeout_s=None,
                 comm="rwhttp"):
        self.cluster = cluster
        self.streams = streams
        self.t = server_timeout_s
        self.client_pool_timeout_s = client_pool_timeout_s
        self.proxy_pod = cluster["proxy"]
        self.upstream_pod = cluster["upstream"]
        self._add_cleanup = add_cleanup
        self.comm = comm
        self.upstream = None
        self.proxy = None
        self.actors = []

    def start_nginx(self):
        up, px = self.upstream_pod, self.proxy_pod
        self.upstream = Nginx.upstream(up, up.ip4, [UPSTREAM_PORT],
                                       keepalive_timeout=seconds_text(self.t))
        self._add_cleanup(self.upstream.cleanup)
        self.upstream.start(up.ip4, UPSTREAM_PORT)
        routes = [(PROXY_PORT + k, "%s:%d" % (up.ip4, UPSTREAM_PORT)) for k in range(self.streams)]
        pool = seconds_text(self.client_pool_timeout_s) if self.client_pool_timeout_s else None
        self.proxy = Nginx.proxy(px, px.ip4, routes, upstream_keepalive_timeout=pool)
        self._add_cleanup(self.proxy.cleanup)
        self.proxy.start(px.ip4, PROXY_PORT)
        return self

    def start_actors(self):
        for _ in range(self.streams):
            a = self.proxy_pod.actor(comm=self.comm)
            self._add_cleanup(a.stop)
            self.actors.append(a)
        return self

    def start_series(self, plans, method="POST", timeout=5.0):
        """plans: {stream k: (start offset s, [spacings])}; spacings[0] is ignored by the
        actor (first request at once after the offset).  Starts them all; collect()."""
        host = self.proxy_pod.ip4
        for k, (offset, spacings) in plans.items():
            a = self.actors[k]
            a.start("sleep", seconds=offset)
            a.start("http_series", host=host, port=PROXY_PORT + k, spacings=list(spacings),
                    method=method, body="rstwatch", timeout=timeout)
        return plans

    def collect(self, plans):
        """{k: [results]} of started plans, "status" and "w0"/"w1" (wall clock) per request."""
        longest = max(offset + sum(sp[1:]) for offset, sp in plans.values())
        out = {}
        for k in plans:
            a = self.actors[k]
            a.result(timeout=longest + 60)
            out[k] = a.result(timeout=longest + 60)["results"]
        return out

    def series(self, plans, method="POST", timeout=5.0):
        """start_series() + collect(): the streams in parallel, each after its offset."""
        return self.collect(self.start_series(plans, method=method, timeout=timeout))


def first_502(results):
    """Wall-clock start (w0) of the first request answered 502, or None."""
    ts = [r["w0"] for rs in results.values() for r in rs if r["status"] == 502]
    return min(ts) if ts else None


# ---------------------------------------------------------------- agent watcher

def pod_pair_key(client_id, server_id, port):
    return (client_id[1], server_id[1], int(port))


def _pair_key_of_json(p):
    return (p["client"]["pod"], p["server"]["pod"], int(p["server_port"]))


class Watcher:
    """Polls the agent every POLL_S in a thread.  For each pair of interest (pod pair key
    -> {"labels": PAIR labels dict, "log": regex of its mismatch log line}) records:
      snaps[key]: [(wall time, {"server_s","client_s","mismatch": gauge values or None,
                                "diag": /diagnose?level=pod entry or None})]
      first[key]: {"mismatch_metric": t, "mismatch_log": t, "diag_mismatch": t}: wall time
                  of the poll that first saw the signal (never earlier than the signal).
    """

    def __init__(self, agent, pairs):
        self.agent = agent
        self.pairs = pairs
        self.snaps = {k: [] for k in pairs}
        self.first = {k: {} for k in pairs}
        self.errors = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as e:  # keep polling: report at the end
                self.errors.append("%s: %s" % (type(e).__name__, e))
            self._stop.wait(POLL_S)

    def poll_once(self):
        lines = self.agent.lines()
        m = self.agent.scrape()
        status, _, body = self.agent.get("/diagnose?level=pod")
        t = time.time()  # after every read of this poll: conservative "first seen"
        if status != 200:
            raise AssertionError("/diagnose HTTP %d: %s" % (status, body[:300]))
        diag = {_pair_key_of_json(p): p for p in json.loads(body)["pairs"]}
        self.polls += 1
        for key, spec in self.pairs.items():
            lab = spec["labels"]
            snap = {
                "server_s": m.value("rstwatch_server_idle_timeout_seconds", **lab),
                "client_s": m.value("rstwatch_client_idle_timeout_seconds", **lab),
                "mismatch": m.value("rstwatch_keepalive_mismatch", **lab),
                "diag": diag.get(key),
            }
            self.snaps[key].append((t, snap))
            f = self.first[key]
            if snap["mismatch"] == 1 and "mismatch_metric" not in f:
                f["mismatch_metric"] = t
            d = snap["diag"]
            if d is not None and d.get("mismatch") is True and "diag_mismatch" not in f:
                f["diag_mismatch"] = t
            rx = spec.get("log")
            if rx is not None and "mismatch_log" not in f and any(rx.search(l) for l in lines):
                f["mismatch_log"] = t

    def diagnose(self, key, level="pod"):
        """The agent's /diagnose entry of one pair now (pod key; workload level matches on
        workloads and port)."""
        status, _, body = self.agent.get("/diagnose?level=%s" % level)
        if status != 200:
            raise AssertionError("/diagnose HTTP %d: %s" % (status, body[:300]))
        doc = json.loads(body)
        if level == "pod":
            for p in doc["pairs"]:
                if _pair_key_of_json(p) == key:
                    return p
            return None
        lab = self.pairs[key]["labels"]
        for p in doc["pairs"]:
            if (p["client"]["workload"] == lab["client_workload"]
                    and p["server"]["workload"] == lab["server_workload"]
                    and int(p["server_port"]) == int(lab["server_port"])):
                return p
        return None


def mismatch_log_regex(client_id, server_id, port):
    """The agent's "keepalive timeout mismatch: NS/WORKLOAD -> NS/WORKLOAD:PORT:" line."""
    return re.compile(r"keepalive timeout mismatch: %s/%s -> %s/%s:%d:" % (
        re.escape(client_id[0]), re.escape(client_id[2]), re.escape(server_id[0]),
        re.escape(server_id[2]), port))


# ---------------------------------------------------------------- rstwatch diagnose

def diagnose_cli(args, timeout=60.0):
    """Runs `rstwatch diagnose ARGS` to completion: (rc, stdout, stderr)."""
    return run_rstwatch("diagnose", args, timeout)


class BackgroundDiagnose:
    """Standalone `rstwatch diagnose --duration S ARGS` started now, collected later."""

    def __init__(self, args, ready_timeout=30.0):
        _install_handlers()
        self.cmd = [rstwatch_bin(), "diagnose"] + list(args)
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        _register_proc(self.proc)
        self.stderr_lines = []
        self.stdout = ""
        self._ready = threading.Event()
        self._t_err = threading.Thread(target=self._read_err, daemon=True)
        self._t_out = threading.Thread(target=self._read_out, daemon=True)
        self._t_err.start()
        self._t_out.start()
        deadline = time.monotonic() + ready_timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                self.kill()
                raise AssertionError("%s: no 'watching' line (rc %s); stderr:\n%s" % (
                    " ".join(self.cmd), self.proc.poll(), "".join(self.stderr_lines)))

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if "watching" in line:
                self._ready.set()

    def _read_out(self):
        self.stdout = self.proc.stdout.read()

    def wait(self, timeout):
        """Waits for the end of --duration: (rc, stdout, stderr)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("%s did not end within %.0fs" % (" ".join(self.cmd), timeout))
        self._t_err.join(timeout=5)
        self._t_out.join(timeout=5)
        _unregister_proc(self.proc)
        return self.proc.returncode, self.stdout, "".join(self.stderr_lines)

    def kill(self):
        if self.proc.poll() is None:
            kill_proc(self.proc, sig=signal.SIGKILL, timeout=5.0)
        else:
            _unregister_proc(self.proc)


# ---------------------------------------------------------------- addresses

PRIVATE_PREFIX = "10.245"  # the netns.Cluster harness uses 10.244.S.0/24


def used_subnets(prefix="10.244"):
    """S of every PREFIX.S.0/24 address in the host's named network namespaces right now
    (read only): so that concurrent test runs on one host, whose traffic a host-wide agent
    also sees, never share a pod-map address with ours."""
    from netns import IP
    used = set()
    rx = r"inet %s\.(\d+)\." % re.escape(prefix)
    r = subprocess.run([IP, "netns", "list"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True, timeout=30)
    for line in r.stdout.splitlines()[:2000]:
        name = line.split()[0] if line.split() else ""
        if not name:
            continue
        a = subprocess.run([IP, "-n", name, "-4", "-o", "addr", "show"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, timeout=30)
        used |= {int(m) for m in re.findall(rx, a.stdout)}
    return used


def free_subnets(n, start, prefix="10.244"):
    """n subnet numbers in 1..250 not in used_subnets(prefix), from start on (wrapping)."""
    used = used_subnets(prefix)
    out = []
    for i in range(250):
        s = (start + i - 1) % 250 + 1
        if s not in used:
            out.append(s)
            if len(out) == n:
                return out
    raise RuntimeError("no %d free %s.S.0/24 subnets" % (n, prefix))


def use_private_range(cluster, subnet, prefix=PRIVATE_PREFIX):
    """Gives every pod of cluster PREFIX.SUBNET.(k+1)/24 on its eth0 (same bridge: on-link)
    and makes it the pod's ip4, so that traffic between the pods uses addresses no
    netns.Cluster of a concurrent test run can have: a host-wide agent (ours or theirs)
    never attributes their traffic to our pod map or ours to theirs."""
    from netns import IP
    for k, pod in enumerate(cluster.pods):
        ip = "%s.%d.%d" % (prefix, subnet, k + 1)
        pod.run([IP, "addr", "add", ip + "/24", "dev", pod.ifname])
        pod.ip4 = ip
    return cluster
