"""Harness for `rstwatch agent` tests: the agent process, its HTTP endpoints, followers
(`rstwatch trace --from`), pod map files and BPF link bookkeeping.  Standard library only.

    with Agent(["--pod-map", path]) as ag:     # picks a free loopback port, waits for
        m = ag.scrape()                         # "serving http://" and /readyz 200
        f = Follower(ag.url, ["--namespace", "shop"]).start()
        ...
        ag.stop()                               # SIGTERM: asserts exit 0, nothing attached

Processes are registered with netns.py's cleanup registry (ended by PID on failure,
SIGINT/SIGTERM and exit).  The agent listens on 127.0.0.1 only.
"""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse

import netns
import prom
from netns import rstwatch_bin

BPFTOOL = "/usr/sbin/bpftool" if os.path.exists("/usr/sbin/bpftool") else "bpftool"
READY_TIMEOUT = 30.0
PAIR = ("client_namespace", "client_pod", "client_workload", "server_namespace", "server_pod",
        "server_workload", "server_port")


def free_port():
    """A TCP port free on 127.0.0.1 right now (the caller binds it soon after)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def agent_available():
    """True when the binary has the `agent` subcommand (its help mentions --listen)."""
    try:
        r = subprocess.run([rstwatch_bin(), "agent", "--help"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "--listen" in r.stdout


def require_agent():
    """require_bpf() plus the agent subcommand (skip, or fail with RSTWATCH_REQUIRE_BPF=1)."""
    netns.require_bpf()
    if not agent_available():
        msg = "`%s agent --help` does not document --listen: no agent subcommand" % rstwatch_bin()
        if os.environ.get("RSTWATCH_REQUIRE_BPF") == "1":
            raise AssertionError(msg)
        import unittest
        raise unittest.SkipTest(msg)


# ---------------------------------------------------------------- pod map

def pod_map_yaml(entries):
    """entries: dicts with ip|cidr and namespace/pod/workload or name -> YAML text."""
    lines = ["endpoints:"]
    for e in entries:
        first = True
        for key in ("ip", "cidr", "namespace", "pod", "workload", "name"):
            if key in e and e[key] is not None:
                lines.append("%s%s: %s" % ("  - " if first else "    ", key, e[key]))
                first = False
    if len(lines) == 1:
        lines[0] = "endpoints: []"
    return "\n".join(lines) + "\n"


class PodMapFile:
    """A pod map in a private temp file; write() replaces it atomically (rename)."""

    def __init__(self, entries=None, text=None):
        self.dir = tempfile.mkdtemp(prefix="rw-podmap-")
        self.path = os.path.join(self.dir, "podmap.yaml")
        self.write(entries=entries, text=text)

    def write(self, entries=None, text=None):
        if text is None:
            text = pod_map_yaml(entries or [])
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.path)
        self.text = text

    def cleanup(self):
        for p in glob.glob(os.path.join(self.dir, "*")):
            try:
                os.unlink(p)
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def identity_of(entry):
    """(namespace, pod, workload) the agent should label an endpoint of a pod-map entry with."""
    if "name" in entry:
        return ("", "", entry["name"])
    return (entry["namespace"], entry["pod"], entry.get("workload") or entry["pod"])


# ---------------------------------------------------------------- BPF links

def rw_links():
    """{link_id: prog_name} of BPF links whose program is named rw_*."""
    progs = json.loads(subprocess.run([BPFTOOL, "-j", "prog", "show"], stdout=subprocess.PIPE,
                                      text=True, check=True, timeout=30).stdout or "[]")
    names = {p["id"]: p.get("name", "") for p in progs}
    links = json.loads(subprocess.run([BPFTOOL, "-j", "link", "show"], stdout=subprocess.PIPE,
                                      text=True, check=True, timeout=30).stdout or "[]")
    return {l["id"]: names.get(l.get("prog_id"), "") for l in links
            if names.get(l.get("prog_id"), "").startswith("rw_")}


def bpf_fd_ids(pid):
    """(prog ids, map ids, link ids) of the BPF objects process pid holds fds of (its
    /proc/PID/fdinfo)."""
    ids = {"prog_id": set(), "map_id": set(), "link_id": set()}
    for path in glob.glob("/proc/%d/fdinfo/*" % pid):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for key, found in ids.items():
            m = re.search(r"^%s:\s*(\d+)" % key, text, re.M)
            if m:
                found.add(int(m.group(1)))
    return ids["prog_id"], ids["map_id"], ids["link_id"]


def links_held_by(pid):
    """BPF link ids held open by process pid."""
    return bpf_fd_ids(pid)[2]


def links_held_by_anyone():
    out = set()
    for d in glob.glob("/proc/[0-9]*"):
        try:
            out |= links_held_by(int(os.path.basename(d)))
        except ValueError:
            pass
    return out


def leaked_rw_links(before):
    """rw_* links that exist now, did not before, and no live process holds (pinned or
    otherwise left behind)."""
    now = rw_links()
    new = {i: n for i, n in now.items() if i not in before}
    if not new:
        return {}
    held = links_held_by_anyone()
    return {i: n for i, n in new.items() if i not in held}


# ---------------------------------------------------------------- agent process

class Agent(netns.ManagedProcess):
    """`rstwatch agent --listen 127.0.0.1:PORT ARGS`, stderr collected line by line."""

    def __init__(self, args=(), binary=None, name="agent", idle_threshold=0.5, port=None,
                 wait_ready=True, env=None, cafile=None, token=None):
        """cafile: the agent serves https (--tls-cert ...) and clients verify against it;
        token: the bearer token its own get()/scrape() send."""
        super().__init__(name)
        self.cafile = cafile
        self.token = token
        self.binary = binary or rstwatch_bin()
        self.args = list(args)
        if idle_threshold is not None and "--idle-threshold" not in self.args:
            self.args += ["--idle-threshold", str(idle_threshold)]
        self.port = port
        self.wait_ready = wait_ready
        self.env = env
        self._serving = threading.Event()
        self.exit_before_cleanup = None
        self.links = set()  # BPF link ids this agent held (seen while it ran)

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.cafile else "http", self.port)

    def start(self):
        for attempt in range(3):
            port = self.port or free_port()
            cmd = [self.binary, "agent", "--listen", "127.0.0.1:%d" % port] + self.args
            env = dict(os.environ)
            env.pop("KUBERNETES_SERVICE_HOST", None)  # never in-cluster by accident
            if self.env:
                env.update(self.env)
            self.stderr_lines = []
            self._serving.clear()
            self._spawn(cmd, (self._read_stderr, self._read_stdout), env=env)
            deadline = time.monotonic() + READY_TIMEOUT
            while not self._serving.wait(0.05):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
            if self._serving.is_set():
                self.port = port
                break
            rc = self.proc.poll()
            time.sleep(0.2)
            self.kill()
            if rc is not None and self.port is None and "in use" in self.stderr.lower():
                continue  # lost the race for the free port: pick another one
            raise AssertionError("%s (%s) %s; stderr:\n%s" % (
                self.name, " ".join(cmd),
                ("exited with %s" % rc) if rc is not None else
                "no 'serving http://' line within %.0fs" % READY_TIMEOUT, self.stderr))
        else:
            raise AssertionError("%s: could not find a free port" % self.name)
        self._note_links()
        if self.wait_ready:
            self.wait_readyz()
        return self

    def _on_stderr_line(self, line):
        if re.search(r"serving https?:(//|\\/\\/)", line):
            self._serving.set()

    def _read_stdout(self):
        for line in self.proc.stdout:
            with self._lock:
                self.stderr_lines.append("[stdout] " + line)

    def _note_links(self):
        if self.proc is not None and self.proc.poll() is None:
            self.links |= links_held_by(self.proc.pid)

    def note_exit(self):
        """Records whether (and how) the agent had exited before the test's cleanup."""
        self.exit_before_cleanup = self.proc.poll() if self.proc is not None else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- HTTP
    def _headers(self):
        return {"Authorization": "Bearer " + self.token} if self.token else None

    def get(self, path, timeout=5.0):
        return prom.http_get(self.url + path, timeout=timeout, headers=self._headers(), cafile=self.cafile)

    def scrape(self, timeout=5.0):
        self._note_links()
        return prom.scrape(self.url + "/metrics", timeout=timeout, headers=self._headers(), cafile=self.cafile)

    def wait_readyz(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError("%s exited (%s) before /readyz; stderr:\n%s" % (
                    self.name, self.proc.poll(), self.stderr))
            try:
                last = self.get("/readyz", timeout=2)
                if last[0] == 200:
                    return last
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise AssertionError("%s: /readyz not 200 within %.0fs (last %r); stderr:\n%s" % (
            self.name, timeout, last, self.stderr))

    # -- signals / stop
    def send_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_log(self, pattern, start=0, timeout=10.0):
        """Waits for a stderr line (index >= start) matching regex pattern; returns it or None."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            for line in lines[start:]:
                if rx.search(line):
                    return line
            if time.monotonic() > deadline or not self.running():
                return None
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Sends sig, waits (SIGKILL and AssertionError after timeout); returns the exit code."""
        self._note_links()
        return self._signal_and_wait(sig, timeout)


def run_agent_expecting_failure(args, timeout=30.0):
    """Runs `rstwatch agent ARGS` to completion; returns (rc, stderr, stdout, leaked links)."""
    before = rw_links()
    env = dict(os.environ)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    rc, out, err = netns.run_rstwatch("agent", args, timeout, env=env)
    return rc, err, out, leaked_rw_links(before)


# ---------------------------------------------------------------- followers

class Follower(netns.ManagedProcess):
    """`rstwatch trace --from URL -o json ARGS`: the agent's stream, JSON lines collected."""

    def __init__(self, url, args=(), name="follower"):
        super().__init__(name)
        self.url = url
        self.args = list(args)

    def start(self, timeout=15.0):
        self._spawn([rstwatch_bin(), "trace", "--from", self.url, "-o", "json"] + self.args,
                    (self._read_json_stdout, self._read_stderr))
        self.wait_connected(timeout)
        return self

    def wait_connected(self, timeout):
        """Until the follower holds an established TCP connection to the agent's port (its
        subscription is then a request away: a short grace follows)."""
        port = urllib.parse.urlsplit(self.url).port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError("%s (%s) exited %s; stderr:\n%s" % (
                    self.name, " ".join(self.cmd), self.proc.poll(), self.stderr))
            if _pid_has_connection(self.proc.pid, port):
                time.sleep(0.5)
                return
            time.sleep(0.05)
        raise AssertionError("%s: no connection to port %d within %.0fs; stderr:\n%s" % (
            self.name, port, timeout, self.stderr))

    def stop(self, timeout=10.0):
        """SIGINT; asserts exit 0 and JSON-only stdout; returns the incidents."""
        self._signal_and_wait(signal.SIGINT, timeout, expect_zero=True)
        return self._json_incidents()


def _pid_has_connection(pid, port):
    """Whether process pid has an ESTABLISHED TCP connection to 127.0.0.1:port."""
    inodes = set()
    for fd in glob.glob("/proc/%d/fd/*" % pid):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    if not inodes:
        return False
    want = ("0100007F:%04X" % port, "0000000000000000FFFF00000100007F:%04X" % port)
    for table in ("/proc/%d/net/tcp" % pid, "/proc/%d/net/tcp6" % pid):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "01" and parts[2] in want and parts[9] in inodes:
                        return True
        except OSError:
            continue
    return False


class IncidentStream:
    """A raw GET /incidents reader in a thread: keeps every line (incidents, {"dropped"},
    heartbeats) and the response headers, to check the wire format."""

    def __init__(self, url, timeout=30.0):
        import http.client
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        self.conn.request("GET", "/incidents")
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        self.lines = []
        self.error = None
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    return
                self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))
        except Exception as e:  # closed by close()
            self.error = e

    def objects(self):
        out = []
        for l in list(self.lines):
            if l.strip():
                out.append(json.loads(l))
        return out

    def incidents(self):
        return [o for o in self.objects() if "cause" in o]

    def close(self):
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except Exception:
            pass
        try:
            self.conn.close()
        except Exception:
            pass
        self._t.join(timeout=5)


# ---------------------------------------------------------------- metric helpers

def pair_labels(client_id, server_id, server_port):
    """dict of the 7 PAIR labels from (namespace, pod, workload) tuples."""
    return dict(client_namespace=client_id[0], client_pod=client_id[1],
                client_workload=client_id[2], server_namespace=server_id[0],
                server_pod=server_id[1], server_workload=server_id[2],
                server_port=str(server_port))


def stream_pair_key(inc):
    """(cause, observer, PAIR values) of a streamed incident (`trace --from -o json`)."""
    c, s = inc["client"], inc["server"]
    return (inc["cause"], inc["observer"], c.get("namespace"), c.get("pod"), c.get("workload"),
            s.get("namespace"), s.get("pod"), s.get("workload"), str(s.get("port")))


def metric_pair_key(sample):
    d = sample.labels_dict
    return (d.get("cause"), d.get("observer")) + tuple(d.get(k) for k in PAIR)
