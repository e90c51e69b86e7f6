"""nginx helpers for kernel tests: a foreground nginx (master + 1 worker) in a pod.

Everything (config, pid file, logs, temp paths) lives in a private temp dir; the
master is started with -p PREFIX -c CONF -g 'daemon off;' and stopped by its PID.
"""

import os
import shutil
import signal
import socket
import tempfile
import time

from netns import kill_proc

NGINX = "/usr/sbin/nginx"

_COMMON = """\
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    log_format rw '$msec $status $upstream_addr $upstream_status $request_time '
                  '$upstream_response_time $connection $request_uri';
    access_log {prefix}/access.log rw;
{http}
}}
"""

UPSTREAM_HTTP = """\
    keepalive_timeout {keepalive_timeout};
    keepalive_requests 100000;
{servers}"""

UPSTREAM_SERVER = """\
    server {{
        listen {listen};
        root {{prefix}}/html;
        location / {{ if ($request_method = POST) {{ return 200 "ok\\n"; }} }}
    }}
"""

PROXY_SERVER = """\
    upstream backend{k} {{
        server {upstream} max_fails=0;
        keepalive 8;
{upstream_extra}    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend{k};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def _listen(ip, port):
    return "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)


class Nginx:
    def __init__(self, pod, http_block, name="nginx"):
        self.pod = pod
        self.name = name
        self.prefix = tempfile.mkdtemp(prefix="rw-%s-" % name)
        for d in ("tmp", "html", "logs"):
            os.makedirs(os.path.join(self.prefix, d), exist_ok=True)
        with open(os.path.join(self.prefix, "html", "index.html"), "w") as f:
            f.write("ok\n")
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(_COMMON.format(prefix=self.prefix, http=http_block.replace(
                "{prefix}", self.prefix)))
        self.proc = None
        self.stdout_path = os.path.join(self.prefix, "stdout.log")

    @classmethod
    def upstream(cls, pod, ip, ports, keepalive_timeout="2s"):
        """Static "ok\\n" on each of ports (GET: a file; POST: return 200)."""
        servers = "".join(UPSTREAM_SERVER.format(listen=_listen(ip, p)) for p in ports)
        return cls(pod, UPSTREAM_HTTP.format(keepalive_timeout=keepalive_timeout,
                                             servers=servers), name="upstream")

    @classmethod
    def proxy(cls, pod, ip, routes, upstream_keepalive_timeout=None):
        """routes: [(listen_port, "UPSTREAM_IP:PORT")]; one upstream block (own
        keepalive pool) per route."""
        extra = ""
        if upstream_keepalive_timeout:
            extra = "        keepalive_timeout %s;\n" % upstream_keepalive_timeout
        http = "".join(PROXY_SERVER.format(k=k, upstream=up, upstream_extra=extra,
                                           listen=_listen(ip, port))
                       for k, (port, up) in enumerate(routes))
        return cls(pod, http, name="proxy")

    def start(self, ip, port, timeout=10.0):
        out = open(self.stdout_path, "w")
        self.proc = self.pod.popen([NGINX, "-p", self.prefix, "-c", self.conf,
                                    "-g", "daemon off;"], stdout=out, stderr=out)
        out.close()
        # Ready when the port accepts (connect from inside the pod).
        deadline = time.monotonic() + timeout
        probe = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),1)"
                 "\ns.close()")
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("%s nginx exited %s:\n%s\n%s" % (
                    self.name, self.proc.returncode, self.read("stdout.log"),
                    self.read("error.log")))
            r = self.pod.run(["/usr/bin/python3", "-c", probe, ip, str(port)], check=False)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError("%s nginx not listening on %s:%d" % (self.name, ip, port))
            time.sleep(0.1)
        return self

    def worker_pids(self):
        pids = []
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            pass
        return pids

    def read(self, name):
        try:
            with open(os.path.join(self.prefix, name)) as f:
                return f.read()
        except OSError:
            return ""

    def truncate_logs(self):
        for name in ("access.log", "error.log"):
            open(os.path.join(self.prefix, name), "w").close()
        # nginx holds the files with O_APPEND: truncation is safe.

    def stop(self):
        if self.proc is None:
            return
        workers = self.worker_pids()
        kill_proc(self.proc, sig=signal.SIGTERM, timeout=5.0)
        # The master normally takes its workers down; if it had to be SIGKILLed,
        # end the workers it left, by PID (only if still nginx).
        for pid in workers:
            try:
                with open("/proc/%d/comm" % pid) as f:
                    if f.read().strip() != "nginx":
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass

    def cleanup(self, keep=False):
        self.stop()
        if not keep:
            shutil.rmtree(self.prefix, ignore_errors=True)
