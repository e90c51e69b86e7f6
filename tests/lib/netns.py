"""Test harness: small "clusters" of network namespaces, socket actors, and the tracer.

Standard library only; needs root (ip netns, BPF).  Used by the kernel tests
(tests/kernel) and meant to be reused by the agent, Prometheus and benchmark tests.

    with Cluster(2) as c:                      # node namespace + bridge + 2 pods
        server, client = c.pods
        srv = server.actor(comm="rwsrv")        # python socket actor in the pod
        port = srv.step("listen", family="inet")["port"]
        ...

Everything created here (namespaces, processes) is registered in a process-wide
registry and removed on normal exit, on exceptions (context managers), on
SIGTERM/SIGINT (signal handler) and at interpreter exit (atexit).  Only the
things this process created are ever touched; processes are ended by PID.
"""

import atexit
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unittest

LIB_DIR = os.path.dirname(os.path.abspath(__file__))
ACTOR_PY = os.path.join(LIB_DIR, "actor.py")
PYTHON = "/usr/bin/python3"
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
DEFAULT_BIN = "/work/main/build/rstwatch"


def rstwatch_bin():
    return os.environ.get("RSTWATCH_BIN", DEFAULT_BIN)


# ---------------------------------------------------------------- cleanup registry

_lock = threading.RLock()
_live_namespaces = []  # namespace names we created, in creation order
_live_procs = {}  # pid -> subprocess.Popen we started
_handlers_installed = False
_prev_handlers = {}


def _register_proc(proc):
    with _lock:
        _live_procs[proc.pid] = proc


def _unregister_proc(proc):
    with _lock:
        _live_procs.pop(proc.pid, None)


def kill_proc(proc, sig=signal.SIGTERM, timeout=5.0):
    """Ends one process we started, by its PID: sig, then SIGKILL after timeout."""
    if proc is None:
        return None
    try:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
    finally:
        _unregister_proc(proc)
    return proc.returncode


def _delete_netns(name):
    subprocess.run([IP, "netns", "del", name], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    with _lock:
        if name in _live_namespaces:
            _live_namespaces.remove(name)


def cleanup_all():
    """Kills every process and deletes every namespace this process created."""
    with _lock:
        procs = list(_live_procs.values())
        namespaces = list(reversed(_live_namespaces))
    for proc in procs:
        try:
            kill_proc(proc, timeout=2.0)
        except Exception:  # cleanup must go on
            pass
    for name in namespaces:
        _delete_netns(name)


def _signal_handler(signum, frame):
    cleanup_all()
    prev = _prev_handlers.get(signum)
    if callable(prev):
        prev(signum, frame)
    # Default action: die with the signal's status.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers():
    global _handlers_installed
    with _lock:
        if _handlers_installed:
            return
        _handlers_installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            prev = signal.getsignal(signum)
            # SIGINT's default handler raises KeyboardInterrupt: let it (the
            # context managers clean up on the way out) after our cleanup.
            _prev_handlers[signum] = prev if prev not in (signal.SIG_DFL, signal.SIG_IGN) else None
            signal.signal(signum, _signal_handler)


def _run(cmd, check=True, timeout=30, **kw):
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s%s" % (
            res.returncode, " ".join(cmd), res.stdout, res.stderr))
    return res


def run_rstwatch(subcommand, args, timeout, env=None):
    """Runs `rstwatch SUBCOMMAND ARGS` to completion (registered for cleanup, SIGKILLed and an
    AssertionError after timeout): (rc, stdout, stderr)."""
    _install_handlers()
    proc = subprocess.Popen([rstwatch_bin(), subcommand] + list(args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _register_proc(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_proc(proc, sig=signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError("`rstwatch %s %s` still running after %.0fs; stderr:\n%s" % (
            subcommand, " ".join(args), timeout, err))
    finally:
        _unregister_proc(proc)
    return proc.returncode, out, err


# ---------------------------------------------------------------- cluster

_cluster_seq = itertools.count(0)


class Pod:
    """One pod namespace: a veth (eth0) into the node's bridge, IPv4 + IPv6 ULA."""

    def __init__(self, cluster, index, name, ns, ip4, ip6, ifname="eth0"):
        self.cluster = cluster
        self.index = index
        self.name = name  # logical name ("pod0", "proxy", ...)
        self.ns = ns  # namespace name
        self.ip4 = ip4
        self.ip6 = ip6
        self.ifname = ifname

    @property
    def ip(self):
        return self.ip4

    @property
    def ip4_mapped(self):
        return "::ffff:" + self.ip4

    def ns_cmd(self, cmd):
        return [IP, "netns", "exec", self.ns] + list(cmd)

    def run(self, cmd, check=True, timeout=30, **kw):
        """Runs cmd inside the pod and waits; returns CompletedProcess (text)."""
        return _run(self.ns_cmd(cmd), check=check, timeout=timeout, **kw)

    def popen(self, cmd, **kw):
        """Starts cmd inside the pod (ip netns exec execs it: the PID is cmd's).
        Registered for cleanup; end it with kill_proc(proc) or pod.cluster teardown."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.ns_cmd(cmd), **kw)
        _register_proc(proc)
        self.cluster._procs.append(proc)
        return proc

    def actor(self, comm=None, name=None):
        """Starts a socket actor (tests/lib/actor.py) in this pod."""
        return Actor(self, comm=comm, name=name or self.name)

    def netns_inode(self):
        return os.stat("/run/netns/" + self.ns).st_ino

    def __repr__(self):
        return "Pod(%s ns=%s %s %s)" % (self.name, self.ns, self.ip4, self.ip6)


class Cluster:
    """A "node" namespace with a bridge and N pod namespaces wired to it.

    Pod k gets 10.244.S.(k+1)/24 and fd00:244:S::(k+1)/64, S being a per-run
    subnet number derived from the PID (so concurrent runs on one host use
    different addresses, which keeps host-wide tracers' output separable).
    """

    def __init__(self, pods=2, names=None, subnet=None):
        if names is None:
            names = ["pod%d" % i for i in range(pods)]
        if len(names) > 250:
            raise ValueError("at most 250 pods")
        self.names = list(names)
        seq = next(_cluster_seq)
        self.tag = "rw%dc%d" % (os.getpid(), seq)
        if subnet is None:
            subnet = (os.getpid() * 7 + seq) % 250 + 1
        self.subnet = subnet
        self.node_ns = self.tag + "-node"
        self.bridge = "br0"
        self.bridge_ip4 = "10.244.%d.254" % subnet
        self.bridge_ip6 = "fd00:244:%x::fe" % subnet
        self.pods = []
        self._namespaces = []
        self._procs = []
        self._closed = False

    # -- lifecycle
    def __enter__(self):
        _install_handlers()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _add_ns(self, name):
        with _lock:
            _live_namespaces.append(name)
        self._namespaces.append(name)
        _run([IP, "netns", "add", name])

    def _create(self):
        n = self.node_ns
        self._add_ns(n)
        _run([IP, "-n", n, "link", "set", "lo", "up"])
        _run([IP, "-n", n, "link", "add", self.bridge, "type", "bridge"])
        _run([IP, "-n", n, "link", "set", self.bridge, "up"])
        _run([IP, "-n", n, "addr", "add", self.bridge_ip4 + "/24", "dev", self.bridge])
        _run([IP, "-n", n, "addr", "add", self.bridge_ip6 + "/64", "dev", self.bridge, "nodad"])
        for k, logical in enumerate(self.names):
            ns = "%s-p%d" % (self.tag, k)
            self._add_ns(ns)
            host_if = "veth%d" % k  # lives in the node namespace: unique there
            _run([IP, "-n", n, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                  "netns", ns])
            _run([IP, "-n", n, "link", "set", host_if, "master", self.bridge])
            _run([IP, "-n", n, "link", "set", host_if, "up"])
            ip4 = "10.244.%d.%d" % (self.subnet, k + 1)
            ip6 = "fd00:244:%x::%x" % (self.subnet, k + 1)
            _run([IP, "-n", ns, "link", "set", "lo", "up"])
            _run([IP, "-n", ns, "addr", "add", ip4 + "/24", "dev", "eth0"])
            _run([IP, "-n", ns, "addr", "add", ip6 + "/64", "dev", "eth0", "nodad"])
            _run([IP, "-n", ns, "link", "set", "eth0", "up"])
            self.pods.append(Pod(self, k, logical, ns, ip4, ip6))
        self._wait_ready()

    def _wait_ready(self, timeout=10.0):
        """Waits until every pod's eth0 is up with no tentative IPv6 address."""
        deadline = time.monotonic() + timeout
        for pod in self.pods:
            while True:
                out = _run([IP, "-n", pod.ns, "-6", "addr", "show", "dev", "eth0"]).stdout
                link = _run([IP, "-n", pod.ns, "link", "show", "dev", "eth0"]).stdout
                if "tentative" not in out and "LOWER_UP" in link:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("pod %s not ready:\n%s\n%s" % (pod.ns, link, out))
                time.sleep(0.05)

    def close(self):
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            try:
                kill_proc(proc, timeout=3.0)
            except Exception:
                pass
        for ns in reversed(self._namespaces):
            _delete_netns(ns)

    # -- helpers
    def pod(self, name):
        for p in self.pods:
            if p.name == name:
                return p
        raise KeyError(name)

    def __getitem__(self, key):
        return self.pods[key] if isinstance(key, int) else self.pod(key)

    def ips(self):
        """Every address of the cluster's pods (v4 and v6)."""
        out = set()
        for p in self.pods:
            out.add(p.ip4)
            out.add(p.ip6)
        return out


# ---------------------------------------------------------------- socket actor

class ActorError(AssertionError):
    pass


class Actor:
    """A python socket actor in a pod, driven one step at a time over stdin/stdout.

    step(op, **args) sends one JSON line and returns the actor's JSON reply
    (dict with "ok"; on socket errors "errno" like "ECONNRESET").  Each step is
    a barrier: the actor has finished it when step() returns.  start(op, ...)
    sends a step without waiting; collect it later with result().
    """

    def __init__(self, pod, comm=None, name=None, timeout=30.0):
        self.pod = pod
        self.name = name or pod.name
        self.timeout = timeout
        cmd = [PYTHON, "-u", ACTOR_PY]
        if comm:
            cmd += ["--comm", comm]
        self.proc = pod.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, bufsize=1)
        self._lines = queue.Queue()
        self._stderr = []
        self._pending = 0
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        hello = self._next(timeout=15.0)
        if hello.get("event") != "ready":
            raise ActorError("actor %s did not start: %r" % (self.name, hello))
        self.pid = hello["pid"]
        self.comm = hello["comm"]
        self.log = []

    def _read_stdout(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self):
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _next(self, timeout):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ActorError("actor %s: no reply within %.1fs; stderr:\n%s" % (
                self.name, timeout, "".join(self._stderr)))
        if line is None:
            time.sleep(0.1)
            raise ActorError("actor %s exited (rc=%s); stderr:\n%s" % (
                self.name, self.proc.poll(), "".join(self._stderr)))
        try:
            return json.loads(line)
        except ValueError:
            raise ActorError("actor %s: bad line %r" % (self.name, line))

    def start(self, op, **args):
        args["op"] = op
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        self._pending += 1

    def result(self, timeout=None, expect_ok=True):
        if self._pending <= 0:
            raise ActorError("actor %s: no step pending" % self.name)
        reply = self._next(timeout if timeout is not None else self.timeout)
        self._pending -= 1
        self.log.append(reply)
        if expect_ok and not reply.get("ok"):
            raise ActorError("actor %s step failed: %r" % (self.name, reply))
        return reply

    def step(self, op, timeout=None, expect_ok=True, **args):
        self.start(op, **args)
        return self.result(timeout=timeout, expect_ok=expect_ok)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=3)
            except Exception:
                pass
        kill_proc(self.proc, timeout=2.0)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass


# ---------------------------------------------------------------- BPF / tracer

def require_bpf():
    """Skips (or, with RSTWATCH_REQUIRE_BPF=1, fails) when rstwatch cannot trace here.

    Never silent: the reason is the skip/failure message."""
    path = rstwatch_bin()
    reason = None
    if os.geteuid() != 0:
        reason = "kernel tests need root (euid=%d)" % os.geteuid()
    elif not (os.path.isfile(path) and os.access(path, os.X_OK)):
        reason = "rstwatch binary not found or not executable: %s (set RSTWATCH_BIN)" % path
    else:
        try:
            res = subprocess.run([path, "check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, timeout=60)
            if res.returncode != 0:
                reason = "`%s check` exited %d:\n%s%s" % (path, res.returncode, res.stdout,
                                                           res.stderr)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = "`%s check` failed to run: %s" % (path, exc)
    if reason is None:
        return
    if os.environ.get("RSTWATCH_REQUIRE_BPF") == "1":
        raise AssertionError("RSTWATCH_REQUIRE_BPF=1 but BPF tracing unavailable: " + reason)
    raise unittest.SkipTest("BPF tracing unavailable (set RSTWATCH_REQUIRE_BPF=1 to fail "
                            "instead): " + reason)


def _ep(inc, side):
    """(ip, port) of incident side "client"/"server", nested or flat JSON."""
    v = inc.get(side)
    if isinstance(v, dict):
        return v.get("ip"), v.get("port")
    if isinstance(v, str) and v:
        host, _, port = v.rpartition(":")
        host = host.strip("[]")
        try:
            return host, int(port)
        except ValueError:
            return v, None
    return inc.get(side + "_ip"), inc.get(side + "_port")


def client_ep(inc):
    return _ep(inc, "client")


def server_ep(inc):
    return _ep(inc, "server")


def describe(inc):
    c, s = client_ep(inc), server_ep(inc)
    return "%s/%s %s:%s->%s:%s pid=%s comm=%s idle=%s state=%s reason=%s requests=%s" % (
        inc.get("cause"), inc.get("observer"), c[0], c[1], s[0], s[1], inc.get("pid"),
        inc.get("comm"), inc.get("idle_before_write_ms"), inc.get("state"),
        inc.get("reset_reason"), inc.get("requests"))


class ManagedProcess:
    """A process this harness starts in the root namespace, stdout and stderr read line by
    line by threads; registered with the cleanup registry and ended by PID.  The common part
    of Tracer (here), Agent and Follower (agent.py)."""

    def __init__(self, name):
        self.name = name
        self.proc = None
        self.cmd = None
        self.records = []  # every JSON object printed on stdout (_read_json_stdout)
        self.bad_lines = []
        self.stderr_lines = []
        self._threads = []
        self._lock = threading.Lock()
        self.returncode = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()
        return False

    def _spawn(self, cmd, readers, env=None):
        """Starts cmd (stdin /dev/null) and one thread per reader function."""
        _install_handlers()
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
        _register_proc(self.proc)
        self._threads = []
        for fn in readers:
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self._threads.append(t)
        return self.proc

    def _read_json_stdout(self):
        for line in self.proc.stdout:
            s = line.strip()
            if not s:
                continue
            try:
                self.records.append(json.loads(s))
            except ValueError:
                self.bad_lines.append(s)

    def _read_stderr(self):
        for line in self.proc.stderr:
            with self._lock:
                self.stderr_lines.append(line)
            self._on_stderr_line(line)

    def _on_stderr_line(self, line):
        pass

    @property
    def stderr(self):
        with self._lock:
            return "".join(self.stderr_lines)

    def lines(self):
        with self._lock:
            return list(self.stderr_lines)

    def incidents(self):
        return [r for r in self.records if isinstance(r, dict) and "cause" in r]

    def _signal_and_wait(self, sig, timeout, expect_zero=False):
        """Sends sig (unless already exited), waits; SIGKILL and AssertionError after
        timeout; with expect_zero, AssertionError unless the exit status is 0.  Returns it."""
        signame = signal.Signals(sig).name
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("%s did not exit within %.0fs of %s; stderr:\n%s" % (
                    self.name, timeout, signame, self.stderr))
        self._join()
        _unregister_proc(self.proc)
        self.returncode = self.proc.returncode
        if expect_zero and self.returncode != 0:
            raise AssertionError("%s exited %s after %s; stderr:\n%s" % (
                self.name, self.returncode, signame, self.stderr))
        return self.returncode

    def _json_incidents(self):
        """The incidents; AssertionError if stdout had non-JSON lines."""
        if self.bad_lines:
            raise AssertionError("%s: non-JSON stdout lines: %r" % (self.name, self.bad_lines[:5]))
        return self.incidents()

    def kill(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            kill_proc(self.proc, sig=signal.SIGKILL, timeout=5.0)
        else:
            _unregister_proc(self.proc)
        self._join()

    def _join(self):
        """Joins the reader threads and closes the pipes."""
        for t in self._threads:
            t.join(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass


class Tracer(ManagedProcess):
    """`rstwatch trace -o json [args]` in the root namespace, stdout JSON collected."""

    READY_TIMEOUT = 20.0

    def __init__(self, args=(), binary=None, name="tracer", env=None):
        super().__init__(name)
        self.binary = binary or rstwatch_bin()
        self.args = list(args)
        self.env = env  # None: this process's environment
        self._ready = threading.Event()

    def start(self):
        cmd = [self.binary, "trace", "-o", "json"] + self.args
        self._spawn(cmd, (self._read_json_stdout, self._read_stderr), env=self.env)
        deadline = time.monotonic() + self.READY_TIMEOUT
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = ("exited with %s" % self.proc.poll()) if self.proc.poll() is not None \
                    else "no 'tracing' line within %.0fs" % self.READY_TIMEOUT
                time.sleep(0.2)
                self.kill()
                raise AssertionError("%s (%s) %s; stderr:\n%s" % (
                    self.name, " ".join(cmd), why, self.stderr))
        return self

    def _on_stderr_line(self, line):
        if "tracing" in line:
            self._ready.set()

    def stop(self, timeout=15.0):
        """SIGINT, wait; asserts exit 0 and the "records lost" summary; returns incidents."""
        if self.proc is None:
            return []
        self._signal_and_wait(signal.SIGINT, timeout, expect_zero=True)
        if not self.summary_line():
            raise AssertionError("%s: no summary line with 'records lost' on stderr:\n%s" % (
                self.name, self.stderr))
        return self._json_incidents()

    def summary_line(self):
        for l in self.lines():
            if "records lost" in l:
                return l.strip()
        return ""


def incidents_for(incidents, ips=None, ports=None):
    """Incidents touching the given IPs (client or server) and/or ports."""
    out = []
    for inc in incidents:
        c, s = client_ep(inc), server_ep(inc)
        if ips is not None and c[0] not in ips and s[0] not in ips:
            continue
        if ports is not None and c[1] not in ports and s[1] not in ports:
            continue
        out.append(inc)
    return out


# ---------------------------------------------------------------- unittest base

class KernelTestCase(unittest.TestCase):
    """Base of the kernel tests: require_bpf() first; clusters and actors are removed with
    addCleanup (also on failure)."""

    maxDiff = None

    def setUp(self):
        require_bpf()

    def make_cluster(self, names=("server", "client")):
        c = Cluster(names=list(names))
        c.__enter__()
        self.addCleanup(c.close)
        return c

    def make_actor(self, pod, comm=None):
        """A socket actor in pod; with comm, checks the process really is named so."""
        a = pod.actor(comm=comm)
        self.addCleanup(a.stop)
        if comm:
            self.assertEqual(a.comm, comm[:15], "actor comm (/proc/PID/comm)")
        return a
