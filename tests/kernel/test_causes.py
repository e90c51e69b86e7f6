"""Kernel integration tests: each cause rstwatch reports, produced with real sockets.

Every test builds its own namespaces (client pod -> server pod over a bridge), starts
`rstwatch trace -o json` and asserts the EXACT incidents for its connections.
Run as root from the repo root:  /usr/bin/python3 -m unittest -v tests/kernel/test_causes.py
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from netns import (Cluster, Tracer, client_ep, describe, incidents_for,  # noqa: E402
                   require_bpf, server_ep)

THRESHOLD_S = 0.5  # --idle-threshold used by these tests
IDLE_S = 1.5  # scripted idle before the racing write (well above the threshold)
IDLE_TOL_MS = 60.0  # tolerance on idle_before_write_ms
SETTLE_S = 0.5  # let the last records reach the tracer before stopping it


def plain_ip(ip):
    """rstwatch prints v4-mapped addresses as dotted quads."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


class Conn:
    """One connection between a client actor and a server actor."""

    def __init__(self, client, server, cinfo, sinfo, listen_port):
        self.client = client
        self.server = server
        self.client_ep = (plain_ip(cinfo["local"][0]), cinfo["local"][1])
        self.server_ep = (plain_ip(cinfo["peer"][0]), cinfo["peer"][1])
        self.listen_port = listen_port
        self.last_rx = None  # client's last receive end (monotonic), for idle checks

    @property
    def ports(self):
        return {self.client_ep[1], self.server_ep[1]}

    def exchange(self, count=1, req=100, resp=200, gaps=None):
        """count request/response exchanges; client writes req bytes, server answers."""
        self.client.start("exchange", count=count, req=req, resp=resp, gaps=gaps or {})
        self.server.step("serve", count=count, req=req, resp=resp)
        r = self.client.result()
        self.last_rx = r["t1"]
        return r


class KernelTestCase(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        require_bpf()

    # -- fixtures (all cleaned up by addCleanup, also on failure)
    def make_cluster(self, names=("server", "client")):
        c = Cluster(names=list(names))
        c.__enter__()
        self.addCleanup(c.close)
        return c

    def make_actor(self, pod, comm=None):
        a = pod.actor(comm=comm)
        self.addCleanup(a.stop)
        return a

    def start_tracer(self, extra=(), name="tracer"):
        t = Tracer(["--idle-threshold", str(THRESHOLD_S)] + list(extra), name=name)
        t.start()
        self.addCleanup(t.kill)
        return t

    def stop_tracer(self, tracer):
        time.sleep(SETTLE_S)
        incidents = tracer.stop()
        print("\n  [%s] %s" % (tracer.name, tracer.summary_line()), file=sys.stderr)
        return incidents

    def connect(self, client, server, family="inet", host=None, listen_family=None,
                listen_host=None, listener="L"):
        """Server listens on an ephemeral port, client connects: returns a Conn."""
        lf = listen_family or family
        args = {"family": lf, "name": listener}
        if listen_host:
            args["host"] = listen_host
        port = server.step("listen", **args)["port"]
        client.start("connect", family=family, host=host, port=port, name="c")
        server.step("accept", listener=listener, name="c")
        cinfo = client.result()
        return Conn(client, server, cinfo, None, port)

    # -- assertions
    def assertIncidents(self, incidents, expected, conns, context=""):
        """incidents touching conns' ports must be exactly `expected` (as a multiset).

        expected: dicts with cause, observer, conn, and optional pid, comm, idle_ms,
        reset_reason, state."""
        ports, ips = set(), set()
        for c in conns:
            ports |= c.ports
            ips |= {c.client_ep[0], c.server_ep[0]}
        got = incidents_for(incidents, ips=ips, ports=ports)
        listing = "\n".join("    " + describe(i) for i in got) or "    (none)"
        print("  %sincidents for this test's connections:\n%s" % (
            context + ": " if context else "", listing), file=sys.stderr)
        unmatched = list(got)
        problems = []
        for exp in expected:
            conn = exp["conn"]
            best, best_err = None, None
            for inc in unmatched:
                errs = self._mismatch(inc, exp, conn)
                if not errs:
                    best = inc
                    break
                if inc.get("cause") == exp["cause"] and inc.get("observer") == exp["observer"]:
                    best_err = errs
            if best is None:
                problems.append("missing %s/%s on %s->%s%s" % (
                    exp["cause"], exp["observer"], conn.client_ep, conn.server_ep,
                    (" (closest differs: %s)" % "; ".join(best_err)) if best_err else ""))
            else:
                unmatched.remove(best)
        for inc in unmatched:
            problems.append("unexpected incident: " + describe(inc))
        if problems:
            self.fail("%s\n  %s\n  incidents for ports %s:\n%s" % (
                context, "\n  ".join(problems), sorted(ports), listing))
        return got

    def _mismatch(self, inc, exp, conn):
        errs = []
        if inc.get("cause") != exp["cause"]:
            errs.append("cause %s" % inc.get("cause"))
        if inc.get("observer") != exp["observer"]:
            errs.append("observer %s" % inc.get("observer"))
        if tuple(client_ep(inc)) != conn.client_ep:
            errs.append("client %s != %s" % (client_ep(inc), conn.client_ep))
        if tuple(server_ep(inc)) != conn.server_ep:
            errs.append("server %s != %s" % (server_ep(inc), conn.server_ep))
        if "pid" in exp and inc.get("pid") != exp["pid"]:
            errs.append("pid %s != %s" % (inc.get("pid"), exp["pid"]))
        if "comm" in exp and inc.get("comm") != exp["comm"]:
            errs.append("comm %r != %r" % (inc.get("comm"), exp["comm"]))
        if "reset_reason" in exp and inc.get("reset_reason") != exp["reset_reason"]:
            errs.append("reset_reason %r != %r" % (inc.get("reset_reason"), exp["reset_reason"]))
        if "idle_ms" in exp:
            idle = inc.get("idle_before_write_ms")
            if not isinstance(idle, (int, float)) or abs(idle - exp["idle_ms"]) > IDLE_TOL_MS:
                errs.append("idle_before_write_ms %s, expected %.1f +- %.0f" % (
                    idle, exp["idle_ms"], IDLE_TOL_MS))
        return errs

    # -- scenario building blocks (used by several tests)
    def scenario_idle_close_rst(self, client, server, family="inet", host=None):
        """Idle keepalive connection; client writes after IDLE_S; the server closes
        with the request unread -> RST (abort on close)."""
        conn = self.connect(client, server, family=family, host=host)
        conn.exchange()
        client.step("sleep", seconds=IDLE_S)
        w = client.step("send", size=100)
        unread = server.step("wait_readable")["unread"]
        self.assertGreater(unread, 0)
        server.step("close", name="c")
        r = client.step("recv", size=200, exact=False, expect_ok=False)
        self.assertEqual(r.get("errno"), "ECONNRESET", r)
        client.step("close", name="c")
        server.step("close", name="L")
        idle_ms = (w["t0"] - conn.last_rx) * 1000.0
        expected = [
            dict(cause="idle_close_race", observer="client", conn=conn, pid=client.pid,
                 comm=client.comm, idle_ms=idle_ms),
            dict(cause="abort_on_close", observer="server", conn=conn,
                 reset_reason="TCP_ABORT_ON_CLOSE"),
        ]
        return conn, expected

    def scenario_write_after_fin(self, client, server, family="inet", host=None,
                                 listen_family=None):
        """Server closes an idle connection (FIN); the client, in CLOSE_WAIT, writes;
        the server's closed socket answers RST."""
        conn = self.connect(client, server, family=family, host=host,
                            listen_family=listen_family)
        conn.exchange()
        server.step("sleep", seconds=THRESHOLD_S + 0.1)
        server.step("close", name="c")
        client.step("wait_state", state="CLOSE_WAIT", timeout=5)
        client.step("sleep", seconds=0.3)
        w = client.step("send", size=100)  # accepted locally: CLOSE_WAIT may still send
        r = client.step("recv", size=200, exact=False, expect_ok=False, timeout=3)
        # The FIN is queued before the RST: the first read may report EOF.
        client.step("close", name="c")
        server.step("close", name="L")
        idle_ms = (w["t0"] - conn.last_rx) * 1000.0
        expected = [
            dict(cause="write_after_fin", observer="client", conn=conn, pid=client.pid,
                 comm=client.comm, idle_ms=idle_ms),
            dict(cause="data_after_close", observer="server", conn=conn),
        ]
        return conn, expected, r


class TestCauses(KernelTestCase):

    def test_idle_close_race_fin(self):
        """Client reuses an idle connection; the server reads the request and closes
        without answering (FIN) -> client idle_close_race ("prematurely closed")."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn = self.connect(client, server, host=c["server"].ip4)
        conn.exchange()
        client.step("sleep", seconds=IDLE_S)
        w = client.step("send", size=100)
        server.step("recv", size=100)
        server.step("close", name="c")
        r = client.step("recv", size=200, exact=False)
        self.assertTrue(r["eof"], r)
        client.step("close", name="c")
        server.step("close", name="L")
        incidents = self.stop_tracer(tracer)
        idle_ms = (w["t0"] - conn.last_rx) * 1000.0
        self.assertIncidents(incidents, [
            dict(cause="idle_close_race", observer="client", conn=conn, pid=client.pid,
                 comm="rwcli", idle_ms=idle_ms),
        ], [conn])

    def test_idle_close_race_rst_and_abort_on_close(self):
        """Server closes with the racing request unread: RST -> client idle_close_race
        ("104 reset"), server abort_on_close (TCP_ABORT_ON_CLOSE)."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn, expected = self.scenario_idle_close_rst(client, server, host=c["server"].ip4)
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, expected, [conn])

    def test_write_after_fin_and_data_after_close(self):
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn, expected, r = self.scenario_write_after_fin(client, server, host=c["server"].ip4)
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, expected, [conn])

    def test_write_after_fin_immediate_data_after_close(self):
        """The nginx timing: the client writes within ms of the server's FIN, so the
        request carries the (delayed) ACK of that FIN.  The server's orphaned FIN_WAIT1
        socket then goes FIN_WAIT2 -> tcp_done() (destroyed) and only afterwards sends
        the RST (TCP_ABORT_ON_DATA).  Both sides must still be reported."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn = self.connect(client, server, host=c["server"].ip4)
        conn.exchange()
        server.step("sleep", seconds=THRESHOLD_S + 0.1)
        server.step("close", name="c")
        client.step("wait_state", state="CLOSE_WAIT", timeout=5)
        w = client.step("send", size=100)  # at once: inside the delayed-ACK window
        client.step("recv", size=200, exact=False, expect_ok=False, timeout=3)
        client.step("close", name="c")
        server.step("close", name="L")
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, [
            dict(cause="write_after_fin", observer="client", conn=conn, pid=client.pid,
                 comm="rwcli", idle_ms=(w["t0"] - conn.last_rx) * 1000.0),
            dict(cause="data_after_close", observer="server", conn=conn),
        ], [conn])

    def test_reset_other_linger0(self):
        """Client aborts a busy connection with SO_LINGER{1,0}: reset_other on both sides."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn = self.connect(client, server, host=c["server"].ip4)
        conn.exchange(count=20)
        client.step("close", name="c", linger0=True)
        r = server.step("recv", size=100, exact=False, expect_ok=False)
        self.assertEqual(r.get("errno"), "ECONNRESET", r)
        server.step("close", name="c")
        server.step("close", name="L")
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, [
            dict(cause="reset_other", observer="server", conn=conn),
            dict(cause="reset_other", observer="client", conn=conn),
        ], [conn])

    def test_half_close_answered_normally(self):
        """Server shutdown(SHUT_WR) but keeps reading; the client's write in CLOSE_WAIT
        is read; both close normally -> no incident."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn = self.connect(client, server, host=c["server"].ip4)
        conn.exchange()
        server.step("sleep", seconds=0.2)
        server.step("shutdown", name="c", how="wr")
        client.step("wait_state", state="CLOSE_WAIT", timeout=5)
        client.step("sleep", seconds=0.3)
        client.step("send", size=100)
        r = server.step("recv", size=100)
        self.assertEqual(r["n"], 100)
        server.step("close", name="c")
        r = client.step("recv", size=10, exact=False)
        self.assertTrue(r["eof"], r)
        client.step("close", name="c")
        server.step("close", name="L")
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, [], [conn])

    def test_healthy_keepalive_traffic(self):
        """3000 request/response exchanges over 3 keepalive connections, with idle gaps
        above the threshold answered normally, plus a server-side idle close the client
        honours -> no incident."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        port = server.step("listen", family="inet")["port"]
        conns = []
        for k in range(3):
            name = "c%d" % k
            client.start("connect", family="inet", host=c["server"].ip4, port=port, name=name)
            server.step("accept", name=name)
            cinfo = client.result()
            conns.append((name, Conn(client, server, cinfo, None, port)))
        total = 0
        for k, (name, conn) in enumerate(conns):
            gaps = {"250": THRESHOLD_S + 0.2, "750": THRESHOLD_S + 0.4} if k < 2 else {}
            client.start("exchange", name=name, count=1000, req=120, resp=700, gaps=gaps,
                         timeout=10)
            server.start("serve", name=name, count=1000, req=120, resp=700)
            total += client.result(timeout=30)["done"]
            server.result(timeout=30)
        self.assertEqual(total, 3000)
        # Client closes first (normal keepalive teardown); server sees EOF and closes.
        for name, conn in conns:
            client.step("close", name=name)
            r = server.step("recv", name=name, size=10, exact=False)
            self.assertTrue(r["eof"], r)
            server.step("close", name=name)
        # A server closes an idle connection and the client honours the FIN.
        client.start("connect", family="inet", host=c["server"].ip4, port=port, name="d")
        server.step("accept", name="d")
        dconn = Conn(client, server, client.result(), None, port)
        client.start("exchange", name="d", count=10)
        server.step("serve", name="d", count=10)
        client.result()
        server.step("sleep", seconds=THRESHOLD_S + 0.2)
        server.step("close", name="d")
        r = client.step("recv", name="d", size=10, exact=False)
        self.assertTrue(r["eof"], r)
        client.step("close", name="d")
        server.step("close", name="L")
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, [], [conn for _, conn in conns] + [dconn])

    def test_ipv6_idle_close_race(self):
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn, expected = self.scenario_idle_close_rst(client, server, family="inet6",
                                                      host=c["server"].ip6)
        self.assertEqual(conn.server_ep[0], c["server"].ip6)
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, expected, [conn])

    def test_ipv4_mapped_write_after_fin(self):
        """AF_INET6 client socket connecting to ::ffff:IPv4 (server is AF_INET):
        addresses reported as dotted quads."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn, expected, _ = self.scenario_write_after_fin(
            client, server, family="inet6", host=c["server"].ip4_mapped, listen_family="inet")
        self.assertEqual(conn.server_ep[0], c["server"].ip4)
        self.assertEqual(conn.client_ep[0], c["client"].ip4)
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, expected, [conn])

    def test_connections_before_tracer_then_reset(self):
        """Connections established (and used) before the tracer started have no history:
        resets on them must not produce incidents."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        port = server.step("listen", family="inet")["port"]
        conns = []
        for name in ("a", "b"):
            client.start("connect", family="inet", host=c["server"].ip4, port=port, name=name)
            server.step("accept", name=name)
            conn = Conn(client, server, client.result(), None, port)
            client.start("exchange", name=name, count=5)
            server.step("serve", name=name, count=5)
            client.result()
            conns.append(conn)
        # c: used, then left idle; after the tracer starts the client writes on it and
        # the server closes with the request unread (the idle race, without history).
        client.start("connect", family="inet", host=c["server"].ip4, port=port, name="c")
        server.step("accept", name="c")
        conn_c = Conn(client, server, client.result(), None, port)
        client.start("exchange", name="c", count=5)
        server.step("serve", name="c", count=5)
        client.result()
        conns.append(conn_c)
        tracer = self.start_tracer()
        client.step("sleep", seconds=IDLE_S - 0.5)
        client.step("send", name="c", size=100)
        server.step("wait_readable", name="c")
        server.step("close", name="c")
        r = client.step("recv", name="c", size=10, exact=False, expect_ok=False)
        self.assertEqual(r.get("errno"), "ECONNRESET", r)
        client.step("close", name="c")
        # a: the client aborts (RST from the client).
        client.step("close", name="a", linger0=True)
        r = server.step("recv", name="a", size=10, exact=False, expect_ok=False)
        self.assertEqual(r.get("errno"), "ECONNRESET", r)
        server.step("close", name="a")
        # b: the server aborts (RST from the server).
        server.step("close", name="b", linger0=True)
        r = client.step("recv", name="b", size=10, exact=False, expect_ok=False)
        self.assertEqual(r.get("errno"), "ECONNRESET", r)
        client.step("close", name="b")
        server.step("close", name="L")
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, [], conns)

    def test_write_below_threshold_is_not_a_race(self):
        """Same as the RST race but the client was idle only 0.2 s (< threshold 0.5 s):
        the client's RST is not an idle race (reset_other); the server's abort stays."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        tracer = self.start_tracer()
        conn = self.connect(client, server, host=c["server"].ip4)
        conn.exchange()
        client.step("sleep", seconds=0.2)
        client.step("send", size=100)
        server.step("wait_readable")
        server.step("close", name="c")
        r = client.step("recv", size=200, exact=False, expect_ok=False)
        self.assertEqual(r.get("errno"), "ECONNRESET", r)
        client.step("close", name="c")
        server.step("close", name="L")
        incidents = self.stop_tracer(tracer)
        self.assertIncidents(incidents, [
            dict(cause="reset_other", observer="client", conn=conn),
            dict(cause="abort_on_close", observer="server", conn=conn,
                 reset_reason="TCP_ABORT_ON_CLOSE"),
        ], [conn])

    def test_filters(self):
        """--port, --cause, --pid and --comm each keep only the matching scenario."""
        c = self.make_cluster(names=("server", "client"))
        srv_a = self.make_actor(c["server"], comm="rwsrva")
        cli_a = self.make_actor(c["client"], comm="rwclia")
        srv_b = self.make_actor(c["server"], comm="rwsrvb")
        cli_b = self.make_actor(c["client"], comm="rwclib")
        # Listeners first: the --port filter needs scenario A's server port.
        port_a = srv_a.step("listen", family="inet", name="pre")["port"]
        srv_a.step("close", name="pre")
        tracers = {
            "all": self.start_tracer(name="all"),
            "port": self.start_tracer(["--port", str(port_a)], name="port"),
            "cause": self.start_tracer(["--cause", "write_after_fin"], name="cause"),
            "pid": self.start_tracer(["--pid", str(cli_b.pid)], name="pid"),
            "comm": self.start_tracer(["--comm", "rwclia"], name="comm"),
        }
        # Scenario A on port_a (re-listen on the same port).
        conn_a = self._connect_on(cli_a, srv_a, c["server"].ip4, port_a)
        conn_a.exchange()
        cli_a.step("sleep", seconds=IDLE_S)
        wa = cli_a.step("send", size=100)
        srv_a.step("wait_readable")
        srv_a.step("close", name="c")
        cli_a.step("recv", size=200, exact=False, expect_ok=False)
        cli_a.step("close", name="c")
        srv_a.step("close", name="L")
        conn_b, exp_b, _ = self.scenario_write_after_fin(cli_b, srv_b, host=c["server"].ip4)
        exp_a = [
            dict(cause="idle_close_race", observer="client", conn=conn_a, pid=cli_a.pid,
                 comm="rwclia", idle_ms=(wa["t0"] - conn_a.last_rx) * 1000.0),
            dict(cause="abort_on_close", observer="server", conn=conn_a,
                 reset_reason="TCP_ABORT_ON_CLOSE"),
        ]
        time.sleep(SETTLE_S)
        got = {name: t.stop() for name, t in tracers.items()}
        b_client = [e for e in exp_b if e["observer"] == "client"]
        a_client = [e for e in exp_a if e["observer"] == "client"]
        self.assertIncidents(got["all"], exp_a + exp_b, [conn_a, conn_b], "unfiltered")
        self.assertIncidents(got["port"], exp_a, [conn_a, conn_b], "--port %d" % port_a)
        self.assertIncidents(got["cause"], b_client, [conn_a, conn_b], "--cause write_after_fin")
        for inc in got["cause"]:
            self.assertEqual(inc["cause"], "write_after_fin", describe(inc))
        # --pid / --comm: everything kept (host-wide) has that pid/comm; the scenario's
        # client incident is there; nothing of the other scenario.  Server-side incidents
        # of the scenario may be kept only if they carry the same pid/comm.
        for name, exp_client, other, key, value in (
                ("pid", b_client, conn_a, "pid", cli_b.pid),
                ("comm", a_client, conn_b, "comm", "rwclia")):
            for inc in got[name]:
                self.assertEqual(inc.get(key), value, "--%s kept %s" % (name, describe(inc)))
            mine = exp_client[0]["conn"]
            kept = incidents_for(got[name], ips=c.ips(), ports=mine.ports)
            server_side = [i for i in kept if i.get("observer") == "server"]
            self.assertIncidents([i for i in kept if i not in server_side], exp_client,
                                 [mine], "--%s" % name)
            self.assertEqual(incidents_for(got[name], ips=c.ips(), ports=other.ports), [],
                             "--%s kept the other scenario" % name)

    def _connect_on(self, client, server, host, port):
        server.step("listen", family="inet", port=port)
        client.start("connect", family="inet", host=host, port=port, name="c")
        server.step("accept", name="c")
        return Conn(client, server, client.result(), None, port)


if __name__ == "__main__":
    unittest.main(verbosity=2)
