"""Socket scenarios shared by the kernel tests: each produces one known kind of incident
between a client actor and a server actor (tests/lib/actor.py), and returns the connection
and the incidents rstwatch must report for it.

Factored out of tests/kernel/test_causes.py (same steps, same timings by default) so the
tracer, agent, Prometheus and benchmark tests drive identical traffic.  Plain functions:
they raise AssertionError when the sockets do not behave as the scenario requires.

    conn, expected = idle_close_rst(client_actor, server_actor, host=server_pod.ip4, port=8080)
    expected -> [{"cause": "idle_close_race", "observer": "client", "conn": conn, ...}, ...]
"""

THRESHOLD_S = 0.5  # --idle-threshold these scenarios are written for
IDLE_S = 1.5  # scripted idle before the racing write (well above the threshold)


def plain_ip(ip):
    """rstwatch prints v4-mapped addresses as dotted quads."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


class Conn:
    """One connection between a client actor and a server actor."""

    def __init__(self, client, server, cinfo, sinfo, listen_port, name="c"):
        self.client = client
        self.server = server
        self.name = name
        self.client_ep = (plain_ip(cinfo["local"][0]), cinfo["local"][1])
        self.server_ep = (plain_ip(cinfo["peer"][0]), cinfo["peer"][1])
        self.listen_port = listen_port
        self.last_rx = None  # client's last receive end (monotonic), for idle checks

    @property
    def ports(self):
        return {self.client_ep[1], self.server_ep[1]}

    def exchange(self, count=1, req=100, resp=200, gaps=None):
        """count request/response exchanges; client writes req bytes, server answers."""
        self.client.start("exchange", name=self.name, count=count, req=req, resp=resp,
                          gaps=gaps or {})
        self.server.step("serve", name=self.name, count=count, req=req, resp=resp)
        r = self.client.result()
        self.last_rx = r["t1"]
        return r

    def __repr__(self):
        return "Conn(%s:%s -> %s:%s)" % (self.client_ep + self.server_ep)


def connect(client, server, family="inet", host=None, listen_family=None, listen_host=None,
            listener="L", port=0, name="c"):
    """Server listens (port 0: ephemeral), client connects to host: returns a Conn."""
    lf = listen_family or family
    args = {"family": lf, "name": listener, "port": port}
    if listen_host:
        args["host"] = listen_host
    port = server.step("listen", **args)["port"]
    client.start("connect", family=family, host=host, port=port, name=name)
    server.step("accept", listener=listener, name=name)
    cinfo = client.result()
    return Conn(client, server, cinfo, None, port, name=name)


def _check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def idle_close_rst(client, server, family="inet", host=None, port=0, idle_s=IDLE_S):
    """Idle keepalive connection; client writes after idle_s; the server closes with the
    request unread -> RST: client idle_close_race, server abort_on_close."""
    conn = connect(client, server, family=family, host=host, port=port)
    conn.exchange()
    client.step("sleep", seconds=idle_s)
    w = client.step("send", size=100)
    unread = server.step("wait_readable")["unread"]
    _check(unread > 0, "server saw no unread request")
    server.step("close", name="c")
    r = client.step("recv", size=200, exact=False, expect_ok=False)
    _check(r.get("errno") == "ECONNRESET", "client recv: %r, expected ECONNRESET" % (r,))
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


def write_after_fin(client, server, family="inet", host=None, listen_family=None, port=0,
                    server_idle_s=THRESHOLD_S + 0.1, client_delay_s=0.3):
    """Server closes an idle connection (FIN) after server_idle_s; the client, in CLOSE_WAIT,
    writes client_delay_s later; the server's closed socket answers RST: client
    write_after_fin, server data_after_close.  Returns (conn, expected, client recv reply)."""
    conn = connect(client, server, family=family, host=host, listen_family=listen_family,
                   port=port)
    conn.exchange()
    server.step("sleep", seconds=server_idle_s)
    server.step("close", name="c")
    client.step("wait_state", state="CLOSE_WAIT", timeout=5)
    if client_delay_s:
        client.step("sleep", seconds=client_delay_s)
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


def reset_linger0(client, server, family="inet", host=None, port=0, exchanges=20):
    """Client aborts a busy connection with SO_LINGER{1,0}: reset_other on both sides."""
    conn = connect(client, server, family=family, host=host, port=port)
    conn.exchange(count=exchanges)
    client.step("close", name="c", linger0=True)
    r = server.step("recv", size=100, exact=False, expect_ok=False)
    _check(r.get("errno") == "ECONNRESET", "server recv: %r, expected ECONNRESET" % (r,))
    server.step("close", name="c")
    server.step("close", name="L")
    expected = [
        dict(cause="reset_other", observer="server", conn=conn),
        dict(cause="reset_other", observer="client", conn=conn),
    ]
    return conn, expected


def healthy_reuse(client, server, family="inet", host=None, port=0, gaps_s=(0.8, 0.8),
                  count=6):
    """A keepalive connection with idle gaps (above the threshold) that the server answers
    normally, then a normal close (client first).  No incident.  Returns (conn, idle gaps
    measured client-side: seconds from the previous response to the reusing write)."""
    conn = connect(client, server, family=family, host=host, port=port)
    gaps = {}
    step = max(1, count // (len(gaps_s) + 1))
    for k, g in enumerate(gaps_s):
        gaps[str(step * (k + 1))] = g
    r = conn.exchange(count=count, gaps=gaps)
    _check(r["done"] == count, "exchange: %r" % (r,))
    client.step("close", name="c")
    rr = server.step("recv", size=10, exact=False)
    _check(rr["eof"], "server did not see EOF: %r" % (rr,))
    server.step("close", name="c")
    server.step("close", name="L")
    measured = [t1 - t0 for _, t0, t1 in r["gaps"]]
    return conn, measured
