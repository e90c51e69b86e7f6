"""Kernel integration tests: each cause rstwatch reports, produced with real sockets.

Every test builds its own namespaces (client pod -> server pod over a bridge), starts
`rstwatch trace -o json` and asserts the EXACT incidents for its connections.  The socket
scenarios and the incident matching are tests/lib/scenarios.py (shared with the agent tests).
Run as root from the repo root:  /usr/bin/python3 -m unittest -v tests/kernel/test_causes.py
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import scenarios  # noqa: E402
from netns import KernelTestCase, Tracer, describe, incidents_for  # noqa: E402
from scenarios import IDLE_S, THRESHOLD_S, connect_to  # noqa: E402

SETTLE_S = 0.5  # let the last records reach the tracer before stopping it


class CausesTestCase(KernelTestCase):
    """Scenarios: tests/lib/scenarios.py (written for --idle-threshold THRESHOLD_S)."""

    def setup_pair(self, tracer=True):
        """Cluster (server, client), actors rwsrv / rwcli and (tracer=True) a started tracer."""
        c = self.make_cluster()
        server = self.make_actor(c["server"], comm="rwsrv")
        client = self.make_actor(c["client"], comm="rwcli")
        return c, server, client, (self.start_tracer() if tracer else None)

    tracer_env = None  # None: this process's environment

    def start_tracer(self, extra=(), name="tracer"):
        t = Tracer(["--idle-threshold", str(THRESHOLD_S)] + list(extra), name=name, env=self.tracer_env)
        t.start()
        self.addCleanup(t.kill)
        return t

    def stop_tracer(self, tracer):
        time.sleep(SETTLE_S)
        incidents = tracer.stop()
        print("\n  [%s] %s" % (tracer.name, tracer.summary_line()), file=sys.stderr)
        return incidents

    def assertTraced(self, tracer, expected, conns):
        """Stops the tracer; its incidents on conns must be exactly expected."""
        return self.assertIncidents(self.stop_tracer(tracer), expected, conns)

    def assertIncidents(self, incidents, expected, conns, context=""):
        """incidents touching conns' ports must be exactly `expected` (as a multiset).

        expected: dicts with cause, observer, conn, and optional pid, comm, idle_ms, requests,
        reset_reason (scenarios.incident_problems; idle_ms within scenarios.IDLE_TOL_MS)."""
        got = scenarios.incidents_of(incidents, conns)
        listing = "\n".join("    " + describe(i) for i in got) or "    (none)"
        print("  %sincidents for this test's connections:\n%s" % (
            context + ": " if context else "", listing), file=sys.stderr)
        problems = scenarios.incident_problems(got, expected)
        if problems:
            ports = set().union(*(c.ports for c in conns))
            self.fail("%s\n  %s\n  incidents for ports %s:\n%s" % (
                context, "\n  ".join(problems), sorted(ports), listing))
        return got


class TestCauses(CausesTestCase):

    def test_idle_close_race_fin(self):
        """Client reuses an idle connection; the server reads the request and closes
        without answering (FIN) -> client idle_close_race ("prematurely closed")."""
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.idle_close_fin(client, server, host=c["server"].ip4)
        self.assertTraced(tracer, expected, [conn])

    def test_idle_close_race_rst_and_abort_on_close(self):
        """Server closes with the racing request unread: RST -> client idle_close_race
        ("104 reset"), server abort_on_close (TCP_ABORT_ON_CLOSE)."""
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.idle_close_rst(client, server, host=c["server"].ip4)
        self.assertTraced(tracer, expected, [conn])

    def test_write_after_fin_and_data_after_close(self):
        c, server, client, tracer = self.setup_pair()
        conn, expected, _ = scenarios.write_after_fin(client, server, host=c["server"].ip4)
        self.assertTraced(tracer, expected, [conn])

    def test_write_after_fin_immediate_data_after_close(self):
        """The nginx timing: the client writes within ms of the server's FIN, so the
        request carries the (delayed) ACK of that FIN.  The server's orphaned FIN_WAIT1
        socket then goes FIN_WAIT2 -> tcp_done() (destroyed) and only afterwards sends
        the RST (TCP_ABORT_ON_DATA).  Both sides must still be reported."""
        c, server, client, tracer = self.setup_pair()
        conn, expected, _ = scenarios.write_after_fin(  # at once: inside the delayed-ACK window
            client, server, host=c["server"].ip4, client_delay_s=0)
        self.assertTraced(tracer, expected, [conn])

    def test_reset_other_linger0(self):
        """Client gives up on a request in flight with SO_LINGER{1,0}: reset_other on both
        sides, with the facts that kept it from a stale-keepalive cause."""
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.reset_linger0(client, server, host=c["server"].ip4,
                                                 exchanges=20)
        incidents = self.assertTraced(tracer, expected, [conn])
        facts = {i["observer"]: i.get("facts") for i in incidents}
        self.assertEqual(facts["client"]["closed_first"], "self", facts)
        self.assertTrue(facts["client"]["history"], facts)
        self.assertTrue(facts["client"]["request_unanswered"], facts)
        self.assertTrue(facts["server"]["request_unanswered"], facts)

    def test_idle_abort_is_a_reset_not_an_incident(self):
        """Client aborts an idle pooled connection with SO_LINGER{1,0}: no incident (nothing
        was in flight); the tracer still counts the connection's RSTs in its summary."""
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.reset_idle_linger0(client, server, host=c["server"].ip4)
        self.assertEqual(expected, [])
        self.assertTraced(tracer, [], [conn])

    def test_half_close_request_read_but_never_answered(self):
        """Server shutdown(SHUT_WR) and keeps reading; the client's request after the FIN is
        acknowledged and read but cannot be answered; no RST: write_after_fin at the
        client's close."""
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.half_close_read_unanswered(client, server, host=c["server"].ip4)
        self.assertTraced(tracer, expected, [conn])

    def test_healthy_keepalive_traffic(self):
        """3000 request/response exchanges over 3 keepalive connections, with idle gaps
        above the threshold answered normally, plus a server-side idle close the client
        honours -> no incident."""
        c, server, client, tracer = self.setup_pair()
        host = c["server"].ip4
        port = server.step("listen", family="inet")["port"]
        conns = [connect_to(client, server, port, host=host, name="c%d" % k) for k in range(3)]
        total = 0
        for k, conn in enumerate(conns):
            gaps = {"250": THRESHOLD_S + 0.2, "750": THRESHOLD_S + 0.4} if k < 2 else {}
            client.start("exchange", name=conn.name, count=1000, req=120, resp=700, gaps=gaps,
                         timeout=10)
            server.start("serve", name=conn.name, count=1000, req=120, resp=700)
            total += client.result(timeout=30)["done"]
            server.result(timeout=30)
        self.assertEqual(total, 3000)
        # Client closes first (normal keepalive teardown); server sees EOF and closes.
        for conn in conns:
            client.step("close", name=conn.name)
            r = server.step("recv", name=conn.name, size=10, exact=False)
            self.assertTrue(r["eof"], r)
            server.step("close", name=conn.name)
        # A server closes an idle connection and the client honours the FIN.
        dconn = connect_to(client, server, port, host=host, name="d")
        dconn.exchange(count=10, resp=100)
        server.step("sleep", seconds=THRESHOLD_S + 0.2)
        server.step("close", name="d")
        r = client.step("recv", name="d", size=10, exact=False)
        self.assertTrue(r["eof"], r)
        client.step("close", name="d")
        server.step("close", name="L")
        self.assertTraced(tracer, [], conns + [dconn])

    def test_ipv6_idle_close_race(self):
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.idle_close_rst(client, server, family="inet6",
                                                  host=c["server"].ip6)
        self.assertEqual(conn.server_ep[0], c["server"].ip6)
        self.assertTraced(tracer, expected, [conn])

    def test_ipv4_mapped_write_after_fin(self):
        """AF_INET6 client socket connecting to ::ffff:IPv4 (server is AF_INET):
        addresses reported as dotted quads."""
        c, server, client, tracer = self.setup_pair()
        conn, expected, _ = scenarios.write_after_fin(
            client, server, family="inet6", host=c["server"].ip4_mapped, listen_family="inet")
        self.assertEqual(conn.server_ep[0], c["server"].ip4)
        self.assertEqual(conn.client_ep[0], c["client"].ip4)
        self.assertTraced(tracer, expected, [conn])

    def test_connections_before_tracer_then_reset(self):
        """Connections established (and used) before the tracer started have no history:
        resets on them must not produce incidents."""
        c, server, client, _ = self.setup_pair(tracer=False)
        port = server.step("listen", family="inet")["port"]
        conns = []
        # a, b: used; c: used, then left idle; after the tracer starts the client writes on
        # it and the server closes with the request unread (the idle race, without history).
        for name in ("a", "b", "c"):
            conn = connect_to(client, server, port, host=c["server"].ip4, name=name)
            conn.exchange(count=5, resp=100)
            conns.append(conn)
        tracer = self.start_tracer()
        scenarios.resets_on(client, server, race="c", client_abort="a", server_abort="b",
                            idle_s=IDLE_S - 0.5)
        self.assertTraced(tracer, [], conns)

    def test_write_below_threshold_is_still_the_race(self):
        """Same as the RST race but the client was idle only 0.2 s (< threshold 0.5 s: the
        write hook records nothing): the RST finds the waiting request from the socket's
        counters, with its idle age from the kernel's timestamps (one jiffy precision)."""
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.idle_close_rst(client, server, host=c["server"].ip4, idle_s=0.2)
        incidents = self.assertTraced(tracer, expected, [conn])
        race = [i for i in incidents if i["observer"] == "client"][0]
        self.assertGreater(race["idle_precision_ms"], 0)
        self.assertLessEqual(race["idle_precision_ms"], 10.0)

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
        # Scenario A on port_a (re-listen on the same port), scenario B on an ephemeral one.
        conn_a, exp_a = scenarios.idle_close_rst(cli_a, srv_a, host=c["server"].ip4,
                                                 port=port_a)
        self.assertEqual(conn_a.server_ep[1], port_a)
        conn_b, exp_b, _ = scenarios.write_after_fin(cli_b, srv_b, host=c["server"].ip4)
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


class TestCausesWithProbeReads(CausesTestCase):
    """The hooks' fallback for kernels without bpf_skc_to_tcp_sock (Linux < 5.9): every socket
    field a probe read. Forced here with RSTWATCH_BPF_PROBE_READS=1 (no such kernel runs on
    these machines): the verifier must accept that path and it must classify as the typed one."""

    tracer_env = dict(os.environ, RSTWATCH_BPF_PROBE_READS="1")

    def test_check_names_the_probe_reads(self):
        import subprocess
        from netns import rstwatch_bin
        out = subprocess.run([rstwatch_bin(), "check"], env=self.tracer_env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=60).stdout
        self.assertIn("socket fields read with probe reads (RSTWATCH_BPF_PROBE_READS=1)", out)
        plain = subprocess.run([rstwatch_bin(), "check"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=60).stdout
        self.assertIn("socket fields read with plain loads (bpf_skc_to_tcp_sock)", plain)

    def test_idle_close_race_rst_and_abort_on_close(self):
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.idle_close_rst(client, server, host=c["server"].ip4)
        self.assertTraced(tracer, expected, [conn])

    def test_write_after_fin_immediate_data_after_close(self):
        c, server, client, tracer = self.setup_pair()
        conn, expected, _ = scenarios.write_after_fin(client, server, host=c["server"].ip4, client_delay_s=0)
        self.assertTraced(tracer, expected, [conn])

    def test_reset_other_linger0(self):
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.reset_linger0(client, server, host=c["server"].ip4, exchanges=20)
        self.assertTraced(tracer, expected, [conn])

    def test_ipv6_idle_close_race(self):
        c, server, client, tracer = self.setup_pair()
        conn, expected = scenarios.idle_close_rst(client, server, family="inet6", host=c["server"].ip6)
        self.assertTraced(tracer, expected, [conn])


if __name__ == "__main__":
    unittest.main(verbosity=2)
