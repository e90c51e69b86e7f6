"""Kernel tests of the agent's security posture (docs/reliability.md, "Security"):

- a world-reachable --listen (0.0.0.0, :PORT, [::]) without credentials is refused: exit 2, one
  line, nothing attached; --allow-unauthenticated serves it;
- --auth-token-file: /metrics, /incidents and /diagnose answer 401 without the token, 200 with
  it; /healthz and /readyz stay open; `rstwatch trace --from --token-file` follows the stream
  and gets an incident; without the token it fails with HTTP 401; `diagnose --from
  --token-file` works; `rstwatch status` reads the token from $RSTWATCH_TOKEN_FILE and
  reports what /metrics says;
- --tls-cert/--tls-key: https (TLS 1.2+, the certificate verified by Python, curl, `trace --from`
  and `status --from` with --ca-file) with the token still required; a bad certificate or key
  is one line, exit 2; connections to the agent's own port (curl's close_notify after the agent's
  FIN is reset, as a local tracer shows) give no incident; nor does the teardown crossing the other
  way (real TLS over loopback: the server's close_notify arriving after the client's close, which
  the client's kernel resets);
- --listen [::1]:PORT serves over IPv6 loopback only (no credentials needed, `status --from` works);
  [::]:PORT serves IPv6 and IPv4 and needs credentials like 0.0.0.0;
- capabilities: once /readyz is 200 every thread of the agent (started as root) has empty
  CapEff/CapPrm/CapInh/CapAmb/CapBnd and NoNewPrivs 1, and the agent still counts incidents
  (ring buffer and per-CPU counter map read without any capability).

Run as root from the repo root:  /usr/bin/python3 -m unittest -v tests/kernel/test_security.py
"""

import glob
import http.client
import json
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import prom  # noqa: E402
import scenarios  # noqa: E402
from agent import (READY_TIMEOUT, Agent, Follower, free_port, identity_of,  # noqa: E402
                   run_agent_expecting_failure)
from agent_case import AgentTestCase, expected_from, ours_by_workloads  # noqa: E402
from netns import Tracer, rstwatch_bin  # noqa: E402

CLIENT = dict(namespace="ingress-nginx", pod="ingress-nginx-controller-5d88c8b7f-x7k2p",
              workload="ingress-nginx-controller")
SERVER = dict(namespace="shop", pod="web-7d4b9c6f5d-q8r2m", workload="web")
CAP_BPF = 39


def entry(pod, ident):
    e = dict(ident)
    e["ip"] = pod.ip4
    return e


class OpenAgent(Agent):
    """`rstwatch agent --listen 0.0.0.0:PORT ARGS`: the DaemonSet's shape (reached here
    through 127.0.0.1, or through `host` when given). listen_host: "[::]", "[::1]" ..."""

    def __init__(self, args=(), listen_host="0.0.0.0", host="127.0.0.1", **kw):
        super().__init__(args, **kw)
        self.listen_host = listen_host
        self.host = host

    @property
    def url(self):
        return "%s://%s:%d" % ("https" if self.cafile else "http", self.host, self.port)

    def start(self):
        port = self.port or free_port()
        cmd = [self.binary, "agent", "--listen", "%s:%d" % (self.listen_host, port)] + self.args
        env = dict(os.environ)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.pop("RSTWATCH_TOKEN_FILE", None)
        self.stderr_lines = []
        self._serving.clear()
        self._spawn(cmd, (self._read_stderr, self._read_stdout), env=env)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._serving.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("%s (%s) did not start (%s); stderr:\n%s" % (
                    self.name, " ".join(cmd), self.proc.poll(), self.stderr))
        self.port = port
        self._note_links()
        if self.wait_ready:
            self.wait_readyz()
        return self


def thread_creds(pid):
    """[{CapEff: int, ..., NoNewPrivs: int}] for every thread of pid."""
    out = []
    for status in glob.glob("/proc/%d/task/*/status" % pid):
        try:
            with open(status) as f:
                text = f.read()
        except OSError:
            continue
        d = {}
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            d[key] = int(re.search(r"^%s:\s*([0-9a-f]+)" % key, text, re.M).group(1), 16)
        d["NoNewPrivs"] = int(re.search(r"^NoNewPrivs:\s*(\d+)", text, re.M).group(1))
        out.append(d)
    return out


def error_lines(stderr):
    return [l for l in stderr.splitlines() if l.strip()]


class TestSecurity(AgentTestCase):

    def make_token(self, text=None):
        d = tempfile.mkdtemp(prefix="rw-token-")
        path = os.path.join(d, "token")
        with open(path, "w") as f:
            f.write(text if text is not None else os.urandom(24).hex() + "\n")
        os.chmod(path, 0o600)

        def cleanup():
            os.unlink(path)
            os.rmdir(d)
        self.addCleanup(cleanup)
        with open(path) as f:
            return path, f.read().strip()

    def start_open_agent(self, args):
        ag = OpenAgent(args)
        self.addCleanup(self._dump_agent_on_failure, ag)
        self.addCleanup(ag.kill)
        self.addCleanup(ag.note_exit)
        ag.start()
        return ag

    def get(self, ag, path, token=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        return prom.http_get(ag.url + path, headers=headers)

    # ------------------------------------------------------------------ refusal rule
    def test_world_reachable_without_auth_is_refused(self):
        for listen in ("0.0.0.0:%d" % free_port(), ":%d" % free_port(), "[::]:%d" % free_port()):
            rc, err, out, leaked = run_agent_expecting_failure(["--listen", listen, "--kube", "off"])
            self.assertEqual(rc, 2, "%s: %s" % (listen, err))
            lines = error_lines(err)
            self.assertEqual(len(lines), 1, err)
            self.assertIn("refusing to serve /incidents and /metrics on %s without authentication" % listen,
                          lines[0])
            self.assertIn("--allow-unauthenticated", lines[0])
            self.assertEqual(out, "")
            self.assertEqual(leaked, {}, "BPF links left behind")
            self.assertNotIn("attach", err)

    def test_auth_file_errors_are_one_line_exit_2(self):
        empty, _ = self.make_token(text="\n")
        cases = [
            (["--auth-token-file", empty], "empty"),
            (["--auth-token-file", "/nonexistent/rw-token"],
             "rstwatch: --auth-token-file: /nonexistent/rw-token: No such file or directory"),
            (["--tls-cert", "/nonexistent/cert.pem"], "rstwatch: --tls-cert: /nonexistent/cert.pem"),
        ]
        for args, needle in cases:
            rc, err, _, leaked = run_agent_expecting_failure(
                ["--listen", "0.0.0.0:%d" % free_port(), "--kube", "off"] + args)
            self.assertEqual(rc, 2, "%s: %s" % (args, err))
            self.assertEqual(len(error_lines(err)), 1, err)
            self.assertIn(needle, err)
            self.assertEqual(leaked, {})

    def make_cert(self, cn="127.0.0.1"):
        """A self-signed certificate for 127.0.0.1: (cert path, key path)."""
        d = tempfile.mkdtemp(prefix="rw-tls-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", d]))
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=" + cn, "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", d + "/key.pem", "-out", d + "/cert.pem"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.assertEqual(r.returncode, 0, "openssl req (scripts/deps.sh --test installs openssl): " + r.stderr)
        return d + "/cert.pem", d + "/key.pem"

    def test_tls_file_errors_are_one_line_exit_2(self):
        token, _ = self.make_token()
        cert, key = self.make_cert()
        other_cert, other_key = self.make_cert(cn="other")
        garbage = os.path.join(os.path.dirname(cert), "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        cases = [
            (["--tls-cert", cert, "--tls-key", other_key],
             "--tls-key %s: the key does not match the certificate of --tls-cert %s" % (
                 re.escape(other_key), re.escape(cert))),
            (["--tls-cert", garbage, "--tls-key", key], "--tls-cert %s: no PEM certificate" % re.escape(garbage)),
            (["--tls-cert", cert, "--tls-key", cert], "--tls-key %s: no usable PEM private key" % re.escape(cert)),
            (["--tls-cert", cert, "--tls-key", "/nonexistent/key.pem"],
             "rstwatch: --tls-key: /nonexistent/key.pem: No such file or directory"),
            (["--tls-cert", cert], "rstwatch: --tls-cert: needs --tls-key"),
        ]
        for extra, pattern in cases:
            with self.subTest(extra=extra):
                rc, err, _, leaked = run_agent_expecting_failure(
                    ["--listen", "127.0.0.1:%d" % free_port(), "--kube", "off", "--auth-token-file", token] + extra)
                self.assertEqual(rc, 2, err)
                self.assertEqual(leaked, {}, "BPF links left attached")
                lines = error_lines(err)
                self.assertEqual(len(lines), 1, err)
                self.assertRegex(lines[0], pattern)

    def test_tls_serves_https_and_its_own_port_is_not_counted(self):
        token_file, token = self.make_token()
        cert, key = self.make_cert()
        c = self.make_cluster(["server", "client"])
        pm = self.make_pod_map([entry(c["server"], SERVER), entry(c["client"], CLIENT)])
        ag = OpenAgent(["--auth-token-file", token_file, "--tls-cert", cert, "--tls-key", key,
                        "--pod-map", pm.path, "--kube", "off", "--idle-threshold", "0.5"],
                       cafile=cert, token=token)
        self.addCleanup(self._dump_agent_on_failure, ag)
        self.addCleanup(ag.kill)
        self.addCleanup(ag.note_exit)
        ag.start()  # waited for https /readyz 200 (certificate verified against cert)
        self.assertIn("serving https://0.0.0.0:%d" % ag.port, ag.stderr)

        # TLS 1.2 or later, verified; credentials still required; no plain http on the port.
        context = ssl.create_default_context(cafile=cert)
        with socket.create_connection(("127.0.0.1", ag.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                self.assertIn(tls.version(), ("TLSv1.2", "TLSv1.3"))
        untrusted = ssl.create_default_context()  # system CAs only: the self-signed cert fails
        with self.assertRaises(ssl.SSLCertVerificationError):
            with socket.create_connection(("127.0.0.1", ag.port), timeout=5) as raw:
                untrusted.wrap_socket(raw, server_hostname="127.0.0.1")
        for path in ("/metrics", "/incidents", "/diagnose"):
            self.assertEqual(prom.http_get(ag.url + path, cafile=cert)[0], 401, path)
        self.assertEqual(prom.http_get(ag.url + "/healthz", cafile=cert)[0], 200)
        self.assertEqual(ag.get("/metrics")[0], 200)
        with self.assertRaises((OSError, http.client.HTTPException)):
            status = prom.http_get("http://127.0.0.1:%d/healthz" % ag.port, timeout=3)[0]
            self.assertNotEqual(status, 200)
            raise OSError("plain http answered %d" % status)

        # A local tracer (its own BPF session) sees what the agent's port itself causes.
        tracer = Tracer(name="host-tracer")
        self.addCleanup(tracer.kill)
        tracer.start()
        # The agent's stream over https, and a real race for it to carry.
        f = Follower(ag.url, ["--token-file", token_file, "--ca-file", cert], name="tls-follower")
        self.addCleanup(f.kill)
        f.start()
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        _, exp = scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=8093)
        # Scrapes over TLS by curl, which answers the agent's close_notify + FIN with its own
        # close_notify: the agent's closed socket resets it (it closes right after its answer),
        # a teardown, not an incident.
        for _ in range(10):
            r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", cert,
                                "-H", "Authorization: Bearer " + token, ag.url + "/metrics"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=20)
            self.assertEqual(r.stdout, "200", r.stderr)
        self.settle(1.0)
        streamed = f.stop()
        traced = tracer.stop()
        # The tracer saw the TLS teardowns of those scrapes (curl's close_notify reset by the
        # agent's closed socket) and counted them as what they are: no request was lost.
        summary = tracer.summary_line()
        m = re.search(r"(\d+) TLS close_notify teardowns", summary)
        self.assertTrue(m and int(m.group(1)) > 0, "the tracer saw no TLS teardown on the agent's port: "
                        "the check below would prove nothing: %s" % summary)
        self.assertEqual([i for i in traced if i["server"]["port"] == ag.port], [],
                         "TLS teardowns of the scrapes reported as incidents")
        self.assertEqual([i for i in streamed if i["server"]["port"] == ag.port], [])
        got = [i for i in streamed if i["server"]["port"] == 8093 and i["server"]["ip"] == c["server"].ip4]
        self.assertEqual(sorted(i["cause"] for i in got), ["abort_on_close", "idle_close_race"], got)
        cid, sid = identity_of(entry(c["client"], CLIENT)), identity_of(entry(c["server"], SERVER))
        self.assertIncidentCounts(ag.scrape(), expected_from([exp], (cid, sid), 8093),
                                  ours_by_workloads({CLIENT["workload"], SERVER["workload"]}))

        # rstwatch status over https as the kubectl plugin runs it in the agent's pod (components/tls):
        # no flags, URL, CA and token from the pod's environment.
        r = subprocess.run([rstwatch_bin(), "status", "-o", "json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30,
                           env=dict(os.environ, RSTWATCH_TOKEN_FILE=token_file, RSTWATCH_AGENT_URL=ag.url,
                                    RSTWATCH_CA_FILE=cert))
        self.assertEqual(r.returncode, 0, r.stderr)
        status = json.loads(r.stdout)
        rows = status if isinstance(status, list) else [status]
        self.assertEqual(rows[0]["agent"], ag.url, r.stdout)
        self.assertGreaterEqual(rows[0]["incidents"], 2, r.stdout)  # host-wide: the race's two at least
        self.assertTrue(rows[0]["ready"], r.stdout)
        # Without the CA: one line naming the certificate problem, exit 1.
        r = subprocess.run([rstwatch_bin(), "status", "--from", ag.url, "--token-file", token_file],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(len(error_lines(r.stderr)), 1, r.stderr)
        self.assertIn("certificate", r.stderr)
        self.assertEqual(ag.stop(), 0)

    # ------------------------------------------------------------------ IPv6
    def test_ipv6_listen_addresses(self):
        """--listen [::1]:PORT: loopback, no credentials needed, IPv4 not served; [::]:PORT:
        every address, IPv4 included, credentials required; `status --from http://[::1]:PORT`."""
        ag = OpenAgent(["--kube", "off"], listen_host="[::1]", host="[::1]")
        self.addCleanup(self._dump_agent_on_failure, ag)
        self.addCleanup(ag.kill)
        ag.start()  # waited for /readyz 200 over ::1
        self.assertIn("serving http://[::1]:%d" % ag.port, ag.stderr)
        self.assertIn("no authentication", ag.stderr)
        self.assertEqual(ag.scrape().total("rstwatch_records_lost_total"), 0)
        with self.assertRaises(OSError):
            prom.http_get("http://127.0.0.1:%d/healthz" % ag.port, timeout=3)
        r = subprocess.run([rstwatch_bin(), "status", "--from", ag.url, "-o", "json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = json.loads(r.stdout)
        rows = rows if isinstance(rows, list) else [rows]
        self.assertTrue(rows[0]["ready"], r.stdout)
        self.assertEqual(ag.stop(), 0)

        token_file, token = self.make_token()
        every = OpenAgent(["--kube", "off", "--auth-token-file", token_file], listen_host="[::]", host="[::1]",
                          token=token)
        self.addCleanup(self._dump_agent_on_failure, every)
        self.addCleanup(every.kill)
        every.start()
        for host in ("[::1]", "127.0.0.1"):
            base = "http://%s:%d" % (host, every.port)
            self.assertEqual(prom.http_get(base + "/metrics")[0], 401, host)
            self.assertEqual(prom.http_get(base + "/metrics", headers={"Authorization": "Bearer " + token})[0],
                             200, host)
            self.assertEqual(prom.http_get(base + "/healthz")[0], 200, host)
        self.assertEqual(every.stop(), 0)

    # ------------------------------------------------------------------ opt-in
    def test_allow_unauthenticated_serves_and_counts(self):
        c = self.make_cluster(["server", "client"])
        pm = self.make_pod_map([entry(c["server"], SERVER), entry(c["client"], CLIENT)])
        ag = self.start_open_agent(["--allow-unauthenticated", "--pod-map", pm.path, "--kube", "off",
                                    "--idle-threshold", "0.5"])
        self.assertIn("no authentication", ag.stderr)
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        _, exp = scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=8091)
        self.settle()
        m = ag.scrape()  # no credentials
        cid, sid = identity_of(entry(c["client"], CLIENT)), identity_of(entry(c["server"], SERVER))
        self.assertIncidentCounts(m, expected_from([exp], (cid, sid), 8091),
                                  ours_by_workloads({CLIENT["workload"], SERVER["workload"]}))
        self.assertEqual(ag.stop(), 0)

    # ------------------------------------------------------------------ token + capabilities
    def test_tls_close_notify_arriving_after_the_clients_close_is_a_teardown(self):
        """The TLS teardown crossing the other way (seen once in CI with curl against the agent's
        port): the client reads its answer, writes its close_notify a jiffy later (so its socket's
        times show a send after the last receive), closes (FIN), and only then the server's
        close_notify arrives: the client's kernel resets it (TCP_ABORT_ON_DATA). Real TLS (Python's
        ssl over two loopback sockets, each step in order), a local tracer: no incident, the
        teardown counted; a first connection, so the server is not yet known to speak TLS."""
        cert, key = self.make_cert()
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=cert)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        tracer = Tracer(["--log-level", "trace"], name="tls-tracer")
        self.addCleanup(tracer.kill)
        tracer.start()
        csock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(csock.close)
        ssock, _ = listener.accept()
        self.addCleanup(ssock.close)
        client_port = csock.getsockname()[1]
        ends = {"client": (csock, ssl.MemoryBIO(), ssl.MemoryBIO()),
                "server": (ssock, ssl.MemoryBIO(), ssl.MemoryBIO())}
        tls = {"client": client_ctx.wrap_bio(ends["client"][1], ends["client"][2], server_hostname="127.0.0.1"),
               "server": server_ctx.wrap_bio(ends["server"][1], ends["server"][2], server_side=True)}

        def flush(side):  # what the TLS stack wrote goes out on the socket
            sock, _, outgoing = ends[side]
            data = outgoing.read()
            if data:
                sock.sendall(data)
            return len(data)

        def pull(side, wait=0.05):  # what arrived on the socket goes to the TLS stack
            sock, incoming, _ = ends[side]
            got = 0
            while select.select([sock], [], [], wait)[0]:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
                got += len(data)
                wait = 0.01
            return got

        def call(side, fn, *args):  # one TLS step, pumping until it completes
            deadline = time.monotonic() + 5
            while True:
                try:
                    result = fn(*args)
                    flush(side)
                    return result
                except ssl.SSLWantReadError:
                    flush(side)
                    for other in ends:
                        pull(other, 0.01)
                    self.assertLess(time.monotonic(), deadline, "TLS %s step stuck" % side)

        # Handshake, one request and its answer.
        deadline = time.monotonic() + 5
        done = set()
        while len(done) < 2:
            for side in ("client", "server"):
                if side not in done:
                    try:
                        tls[side].do_handshake()
                        done.add(side)
                    except ssl.SSLWantReadError:
                        pass
                    flush(side)
            for side in ends:
                pull(side, 0.01)
            self.assertLess(time.monotonic(), deadline, "TLS handshake stuck")
        request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        call("client", tls["client"].write, request)
        got = b""
        while len(got) < len(request):
            got += call("server", tls["server"].read, 65536)
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        call("server", tls["server"].write, answer)
        got = b""
        while len(got) < len(answer):
            got += call("client", tls["client"].read, 65536)
        pull("client")  # nothing left unread on the client (TLS 1.3 session tickets)

        # The client's close_notify a jiffy and more after the answer, acknowledged; then its FIN.
        time.sleep(0.03)
        try:
            tls["client"].unwrap()
        except ssl.SSLWantReadError:
            pass  # sent ours; the server's is not awaited
        self.assertIn(flush("client"), range(23, 32), "the client's close_notify is one alert record")
        time.sleep(0.05)
        csock.shutdown(socket.SHUT_RDWR)
        self.assertGreater(pull("server", 1.0), 0)  # the server takes the close_notify (and the FIN)
        try:
            tls["server"].unwrap()  # answers with its own close_notify
        except ssl.SSLWantReadError:
            pass
        self.assertIn(flush("server"), range(23, 32), "the server's close_notify is one alert record")
        deadline = time.monotonic() + 5
        # The client's kernel answers it with RST: the server's socket goes to CLOSE (TCP_INFO).
        while ssock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 7:
            self.assertLess(time.monotonic(), deadline, "the client's kernel did not reset the server")
            time.sleep(0.02)
        time.sleep(0.2)
        incidents = tracer.stop()

        self.assertEqual([i for i in incidents if port in (i["server"]["port"], i["client"]["port"])], [],
                         "a TLS teardown reported as an incident")
        records = [l for l in tracer.lines() if " record type=" in l]
        reply = [l for l in records if "type=7 " in l and ":%d->127.0.0.1:%d " % (client_port, port) in l]
        self.assertEqual(len(reply), 1, "the client's RST answering the server's close_notify, once:\n" +
                         "\n".join(l for l in records if str(port) in l))
        summary = tracer.summary_line()
        m = re.search(r"(\d+) TLS close_notify teardowns", summary)
        self.assertTrue(m and int(m.group(1)) >= 1, summary)

    def test_token_protected_stream_and_dropped_capabilities(self):
        token_file, token = self.make_token()
        c = self.make_cluster(["server", "client"])
        pm = self.make_pod_map([entry(c["server"], SERVER), entry(c["client"], CLIENT)])
        ag = self.start_open_agent(["--auth-token-file", token_file, "--pod-map", pm.path, "--kube", "off",
                                    "--idle-threshold", "0.5"])  # start() waited for /readyz 200

        # Capabilities: every thread, as the kernel reports them, after readiness.
        dropped = [l for l in ag.lines() if "dropped capabilities" in l]
        self.assertEqual(len(dropped), 1, ag.stderr)
        self.assertIn("bounding set emptied; no_new_privs set", dropped[0])
        kept = 0
        if "kept cap_bpf" in dropped[0]:  # pre-6.5 kernel gating bpf(): documented exception
            kept = 1 << CAP_BPF
        else:
            self.assertIn("kept none", dropped[0])
        creds = thread_creds(ag.proc.pid)
        # At least the main thread, the HTTP server's and its heartbeat timer: all started before
        # the drop, so the drop must have reached threads other than its own.
        self.assertGreaterEqual(len(creds), 3, "agent threads")
        for t in creds:
            self.assertEqual((t["CapEff"], t["CapPrm"], t["CapInh"], t["CapAmb"], t["CapBnd"], t["NoNewPrivs"]),
                             (kept, kept, 0, 0, 0, 1), creds)

        # Endpoints.
        for path in ("/metrics", "/incidents", "/diagnose"):
            status, headers, _ = self.get(ag, path)
            self.assertEqual(status, 401, path)
            self.assertIn("Bearer", headers.get("www-authenticate", ""))
            self.assertEqual(self.get(ag, path, token="wrong" + token)[0], 401, path)
        for path in ("/healthz", "/readyz"):
            self.assertEqual(self.get(ag, path)[0], 200, path)
        self.assertEqual(self.get(ag, "/metrics", token=token)[0], 200)

        # trace --from without the token: HTTP 401, exit 1, one error line.
        r = subprocess.run([rstwatch_bin(), "trace", "--from", ag.url, "-o", "json", "--duration", "5"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30,
                           env={k: v for k, v in os.environ.items() if k != "RSTWATCH_TOKEN_FILE"})
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("HTTP 401", r.stderr)
        self.assertEqual(r.stdout, "")

        # With the token: follows, and gets the incident driven after the drop.
        f = Follower(ag.url, ["--token-file", token_file], name="token-follower")
        self.addCleanup(f.kill)
        f.start()
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        conn, exp = scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=8092)
        self.settle(1.0)
        got = [i for i in f.stop() if i["server"]["port"] == 8092 and i["server"]["ip"] == c["server"].ip4]
        self.assertEqual(sorted(i["cause"] for i in got), ["abort_on_close", "idle_close_race"], got)

        status, _, body = self.get(ag, "/metrics", token=token)
        self.assertEqual(status, 200)
        cid, sid = identity_of(entry(c["client"], CLIENT)), identity_of(entry(c["server"], SERVER))
        self.assertIncidentCounts(prom.parse(body), expected_from([exp], (cid, sid), 8092),
                                  ours_by_workloads({CLIENT["workload"], SERVER["workload"]}))
        # The per-CPU counters map is read (bpf() on the open fd) without capabilities: hold
        # 5 loopback connections open and see rstwatch_tracked_connections count them.
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        held = []
        for _ in range(5):
            a = socket.create_connection(lsock.getsockname())
            b, _ = lsock.accept()
            a.sendall(b"x")
            b.recv(1)
            held += [a, b]
        try:
            time.sleep(1.5)  # the gauge is refreshed once a second
            status, _, body = self.get(ag, "/metrics", token=token)
            tracked = [s.value for s in prom.parse(body).samples_of("rstwatch_tracked_connections")]
            self.assertEqual(len(tracked), 1)
            self.assertGreaterEqual(tracked[0], 10, "per-CPU counters map read after the drop")
        finally:
            for s_ in held + [lsock]:
                s_.close()

        # diagnose --from: token from the flag, and from $RSTWATCH_TOKEN_FILE (the DaemonSet's env).
        r = subprocess.run([rstwatch_bin(), "diagnose", "--from", ag.url, "--token-file", token_file, "-o", "json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        env = dict(os.environ, RSTWATCH_TOKEN_FILE=token_file)
        r = subprocess.run([rstwatch_bin(), "diagnose", "--from", ag.url, "-o", "json"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        env.pop("RSTWATCH_TOKEN_FILE")
        r = subprocess.run([rstwatch_bin(), "diagnose", "--from", ag.url, "-o", "json"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("HTTP 401", r.stderr)

        # status (what `kubectl rstwatch status` runs in each agent pod): token from
        # $RSTWATCH_TOKEN_FILE; the row matches /metrics; without the token: one line, exit 1.
        env = dict(os.environ, RSTWATCH_TOKEN_FILE=token_file)
        # The agent counts the whole host's incidents, and other jobs on a shared machine make
        # some while this runs: the row must lie between a scrape before and one after it.
        def incidents_now():
            return sum(s_.value for s_ in prom.parse(self.get(ag, "/metrics", token=token)[2])
                       .samples_of("rstwatch_incidents_total"))
        before = incidents_now()
        r = subprocess.run([rstwatch_bin(), "status", "--from", ag.url, "-o", "json"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        st = json.loads(r.stdout)
        metrics = prom.parse(self.get(ag, "/metrics", token=token)[2])
        build = metrics.samples_of("rstwatch_build_info")[0].labels_dict
        self.assertEqual((st["ready"], st["write_hook"], st["version"]), (True, build["write_hook"], build["version"]))
        self.assertEqual(st["records_lost"], metrics.samples_of("rstwatch_records_lost_total")[0].value)
        self.assertGreaterEqual(st["incidents"], before)
        self.assertLessEqual(st["incidents"], sum(s_.value for s_ in metrics.samples_of("rstwatch_incidents_total")))
        self.assertGreaterEqual(st["incidents"], 2)
        r = subprocess.run([rstwatch_bin(), "status", "--from", ag.url, "--no-headers"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split()[:3], [ag.url, "yes", build["write_hook"]], r.stdout)
        env.pop("RSTWATCH_TOKEN_FILE")
        r = subprocess.run([rstwatch_bin(), "status", "--from", ag.url], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual((r.returncode, r.stdout), (1, ""), r.stderr)
        self.assertEqual(len(error_lines(r.stderr)), 1, r.stderr)
        self.assertIn("HTTP 401", r.stderr)

        # Still detaches cleanly without capabilities: exit 0, no rw_* link left.
        self.assertEqual(ag.stop(), 0, ag.stderr)


if __name__ == "__main__":
    unittest.main()
