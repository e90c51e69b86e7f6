#!/usr/bin/python3
"""rstwatch benchmark: every budget of docs/performance.md in one run, as root.

    sudo /usr/bin/python3 bench/run.py [--reps N] [--round-seconds S] [--churn-minutes M] ...
    (bench/run.sh installs what is missing, builds, then runs this)

Measurements (each repeated; medians, min, max):
  http      wrk -> nginx proxy (upstream keepalive pool) -> upstream nginx, one network
            namespace each; rounds of conditions none / none_b (a second none: the A/A) /
            rstwatch agent / rstwatch agent with kernel.bpf_stats_enabled=1 / tcpdump -w in the
            proxy namespace / naive bpftrace / reference programs, interleaved (the order
            rotates every repetition); throughput ratio vs the same repetition's none round,
            mean with a 95% bootstrap interval (bench/stats.py), the A/A's beside it.
  hooks     per-program run_time_ns / run_cnt of the agent's own rw_* programs (bpf_stats
            rounds only; the sysctl is restored after every round and at exit); the write
            hook's budget is relative to the empty program's rounds of the same repetitions.
  corr      Correlator::on_raw throughput (bench/correlator_bench, Google Benchmark), 1 core.
  storm     a reset storm: a pool of idle connections opened, then reset at the target record
            rate (bench/connload pool; --storm-generator churn: connections made and reset at
            that rate): records/s reached, records lost, agent CPU; per-hook cost against
            reference programs on the same tracepoints in rounds of their own.
  memory    agent RSS and BPF map memory with N connections held open, then a churn of
            >= 1M connections (RSS sampled every 10 s, slope reported).
  latency   a scripted write-after-FIN race: client sees EOF/ECONNRESET -> incident line in
            `rstwatch trace -o json` (standalone) and `trace --from` the agent -> /metrics.
  httpserver  the agent's HTTP server alone (bench/httpserver_bench): /metrics latency with 0 and
            with 32 followers, incidents/s delivered to 8 followers, publish() latency, stop()
            with a stuck follower; and the agent's RSS idle and with 8 followers. With
            --httpserver-baseline BUILD_DIR (another tree's build with its own httpserver_bench)
            both builds run, interleaved (the order alternates every repetition).

Reuses tests/lib (netns.py namespaces and process registry, nginx.py, agent.py, prom.py).
Only loopback and the run's own namespaces are used; every process started here is ended
by PID, namespaces and temp files are removed, sysctls restored, also on failure and on
SIGINT/SIGTERM. The table goes to stdout and bench/results/latest.md (raw data: latest.json).
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

import agent as agentlib  # noqa: E402
import netns  # noqa: E402
import prom  # noqa: E402
from nginx import Nginx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stats as bstats  # noqa: E402  (bench/stats.py; "bstats": run.py's names say stats for bpf_stats)

BPFTOOL = agentlib.BPFTOOL
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"
BPFTRACE = shutil.which("bpftrace") or "/usr/bin/bpftrace"
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"

STATE = {"tmp": None, "stats_orig": None, "cgroups": []}


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# ---------------------------------------------------------------- cleanup

def read_sysctl(path):
    with open(path) as f:
        return f.read().strip()


def write_sysctl(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def restore_everything():
    """Sysctl back to its original value, temp dir removed (processes and namespaces are
    netns.cleanup_all's job)."""
    if STATE["stats_orig"] is not None:
        try:
            write_sysctl(STATS_SYSCTL, STATE["stats_orig"])
        except OSError:
            pass
    if STATE["tmp"]:
        shutil.rmtree(STATE["tmp"], ignore_errors=True)
        STATE["tmp"] = None
    while STATE["cgroups"]:
        PodCpu.remove(STATE["cgroups"].pop())


def _on_term(signum, frame):
    # netns's handler (installed after this one) kills our processes and namespaces first,
    # then calls this, then dies with the signal.
    restore_everything()


class PodCpu:
    """CPU cgroups standing for two Kubernetes pods: the node's workload (`load`, requesting
    every core) and the observer (the agent's pod, requesting `observer_millicores`). When the
    CPUs are saturated the kernel shares them by these weights, as it does between pods (the
    kubelet's cpu.shares = request x 1024 / 1000, or cpu.weight on cgroup v2); idle CPU is
    anyone's. Without them every process weighs the same, and a load of many processes starves a
    one-process agent far below what its pod's request would guarantee on a node. Created under
    this process's own cgroup, removed at the end (also on failure: restore_everything)."""

    V1 = "/sys/fs/cgroup/cpu"

    def __init__(self, observer_millicores, cores):
        self.dirs = {}
        self.observer_millicores = observer_millicores
        self.shares = {"load": 1024 * cores, "observer": max(2, observer_millicores * 1024 // 1000)}
        v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        base = "/sys/fs/cgroup" if v2 else self.V1
        with open("/proc/self/cgroup") as f:  # this process's own cgroup: "ID:cpu:/path" or "0::/path"
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if (v2 and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
                    base = os.path.join(base, path.lstrip("/"))
        if not os.path.isdir(base):
            self.error = "no cpu cgroup controller"
            return
        self.error = None
        for name, shares in self.shares.items():
            path = os.path.join(base, "rstwatch-bench-%s-%d" % (name, os.getpid()))
            try:
                os.mkdir(path)
                STATE["cgroups"].append(path)
                if v2:  # the kubelet's conversion of shares to weight
                    write_sysctl(os.path.join(path, "cpu.weight"), 1 + ((shares - 2) * 9999) // 262142)
                else:
                    write_sysctl(os.path.join(path, "cpu.shares"), shares)
            except OSError as e:
                self.error = "%s: %s" % (path, e)
                return
            self.dirs[name] = path

    def move(self, pid, name):
        if not self.error and pid:
            try:
                write_sysctl(os.path.join(self.dirs[name], "cgroup.procs"), pid)
            except OSError:
                pass  # the process is gone

    @staticmethod
    def remove(path):
        """Moves what is left back to the parent, then removes the cgroup."""
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = f.read().split()
            for pid in pids:
                try:
                    write_sysctl(os.path.join(os.path.dirname(path), "cgroup.procs"), pid)
                except OSError:
                    pass
            os.rmdir(path)
        except OSError:
            pass

    def describe(self):
        if self.error:
            return "no pod CPU shares (%s): every process weighs the same" % self.error
        return ("load and observer in CPU cgroups of their own, shares %d (every core requested) and "
                "%d (a request of %dm)" % (self.shares["load"], self.shares["observer"],
                                         self.observer_millicores))


def set_stats(on):
    write_sysctl(STATS_SYSCTL, "1" if on else "0")


# ---------------------------------------------------------------- small helpers

def median(xs):
    return statistics.median(xs) if xs else None


def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs),
            "values": xs}


def proc_stat_cpu(pid):
    """utime + stime of a process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def bpf_ids_held_by(pid):
    """(prog ids, map ids, link ids) of the BPF objects process pid holds fds of, with the
    programs behind its links."""
    progs, maps, links = agentlib.bpf_fd_ids(pid)
    if links:
        out = subprocess.run([BPFTOOL, "-j", "link", "show"], stdout=subprocess.PIPE,
                             text=True, timeout=30).stdout or "[]"
        for l in json.loads(out):
            if l.get("id") in links and l.get("prog_id"):
                progs.add(l["prog_id"])
    return progs, maps, links


def prog_stats(ids):
    """{id: (name, run_time_ns, run_cnt)} for the given prog ids."""
    out = subprocess.run([BPFTOOL, "-j", "prog", "show"], stdout=subprocess.PIPE, text=True,
                         timeout=30).stdout or "[]"
    res = {}
    for p in json.loads(out):
        if p.get("id") in ids:
            res[p["id"]] = (p.get("name", "?"), int(p.get("run_time_ns", 0)),
                            int(p.get("run_cnt", 0)))
    return res


def hook_delta(before, after):
    """{prog name: {"ns": average ns per call, "calls": n}} between two prog_stats()."""
    hooks = {}
    for pid_, (name, t, c) in after.items():
        t0, c0 = before.get(pid_, (name, 0, 0))[1:]
        dc, dt = c - c0, t - t0
        if dc > 0:
            h = hooks.setdefault(name, [0, 0])
            h[0] += dt
            h[1] += dc
    return {k: {"ns": v[0] / v[1], "calls": v[1]} for k, v in hooks.items()}


def map_memory(ids):
    """{name: bytes_memlock} of the given map ids (as bpftool reports them)."""
    out = subprocess.run([BPFTOOL, "-j", "map", "show"], stdout=subprocess.PIPE, text=True,
                         timeout=30).stdout or "[]"
    res = {}
    for m in json.loads(out):
        if m.get("id") in ids:
            name = m.get("name", "?")
            res[name] = res.get(name, 0) + int(m.get("bytes_memlock", 0))
    return res


def pin(pid, cpus):
    """Pins a process and all its threads (best effort)."""
    if cpus is None:
        return
    for tid in os.listdir("/proc/%d/task" % pid) if os.path.isdir("/proc/%d/task" % pid) else []:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def metric_total(url, name, **labels):
    return prom.scrape(url + "/metrics").total(name, **labels)


class Machine:
    def __init__(self):
        self.cores = os.cpu_count() or 1
        self.cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        self.cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        if self.cpu == "?":  # e.g. arm64 kernels print no model name
            self.cpu = "unknown (%s, no model name in /proc/cpuinfo)" % platform.machine()
        self.kernel = platform.release()
        self.mem_gib = 0.0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    self.mem_gib = int(line.split()[1]) / 1024 / 1024
        virt = subprocess.run(["systemd-detect-virt"], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL).stdout.strip() \
            if shutil.which("systemd-detect-virt") else ""
        self.virt = virt
        self.load = os.getloadavg()

    def describe(self):
        return "%s, %d cores, Linux %s, %.1f GiB RAM%s" % (
            self.cpu, self.cores, self.kernel, self.mem_gib,
            (", virtualised (%s)" % self.virt) if self.virt and self.virt != "none" else "")

    def cpu_plan(self):
        """CPU sets for proxy, upstream, wrk (observers are never pinned: they take their
        cost wherever the scheduler puts it, as in production)."""
        n = self.cores
        if n >= 4:
            return {"proxy": {0}, "upstream": {1}, "wrk": {2}, "wrk_threads": min(2, n - 3) or 1}
        if n >= 2:
            # 2 cores: the proxy (the measured hop, two connections per request) gets one,
            # the upstream and the load generator share the other.
            return {"proxy": {0}, "upstream": {1}, "wrk": {1}, "wrk_threads": 1}
        return {"proxy": None, "upstream": None, "wrk": None, "wrk_threads": 1}


# ---------------------------------------------------------------- observers

class AgentObserver:
    name = "rstwatch"

    def __init__(self, stats=False, binary=None):
        self.stats = stats
        self.binary = binary
        self.agent = None
        self.prog_ids = set()
        self.before = {}

    def start(self):
        self.agent = agentlib.Agent(idle_threshold=None, name="agent", binary=self.binary).start()
        self.prog_ids, _, _ = bpf_ids_held_by(self.agent.proc.pid)

    def load_started(self):
        self.cpu_before = (proc_stat_cpu(self.agent.proc.pid), time.monotonic())
        if self.stats:
            set_stats(True)
            self.before = prog_stats(self.prog_ids)

    def load_finished(self):
        # The agent's own CPU over the round (user space: its threads), in % of one core.
        cpu, t = proc_stat_cpu(self.agent.proc.pid), time.monotonic()
        info = {"agent_cpu_pct": round(100.0 * (cpu - self.cpu_before[0]) / max(t - self.cpu_before[1], 1e-6), 2)}
        if self.stats:
            after = prog_stats(self.prog_ids)
            set_stats(False)
            info["hooks"] = hook_delta(self.before, after)
        return info

    def stop(self):
        info = {}
        if self.agent is not None and self.agent.running():
            try:
                info["lost"] = metric_total(self.agent.url, "rstwatch_records_lost_total")
            except Exception:
                pass
            self.agent.stop()
        return info


class TcpdumpObserver:
    name = "tcpdump"

    def __init__(self, pod, tmp):
        self.pod = pod
        self.path = os.path.join(tmp, "capture.pcap")
        self.errpath = os.path.join(tmp, "tcpdump.err")
        self.proc = None

    def start(self):
        err = open(self.errpath, "w")
        self.proc = self.pod.popen([TCPDUMP, "-i", "any", "-n", "-w", self.path],
                                   stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(self.errpath) as f:
                if "listening on" in f.read():
                    time.sleep(0.3)
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("tcpdump did not start: %s" % open(self.errpath).read())

    def load_started(self):
        pass

    def load_finished(self):
        return {}

    def stop(self):
        netns.kill_proc(self.proc, sig=signal.SIGINT, timeout=15)
        info = {}
        try:
            info["bytes"] = os.path.getsize(self.path)
            os.unlink(self.path)
        except OSError:
            pass
        m = re.search(r"(\d+) packets dropped by kernel", open(self.errpath).read())
        if m:
            info["dropped"] = int(m.group(1))
        return info


BPFTRACE_SCRIPT = r"""
tracepoint:tcp:tcp_sendmsg_locked
{ printf("%llu W %d %s %d\n", nsecs, pid, comm, args->skb_len); }
tracepoint:sock:inet_sock_set_state /args->protocol == 6/
{ printf("%llu S %d %s %llx %d %d %d %d\n", nsecs, pid, comm, args->skaddr, args->oldstate,
         args->newstate, args->sport, args->dport); }
tracepoint:tcp:tcp_receive_reset
{ printf("%llu RR %llx %d %d\n", nsecs, args->skaddr, args->sport, args->dport); }
tracepoint:tcp:tcp_send_reset
{ printf("%llu RS %llx %d\n", nsecs, args->skaddr, args->state); }
"""


class BpftraceObserver:
    """The naive approach: one printed event per write, state change and reset, written to
    a file (Debian's bpftrace, classic tracepoints). bpftrace needs tracefs: when it is not
    mounted it runs in a private mount namespace with tracefs mounted there (the host's
    mounts are untouched)."""
    name = "bpftrace"

    def __init__(self, tmp):
        self.script = os.path.join(tmp, "naive.bt")
        with open(self.script, "w") as f:
            f.write(BPFTRACE_SCRIPT)
        self.out = os.path.join(tmp, "bpftrace.out")
        self.err = os.path.join(tmp, "bpftrace.err")
        self.proc = None

    @staticmethod
    def command(script):
        if os.path.isdir("/sys/kernel/tracing/events"):
            return [BPFTRACE, script]
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount -t tracefs nodev /sys/kernel/tracing && exec "$0" "$1"', BPFTRACE, script]

    def start(self):
        out, err = open(self.out, "w"), open(self.err, "w")
        netns._install_handlers()
        self.proc = subprocess.Popen(self.command(self.script), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err)
        netns._register_proc(self.proc)
        out.close()
        err.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(self.out, errors="replace") as f:
                if "Attaching" in f.read(4096):
                    time.sleep(0.5)
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        netns.kill_proc(self.proc)
        raise RuntimeError("bpftrace did not attach: %s" % open(self.err).read()[-2000:])

    def load_started(self):
        pass

    def load_finished(self):
        return {}

    def stop(self):
        netns.kill_proc(self.proc, sig=signal.SIGINT, timeout=20)
        info = {}
        try:
            info["bytes"] = os.path.getsize(self.out)
            lost = 0
            with open(self.out, errors="replace") as f:
                for line in f:
                    if line.startswith("Lost "):
                        m = re.match(r"Lost (\d+)", line)
                        lost += int(m.group(1)) if m else 0
            info["lost_events"] = lost
            os.unlink(self.out)
        except OSError:
            pass
        return info


# bench/hookfloor.bpf.c's reference programs (floor_NAME), as the table names them.
FLOOR_LABELS = {
    "empty": "empty program",
    "lookup": "socket-storage lookup only",
    "cast": "typed socket and its state only",
    "sndtime": "state and last-send age through bpf_skc_to_tcp_sock",
    "rdonly": "state and last-send age through bpf_rdonly_cast (no call), rstwatch's early return",
}


class FloorObserver:
    """bench/hookfloor: reference programs (FLOOR_LABELS: nothing, or a part of what a hook
    does; `program` is one name or several, comma-separated), measured with bpf_stats like the
    agent: what any program on that hook pays before its own work, and what each step adds.
    Hooks are reported under the programs' full names (the kernel keeps 15 characters)."""

    def __init__(self, binary, program, stats=True):
        self.binary = binary
        self.program = program
        self.stats = stats
        self.name = program
        self.proc = None
        self.names = {}  # prog id -> program name
        self.before = {}

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        obj = os.path.join(os.path.dirname(self.binary), "hookfloor.bpf.o")
        self.proc = subprocess.Popen([self.binary, obj, self.program], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        netns._register_proc(self.proc)  # ended by PID on failure or Ctrl-C too
        line = self.proc.stdout.readline().split()
        try:
            self.names = {int(i): n for n, i in (tok.rsplit(":", 1) for tok in line)}
        except ValueError:
            self.names = {}
        if not self.names:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            netns.kill_proc(self.proc)
            raise RuntimeError("hookfloor %s did not attach: %s" % (self.program, err.strip()))

    def snapshot(self):
        return {i: (self.names[i],) + v[1:] for i, v in prog_stats(set(self.names)).items()}

    def load_started(self):
        if self.stats:
            set_stats(True)
            self.before = self.snapshot()

    def load_finished(self):
        if not self.stats:
            return {}
        after = self.snapshot()
        set_stats(False)
        return {"hooks": hook_delta(self.before, after)}

    def stop(self):
        if self.proc is not None:
            netns.kill_proc(self.proc, timeout=10)
        return {}


class NoObserver:
    name = "none"

    def start(self):
        pass

    def load_started(self):
        pass

    def load_finished(self):
        return {}

    def stop(self):
        return {}


# ---------------------------------------------------------------- http load

UPSTREAM_BLOCK = """\
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    server {{
        listen {ip}:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
"""

PROXY_BLOCK = """\
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    upstream backend {{
        server {up}:{up_port} max_fails=0;
        keepalive {pool};
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {ip}:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def run_wrk(pod, url, seconds, threads, conns, cpus):
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = pod.popen([WRK, "-t", str(threads), "-c", str(conns), "-d", "%ds" % seconds, url],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                     preexec_fn=pre)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        netns.kill_proc(proc)
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError("wrk output without Requests/sec:\n" + out)
    errors = 0
    m2 = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if m2:
        errors += int(m2.group(1))
    m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m3:
        errors += sum(int(x) for x in m3.groups())
    total = re.search(r"(\d+) requests in", out)
    return float(m.group(1)), errors, int(total.group(1)) if total else None


def measure_http(args, machine, tmp, results):
    plan = machine.cpu_plan()
    conns = args.connections
    conditions = ["none", "rstwatch", "tcpdump", "bpftrace", "rstwatch+stats", "floor_empty"]
    conditions += ["floor_%s+stats" % f for f in args.floors.split(",") if f]
    if args.baseline:
        conditions += ["baseline", "baseline+stats"]  # the same agent from another tree's build
    if args.skip_bpftrace:
        conditions.remove("bpftrace")
    if not args.hookfloor:
        conditions = [c for c in conditions if not c.startswith("floor_")]
    if args.http_conditions:
        wanted = set(args.http_conditions.split(",")) | {"none"}  # ratios need the baseline
        unknown = wanted - set(conditions) - {"none_b"}
        if unknown:  # conditions depend on the floors and tools: checked here, usage exit code
            print("bench/run.py: error: --http-conditions: unknown %s (known: %s)" % (
                ",".join(sorted(unknown)), ",".join(conditions + ["none_b"])), file=sys.stderr)
            sys.exit(2)
        conditions = [c for c in conditions if c in wanted]
    # The A/A, always run: a second round without observer in every repetition, its ratio to
    # none is the noise every other ratio is read against. Half-way round the rotation, as far
    # from none as any condition gets: it sees the largest drift between rounds any ratio sees.
    conditions.insert((len(conditions) + 1) // 2, "none_b")
    rounds = {c: [] for c in conditions}
    extra = {c: [] for c in conditions}
    baseline_bin = os.path.join(args.baseline, "rstwatch") if args.baseline else None
    t_start = time.monotonic()
    with netns.Cluster(names=["client", "proxy", "upstream"]) as cl:
        client, proxy, upstream = cl["client"], cl["proxy"], cl["upstream"]
        up = Nginx(upstream, UPSTREAM_BLOCK.format(ip=upstream.ip, port=8081), name="upstream")
        px = Nginx(proxy, PROXY_BLOCK.format(ip=proxy.ip, port=8080, up=upstream.ip,
                                             up_port=8081, pool=max(conns, 8)), name="proxy")
        try:
            up.start(upstream.ip, 8081)
            px.start(proxy.ip, 8080)
            for ng, key in ((up, "upstream"), (px, "proxy")):
                for pid in [ng.proc.pid] + ng.worker_pids():
                    pin(pid, plan[key])
            url = "http://%s:8080/" % proxy.ip
            log("http: warm-up %ds (wrk -t%d -c%d, cpus %s)" % (
                args.warmup_seconds, plan["wrk_threads"], conns, plan))
            run_wrk(client, url, args.warmup_seconds, plan["wrk_threads"], conns, plan["wrk"])
            for rep in range(args.reps):
                order = conditions[rep % len(conditions):] + conditions[:rep % len(conditions)]
                for cond in order:
                    factory = {"none": NoObserver, "none_b": NoObserver,
                               "rstwatch": lambda: AgentObserver(False),
                               "rstwatch+stats": lambda: AgentObserver(True),
                               "baseline": lambda: AgentObserver(False, baseline_bin),
                               "baseline+stats": lambda: AgentObserver(True, baseline_bin),
                               "tcpdump": lambda: TcpdumpObserver(proxy, tmp),
                               "bpftrace": lambda: BpftraceObserver(tmp),
                               "floor_empty": lambda: FloorObserver(args.hookfloor, "floor_empty", stats=False),
                               }.get(cond) or (lambda: FloorObserver(args.hookfloor, cond[:-len("+stats")]))
                    obs = factory()
                    obs.start()
                    try:
                        obs.load_started()
                        rps, errors, total = run_wrk(client, url, args.round_seconds,
                                                     plan["wrk_threads"], conns, plan["wrk"])
                        info = obs.load_finished()
                    finally:
                        info_stop = obs.stop()
                    info.update(info_stop)
                    info.update(errors=errors, requests=total)
                    rounds[cond].append(rps)
                    extra[cond].append(info)
                    log("http rep %d/%d %-15s %9.0f req/s %s" % (
                        rep + 1, args.reps, cond, rps,
                        {k: v for k, v in info.items() if k != "hooks"}))
        finally:
            px.cleanup()
            up.cleanup()
    base = rounds["none"]
    res = {"conditions": {}, "plan": {k: sorted(v) if isinstance(v, set) else v
                                      for k, v in plan.items()},
           "connections": conns, "round_seconds": args.round_seconds, "reps": args.reps,
           "seconds": time.monotonic() - t_start}
    for cond in conditions:
        s = summary(rounds[cond])
        # Ratio per repetition (each condition's round vs that repetition's baseline round),
        # then the median of those ratios.
        ratios = [r / b for r, b in zip(rounds[cond], base) if b]
        s["ratio"] = summary(ratios)
        s["info"] = extra[cond]
        res["conditions"][cond] = s
    res["agent_cpu_pct"] = summary([i["agent_cpu_pct"] for i in extra.get("rstwatch", []) if "agent_cpu_pct" in i])
    def hook_table(cond):
        hooks = {}
        for info in extra.get(cond, []):
            for name, h in info.get("hooks", {}).items():
                hooks.setdefault(name, {"ns": [], "calls": []})
                hooks[name]["ns"].append(h["ns"])
                hooks[name]["calls"].append(h["calls"])
        reqs = [i.get("requests") for i in extra.get(cond, [])]
        return {n: {"ns": summary(h["ns"]), "calls": summary(h["calls"]),
                    "calls_per_request": summary([c / r for c, r in zip(h["calls"], reqs) if r])}
                for n, h in hooks.items()}
    res["hooks"] = hook_table("rstwatch+stats")
    if args.baseline:
        res["baseline"] = args.baseline
        res["baseline_hooks"] = hook_table("baseline+stats")
        # This build's throughput against the baseline's, per repetition (same rounds).
        res["vs_baseline"] = summary([a / b for a, b in zip(rounds["rstwatch"], rounds["baseline"]) if b])
    floors = {}
    for cond in conditions:
        if cond.startswith("floor_") and cond.endswith("+stats"):
            name = cond[:-len("+stats")]
            ns = [i["hooks"][name]["ns"] for i in extra[cond] if name in i.get("hooks", {})]
            calls = [i["hooks"][name]["calls"] for i in extra[cond] if name in i.get("hooks", {})]
            floors[name] = {"ns": summary(ns), "calls": summary(calls)}
    res["floors"] = floors
    results["http"] = res  # first: an analysis that fails leaves the raw data to latest.json
    res["analysis"] = analyse_http(res)  # what the table prints, kept with the raw data


# ---------------------------------------------------------------- correlator

def measure_correlator(args, machine, results):
    binary = args.correlator_bench
    if not binary or not os.access(binary, os.X_OK):
        results["correlator"] = {"error": "correlator_bench not built (libbenchmark-dev missing?)"}
        return
    cpu = {machine.cores - 1}
    log("correlator: %s (pinned to CPU %s, %d repetitions)" % (binary, cpu, args.corr_reps))
    r = subprocess.run([binary, "--benchmark_format=json",
                        "--benchmark_repetitions=%d" % args.corr_reps,
                        "--benchmark_min_time=0.3"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=600,
                       preexec_fn=lambda: os.sched_setaffinity(0, cpu))
    if r.returncode != 0:
        results["correlator"] = {"error": r.stderr[-2000:]}
        return
    data = json.loads(r.stdout)
    per, mem = {}, {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate":
            continue
        if "bytes_per_conn" in b:  # BM_BytesPerConnection: memory, no throughput
            mem.setdefault(b["run_name"].split("/iterations")[0], []).append(b["bytes_per_conn"])
            continue
        per.setdefault(b["run_name"], []).append(b["items_per_second"])
    results["correlator"] = {name: summary(v) for name, v in per.items()}
    results["correlator_memory"] = {name: summary(v) for name, v in mem.items()}


# ---------------------------------------------------------------- storm

def connload_cmd(args, *rest):
    return [args.connload] + [str(x) for x in rest]


def read_json_lines(proc, sink):
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            try:
                sink.append((time.monotonic(), json.loads(line)))
            except ValueError:
                pass


def drain_records(ag, timeout=10.0):
    """Waits until rstwatch_records_total stops moving; returns (records, lost)."""
    last = None
    deadline = time.monotonic() + timeout
    while True:
        m = ag.scrape()
        cur = (m.total("rstwatch_records_total"), m.total("rstwatch_records_lost_total"))
        if cur == last or time.monotonic() > deadline:
            return cur
        last = cur
        time.sleep(0.5)


def measure_storm_churn(args, machine, results):
    # 2 records per connection (RST sent + RST received); re-aimed after every repetition
    # from the records per connection actually seen.
    per_conn = 2.0
    rows, by_type, storm_hooks = [], [], []
    with netns.Cluster(names=["storm"]) as cl:
        pod = cl["storm"]
        # Repetition 0 is a 2-second calibration (records per connection), not reported.
        for rep in range(args.storm_reps + 1):
            ag = agentlib.Agent(idle_threshold=None, name="agent-storm").start()
            try:
                conn_rate = args.storm_rate / per_conn
                rec0, lost0 = drain_records(ag, 3)
                types0 = {x.labels_dict.get("type"): x.value
                          for x in ag.scrape().samples_of("rstwatch_records_total")}
                progs, _, _ = bpf_ids_held_by(ag.proc.pid)
                set_stats(True)  # per-hook cost under churn (state changes, RSTs)
                pstats0 = prog_stats(progs)
                cpu0, t0 = proc_stat_cpu(ag.proc.pid), time.monotonic()
                proc = pod.popen(connload_cmd(args, "storm", "--port", 800 + rep, "--rate",
                                              conn_rate, "--seconds",
                                              args.storm_seconds if rep else 2),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                out, err = proc.communicate(timeout=args.storm_seconds + 30)
                netns.kill_proc(proc)
                t1, cpu1 = time.monotonic(), proc_stat_cpu(ag.proc.pid)
                hooks = hook_delta(pstats0, prog_stats(progs))
                set_stats(False)
                rec1, lost1 = drain_records(ag)
                cpu2, t2 = proc_stat_cpu(ag.proc.pid), time.monotonic()
                done = [json.loads(l) for l in out.splitlines() if '"done"' in l]
                if not done:
                    raise RuntimeError("connload storm failed: %s" % err)
                d = done[-1]
                secs = d["seconds"]
                types1 = {x.labels_dict.get("type"): x.value
                          for x in ag.scrape().samples_of("rstwatch_records_total")}
                if d["connections"] and rec1 > rec0:
                    per_conn = (rec1 - rec0) / d["connections"]
                row = {"records_per_s": (rec1 - rec0) / secs, "records": rec1 - rec0,
                       "lost": lost1 - lost0, "conn_per_s": d["rate"],
                       "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
                       "cpu_pct_incl_drain": 100.0 * (cpu2 - cpu0) / (t2 - t0),
                       "rss_mib": proc_status_kib(ag.proc.pid, "VmRSS") / 1024.0,
                       "records_per_conn": per_conn}
                if rep == 0:
                    log("storm calibration: %.2f records per connection" % per_conn)
                    continue
                rows.append(row)
                storm_hooks.append(hooks)
                by_type.append({k: v - types0.get(k, 0) for k, v in types1.items()})
                log("storm rep %d/%d: %s" % (rep, args.storm_reps,
                                             {k: round(v, 1) for k, v in row.items()}))
            finally:
                ag.stop()
    results["storm"] = {k: summary([r[k] for r in rows]) for k in rows[0]} if rows else {}
    results["storm"]["target_records_per_s"] = args.storm_rate
    results["storm"]["records_by_type"] = by_type
    names = sorted({n for h in storm_hooks for n in h})
    results["storm"]["hooks"] = {
        n: {"ns": summary([h[n]["ns"] for h in storm_hooks if n in h]),
            "calls": summary([h[n]["calls"] for h in storm_hooks if n in h])} for n in names}
    results["storm"]["seconds"] = args.storm_seconds


# Reference programs on the state and reset tracepoints (bench/hookfloor.bpf.c), one set per
# storm round: doing nothing, and doing only what rstwatch cannot avoid there (per-socket
# state created and found; a record of its size handed over with its wakeup rule). The last
# two split the receiving reset hook's cost beyond the record: its per-socket state found,
# and that plus the socket fields a record holds (no record).
STORM_FLOORS = {
    "floor_empty": "floor_state_empty,floor_rst_recv_empty,floor_rst_sent_empty",
    "floor_record": "floor_state_storage,floor_rst_recv_record,floor_rst_sent_record",
    "floor_lookup": "floor_state_storage,floor_rst_recv_lookup,floor_rst_sent_record",
    "floor_reads": "floor_state_storage,floor_rst_recv_reads,floor_rst_sent_record",
}
# rstwatch's hook -> its references: (set, program on the same tracepoint), the empty program first.
STORM_REFERENCES = {
    "rw_state": (("floor_empty", "floor_state_empty"), ("floor_record", "floor_state_storage")),
    "rw_rst_received": (("floor_empty", "floor_rst_recv_empty"), ("floor_record", "floor_rst_recv_record"),
                        ("floor_lookup", "floor_rst_recv_lookup"), ("floor_reads", "floor_rst_recv_reads")),
    "rw_rst_sent": (("floor_empty", "floor_rst_sent_empty"), ("floor_record", "floor_rst_sent_record")),
}
# The tracepoints every set has a program on: their sum per connection compares sets whose
# programs move a cost between tracepoints (the first to touch an idle socket's state pays).
STORM_TRACEPOINT_PREFIXES = ("rw_state", "rw_rst_", "floor_state_", "floor_rst_")
POOL_CONNS_PER_PORT = 50000  # under the namespace's 55,536 ephemeral ports per destination


def pool_round(args, pod, round_no, kind, cpu):
    """One pool reset storm (connload pool) with one observer: the agent (kind "rstwatch"),
    the --baseline build's agent ("baseline") or a set of reference programs (STORM_FLOORS).
    bpf_stats on for the whole round; hooks are reported per phase: opening the pool (every
    connection made: per-socket state created) and resetting it at the asked rate (one RST
    sent and one received per connection)."""
    conns = int(args.storm_rate / 2.0 * args.storm_seconds)
    ag = obs = None
    if kind in ("rstwatch", "baseline"):
        binary = os.path.join(args.baseline, "rstwatch") if kind == "baseline" else None
        ag = agentlib.Agent(idle_threshold=None, name="agent-storm", binary=binary).start()
        cpu.move(ag.proc.pid, "observer")
        progs, _, _ = bpf_ids_held_by(ag.proc.pid)
        snap, pid = (lambda: prog_stats(progs)), ag.proc.pid
    else:
        obs = FloorObserver(args.hookfloor, STORM_FLOORS[kind])
        obs.start()
        cpu.move(obs.pid, "observer")
        snap, pid = obs.snapshot, obs.pid
    procs = []
    try:
        set_stats(True)
        s0 = snap()
        slab0 = kernel_unreclaimable_kib()
        # One process holds at most what its descriptor limit allows (2 per connection; no
        # CAP_SYS_RESOURCE to raise the hard limit here): the pool is spread over several,
        # each with its own listening ports below the namespace's ephemeral range, each
        # resetting its share at its share of the rate, all at once.
        hard = nofile_hard()
        per = max(1000, (hard - 200) // 2) if hard != -1 else conns
        # Listening ports 2000-9999, below the namespace's ephemeral range; a round's ports are
        # used again 40 rounds later, long closed by then.
        port, sinks, readers, left = 2000 + 200 * (round_no % 40), [], [], conns
        while left > 0:
            n = min(per, left)
            ports = n // POOL_CONNS_PER_PORT + 1
            p = pod.popen(connload_cmd(args, "pool", "--port", port, "--ports", ports, "--count", n,
                                       "--rate", args.storm_rate / 2.0 * n / conns,
                                       "--seconds", 3 * args.storm_seconds, "--open-seconds", 180),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            cpu.move(p.pid, "load")
            sink = []
            sinks.append(sink)
            readers.append(threading.Thread(target=read_json_lines, args=(p, sink), daemon=True))
            readers[-1].start()
            port += ports
            left -= n
        t_open = time.monotonic()
        while not all(any("ready" in o for _, o in sink) for sink in sinks):
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() - t_open > 200:
                raise RuntimeError("connload pool did not open its pool: %s" % (
                    dead[0].stderr.read().strip() if dead else "timeout"))
            time.sleep(0.1)
        open_seconds = time.monotonic() - t_open
        s1 = snap()
        slab1 = kernel_unreclaimable_kib()
        if ag:
            rec0, lost0 = drain_records(ag, 5)
        cpu0, t0 = proc_stat_cpu(pid), time.monotonic()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            p.wait(timeout=3 * args.storm_seconds + 120)
        t1, cpu1 = time.monotonic(), proc_stat_cpu(pid)
        s2 = snap()
        set_stats(False)
        for r in readers:
            r.join(timeout=10)
        done = [[o for _, o in sink if o.get("done") == "pool"] for sink in sinks]
        if not all(done):
            raise RuntimeError("connload pool failed: %s" % "; ".join(
                p.stderr.read().strip() for p, d in zip(procs, done) if not d))
        resets = sum(d[-1]["resets"] for d in done)
        reset_seconds = max(d[-1]["seconds"] for d in done)
        row = {"connections": sum(d[-1]["connections"] for d in done), "resets": resets,
               "reset_seconds": reset_seconds, "conn_per_s": resets / reset_seconds if reset_seconds else 0.0,
               "processes": len(procs), "open_seconds": open_seconds,
               # both ends of every connection are local: 2 sockets each
               "slab_bytes_per_socket": 1024.0 * (slab1 - slab0) / (2 * max(1, conns)),
               "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0)}
        if ag:
            rec1, lost1 = drain_records(ag)
            cpu2, t2 = proc_stat_cpu(pid), time.monotonic()
            records = rec1 - rec0
            row.update(records=records, records_per_s=records / reset_seconds, lost=lost1 - lost0,
                       records_per_conn=records / max(1, resets),
                       cpu_pct_incl_drain=100.0 * (cpu2 - cpu0) / (t2 - t0),
                       cpu_us_per_record=1e6 * (cpu2 - cpu0) / max(1, records),
                       rss_mib=proc_status_kib(pid, "VmRSS") / 1024.0)
        return row, hook_delta(s0, s1), hook_delta(s1, s2)
    finally:
        set_stats(False)
        for p in procs:
            netns.kill_proc(p)
        if ag:
            ag.stop()
        if obs:
            obs.stop()


def kernel_unreclaimable_kib():
    """SUnreclaim of /proc/meminfo: slab memory the kernel cannot reclaim (sockets, and the BPF
    socket storage allocated with them)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("SUnreclaim:"):
                return int(line.split()[1])
    return 0


def hook_summaries(per_round):
    names = sorted({n for h in per_round for n in h})
    return {n: {"ns": summary([h[n]["ns"] if n in h else None for h in per_round]),
                "calls": summary([h[n]["calls"] if n in h else None for h in per_round])} for n in names}


def measure_storm_pool(args, machine, results):
    kinds = (["rstwatch"] + (["baseline"] if args.baseline else []) +
             (list(STORM_FLOORS) if args.hookfloor else []))
    if args.storm_observers:
        kinds = ["rstwatch"] + [k for k in kinds[1:] if k in args.storm_observers.split(",")]
    rows, baseline_rows = [], []
    phases = {k: {"open": [], "reset": []} for k in kinds}
    slab = {k: [] for k in kinds}  # kernel slab bytes per socket after opening, per repetition
    counted = {k: {"open": [], "reset": []} for k in kinds}  # connections opened / reset, per repetition
    with netns.Cluster(names=["storm"]) as cl:
        pod = cl["storm"]
        # This namespace's own setting: listening ports (2000-9999) stay out of the ephemeral range.
        pod.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=10000 65535"])
        cpu = PodCpu(args.storm_agent_cpu, machine.cores)
        log("storm: %s" % cpu.describe())
        round_no = 0
        for rep in range(args.storm_reps):
            order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
            for kind in order:
                row, opened, reset = pool_round(args, pod, round_no, kind, cpu)
                round_no += 1
                phases[kind]["open"].append(opened)
                phases[kind]["reset"].append(reset)
                slab[kind].append(row["slab_bytes_per_socket"])
                counted[kind]["open"].append(row["connections"])
                counted[kind]["reset"].append(row["resets"])
                if kind == "rstwatch":
                    rows.append(row)
                elif kind == "baseline":
                    baseline_rows.append(row)
                log("storm rep %d/%d %-12s %s" % (rep + 1, args.storm_reps, kind,
                                                  {k: round(v, 2) for k, v in row.items()}))
    st = {k: summary([r.get(k) for r in rows]) for k in rows[0]} if rows else {}
    st.update(generator="pool", seconds=args.storm_seconds, cpu_shares=cpu.describe(), target_records_per_s=args.storm_rate,
              connections=rows[0]["connections"] if rows else 0,
              hooks=hook_summaries(phases["rstwatch"]["reset"]),
              open_hooks=hook_summaries(phases["rstwatch"]["open"]),
              floors={k: {"open": hook_summaries(v["open"]), "reset": hook_summaries(v["reset"])}
                      for k, v in phases.items() if k in STORM_FLOORS},
              phases=phases, slab_bytes_per_socket=slab, connections_by_kind=counted)
    if "floor_empty" in slab:
        # What per-socket state costs the kernel: the agent's rounds (and the storage-only
        # reference's) against the empty programs', same repetition.
        st["storage_bytes_per_socket"] = {
            k: bstats.estimate(bstats.paired_differences(slab[k], slab["floor_empty"]))
            for k in ("rstwatch", "floor_record") if k in slab}
    if baseline_rows:
        st["baseline"] = {"build": args.baseline,
                          "rows": {k: summary([r.get(k) for r in baseline_rows]) for k in baseline_rows[0]},
                          "hooks": hook_summaries(phases["baseline"]["reset"]),
                          "open_hooks": hook_summaries(phases["baseline"]["open"])}
    results["storm"] = st


def storm_references(st):
    """rstwatch's state and reset hooks against the reference programs of the same repetition
    (paired by repetition: rounds of one repetition ran back to back), per phase: {phase: {hook:
    [(reference program, estimate of the difference), ...]}}, the baseline build's hook last."""
    phases = st.get("phases")
    if not phases or "rstwatch" not in phases:
        return {}
    def ns(kind, phase, prog):
        return [h[prog]["ns"] if prog in h and h[prog]["calls"] >= MIN_CALLS else None
                for h in phases.get(kind, {}).get(phase, [])]
    out = {}
    for phase in ("open", "reset"):
        for hook, refs in STORM_REFERENCES.items():
            mine = ns("rstwatch", phase, hook)
            if not any(x is not None for x in mine):
                continue
            out.setdefault(phase, {})[hook] = [
                (prog, bstats.estimate(bstats.paired_differences(mine, ns(kind, phase, prog))))
                for kind, prog in refs if kind in phases]
            if "baseline" in phases:
                out[phase][hook].append(("the baseline's " + hook, bstats.estimate(
                    bstats.paired_differences(mine, ns("baseline", phase, hook)))))
    return out


def storm_per_connection(st):
    """What the state and reset tracepoints' programs cost together per connection, per set
    and phase (sum of ns x calls over the round, divided by the connections opened or reset):
    {phase: {kind: [ns per connection, per repetition]}}. Rounds whose programs did not run
    give None."""
    out = {}
    for kind, by_phase in st.get("phases", {}).items():
        for phase, rounds in by_phase.items():
            conns = st.get("connections_by_kind", {}).get(kind, {}).get(phase, [])
            vals = []
            for i, hooks in enumerate(rounds):
                n = conns[i] if i < len(conns) else 0
                total = sum(h["ns"] * h["calls"] for name, h in hooks.items()
                            if name.startswith(STORM_TRACEPOINT_PREFIXES))
                vals.append(total / n if n and total else None)
            out.setdefault(phase, {})[kind] = vals
    return out


def measure_storm(args, machine, results):
    if args.storm_generator == "churn":
        measure_storm_churn(args, machine, results)
        results["storm"]["generator"] = "churn"
    else:
        measure_storm_pool(args, machine, results)


# ---------------------------------------------------------------- memory

def agent_memory(ag, map_ids):
    pid = ag.proc.pid
    maps = map_memory(map_ids)
    m = ag.scrape()
    return {"rss_mib": proc_status_kib(pid, "VmRSS") / 1024.0,
            "hwm_mib": proc_status_kib(pid, "VmHWM") / 1024.0,
            "map_mib": sum(maps.values()) / 1048576.0,
            "maps": {k: round(v / 1048576.0, 2) for k, v in maps.items()},
            "tracked": m.total("rstwatch_tracked_connections")}


def nofile_hard():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def measure_memory(args, machine, results):
    res = {}
    with netns.Cluster(names=["mem"]) as cl:
        pod = cl["mem"]
        pod.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"])
        ag = agentlib.Agent(idle_threshold=None, name="agent-mem").start()
        try:
            _, map_ids, _ = bpf_ids_held_by(ag.proc.pid)
            time.sleep(1)
            res["idle"] = agent_memory(ag, map_ids)
            res["max_connections"] = 131072
            # -- N connections held open (both ends in the namespace: 2 sockets each)
            hard = nofile_hard()
            per = max(1000, (hard - 200) // 2) if hard != -1 else args.hold
            per = min(per, args.hold)
            procs, lines = [], []
            left, k = args.hold, 0
            log("memory: opening %d connections (%d per process, fd hard limit %s)" % (
                args.hold, per, hard))
            t0 = time.monotonic()
            while left > 0:
                n = min(per, left)
                p = pod.popen(connload_cmd(args, "hold", "--port", 900 + k, "--ports", 1,
                                           "--count", n, "--seconds", 120),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
                sink = []
                threading.Thread(target=read_json_lines, args=(p, sink), daemon=True).start()
                procs.append(p)
                lines.append(sink)
                left -= n
                k += 1
            deadline = time.monotonic() + 180
            held = 0
            while time.monotonic() < deadline:
                held = sum(o.get("ready", 0) for sink in lines for _, o in sink)
                if all(any("ready" in o for _, o in sink) for sink in lines):
                    break
                if any(p.poll() is not None for p in procs):
                    break
                time.sleep(0.2)
            failed = [p.returncode for p in procs if p.poll() not in (None, 0)]
            if failed:
                errs = [p.stderr.read() for p in procs if p.poll() not in (None, 0)]
                log("memory: %d hold processes failed: %s" % (len(failed), errs[:3]))
            res["hold_failed_processes"] = len(failed)
            res["hold_open_seconds"] = time.monotonic() - t0
            time.sleep(2)  # let the agent take in the records of the setup
            res["held"] = held
            res["holding"] = agent_memory(ag, map_ids)
            log("memory: %d connections held: %s" % (held, res["holding"]))
            for p in procs:
                try:
                    p.stdin.write("close\n")
                    p.stdin.flush()
                except OSError:
                    pass
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                netns.kill_proc(p)
            time.sleep(2)
            res["after_hold"] = agent_memory(ag, map_ids)
            # -- churn: >= churn_total connections, RSS sampled every sample_s
            seconds = args.churn_minutes * 60.0
            rate = max(args.churn_rate, 1.2 * args.churn_total / seconds)
            log("memory: churn %.1f min at %.0f conn/s (RSS every %ds)" % (
                args.churn_minutes, rate, args.sample_seconds))
            p = pod.popen(connload_cmd(args, "churn", "--port", 999, "--rate", rate,
                                       "--seconds", seconds, "--rst-every", 10),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            sink = []
            reader = threading.Thread(target=read_json_lines, args=(p, sink), daemon=True)
            reader.start()
            t0 = time.monotonic()
            samples, at_total = [], None
            next_sample = t0
            while p.poll() is None and time.monotonic() < t0 + seconds + 60:
                now = time.monotonic()
                if now >= next_sample:
                    conns = max([o.get("connections", 0) for _, o in sink] or [0])
                    s = agent_memory(ag, map_ids)
                    s.update(t=now - t0, connections=conns)
                    samples.append(s)
                    if at_total is None and conns >= args.churn_total:
                        at_total = s
                    next_sample += args.sample_seconds
                time.sleep(0.2)
            netns.kill_proc(p)
            reader.join(timeout=5)
            done = [o for _, o in sink if "done" in o]
            s = agent_memory(ag, map_ids)
            s.update(t=time.monotonic() - t0,
                     connections=done[-1]["connections"] if done else None)
            samples.append(s)
            if at_total is None and (s["connections"] or 0) >= args.churn_total:
                at_total = s
            res["churn"] = {"samples": samples, "at_total": at_total, "rate": rate,
                            "minutes": args.churn_minutes, "done": done[-1] if done else None}
                    # The correlator remembers finished connections (bounded, see correlator.h):
            # its memory fills during the first minute (measured: ~60 s at 10k conn/s), so
            # the slope is taken over the second half of the churn, at the earliest from 60 s.
            warm = max(0.5 * seconds, 60.0)
            pts = [(x["t"] / 60.0, x["rss_mib"]) for x in samples if x["t"] >= warm]
            res["churn"]["slope_from_s"] = warm
            if len(pts) >= 3:
                mx = sum(p_[0] for p_ in pts) / len(pts)
                my = sum(p_[1] for p_ in pts) / len(pts)
                den = sum((p_[0] - mx) ** 2 for p_ in pts)
                res["churn"]["slope_mib_per_min"] = (
                    sum((p_[0] - mx) * (p_[1] - my) for p_ in pts) / den if den else 0.0)
            res["final"] = s
        finally:
            ag.stop()
    results["memory"] = res


# ---------------------------------------------------------------- latency

class TimedLines:
    """Mixin for a process reading JSON lines from stdout: each one timestamped
    (CLOCK_MONOTONIC) as read."""

    def _read_json_stdout(self):
        self.timed = []
        for line in self.proc.stdout:
            s = line.strip()
            if s:
                try:
                    self.timed.append((time.monotonic(), json.loads(s)))
                except ValueError:
                    self.bad_lines.append(s)


class TimedFollower(TimedLines, agentlib.Follower):
    """`trace --from` whose stdout lines are timestamped as read."""


class TimedTracer(TimedLines, netns.Tracer):
    """`rstwatch trace -o json` whose stdout lines are timestamped as read."""


def _find(timed, port, after):
    for t, o in list(timed):
        if t >= after - 1.0 and isinstance(o, dict) and "cause" in o:
            c, s = netns.client_ep(o), netns.server_ep(o)
            if c[1] == port or s[1] == port:
                return t, o
    return None


def measure_latency(args, machine, results):
    rows = []
    with netns.Cluster(names=["server", "client"]) as cl:
        server, client = cl["server"], cl["client"]
        ag = agentlib.Agent(idle_threshold=None, name="agent-latency").start()
        fol = TimedFollower(ag.url).start()
        tr = TimedTracer().start()
        srv = server.actor(comm="rwbsrv")
        cli = client.actor(comm="rwbcli")
        try:
            port = srv.step("listen", host=server.ip, port=18090)["port"]
            for rep in range(args.latency_reps):
                srv.start("accept", name="c", timeout=10)
                local = cli.step("connect", name="c", host=server.ip, port=port)["local"]
                srv.result()
                cport = local[1]
                cli.step("send", name="c", size=100)
                srv.step("recv", name="c", size=100)
                srv.step("send", name="c", size=100)
                cli.step("recv", name="c", size=100)
                srv.step("close", name="c")  # the server closes: FIN
                cli.step("wait_state", name="c", state="CLOSE_WAIT", timeout=5)
                before = metric_total(ag.url, "rstwatch_incidents_total",
                                      client_workload=client.ip)
                # The client reuses the connection: its request meets the server's RST.
                # Reference: the moment the failing write returned in the client (on this
                # path the RST is processed within microseconds of it; the client's next
                # read then reports the failure).
                sent = cli.step("send", name="c", size=100, expect_ok=False)
                seen = cli.step("recv", name="c", size=100, exact=False, timeout=2,
                                expect_ok=False)
                t_client = sent["t1"]
                what = seen.get("errno") or ("EOF" if seen.get("eof") else "data")
                got = {"trace": None, "follower": None, "metrics": None}
                scrapes_after_stream = 0
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and None in got.values():
                    if got["trace"] is None:
                        f = _find(tr.timed, cport, t_client)
                        if f:
                            got["trace"] = f[0] - t_client
                    if got["follower"] is None:
                        f = _find(fol.timed, cport, t_client)
                        if f:
                            got["follower"] = f[0] - t_client
                    if got["metrics"] is None:
                        stream_seen = got["follower"] is not None
                        v = metric_total(ag.url, "rstwatch_incidents_total",
                                         client_workload=client.ip)
                        if stream_seen:
                            scrapes_after_stream += 1
                        if v > before:
                            got["metrics"] = time.monotonic() - t_client
                            got["scrapes_after_stream"] = scrapes_after_stream
                    time.sleep(0.05)
                cli.step("close", name="c")
                got["client_saw"] = what
                rows.append(got)
                log("latency rep %d/%d: %s" % (rep + 1, args.latency_reps, got))
        finally:
            srv.stop()
            cli.stop()
            try:
                tr.stop()
            except AssertionError:
                tr.kill()
            try:
                fol.stop()
            except AssertionError:
                fol.kill()
            ag.stop()
    ms = lambda xs: [x * 1000.0 for x in xs if x is not None]  # noqa: E731
    results["latency"] = {
        "trace_ms": summary(ms([r["trace"] for r in rows])),
        "follower_ms": summary(ms([r["follower"] for r in rows])),
        "metrics_ms": summary(ms([r["metrics"] for r in rows])),
        "missed": {k: sum(1 for r in rows if r[k] is None) for k in ("trace", "follower",
                                                                    "metrics")},
        "metrics_next_scrape": sum(1 for r in rows if r.get("scrapes_after_stream", 9) <= 1),
        "reps": len(rows), "client_saw": sorted({r["client_saw"] for r in rows})}


# ---------------------------------------------------------------- httpserver

class _StreamReader:
    """A follower of /incidents on a plain socket that reads (and discards) everything."""

    def __init__(self, port):
        import socket
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"GET /incidents HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.head = b""
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except OSError:
                continue
            if not data:
                return
            if len(self.head) < 64:
                self.head += data[:64]

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        self.sock.close()


def _agent_rss(binary, followers=8, scrapes=20):
    """`rstwatch agent` (this binary) on 127.0.0.1: VmRSS (MiB) after start and scrapes, then
    with `followers` followers attached and scraped again."""
    ag = agentlib.Agent(binary=binary, idle_threshold=None, name="agent-http",
                        args=["--kube", "off"]).start()
    try:
        for _ in range(scrapes):
            ag.scrape()
        idle = proc_status_kib(ag.proc.pid, "VmRSS") / 1024.0
        readers = [_StreamReader(ag.port) for _ in range(followers)]
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(r.head.startswith(b"HTTP/1.1 200") for r in readers):
                time.sleep(0.05)
            ok = all(r.head.startswith(b"HTTP/1.1 200") for r in readers)
            for _ in range(scrapes):
                ag.scrape()
            following = proc_status_kib(ag.proc.pid, "VmRSS") / 1024.0
            threads = len(os.listdir("/proc/%d/task" % ag.proc.pid))
        finally:
            for r in readers:
                r.close()
        hwm = proc_status_kib(ag.proc.pid, "VmHWM") / 1024.0
    finally:
        ag.stop()
    return {"idle_mib": idle, "followers_mib": following, "hwm_mib": hwm, "threads": threads,
            "followers_ok": ok}


def measure_httpserver(args, machine, results):
    builds = [("this", args.build_dir)]
    if args.httpserver_baseline:
        builds.append(("baseline", args.httpserver_baseline))
    runs = {label: [] for label, _ in builds}
    rss = {label: [] for label, _ in builds}
    for label, d in builds:
        for f in ("rstwatch", os.path.join("bench", "httpserver_bench")):
            if not os.access(os.path.join(d, f), os.X_OK):
                raise RuntimeError("%s: no %s (build it: cmake --build %s --target %s)" % (
                    d, f, d, os.path.basename(f)))
    for rep in range(args.httpserver_reps):
        order = builds if rep % 2 == 0 else list(reversed(builds))
        for label, d in order:
            cmd = [os.path.join(d, "bench", "httpserver_bench"),
                   "--scrapes", str(args.httpserver_scrapes),
                   "--stream-seconds", str(args.httpserver_stream_seconds)]
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=600)
            out = json.loads(r.stdout) if r.stdout.strip() else {"errors": [r.stderr.strip()[-300:]]}
            if r.returncode != 0 or out.get("errors"):
                raise RuntimeError("%s (%s): exit %d: %s" % (cmd[0], label, r.returncode, out.get("errors")))
            runs[label].append(out)
            log("httpserver %s rep %d/%d: scrape %.2f / %.2f ms (0 / 32 followers), %.0f incidents/s "
                "to each of 8, stop %.0f ms" % (
                    label, rep + 1, args.httpserver_reps, out["scrape_0"]["median"],
                    out["scrape_followers"]["median"], out["stream"]["delivered_per_s"]["median"],
                    out["stop_ms"]))
            rss[label].append(_agent_rss(os.path.join(d, "rstwatch")))
            log("httpserver %s rep %d/%d: agent RSS %s" % (label, rep + 1, args.httpserver_reps,
                                                            rss[label][-1]))
    res = {}
    for label, _ in builds:
        rr = runs[label]
        res[label] = {
            "build": dict(builds)[label],
            "scrape_0_ms": summary([x["scrape_0"]["median"] for x in rr]),
            "scrape_0_p99_ms": summary([x["scrape_0"]["p99"] for x in rr]),
            "scrape_32_ms": summary([x["scrape_followers"]["median"] for x in rr]),
            "scrape_32_p99_ms": summary([x["scrape_followers"]["p99"] for x in rr]),
            "delivered_per_s": summary([x["stream"]["delivered_per_s"]["median"] for x in rr]),
            "dropped_per_s": summary([x["stream"]["dropped_per_s"]["median"] for x in rr]),
            "published_per_s": summary([x["stream"]["published_per_s"] for x in rr]),
            "publish_p99_us": summary([x["stream"]["publish_us"]["p99"] for x in rr]),
            "publish_max_us": summary([x["stream"]["publish_us"]["max"] for x in rr]),
            "stop_ms": summary([x["stop_ms"] for x in rr]),
            "rss_idle_mib": summary([x["idle_mib"] for x in rss[label]]),
            "rss_followers_mib": summary([x["followers_mib"] for x in rss[label]]),
            "threads": summary([x["threads"] for x in rss[label]]),
            "body_bytes": rr[0]["scrape_0"].get("body_bytes"),
            "raw": rr, "raw_rss": rss[label],
        }
    results["httpserver"] = res


# ---------------------------------------------------------------- table

def fmt(x, unit="", digits=0):
    if x is None:
        return "n/a"
    if isinstance(x, float) and digits == 0 and abs(x) < 10 and x != int(x):
        digits = 2
    return ("%." + str(digits) + "f%s") % (x, unit)


def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


THROUGHPUT_TARGET = 0.99  # rstwatch's round / the same repetition's none round
# The write hook against the empty program on the same tracepoint in the same run: the empty
# program's cost (dispatch + bpf_stats' clock reads) differs between hosts, rstwatch's share does not.
WRITE_OVER_EMPTY_NS = 20.0
# Absolute: these run once per state change or RST, rare next to writes.
HOOK_TARGETS = {"state": 300.0, "reset": 300.0}
MIN_CALLS = 10000  # fewer calls than this in a round: the average is not a verdict


def hook_kind(name):
    if name.startswith("floor_"):
        return None  # a reference program: reported, no budget of its own
    return ("write" if "write" in name else "state" if "state" in name
            else "reset" if "rst" in name else None)


def round_ns(http, cond, prog):
    """ns/call of program prog in each of condition cond's rounds, in repetition order (None
    where it ran fewer than MIN_CALLS times): index i is repetition i, to pair with another."""
    out = []
    for info in http["conditions"].get(cond, {}).get("info", []):
        h = info.get("hooks", {}).get(prog)
        out.append(h["ns"] if h and h["calls"] >= MIN_CALLS else None)
    return out


def analyse_http(http):
    """The http part's per-repetition pairs and their bootstrap intervals (bench/stats.py)."""
    c = http["conditions"]
    rps = {cond: c[cond]["values"] for cond in c}  # wrk reports every round: one per repetition
    none = rps["none"]
    est = bstats.estimate
    an = {"ratios": {cond: est(bstats.paired_ratios(rps[cond], none)) for cond in c if cond != "none"}}
    aa = an["ratios"].get("none_b")
    an["resolves"] = bstats.half_width(aa["ci"]) if aa else None
    an["vs"] = {other: est(bstats.paired_ratios(rps["rstwatch"], rps[other]))
                for other in ("tcpdump", "bpftrace", "baseline") if "rstwatch" in c and other in c}
    if "rstwatch" in c and "floor_empty" in c:
        # What rstwatch loses beyond what an empty program on its tracepoint loses.
        an["own_share"] = est([(f - r) / b for f, r, b in zip(rps["floor_empty"], rps["rstwatch"], none) if b])
    empty = round_ns(http, "floor_empty+stats", "floor_empty")
    an["empty_ns"] = est(empty)
    an["write_over_empty"] = est(bstats.paired_differences(round_ns(http, "rstwatch+stats", "rw_write_tp"), empty))
    if "baseline+stats" in c:
        an["baseline_hooks"] = {
            n: est(bstats.paired_ratios(round_ns(http, "rstwatch+stats", n), round_ns(http, "baseline+stats", n)))
            for n in sorted(set(http.get("hooks", {})) & set(http.get("baseline_hooks", {})))}
    return an


def http_analysis(http):
    return http.get("analysis") or analyse_http(http)  # synthetic or older results: computed here


def fmt_est(e, digits, unit="", scale=1.0, sign=False):
    """'mean [lo, hi] unit' of a bench/stats.py estimate; the mean alone when there are too few
    repetitions for an interval."""
    if not e or e.get("estimate") is None:
        return ""
    f = lambda x: ("%+.*f" if sign else "%.*f") % (digits, x * scale)  # noqa: E731
    if e.get("ci") is None:
        return "%s%s (n=%d, no interval)" % (f(e["estimate"]), unit, e["n"])
    return "%s [%s, %s]%s" % (f(e["estimate"]), f(e["ci"][0]), f(e["ci"][1]), unit)


def hook_rows(results, row):
    """Per-hook kernel cost rows: under the keepalive load (the write hook's budget) and
    under the RST churn of the storm (state changes and resets happen there)."""
    sources = []
    if results.get("http", {}).get("hooks"):
        sources.append(("keepalive load", results["http"]["hooks"]))
    st = results.get("storm", {})
    if st.get("generator", "churn") == "pool":
        if st.get("hooks"):
            sources.append(("pool reset", st["hooks"]))
        if st.get("open_hooks"):
            sources.append(("pool opening", st["open_hooks"]))
        shown = set()
        for kind in STORM_FLOORS:
            progs = STORM_FLOORS[kind].split(",")
            for phase, label in (("reset", "pool reset"), ("open", "pool opening")):
                hooks = st.get("floors", {}).get(kind, {}).get(phase)
                if hooks:
                    # A program of an earlier set again: named with its set (its neighbours
                    # change what it pays).
                    for again in (False, True):
                        part = {n: h for n, h in hooks.items() if n in progs and ((n, phase) in shown) == again}
                        if part:
                            sources.append((label + (" with %s's programs" % kind if again else ""), part))
            shown.update((n, p) for n in progs for p in ("reset", "open"))
    elif st.get("hooks"):
        sources.append(("RST churn", st["hooks"]))
    for label, hooks in sources:
        for name in sorted(hooks):
            h = hooks[name]
            kind = hook_kind(name)
            t = HOOK_TARGETS.get(kind)
            calls = h["calls"]["median"] or 0
            if label == "keepalive load" and kind != "write" and calls < MIN_CALLS:
                continue  # a handful of stray calls from elsewhere on the machine: noise
            if kind == "write":
                target = "reported (budget: <= empty program + %d ns, below)" % WRITE_OVER_EMPTY_NS
            else:
                target = ("<= %d ns" % t) if t else "reported"
            per_req = h.get("calls_per_request", {}).get("median")
            if per_req is not None:
                target += ", %.2f calls/request" % per_req
            else:
                target += ", %d calls/round" % calls
            e = bstats.estimate([ns for ns, n in zip(h["ns"].get("values", []), h["calls"].get("values", []))
                                 if n >= MIN_CALLS])
            if t and not e["n"]:
                target += " (too few calls)"
            row("kernel cost %s, %s (ns/call)" % (name, label), h["ns"], digits=1, target=target,
                est=fmt_est(e, 1, " ns"), v=bstats.verdict(e["ci"], t, False))


def build_table(results, machine, args, started, elapsed):
    # (measurement, median, min, max, estimate [95% CI], target, A/A [95% CI], verdict); the
    # parts that have no interval append 6-tuples without the two interval cells (render adds them).
    rows = []

    def row(name, s, unit="", digits=0, target="", ok=None, est="", aa="", v=None):
        rows.append((name, fmt(s.get("median"), unit, digits), fmt(s.get("min"), unit, digits),
                     fmt(s.get("max"), unit, digits), est, target, aa, v or verdict(ok)))

    http = results.get("http")
    an = http_analysis(http) if http else {}
    if http:
        c = http["conditions"]
        ratios = an["ratios"]
        aa = ratios.get("none_b")
        aa_cell = fmt_est(aa, 3) or "not run"  # beside every throughput ratio: the run's noise
        row("proxy throughput, no observer (req/s)", c["none"])
        if aa:
            resolves = ("resolves about %.1f%%" % (100 * an["resolves"]) if an["resolves"] is not None
                        else "too few repetitions for an interval")
            # An A/A interval without 1 means the rounds drift with their place in the rotation.
            row("proxy throughput, no observer again: A/A (req/s)", c["none_b"],
                est="ratio " + fmt_est(aa, 3), target="contains 1.000; %s" % resolves,
                v="n/a" if aa["ci"] is None else verdict(bstats.contains(aa["ci"], 1.0)))
        for cond, label in (("rstwatch", "rstwatch agent"), ("tcpdump", "tcpdump -w (proxy ns)"),
                            ("bpftrace", "naive bpftrace"),
                            ("rstwatch+stats", "rstwatch agent + bpf_stats"),
                            ("baseline", "baseline agent (%s)" % http.get("baseline")),
                            ("baseline+stats", "baseline agent + bpf_stats"),
                            ("floor_empty", "empty program on the write tracepoint")) + tuple(
                                ("floor_%s+stats" % f, "reference program on the write tracepoint (%s) + bpf_stats" % l)
                                for f, l in FLOOR_LABELS.items()):
            if cond not in c:
                continue
            e = ratios[cond]
            target, v = "reported", "n/a"
            if cond == "rstwatch":
                target = "ratio >= %.2f" % THROUGHPUT_TARGET
                v = bstats.verdict(e["ci"], THROUGHPUT_TARGET, True)
            row("proxy throughput, %s (req/s)" % label, c[cond], est="ratio " + fmt_est(e, 3),
                target=target, aa=aa_cell, v=v)
        if http.get("agent_cpu_pct", {}).get("median") is not None:
            row("agent user-space CPU during the keepalive load (% of one core)", http["agent_cpu_pct"],
                digits=2, target="reported (no records to read)")
        rw = ratios.get("rstwatch", {}).get("estimate")
        if an.get("own_share", {}).get("estimate") is not None:
            rows.append(("rstwatch vs an empty program on the write tracepoint: throughput kept",
                         "%.3f vs %.3f" % (rw, ratios["floor_empty"]["estimate"]), "", "",
                         fmt_est(an["own_share"], 1, "% of req/s", scale=100.0),
                         "reported: rstwatch's own share of the cost", aa_cell, "n/a"))
        for cond in ("tcpdump", "bpftrace"):
            e = an["vs"].get(cond)
            if e and e["estimate"] is not None:
                rows.append(("rstwatch vs %s: throughput kept" % cond,
                             "%.3f vs %.3f" % (rw, ratios[cond]["estimate"]), "", "",
                             "ratio " + fmt_est(e, 3), "rstwatch / %s > 1.000 (same repetition)" % cond,
                             aa_cell, bstats.verdict(e["ci"], 1.0, True)))
    hook_rows(results, row)
    if http and an.get("baseline_hooks"):
        for name, e in an["baseline_hooks"].items():
            new_ns, old_ns = http["hooks"][name]["ns"].get("median"), http["baseline_hooks"][name]["ns"].get("median")
            # round_ns left out rounds under MIN_CALLS: a hook without pairs has no stable mean.
            if new_ns is None or old_ns is None or not e["n"]:
                continue
            rows.append(("%s ns/call: this build vs baseline (keepalive load, %d calls/round)" % (
                name, http["hooks"][name]["calls"].get("median") or 0),
                "%.1f vs %.1f" % (new_ns, old_ns), "", "", "ratio " + fmt_est(e, 3),
                "<= 1.05: no worse", "", bstats.verdict(e["ci"], 1.05, False)))
        e = an["vs"].get("baseline")
        if e and e["estimate"] is not None:
            row("proxy throughput with this build's agent / with the baseline's (same repetition)",
                http["vs_baseline"], digits=3, est="ratio " + fmt_est(e, 3), target=">= 0.99: no worse",
                aa=aa_cell, v=bstats.verdict(e["ci"], 0.99, True))
    floors = (http or {}).get("floors", {})
    for name, label in (("floor_" + f, l) for f, l in FLOOR_LABELS.items()):
        if name in floors and floors[name]["ns"].get("median") is not None:
            row("kernel cost of a reference program on the write tracepoint: %s (ns/call)" % label,
                floors[name]["ns"], digits=1, est=fmt_est(bstats.estimate(round_ns(http, name + "+stats", name)), 1, " ns"),
                target="floor, %d calls/round" % (floors[name]["calls"]["median"] or 0))
    d = an.get("write_over_empty")
    if d and d["n"]:
        row("kernel cost rw_write_tp above the empty program, same repetition (ns/call)", summary(d["values"]),
            digits=1, est=fmt_est(d, 1, " ns", sign=True),
            target="<= +%d ns (empty program: same tracepoint, same run)" % WRITE_OVER_EMPTY_NS,
            v=bstats.verdict(d["ci"], WRITE_OVER_EMPTY_NS, False))
    elif http and "rstwatch+stats" in http["conditions"]:
        rows.append(("kernel cost rw_write_tp above the empty program (ns/call)", "n/a", "", "", "",
                     "<= +%d ns: floor_empty+stats not run" % WRITE_OVER_EMPTY_NS, "", "n/a"))
    corr = results.get("correlator")
    if corr:
        if "error" in corr:
            rows.append(("correlator throughput", "n/a", "", "", ">= 2M records/s", "n/a"))
        for name in sorted(corr):
            if name == "error":
                continue
            s = corr[name]
            s = {k: (v / 1e6 if isinstance(v, (int, float)) and k in ("median", "min", "max")
                     else v) for k, v in s.items()}
            ok = s["median"] >= 2.0 if s.get("median") is not None else None
            row("correlator %s (M records/s, 1 core)" % name.replace("BM_", ""), s, digits=2,
                target=">= 2M/s", ok=ok)
    for name, s in sorted(results.get("correlator_memory", {}).items(), key=lambda kv: len(kv[0])):
        row("correlator heap per remembered connection, %s connections fed (bytes)"
            % name.split("/")[-1], s, target="reported")
    st = results.get("storm")
    if st and "records_per_s" in st:
        tgt = st["target_records_per_s"]
        ok_rate = st["records_per_s"]["median"] >= 0.95 * tgt
        if st.get("generator") == "pool":
            what = "%d s, a pool of %d idle connections reset" % (st["seconds"], st["connections"])
        else:
            what = "%d s, RST churn" % st["seconds"]
        row("storm: records/s reached (%s)" % what, st["records_per_s"],
            target="%d/s asked" % tgt, ok=ok_rate)
        row("storm: records lost", st["lost"], digits=0, target="0", ok=st["lost"]["max"] == 0)
        row("storm: agent CPU (% of one core)", st["cpu_pct"], digits=1,
            target="within one core" if st.get("generator") == "pool" else "reported",
            ok=(st["cpu_pct"]["max"] < 100) if st.get("generator") == "pool" else None)
        if st.get("cpu_us_per_record"):
            row("storm: agent CPU per record, incl. draining (us)", st["cpu_us_per_record"], digits=2,
                target="reported")
        for kind, label in (("rstwatch", "rstwatch's per-socket state"),
                            ("floor_record", "the reference's storage of the same size")):
            e = st.get("storage_bytes_per_socket", {}).get(kind)
            if e and e["n"]:
                row("kernel memory per tracked socket, %s (bytes, slab over the empty programs')" % label,
                    {"median": e["estimate"], "min": min(e["values"]), "max": max(e["values"])},
                    target="reported", est=fmt_est(e, 0, " B"))
        base = st.get("baseline", {}).get("rows")
        if base:
            for key, label, digits in (("records_per_s", "records/s reached", 0), ("lost", "records lost", 0),
                                       ("cpu_us_per_record", "agent CPU per record, incl. draining (us)", 2)):
                if key in base:
                    row("storm, baseline build: %s" % label, base[key], digits=digits, target="reported")
        for phase, refs in sorted(storm_references(st).items(), reverse=True):
            for hook, r in sorted(refs.items()):
                for ref, e in r:
                    if e["n"]:
                        row("kernel cost %s minus %s, pool %s (ns/call)" % (
                            hook, ref, "reset" if phase == "reset" else "opening"),
                            {"median": e["estimate"], "min": min(e["values"]), "max": max(e["values"])},
                            digits=1, target="reported", est=fmt_est(e, 1, " ns", sign=True))
        # Per connection, all programs on the state and reset tracepoints together: a cost that
        # moves from one hook to another (the first to touch an idle socket's state pays its
        # cache misses) cancels out here.
        per_conn = storm_per_connection(st)
        for phase in ("reset", "open"):
            by_kind = per_conn.get(phase, {})
            mine = by_kind.get("rstwatch")
            if not mine or not any(v is not None for v in mine):
                continue
            what = "per connection %s, state and reset tracepoints together" % (
                "reset" if phase == "reset" else "opened")
            for kind in ["rstwatch"] + [k for k in STORM_FLOORS if k in by_kind]:
                e = bstats.estimate([v for v in by_kind[kind] if v is not None])
                if e["n"]:
                    row("kernel cost %s, %s (ns)" % (what, kind),
                        {"median": e["estimate"], "min": min(e["values"]), "max": max(e["values"])},
                        digits=0, target="reported", est=fmt_est(e, 0, " ns"))
            for kind in [k for k in STORM_FLOORS if k in by_kind]:
                e = bstats.estimate(bstats.paired_differences(mine, by_kind[kind]))
                if e["n"]:
                    row("kernel cost %s, rstwatch minus %s (ns)" % (what, kind),
                        {"median": e["estimate"], "min": min(e["values"]), "max": max(e["values"])},
                        digits=0, target="reported", est=fmt_est(e, 0, " ns", sign=True))
        row("storm: agent RSS (MiB)", st["rss_mib"], digits=1, target="<= 64 MiB",
            ok=st["rss_mib"]["max"] <= 64)
    mem = results.get("memory")
    if mem and "holding" in mem:
        one = lambda v: {"median": v, "min": v, "max": v}  # noqa: E731
        row("memory: agent RSS idle (MiB)", one(mem["idle"]["rss_mib"]), digits=1)
        row("memory: agent RSS, %d connections open (MiB)" % mem["held"],
            one(mem["holding"]["rss_mib"]), digits=1, target="<= 64 MiB",
            ok=mem["holding"]["rss_mib"] <= 64)
        row("memory: tracked connections (gauge) with %d open" % mem["held"],
            one(mem["holding"]["tracked"]), target="socket storage: one per live socket, freed with it (LRU mode: max %d)" % mem["max_connections"])
        row("memory: BPF map memory (MiB, memlock)", one(mem["holding"]["map_mib"]), digits=1,
            target="fixed by --max-connections")
        ch = mem.get("churn", {})
        at = ch.get("at_total")
        if at:
            row("memory: agent RSS after %.1fM connections churned (MiB)" % (
                at["connections"] / 1e6), one(at["rss_mib"]), digits=1, target="<= 64 MiB",
                ok=at["rss_mib"] <= 64)
        else:
            rows.append(("memory: agent RSS after %dM churned" % (args.churn_total // 1000000),
                         "n/a", "", "", "churn did not reach it", "MISS"))
        row("memory: agent VmHWM over the whole run (MiB)", one(mem["final"]["hwm_mib"]),
            digits=1, target="<= 64 MiB", ok=mem["final"]["hwm_mib"] <= 64)
        if "slope_mib_per_min" in ch:
            sl = ch["slope_mib_per_min"]
            rss = [x["rss_mib"] for x in ch["samples"]]
            rows.append(("memory: RSS slope over a %.1f-min churn, from %ds (MiB/min)" % (
                ch["minutes"], ch.get("slope_from_s", 0)),
                         "%.3f" % sl, fmt(min(rss), "", 1), fmt(max(rss), "", 1),
                         "flat (< 0.2 MiB/min)%s" % (
                             "" if ch["minutes"] >= 10 else "; issue asks 10 min"),
                         verdict(sl < 0.2)))
    lat = results.get("latency")
    if lat:
        row("latency: client error -> `rstwatch trace` line (ms)", lat["trace_ms"], digits=1,
            target="<= 100 ms", ok=(lat["trace_ms"]["max"] or 1e9) <= 100 and
            lat["missed"]["trace"] == 0)
        row("latency: client error -> `trace --from` agent line (ms)", lat["follower_ms"],
            digits=1, target="<= 100 ms", ok=(lat["follower_ms"]["max"] or 1e9) <= 100 and
            lat["missed"]["follower"] == 0)
        row("latency: client error -> /metrics (ms, 50 ms polls)", lat["metrics_ms"], digits=1,
            target="next scrape: %d/%d" % (lat["metrics_next_scrape"], lat["reps"]),
            ok=lat["metrics_next_scrape"] == lat["reps"] and lat["missed"]["metrics"] == 0)
    hs = results.get("httpserver")
    if hs:
        this, base = hs["this"], hs.get("baseline")
        # The budget's items get a verdict against the baseline ("no worse": within 5%
        # of its median, or better); the others are reported with the baseline for comparison.
        for key, label, digits, lower_better, budget in (
                ("scrape_0_ms", "http server: GET /metrics, no follower (ms, median of run medians)", 2, True, True),
                ("scrape_0_p99_ms", "http server: GET /metrics p99, no follower (ms)", 2, True, True),
                ("scrape_32_ms", "http server: GET /metrics, 32 followers fed 1000/s (ms)", 2, True, True),
                ("scrape_32_p99_ms", "http server: GET /metrics p99, 32 followers (ms)", 2, True, True),
                ("delivered_per_s", "http server: incidents/s delivered to each of 8 followers", 0, False, True),
                ("publish_p99_us", "http server: publish() p99 during that burst (us)", 1, True, False),
                ("publish_max_us", "http server: publish() max during that burst (us, scheduling-bound)", 0, True,
                 False),
                ("stop_ms", "http server: stop() with a follower stuck in a write (ms)", 0, True, False),
                ("rss_idle_mib", "agent RSS after 20 scrapes (MiB)", 1, True, True),
                ("rss_followers_mib", "agent RSS with 8 followers (MiB)", 1, True, True),
                ("threads", "agent threads with 8 followers", 0, True, False)):
            target, ok = "", None
            if base and base[key].get("median") and this[key].get("median") is not None:
                a, b = this[key]["median"], base[key]["median"]
                target = "baseline %s; ratio %.2f" % (fmt(b, "", digits), a / b)
                if budget:
                    ok = (a <= 1.05 * b) if lower_better else (a >= 0.95 * b)
            row(label, this[key], digits=digits, target=target, ok=ok)
    return rows


def http_meta(http, an):
    """Header lines of the http part: its length, the statistics, the run's noise and the empty
    program's cost (the write hook's budget is relative to it)."""
    conds = list(http["conditions"])
    out = ["http part: %s, %d conditions x %d repetitions x %d s (%s)" % (
        "%.1f min" % (http["seconds"] / 60.0) if "seconds" in http else "duration not recorded",
        len(conds), http["reps"], http["round_seconds"], ", ".join(conds))]
    aa = an["ratios"].get("none_b")
    out.append("statistics: estimates are means of per-repetition pairs (a condition's round against the same "
               "repetition's none round), 95%% percentile bootstrap over the repetitions (%d resamples, seed %d); "
               "PASS/MISS only when the interval is wholly on one side of the target, else within noise" % (
                   bstats.RESAMPLES, bstats.SEED))
    if aa and an["resolves"] is not None:
        out.append("noise: A/A (none_b / none) %s: this run resolves throughput differences of about %.1f%%" % (
            fmt_est(aa, 3), 100 * an["resolves"]))
    else:
        out.append("noise: A/A %s: no resolution stated" % (
            "not run" if not aa else "with %d repetitions (an interval needs %d)" % (aa["n"], bstats.MIN_PAIRS)))
    e = an.get("empty_ns") or {}
    if e.get("n"):
        out.append("empty program on the write tracepoint (floor_empty+stats, this run): median %.1f ns/call, "
                   "mean %s over %d rounds" % (statistics.median(e["values"]), fmt_est(e, 1, " ns"), e["n"]))
    else:
        out.append("empty program on the write tracepoint: not measured in this run (floor_empty+stats not run): "
                   "the write hook's budget has no verdict")
    return out


def render(rows, machine, args, results, started, elapsed, markdown):
    head = ("measurement", "median", "min", "max", "estimate [95% CI]", "target", "A/A [95% CI]", "verdict")
    rows = [r if len(r) == len(head) else r[:4] + ("",) + r[4:5] + ("",) + r[5:] for r in rows]
    binfo = results.get("binary", {})
    meta = [
        "machine: %s" % machine.describe(),
        # Budgets and floors differ between CPUs: a table is compared with another host's only with this.
        "CPU model: %s" % machine.cpu,
        "load average at start: %.2f %.2f %.2f" % machine.load,
        "rstwatch: %s (%s), git %s" % (binfo.get("path"), binfo.get("mtime"), binfo.get("git")),
        "run: %s UTC, %.1f min; %s" % (started, elapsed / 60.0, "; ".join(part for key, part in (
            ("http", "%d interleaved repetitions of %d s per condition (wrk -c%d)" % (
                args.reps, args.round_seconds, args.connections)),
            ("storm", "storm (%s) %d x %d s" % (results.get("storm", {}).get("generator", "churn"), args.storm_reps, args.storm_seconds)),
            ("memory", "churn %.1f min" % args.churn_minutes),
            ("latency", "latency %d races" % args.latency_reps)) if key in results) or "see below"),
    ]
    if results.get("storm", {}).get("cpu_shares"):
        meta.append("storm: %s" % results["storm"]["cpu_shares"])
    if "http" in results:
        http = results["http"]
        meta.append("cpu plan: %s" % http["plan"])
        meta += http_meta(http, http_analysis(http))
    if "httpserver" in results:
        hs = results["httpserver"]
        meta.append("httpserver: %d interleaved repetitions (%d scrapes per case, %.0f s burst), this build %s%s; "
                    "/metrics body %s bytes" % (
                        args.httpserver_reps, args.httpserver_scrapes, args.httpserver_stream_seconds,
                        hs["this"]["build"],
                        ", baseline %s" % hs["baseline"]["build"] if "baseline" in hs else "",
                        hs["this"]["body_bytes"]))
    if markdown:
        out = ["<!-- generated by bench/run.py; do not edit -->", ""]
        out += ["- " + m for m in meta] + [""]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in rows:
            out.append("| " + " | ".join(str(c) for c in r) + " |")
        return "\n".join(out) + "\n"
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    out = meta + ["", line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=None,
                   help="interleaved repetitions per HTTP condition (default: 5 on <= 4 cores, "
                        "else 7; the table states the throughput difference they resolve)")
    p.add_argument("--round-seconds", type=int, default=5)
    p.add_argument("--warmup-seconds", type=int, default=3)
    p.add_argument("--connections", type=int, default=None,
                   help="wrk connections (default 4 x cores, at least 8)")
    p.add_argument("--skip-bpftrace", action="store_true")
    p.add_argument("--corr-reps", type=int, default=5)
    p.add_argument("--storm-rate", type=int, default=100000, help="records/s asked")
    p.add_argument("--storm-seconds", type=int, default=5,
                   help="seconds of the reset phase (pool) or of the churn")
    p.add_argument("--storm-agent-cpu", type=int, default=250, metavar="MILLICORES",
                   help="pool storm: the agent's CPU share under contention, as a pod's CPU request "
                        "(the load requests every core)")
    p.add_argument("--storm-generator", choices=("pool", "churn"), default="pool",
                   help="pool: a pool of idle connections opened first, then reset at the asked rate "
                        "(the reset storm of a dying backend); churn: connections made and reset at the "
                        "asked rate (connect, accept, SO_LINGER 0)")
    p.add_argument("--storm-reps", type=int, default=3)
    p.add_argument("--storm-observers", default=None, metavar="KIND[,KIND...]",
                   help="pool storm: besides the agent's rounds, only these (baseline, %s); default all"
                        % ", ".join(STORM_FLOORS))
    p.add_argument("--hold", type=int, default=100000, help="connections held open")
    p.add_argument("--churn-total", type=int, default=1000000)
    p.add_argument("--churn-minutes", type=float, default=2.0)
    p.add_argument("--churn-rate", type=float, default=10000.0, help="minimum connections/s")
    p.add_argument("--sample-seconds", type=int, default=10)
    p.add_argument("--latency-reps", type=int, default=10)
    p.add_argument("--only", default="http,correlator,storm,memory,latency,httpserver",
                   help="comma-separated subset of http,correlator,storm,memory,latency,httpserver")
    p.add_argument("--baseline", default=None, metavar="BUILD_DIR",
                   help="http and storm parts: also run another tree's build (its rstwatch agent), "
                        "interleaved, for hook ns/call, throughput and storm figures side by side")
    p.add_argument("--httpserver-baseline", default=None, metavar="BUILD_DIR",
                   help="another tree's build (rstwatch, bench/httpserver_bench) to compare the HTTP "
                        "server with, interleaved")
    p.add_argument("--httpserver-reps", type=int, default=5)
    p.add_argument("--httpserver-scrapes", type=int, default=300, help="GET /metrics per run and case")
    p.add_argument("--httpserver-stream-seconds", type=float, default=5.0)
    p.add_argument("--build-dir", default=os.path.join(REPO, "build"))
    p.add_argument("--connload", default=None)
    p.add_argument("--correlator-bench", default=None)
    p.add_argument("--hookfloor", default=None)
    p.add_argument("--floors", default="empty,cast,sndtime,rdonly,lookup",
                   help="reference programs of bench/hookfloor.bpf.c measured with bpf_stats in the "
                        "http part (of empty,cast,sndtime,rdonly,lookup)")
    p.add_argument("--http-conditions", default=None,
                   help="comma-separated subset of the http part's conditions (none is always run)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "latest.md"))
    args = p.parse_args()
    unknown = set(f for f in args.floors.split(",") if f) - set(FLOOR_LABELS)
    if unknown:
        p.error("--floors: unknown %s (known: %s)" % (",".join(sorted(unknown)), ",".join(FLOOR_LABELS)))
    unknown = set((args.storm_observers or "").split(",")) - {"", "rstwatch", "baseline"} - set(STORM_FLOORS)
    if unknown or args.storm_observers == "":
        p.error("--storm-observers: unknown %s (known: rstwatch,baseline,%s)" % (
            ",".join(sorted(unknown)) or "(empty)", ",".join(STORM_FLOORS)))
    if args.baseline and not os.access(os.path.join(args.baseline, "rstwatch"), os.X_OK):
        p.error("--baseline %s: no executable rstwatch there (a build directory is expected)" % args.baseline)

    machine = Machine()
    if args.reps is None:
        args.reps = 5 if machine.cores <= 4 else 7
    if args.connections is None:
        args.connections = max(8, 4 * machine.cores)
    for attr, name in (("connload", "connload"), ("correlator_bench", "correlator_bench"),
                       ("hookfloor", "hookfloor")):
        if getattr(args, attr) is None:
            for d in ("bench", "bench-standalone"):
                cand = os.path.join(args.build_dir, d, name)
                if os.access(cand, os.X_OK):
                    setattr(args, attr, cand)
                    break
    only = set(args.only.split(","))
    known = {"http", "correlator", "storm", "memory", "latency", "httpserver"}
    if only - known:
        p.error("--only: unknown %s (known: %s)" % (",".join(sorted(only - known)), ",".join(sorted(known))))
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root (namespaces, BPF)")
    import unittest
    try:
        netns.require_bpf()
    except unittest.SkipTest as e:
        sys.exit("rstwatch cannot run here: %s" % e)
    if ({"storm", "memory"} & only) and not args.connload:
        sys.exit("connload not built (bench/run.sh builds it)")
    for tool in ([WRK, "/usr/sbin/nginx"] if "http" in only else []):
        if not os.access(tool, os.X_OK):
            sys.exit("missing %s (bench/run.sh installs it)" % tool)

    # Cleanup first in line for SIGTERM: netns's handler (installed next) ends processes
    # and namespaces, then chains to ours (sysctl, temp dir), then dies with the signal.
    signal.signal(signal.SIGTERM, _on_term)
    netns._install_handlers()
    import atexit
    atexit.register(restore_everything)
    STATE["stats_orig"] = read_sysctl(STATS_SYSCTL)
    STATE["tmp"] = tempfile.mkdtemp(prefix="rw-bench-")
    started = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    binary = netns.rstwatch_bin()
    git = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
    results = {"binary": {"path": binary, "git": git or "?", "mtime": time.strftime(
        "%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(binary)))},
        "machine": machine.describe(), "args": vars(args)}
    log("machine: %s; bpf_stats_enabled was %s (set to 0 for throughput rounds, 1 only in "
        "bpf_stats rounds, restored at exit)" % (machine.describe(), STATE["stats_orig"]))
    try:
        set_stats(False)
        steps = [("correlator", measure_correlator), ("http", measure_http),
                 ("storm", measure_storm), ("memory", measure_memory),
                 ("latency", measure_latency), ("httpserver", measure_httpserver)]
        for name, fn in steps:
            if name not in only:
                continue
            log("== %s" % name)
            try:
                if name == "http":
                    fn(args, machine, STATE["tmp"], results)
                else:
                    fn(args, machine, results)
            except Exception as e:  # one failed measurement must not lose the others
                import traceback
                traceback.print_exc()
                results.setdefault("errors", {})[name] = "%s: %s" % (type(e).__name__, e)
                netns.cleanup_all()
    finally:
        netns.cleanup_all()
        restore_everything()
    elapsed = time.monotonic() - t0
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # The raw data before the table: a table that fails to build must not lose the run.
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(results, f, indent=1, default=str)
    rows = build_table(results, machine, args, started, elapsed)
    for name, err in results.get("errors", {}).items():
        rows.append(("%s: FAILED" % name, "n/a", "", "", err[:80], "MISS"))
    text = render(rows, machine, args, results, started, elapsed, markdown=False)
    sys.stdout.write("\n" + text)
    with open(args.out, "w") as f:
        f.write(render(rows, machine, args, results, started, elapsed, markdown=True))
    log("table written to %s (raw data: %s)" % (args.out, os.path.splitext(args.out)[0] + ".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
