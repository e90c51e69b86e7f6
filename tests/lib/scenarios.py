"""Socket scenarios shared by the kernel tests: each produces one known kind of incident
between a client actor and a server actor (tests/lib/actor.py), and returns the connection
and the incidents rstwatch must report for it.

The scenarios of tests/kernel/test_causes.py (same steps, same timings by default), so the
tracer, agent, Prometheus and benchmark tests drive identical traffic; incident_problems()
matches rstwatch's JSON incidents against an expected list.  Plain functions:
they raise AssertionError when the sockets do not behave as the scenario requires.

    conn, expected = idle_close_rst(client_actor, server_actor, host=server_pod.ip4, port=8080)
    expected -> [{"cause": "idle_close_race", "observer": "client", "conn": conn, ...}, ...]
    problems = incident_problems(incidents_of(tracer_incidents, [conn]), expected)
"""

from netns import client_ep, describe, incidents_for, server_ep

THRESHOLD_S = 0.5  # --idle-threshold these scenarios are written for
IDLE_S = 1.5  # scripted idle before the racing write (well above the threshold)
IDLE_TOL_MS = 60.0  # tolerance on idle_before_write_ms against an expected idle_ms


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
        self.exchanges = 0  # completed request/response exchanges (one segment each way)

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
        self.exchanges += count
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
    return connect_to(client, server, port, family=family, host=host, listener=listener,
                      name=name)


def connect_to(client, server, port, family="inet", host=None, listener="L", name="c"):
    """Client connects to the server's existing listener on port: returns a Conn."""
    client.start("connect", family=family, host=host, port=port, name=name)
    server.step("accept", listener=listener, name=name)
    cinfo = client.result()
    return Conn(client, server, cinfo, None, port, name=name)


def _check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def _idle_then_write(client, server, idle_s, **connect_args):
    """A used keepalive connection on which the client writes a request after idle_s:
    (conn, the send step's reply)."""
    conn = connect(client, server, **connect_args)
    conn.exchange()
    client.step("sleep", seconds=idle_s)
    return conn, client.step("send", size=100)


def _close_both(conn):
    """The client closes the connection, the server its listener (L)."""
    conn.client.step("close", name=conn.name)
    conn.server.step("close", name="L")


def _client_incident(cause, conn, write):
    """The client-side incident expected for the write (send step reply) on conn: the
    connection carried its exchanges and then the failing request."""
    return dict(cause=cause, observer="client", conn=conn, pid=conn.client.pid,
                comm=conn.client.comm, idle_ms=(write["t0"] - conn.last_rx) * 1000.0,
                requests=conn.exchanges + 1)


def idle_close_fin(client, server, family="inet", host=None, port=0, idle_s=IDLE_S):
    """Idle keepalive connection; client writes after idle_s; the server reads the request
    and closes without answering (FIN): client idle_close_race ("prematurely closed")."""
    conn, w = _idle_then_write(client, server, idle_s, family=family, host=host, port=port)
    server.step("recv", size=100)
    server.step("close", name="c")
    r = client.step("recv", size=200, exact=False)
    _check(r["eof"], "client recv: %r, expected EOF" % (r,))
    _close_both(conn)
    return conn, [_client_incident("idle_close_race", conn, w)]


def idle_close_rst(client, server, family="inet", host=None, port=0, idle_s=IDLE_S):
    """Idle keepalive connection; client writes after idle_s; the server closes with the
    request unread -> RST: client idle_close_race, server abort_on_close."""
    conn, w = _idle_then_write(client, server, idle_s, family=family, host=host, port=port)
    unread = server.step("wait_readable")["unread"]
    _check(unread > 0, "server saw no unread request")
    server.step("close", name="c")
    r = client.step("recv", size=200, exact=False, expect_ok=False)
    _check(r.get("errno") == "ECONNRESET", "client recv: %r, expected ECONNRESET" % (r,))
    _close_both(conn)
    expected = [
        _client_incident("idle_close_race", conn, w),
        dict(cause="abort_on_close", observer="server", conn=conn,
             reset_reason="TCP_ABORT_ON_CLOSE"),
    ]
    return conn, expected


def resets_on(client, server, race, client_abort, server_abort, idle_s):
    """Resets on three open, used connections (names as given to connect_to): on `race` the
    client writes after idle_s and the server closes with the request unread (RST both
    ways); `client_abort` is aborted by the client, `server_abort` by the server (SO_LINGER
    0). Then the server closes its listener L. Used on connections that predate the tracer:
    their RSTs must be counted and given no cause."""
    client.step("sleep", seconds=idle_s)
    client.step("send", name=race, size=100)
    server.step("wait_readable", name=race)
    server.step("close", name=race)
    r = client.step("recv", name=race, size=10, exact=False, expect_ok=False)
    _check(r.get("errno") == "ECONNRESET", "client recv on %s: %r, expected ECONNRESET" % (race, r))
    client.step("close", name=race)
    for aborter, peer, name in ((client, server, client_abort), (server, client, server_abort)):
        aborter.step("close", name=name, linger0=True)
        r = peer.step("recv", name=name, size=10, exact=False, expect_ok=False)
        _check(r.get("errno") == "ECONNRESET", "recv on %s: %r, expected ECONNRESET" % (name, r))
        peer.step("close", name=name)
    server.step("close", name="L")


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
    _close_both(conn)
    expected = [
        _client_incident("write_after_fin", conn, w),
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
        dict(cause="reset_other", observer="server", conn=conn, requests=exchanges),
        dict(cause="reset_other", observer="client", conn=conn, requests=exchanges),
    ]
    return conn, expected


def half_close_answered(client, server, family="inet", host=None, port=0):
    """Server shutdown(SHUT_WR) but keeps reading; the client's write in CLOSE_WAIT is read;
    both close normally.  No incident: returns (conn, [])."""
    conn = connect(client, server, family=family, host=host, port=port)
    conn.exchange()
    server.step("sleep", seconds=0.2)
    server.step("shutdown", name="c", how="wr")
    client.step("wait_state", state="CLOSE_WAIT", timeout=5)
    client.step("sleep", seconds=0.3)
    client.step("send", size=100)
    r = server.step("recv", size=100)
    _check(r["n"] == 100, "server recv: %r, expected 100 bytes" % (r,))
    server.step("close", name="c")
    r = client.step("recv", size=10, exact=False)
    _check(r["eof"], "client recv: %r, expected EOF" % (r,))
    _close_both(conn)
    return conn, []


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


# ---------------------------------------------------------------- matching rstwatch's incidents

def incidents_of(incidents, conns):
    """The incidents touching conns' addresses and ports."""
    ports, ips = set(), set()
    for c in conns:
        ports |= c.ports
        ips |= {c.client_ep[0], c.server_ep[0]}
    return incidents_for(incidents, ips=ips, ports=ports)


def incident_mismatch(inc, exp, tol_ms=IDLE_TOL_MS):
    """How incident inc (rstwatch JSON) differs from exp (an entry of an expected list: cause,
    observer, conn, and optional pid, comm, idle_ms, reset_reason, requests, state): [] when it
    matches."""
    conn = exp["conn"]
    errs = []
    if inc.get("cause") != exp["cause"]:
        errs.append("cause %s" % inc.get("cause"))
    if inc.get("observer") != exp["observer"]:
        errs.append("observer %s" % inc.get("observer"))
    if tuple(client_ep(inc)) != conn.client_ep:
        errs.append("client %s != %s" % (client_ep(inc), conn.client_ep))
    if tuple(server_ep(inc)) != conn.server_ep:
        errs.append("server %s != %s" % (server_ep(inc), conn.server_ep))
    for key, fmt in (("pid", "pid %s != %s"), ("comm", "comm %r != %r"),
                     ("reset_reason", "reset_reason %r != %r"), ("requests", "requests %s != %s"),
                     ("state", "state %s != %s")):
        if key in exp and inc.get(key) != exp[key]:
            errs.append(fmt % (inc.get(key), exp[key]))
    if "idle_ms" in exp:
        idle = inc.get("idle_before_write_ms")
        if not isinstance(idle, (int, float)) or abs(idle - exp["idle_ms"]) > tol_ms:
            errs.append("idle_before_write_ms %s, expected %.1f +- %.0f" % (
                idle, exp["idle_ms"], tol_ms))
    return errs


def incident_problems(got, expected, tol_ms=IDLE_TOL_MS):
    """got must be exactly expected, as a multiset: [] when it is, else one line per missing
    expected incident (with the closest candidate's differences) and per unexpected one."""
    unmatched = list(got)
    problems = []
    for exp in expected:
        conn = exp["conn"]
        best, best_err = None, None
        for inc in unmatched:
            errs = incident_mismatch(inc, exp, tol_ms)
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
    return problems
