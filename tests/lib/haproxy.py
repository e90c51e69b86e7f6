"""HAProxy (Debian 12's 2.6) in a pod as an HTTP reverse proxy that keeps idle server
connections and reuses them (`http-reuse always`), started in the foreground (-db) by its PID.

    h = HAProxy(pod, listen_ip, listen_port, server="IP:PORT").start()
    h.log_lines()   # one line per request: status and termination state (e.g. "502 SH--")
"""

import os
import shutil
import signal
import socket
import tempfile
import threading
import time

from netns import kill_proc

HAPROXY = "/usr/sbin/haproxy"

CONFIG = """\
global
    log {log_ip}:{log_port} local0
    maxconn 256
defaults
    mode http
    log global
    option httplog
    log-format "%ST %ts %Tr %b/%s %{{+Q}}r"
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s
    retries 0
frontend fe
    bind {listen}
    default_backend be
backend be
    http-reuse always
    server s1 {server} pool-max-conn 64 pool-purge-delay 60s
"""


def available():
    return os.access(HAPROXY, os.X_OK)


class HAProxy:
    """Logs go to a UDP syslog socket the test itself reads (in the pod: 127.0.0.1)."""

    def __init__(self, pod, ip, port, server):
        self.pod, self.ip, self.port = pod, ip, port
        self.dir = tempfile.mkdtemp(prefix="rw-haproxy-")
        self.server = server
        self.proc = None
        self.log_proc = None

    def start(self, timeout=15.0):
        # A syslog sink inside the pod (haproxy logs over UDP): python prints each datagram.
        sink = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                "s.bind(('127.0.0.1',0))\nprint(s.getsockname()[1],flush=True)\n"
                "while True:\n d=s.recv(65535)\n sys.stdout.write(d.decode('utf-8','replace').strip()+'\\n')\n"
                " sys.stdout.flush()")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        import subprocess
        self.log_proc = self.pod.popen(["/usr/bin/python3", "-u", "-c", sink], stdout=subprocess.PIPE, text=True)
        log_port = int(self.log_proc.stdout.readline())
        self._lines = []
        self._lock = threading.Lock()

        def read():
            for line in self.log_proc.stdout:
                with self._lock:
                    self._lines.append(line.rstrip("\n"))
        threading.Thread(target=read, daemon=True).start()
        listen = "[%s]:%d" % (self.ip, self.port) if ":" in self.ip else "%s:%d" % (self.ip, self.port)
        conf = os.path.join(self.dir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(CONFIG.format(listen=listen, server=self.server, log_ip="127.0.0.1", log_port=log_port))
        out = open(os.path.join(self.dir, "stdout.log"), "w")
        self.proc = self.pod.popen([HAPROXY, "-db", "-f", conf], stdout=out, stderr=out)
        out.close()
        probe = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),1)\ns.close()")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("haproxy exited %s: %s" % (self.proc.returncode, open(os.path.join(self.dir, "stdout.log")).read()))
            if self.pod.run(["/usr/bin/python3", "-c", probe, self.ip, str(self.port)], check=False).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise AssertionError("haproxy not listening on %s:%d" % (self.ip, self.port))
            time.sleep(0.1)

    def log_lines(self):
        with self._lock:
            return list(self._lines)

    def stop(self):
        for p in (self.proc, self.log_proc):
            if p is not None:
                kill_proc(p, sig=signal.SIGTERM, timeout=5.0)
        self.proc = self.log_proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
