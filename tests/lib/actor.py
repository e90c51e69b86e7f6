#!/usr/bin/python3
"""Socket actor: performs scripted socket steps and reports each as one JSON line.

Run inside a pod:  ip netns exec NS /usr/bin/python3 tests/lib/actor.py [--comm NAME]
                   [--script 'JSON list of steps']

Steps come from --script (in order) and then from stdin, one JSON object per line.
In a script, {"op": "wait"} blocks until a line arrives on stdin (a barrier).
Every step produces exactly one reply line: {"ok": true/false, "op": ..., "t0": monotonic
start, "t1": monotonic end, ...}; socket errors give "errno" ("ECONNRESET", "EPIPE", ...).
The first line is {"event": "ready", "pid": ..., "comm": ...}.

Sockets are named: listen/connect/accept create them ("name"), other steps use them.
Ops:
  listen   name family(inet|inet6) host port backlog v6only  -> port, host
  accept   listener name timeout                              -> peer, local
  connect  name family host port timeout                      -> local, peer
  send     name data | size                                   -> sent
  recv     name size exact(bool) timeout                      -> n, eof, data(if small)
  exchange name count req resp gaps{idx: seconds}             client loop: send req bytes,
                                                               recv resp bytes, count times
  serve    name req resp count                                server loop for exchange; stops
                                                               at EOF or after count
  sleep    seconds
  shutdown name how(rd|wr|rdwr)
  close    name linger0(bool)
  linger   name onoff linger
  state    name                                               -> state (TCP_INFO)
  wait_state name state timeout                               -> state
  wait_readable name timeout                                  -> unread (FIONREAD)
  wait     (script mode only: reads a stdin line)
  exit
"""

import ctypes
import errno
import fcntl
import json
import os
import select
import socket
import struct
import sys
import termios
import time

TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
}


def set_comm(name):
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NAME = 15
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def get_comm():
    with open("/proc/self/comm") as f:
        return f.read().strip()


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fam(name):
    return socket.AF_INET6 if name in ("inet6", "6", 6, "ipv6") else socket.AF_INET


def addr_of(sa):
    return [sa[0], sa[1]]


def tcp_state(s):
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    st = info[0]
    return TCP_STATES.get(st, "UNKNOWN(%d)" % st)


def recv_exact(s, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        rem = deadline - time.monotonic()
        if rem <= 0:
            raise socket.timeout("recv timeout after %d/%d bytes" % (len(buf), n))
        s.settimeout(rem)
        chunk = s.recv(min(65536, n - len(buf)))
        if not chunk:
            return bytes(buf), True
        buf += chunk
    return bytes(buf), False


class Actor:
    def __init__(self):
        self.socks = {}

    def sock(self, name):
        if name not in self.socks:
            raise KeyError("no socket named %r" % name)
        return self.socks[name]

    def op_listen(self, a):
        f = fam(a.get("family", "inet"))
        s = socket.socket(f, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if f == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if a.get("v6only") else 0)
        host = a.get("host", "::" if f == socket.AF_INET6 else "0.0.0.0")
        s.bind((host, int(a.get("port", 0))))
        s.listen(int(a.get("backlog", 64)))
        self.socks[a.get("name", "L")] = s
        return {"port": s.getsockname()[1], "host": s.getsockname()[0]}

    def op_accept(self, a):
        ls = self.sock(a.get("listener", "L"))
        ls.settimeout(float(a.get("timeout", 10)))
        c, peer = ls.accept()
        c.settimeout(None)
        self.socks[a.get("name", "c")] = c
        return {"peer": addr_of(peer), "local": addr_of(c.getsockname())}

    def op_connect(self, a):
        f = fam(a.get("family", "inet"))
        s = socket.socket(f, socket.SOCK_STREAM)
        s.settimeout(float(a.get("timeout", 10)))
        s.connect((a["host"], int(a["port"])))
        s.settimeout(None)
        self.socks[a.get("name", "c")] = s
        return {"local": addr_of(s.getsockname()), "peer": addr_of(s.getpeername())}

    def op_send(self, a):
        s = self.sock(a.get("name", "c"))
        data = a["data"].encode() if "data" in a else b"x" * int(a.get("size", 1))
        s.settimeout(float(a.get("timeout", 10)))
        s.sendall(data)
        return {"sent": len(data)}

    def op_recv(self, a):
        s = self.sock(a.get("name", "c"))
        n = int(a.get("size", 65536))
        deadline = time.monotonic() + float(a.get("timeout", 10))
        if a.get("exact", True):
            data, eof = recv_exact(s, n, deadline)
        else:
            s.settimeout(float(a.get("timeout", 10)))
            data = s.recv(n)
            eof = not data
        r = {"n": len(data), "eof": eof}
        if len(data) <= 256:
            r["data"] = data.decode("latin-1")
        return r

    def op_exchange(self, a):
        s = self.sock(a.get("name", "c"))
        count = int(a.get("count", 1))
        req = b"q" * int(a.get("req", 100))
        resp_n = int(a.get("resp", 100))
        gaps = {int(k): float(v) for k, v in (a.get("gaps") or {}).items()}
        timeout = float(a.get("timeout", 10))
        done = 0
        gap_times = []
        for i in range(count):
            if i in gaps:
                t = time.monotonic()
                time.sleep(gaps[i])
                gap_times.append([i, t, time.monotonic()])
            s.settimeout(timeout)
            s.sendall(req)
            data, eof = recv_exact(s, resp_n, time.monotonic() + timeout)
            if eof:
                return {"ok": False, "error": "EOF after %d exchanges" % done, "done": done}
            done += 1
        return {"done": done, "gaps": gap_times}

    def op_serve(self, a):
        s = self.sock(a.get("name", "c"))
        req_n = int(a.get("req", 100))
        resp = b"r" * int(a.get("resp", 100))
        count = int(a.get("count", 1 << 30))
        timeout = float(a.get("timeout", 30))
        done = 0
        eof = False
        while done < count:
            data, eof = recv_exact(s, req_n, time.monotonic() + timeout)
            if eof:
                if data:
                    return {"ok": False, "error": "partial request at EOF", "done": done}
                break
            s.settimeout(timeout)
            s.sendall(resp)
            done += 1
        return {"done": done, "eof": eof}

    def op_http_series(self, a):
        """GET http://host:port/path once per entry of "spacings" (seconds between the
        starts of consecutive requests; first request at once), new connection each."""
        import http.client
        host, port, path = a["host"], int(a["port"]), a.get("path", "/")
        timeout = float(a.get("timeout", 5))
        results = []
        t_next = time.monotonic()
        for i, gap in enumerate(a.get("spacings", [0])):
            t_next += float(gap) if i else 0.0
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic()
            w0 = time.time()
            status, err = None, None
            try:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
                method = a.get("method", "GET")
                body = a.get("body") if method == "POST" else None
                conn.request(method, path, body=body.encode() if body else None)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                conn.close()
            except Exception as e:  # report per request
                err = "%s: %s" % (type(e).__name__, e)
            results.append({"i": i, "t0": t0, "t1": time.monotonic(), "w0": w0,
                            "w1": time.time(), "status": status, "error": err})
        return {"results": results}

    def op_sleep(self, a):
        time.sleep(float(a.get("seconds", 0)))
        return {}

    def op_shutdown(self, a):
        how = {"rd": socket.SHUT_RD, "wr": socket.SHUT_WR, "rdwr": socket.SHUT_RDWR}[
            a.get("how", "wr")]
        self.sock(a.get("name", "c")).shutdown(how)
        return {}

    def op_linger(self, a):
        s = self.sock(a.get("name", "c"))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", int(a.get("onoff", 1)), int(a.get("linger", 0))))
        return {}

    def op_close(self, a):
        name = a.get("name", "c")
        s = self.sock(name)
        r = {}
        try:
            r["state_before"] = tcp_state(s)
        except OSError:
            pass
        if a.get("linger0"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        del self.socks[name]
        return r

    def op_state(self, a):
        return {"state": tcp_state(self.sock(a.get("name", "c")))}

    def op_wait_state(self, a):
        s = self.sock(a.get("name", "c"))
        want = a["state"]
        deadline = time.monotonic() + float(a.get("timeout", 5))
        while True:
            st = tcp_state(s)
            if st == want:
                return {"state": st}
            if time.monotonic() > deadline:
                return {"ok": False, "error": "state %s, wanted %s" % (st, want), "state": st}
            time.sleep(0.002)

    def op_wait_readable(self, a):
        s = self.sock(a.get("name", "c"))
        r, _, _ = select.select([s], [], [], float(a.get("timeout", 5)))
        if not r:
            return {"ok": False, "error": "not readable"}
        unread = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        return {"unread": unread}

    def run(self, step):
        op = step.get("op")
        fn = getattr(self, "op_" + str(op), None)
        t0 = time.monotonic()
        w0 = time.time()
        reply = {"op": op}
        if "tag" in step:
            reply["tag"] = step["tag"]
        if fn is None:
            reply.update(ok=False, error="unknown op %r" % op)
            return reply
        try:
            r = fn(step) or {}
            reply["ok"] = True
            reply.update(r)
        except OSError as e:
            reply["ok"] = False
            if isinstance(e, socket.timeout) or isinstance(e, TimeoutError):
                reply["errno"] = "ETIMEDOUT"
            elif e.errno is not None:
                reply["errno"] = errno.errorcode.get(e.errno, str(e.errno))
            reply["error"] = str(e)
        except Exception as e:  # report, never die mid-scenario
            reply["ok"] = False
            reply["error"] = "%s: %s" % (type(e).__name__, e)
        reply["t0"] = t0
        reply["t1"] = time.monotonic()
        reply["w0"] = w0
        reply["w1"] = time.time()
        return reply


def main():
    args = sys.argv[1:]
    comm = None
    script = []
    while args:
        a = args.pop(0)
        if a == "--comm":
            comm = args.pop(0)
        elif a == "--script":
            script = json.loads(args.pop(0))
        else:
            sys.stderr.write("unknown argument %r\n" % a)
            return 2
    if comm:
        set_comm(comm)
    actor = Actor()
    out({"event": "ready", "pid": os.getpid(), "comm": get_comm()})

    def steps():
        for s in script:
            yield s, True
        while True:
            line = sys.stdin.readline()
            if not line:
                return
            line = line.strip()
            if line:
                yield json.loads(line), False

    for step, from_script in steps():
        if step.get("op") == "exit":
            break
        if step.get("op") == "wait" and from_script:
            t0 = time.monotonic()
            line = sys.stdin.readline()
            out({"op": "wait", "ok": bool(line), "t0": t0, "t1": time.monotonic()})
            continue
        out(actor.run(step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
