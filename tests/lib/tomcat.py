"""Tomcat 10 (Debian's tomcat10 package) in a pod: a private CATALINA_BASE with one HTTP/1.1
connector and a static ROOT page, started in the foreground by its PID and stopped by it.

    t = Tomcat(pod, ip, port, keepalive_timeout_ms=1000).start()   # t.stop() / t.cleanup()

The connector's keepAliveTimeout is the idle timeout under test (Tomcat closes a keepalive
connection idle that long); GET and POST both answer the static page (DefaultServlet).
"""

import os
import shutil
import signal
import tempfile
import time

from netns import kill_proc

CATALINA_HOME = "/usr/share/tomcat10"
JAVA_CANDIDATES = ("/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "/usr/lib/jvm/default-java/bin/java",
                   "/usr/bin/java")

SERVER_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector address="{ip}" port="{port}" protocol="HTTP/1.1" connectionTimeout="{connection_timeout}"
               keepAliveTimeout="{keepalive_timeout}" maxKeepAliveRequests="-1" maxThreads="32"/>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
    </Engine>
  </Service>
</Server>
"""


def available():
    return os.path.isdir(os.path.join(CATALINA_HOME, "bin")) and java() is not None


def java():
    for path in JAVA_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


class Tomcat:
    def __init__(self, pod, ip, port, keepalive_timeout_ms=1000, connection_timeout_ms=20000):
        self.pod, self.ip, self.port = pod, ip, port
        self.base = tempfile.mkdtemp(prefix="rw-tomcat-")
        for d in ("conf", "logs", "temp", "work", "webapps/ROOT"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        with open(os.path.join(self.base, "conf", "server.xml"), "w") as f:
            f.write(SERVER_XML.format(ip=ip, port=port, keepalive_timeout=keepalive_timeout_ms,
                                      connection_timeout=connection_timeout_ms))
        shutil.copy("/etc/tomcat10/web.xml", os.path.join(self.base, "conf", "web.xml"))
        with open(os.path.join(self.base, "webapps", "ROOT", "index.html"), "w") as f:
            f.write("ok\n")
        self.proc = None

    def start(self, timeout=60.0):
        jvm = java()
        if jvm is None:
            raise AssertionError("no Java for Tomcat (scripts/deps.sh --test installs tomcat10)")
        cmd = [jvm, "-Xms64m", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
               "-Dcatalina.home=" + CATALINA_HOME, "-Dcatalina.base=" + self.base,
               "-Djava.io.tmpdir=" + os.path.join(self.base, "temp"),
               "-cp", "%s/bin/bootstrap.jar:%s/bin/tomcat-juli.jar" % (CATALINA_HOME, CATALINA_HOME),
               "org.apache.catalina.startup.Bootstrap", "start"]
        out = open(os.path.join(self.base, "logs", "stdout.log"), "w")
        self.proc = self.pod.popen(cmd, stdout=out, stderr=out)
        out.close()
        probe = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),1)"
                 "\ns.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nd=s.recv(64)\ns.close()\n"
                 "sys.exit(0 if d.startswith(b'HTTP/1.1 200') else 1)")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("tomcat exited %s:\n%s" % (self.proc.returncode, self.read("stdout.log")[-3000:]))
            if self.pod.run(["/usr/bin/python3", "-c", probe, self.ip, str(self.port)], check=False).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise AssertionError("tomcat not serving on %s:%d after %.0f s:\n%s" % (
                    self.ip, self.port, timeout, self.read("stdout.log")[-3000:]))
            time.sleep(0.3)

    def read(self, name):
        try:
            with open(os.path.join(self.base, "logs", name)) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None:
            kill_proc(self.proc, sig=signal.SIGTERM, timeout=10.0)
            self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
