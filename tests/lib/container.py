"""The agent image in a real container engine (podman with runc), run as the DaemonSet runs it.

What a platform team deploys is deploy/Dockerfile built by scripts/build-image.sh and the pod
spec of `kubectl kustomize deploy/`. This module builds the one and translates the other into
a `podman run` (DaemonSetRun): user and group, capabilities (drop ALL, add exactly the
manifest's list), read-only root, allowPrivilegeEscalation (no_new_privs), the seccomp
profile, args, env, the Secret and hostPath volumes, the service account files and the
KUBERNETES_SERVICE_* variables the kubelet injects, the grace period and memory/CPU limits.
A pod spec field the translator does not know is an error, so the manifest and this test
cannot drift apart silently.

Facts about this machine kind (Debian 12 podman 4.3 with runc), checked here:
  - crun (podman's default runtime) refuses to start containers on this host's hybrid cgroup
    layout; runc works: every podman call passes --runtime runc.
  - podman's rootful default ulimits for open files and processes exceed this host's hard
    limits: runs pass --ulimit nofile=N:N --ulimit nproc=N:N with N <= the hard limits (and
    <= 32768, what conmon itself holds here; 65536 fails with "error setting rlimit").
  - No container registry is reachable: the base images debian:12 and debian:12-slim are made
    here with mmdebstrap (minbase, the host's own apt sources) and imported under exactly
    those names; builds use --pull=never and --network=host (apt-get in the build stage).
  - The host's own capability bounding set lacks CAP_SYS_RESOURCE: no container here can hold
    it (a --cap-add SYS_RESOURCE is silently not granted).
  - podman's default seccomp profile (containers/common, also CRI-O's) allows bpf() and
    perf_event_open() only with CAP_SYS_ADMIN; containerd and Docker allow them with CAP_BPF
    and CAP_PERFMON. RuntimeDefault on containerd is therefore run here as podman's default
    profile plus exactly those two rules (scripts/seccomp-profile.py), and podman's own
    default is tested as what CRI-O nodes do.
Everything this module creates (images, containers, temp files) is removed by cleanup();
containers join network namespaces the test made (--network ns:PATH), so podman sets up no
network of its own and touches no sysctl.
"""

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PODMAN = shutil.which("podman") or "/usr/bin/podman"
BASE_IMAGES = ("debian:12", "debian:12-slim")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ContainerError(AssertionError):
    pass


def podman_available():
    return os.path.exists(PODMAN) and os.geteuid() == 0


def ulimit_args():
    """--ulimit values at or below this host's hard limits and podman's own (conmon runs with
    32768 processes here: runc cannot raise a container's limit above what it holds)."""
    out = []
    for name, res, cap in (("nofile", resource.RLIMIT_NOFILE, 16384), ("nproc", resource.RLIMIT_NPROC, 16384)):
        hard = resource.getrlimit(res)[1]
        n = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        out += ["--ulimit", "%s=%d:%d" % (name, n, n)]
    return out


def podman(args, check=True, timeout=120, input=None):
    cmd = [PODMAN, "--runtime", "runc"] + list(args)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                       input=input)
    if check and r.returncode != 0:
        raise ContainerError("%s: exit %d\n%s%s" % (" ".join(cmd), r.returncode, r.stdout[-3000:], r.stderr[-3000:]))
    return r


def image_ids():
    return set(podman(["images", "-a", "-q", "--no-trunc"]).stdout.split())


def container_ids():
    return set(podman(["ps", "-a", "-q", "--no-trunc", "--external"]).stdout.split())


def host_apt_sources():
    """The host's apt sources file (it reaches a Debian mirror here), for mmdebstrap."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return path
    raise ContainerError("no apt sources on this host (/etc/apt/sources.list[.d]) for mmdebstrap")


class ImageBuild:
    """Base images (if absent) and the agent image: built once, removed by cleanup()."""

    def __init__(self, cache_dir, tag=None):
        self.cache_dir = cache_dir
        self.tag = tag or "localhost/rstwatch-test:%d" % os.getpid()
        self.created_images = []
        self.image_id = None
        self.timings = {}
        self._images_before = None
        self._containers_before = None

    def build(self):
        self._images_before = image_ids()
        self._containers_before = container_ids()
        t0 = time.monotonic()
        self._base_images()
        self.timings["base images"] = time.monotonic() - t0
        t0 = time.monotonic()
        r = subprocess.run(
            [os.path.join(ROOT, "scripts", "build-image.sh"), "--engine", "podman", "--tag", self.tag, "--",
             "--pull=never", "--network=host", "--runtime", "runc", "--layers=false"] + ulimit_args(),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
        self.timings["image build"] = time.monotonic() - t0
        if r.returncode != 0:
            raise ContainerError("scripts/build-image.sh failed (exit %d):\n%s" % (r.returncode, r.stdout[-6000:]))
        self.image_id = r.stdout.strip().splitlines()[-1]
        return self

    def _base_images(self):
        missing = [name for name in BASE_IMAGES if podman(["image", "exists", name], check=False).returncode != 0]
        if not missing:
            return
        os.makedirs(self.cache_dir, exist_ok=True)
        tarball = os.path.join(self.cache_dir, "debian-bookworm-minbase.tar")
        if not os.path.exists(tarball):
            partial = tarball + ".part"
            r = subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet",
                                "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # as debian:12 is: no usrmerge package
                                "bookworm", partial, host_apt_sources()],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
            if r.returncode != 0:
                raise ContainerError("mmdebstrap (scripts/deps.sh --test installs it) failed:\n" + r.stdout[-4000:])
            os.rename(partial, tarball)
        for name in missing:
            podman(["import", "-q", tarball, name], timeout=300)
            self.created_images.append(name)

    def size_bytes(self):
        return int(json.loads(podman(["image", "inspect", self.tag]).stdout)[0]["Size"])

    def packages(self):
        r = podman(["run", "--rm", "--pull=never", "--network=none", "--entrypoint", "dpkg-query"] + ulimit_args() +
                   [self.tag, "-W", "-f", "${Package} ${Version}\\n"])
        return sorted(r.stdout.split("\n")[:-1])

    def image_user(self):
        return json.loads(podman(["image", "inspect", self.tag]).stdout)[0]["Config"].get("User", "")

    def cleanup(self):
        """Removes every container and image this build created (and nothing else)."""
        if self._containers_before is not None:
            for cid in container_ids() - self._containers_before:
                podman(["rm", "-f", cid], check=False)
        if self._images_before is not None:
            for iid in image_ids() - self._images_before:
                podman(["rmi", "-f", iid], check=False)
        for name in self.created_images:
            podman(["rmi", "-f", name], check=False)


# ------------------------------------------------------------------ the DaemonSet as a run

def rendered_daemonset(components=()):
    """The DaemonSet of `kubectl kustomize deploy/` (with components: a temporary overlay)."""
    if not components:
        out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, "deploy")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    else:
        d = tempfile.mkdtemp(prefix="rw-overlay-")
        try:
            with open(os.path.join(d, "kustomization.yaml"), "w") as f:
                # kustomize takes relative paths only.
                f.write("resources: [%s]\ncomponents: [%s]\n" % (
                    os.path.relpath(os.path.join(ROOT, "deploy"), d),
                    ", ".join(os.path.relpath(os.path.join(ROOT, "deploy", "components", c), d) for c in components)))
            out = subprocess.run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", d],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    if out.returncode != 0:
        raise ContainerError("kubectl kustomize failed: " + out.stderr)
    import yaml  # python3-yaml (scripts/deps.sh --test)
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc.get("kind") == "DaemonSet":
            return doc
    raise ContainerError("no DaemonSet in the kustomize output")


def _unknown(where, obj, known):
    extra = sorted(set(obj) - set(known))
    if extra:
        raise ContainerError("tests/lib/container.py does not know %s field(s) %s: translate them to podman "
                             "(or state why they do not apply) before trusting this test" % (where, extra))


# Pod spec fields that do not change how the container runs on one node.
POD_FIELDS_SCHEDULING = ("tolerations", "serviceAccountName", "nodeSelector", "affinity", "priorityClassName")


class DaemonSetRun:
    """One container run of the DaemonSet's agent container.

    secrets: {secretName: {key: bytes|str}}; kube: (host, port, token, ca_pem) or None (no
    API server: no KUBERNETES_SERVICE_* variables and no service account files).
    Overrides for the bad-path tests: caps_add (list), allow_privilege_escalation (bool),
    seccomp ("runtime-default" | "podman-default" | a profile path), user ("UID:GID") and
    entrypoint (list, JSON form: replaces the image's), extra_volumes [(host path, container
    path)] mounted read-only. node_name: what the downward API's spec.nodeName gives the pod.
    """

    def __init__(self, daemonset, image, netns_path, secrets, kube=None, name=None, caps_add=None,
                 allow_privilege_escalation=None, seccomp="runtime-default", user=None, entrypoint=None,
                 extra_volumes=(), node_name="image-test-node"):
        self.ds = daemonset
        self.node_name = node_name
        self.image = image
        self.netns_path = netns_path
        self.secrets = secrets
        self.kube = kube
        self.name = name or "rstwatch-test-%d-%d" % (os.getpid(), int(time.monotonic() * 1000) % 100000)
        self.caps_add_override = caps_add
        self.ape_override = allow_privilege_escalation
        self.seccomp = seccomp
        self.user_override = user
        self.entrypoint = entrypoint
        self.extra_volumes = list(extra_volumes)
        self.tmp = tempfile.mkdtemp(prefix="rw-ctr-")
        os.chmod(self.tmp, 0o755)
        self.container_id = None
        self.args = None
        self.grace_s = None

    # -- translation
    def pod_spec(self):
        return self.ds["spec"]["template"]["spec"]

    def container(self):
        containers = self.pod_spec()["containers"]
        if len(containers) != 1:
            raise ContainerError("expected one container in the DaemonSet, found %d" % len(containers))
        return containers[0]

    def capabilities_add(self):
        if self.caps_add_override is not None:
            return list(self.caps_add_override)
        return list(self.container()["securityContext"]["capabilities"].get("add", []))

    def probe(self, kind="readinessProbe"):
        """(path, port, scheme) of a probe."""
        c = self.container()
        get = c[kind]["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in c["ports"] if p.get("name") == port)
        return get["path"], int(port), get.get("scheme", "HTTP")

    # The downward API fields the kubelet fills in, as this test's pod would get them.
    def _field(self, path):
        if path == "spec.nodeName":
            return self.node_name
        raise ContainerError("env fieldRef %r: not modelled by this test (add it)" % path)

    def env(self):
        env = {}
        for e in self.container().get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "fieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = self._field(e["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                raise ContainerError("env %s: %r not modelled by this test" % (e["name"], e.get("valueFrom")))
        return env

    def _volume_args(self):
        spec, c = self.pod_spec(), self.container()
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        out = []
        for m in c.get("volumeMounts", []):
            _unknown("volumeMount", m, ("name", "mountPath", "readOnly"))
            v = volumes[m["name"]]
            ro = ":ro" if m.get("readOnly") else ""
            if "hostPath" in v:
                out += ["-v", "%s:%s%s" % (v["hostPath"]["path"], m["mountPath"], ro)]
            elif "secret" in v:
                sec = v["secret"]
                _unknown("secret volume", sec, ("secretName", "optional", "defaultMode", "items"))
                data = self.secrets.get(sec["secretName"])
                if data is None:
                    raise ContainerError("the DaemonSet mounts Secret %s: the test must provide it" % sec["secretName"])
                d = os.path.join(self.tmp, "secret-" + m["name"])
                os.makedirs(d)
                os.chmod(d, 0o755)
                items = sec.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    path = os.path.join(d, item["path"])
                    content = data[item["key"]]
                    with open(path, "wb") as f:
                        f.write(content.encode() if isinstance(content, str) else content)
                    os.chmod(path, sec.get("defaultMode", 0o644))
                out += ["-v", "%s:%s%s" % (d, m["mountPath"], ro)]
            else:
                raise ContainerError("volume %s: only hostPath and secret volumes are translated" % m["name"])
        return out

    def _seccomp_args(self):
        pod_sc = self.pod_spec().get("securityContext", {})
        declared = (self.container().get("securityContext", {}).get("seccompProfile")
                    or pod_sc.get("seccompProfile") or {}).get("type")
        if declared != "RuntimeDefault":
            raise ContainerError("the DaemonSet's seccompProfile is %r: only RuntimeDefault is translated" % declared)
        if self.seccomp == "podman-default":
            return []  # podman's (and CRI-O's) containers/common default profile
        if self.seccomp == "runtime-default":
            profile = os.path.join(self.tmp, "runtime-default.json")
            r = subprocess.run([os.path.join(ROOT, "scripts", "seccomp-profile.py")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=30)
            if r.returncode != 0:
                raise ContainerError("scripts/seccomp-profile.py: " + r.stderr)
            with open(profile, "w") as f:
                f.write(r.stdout)
            return ["--security-opt", "seccomp=" + profile]
        return ["--security-opt", "seccomp=" + self.seccomp]

    def run_args(self):
        spec, c = self.pod_spec(), self.container()
        _unknown("pod spec", spec, ("serviceAccountName", "automountServiceAccountToken", "enableServiceLinks",
                                    "hostNetwork", "hostPID", "tolerations", "terminationGracePeriodSeconds",
                                    "securityContext", "containers", "volumes") + POD_FIELDS_SCHEDULING)
        _unknown("container", c, ("name", "image", "imagePullPolicy", "args", "env", "ports", "livenessProbe",
                                  "readinessProbe", "resources", "terminationMessagePolicy", "securityContext",
                                  "volumeMounts"))
        pod_sc = spec.get("securityContext", {})
        _unknown("pod securityContext", pod_sc, ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"))
        sc = c.get("securityContext", {})
        _unknown("container securityContext", sc, ("privileged", "readOnlyRootFilesystem",
                                                   "allowPrivilegeEscalation", "capabilities"))
        if spec.get("hostNetwork") or spec.get("hostPID") or sc.get("privileged"):
            raise ContainerError("hostNetwork/hostPID/privileged pods are not what this test runs")
        args = ["run", "-d", "--name", self.name, "--pull=never", "--network", "ns:" + self.netns_path,
                "--user", self.user_override or "%d:%d" % (pod_sc["runAsUser"], pod_sc["runAsGroup"])] + ulimit_args()
        if self.entrypoint:
            args += ["--entrypoint", json.dumps(self.entrypoint)]
        drop = sc.get("capabilities", {}).get("drop", [])
        args += ["--cap-drop", ",".join(drop)] if drop else []
        for cap in self.capabilities_add():
            args += ["--cap-add", cap]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]  # Kubernetes adds no tmpfs
        ape = sc.get("allowPrivilegeEscalation", True) if self.ape_override is None else self.ape_override
        if not ape:
            args += ["--security-opt", "no-new-privileges"]
        args += self._seccomp_args()
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", limits["memory"].replace("Mi", "m").replace("Gi", "g")]
        if "cpu" in limits:
            cpu = limits["cpu"]
            args += ["--cpus", str(int(cpu[:-1]) / 1000.0 if cpu.endswith("m") else float(cpu))]
        self.grace_s = int(spec.get("terminationGracePeriodSeconds", 30))
        args += ["--stop-timeout", str(self.grace_s), "--stop-signal", "SIGTERM"]
        env = self.env()  # enableServiceLinks: false, and no Services here to link anyway
        if self.kube is not None and spec.get("automountServiceAccountToken", True):
            host, port, token, ca_pem = self.kube
            env["KUBERNETES_SERVICE_HOST"] = host
            env["KUBERNETES_SERVICE_PORT"] = str(port)
            sa = os.path.join(self.tmp, "serviceaccount")
            os.makedirs(sa)
            os.chmod(sa, 0o755)
            for name, content in (("token", token), ("ca.crt", ca_pem), ("namespace", "rstwatch")):
                with open(os.path.join(sa, name), "w") as f:
                    f.write(content)
                os.chmod(os.path.join(sa, name), 0o644)
            args += ["-v", "%s:%s:ro" % (sa, SA_DIR)]
        for k, v in env.items():
            args += ["--env", "%s=%s" % (k, v)]
        args += self._volume_args()
        for source, target in self.extra_volumes:
            args += ["-v", "%s:%s:ro" % (source, target)]
        self.args = list(c.get("args", []))
        return args + [self.image] + self.args

    # -- lifecycle
    def start(self):
        r = podman(self.run_args(), timeout=120)
        self.container_id = r.stdout.strip()
        return self

    def state(self):
        r = podman(["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name], check=False)
        if r.returncode != 0:
            return None, None
        status, code = r.stdout.split()
        return status, int(code)

    def wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, code = self.state()
            if status in ("exited", "stopped"):
                return code
            time.sleep(0.2)
        return None

    def logs(self):
        r = podman(["logs", self.name], check=False)
        return r.stdout + r.stderr

    def exec(self, args, timeout=60):
        return podman(["exec", self.name] + list(args), check=False, timeout=timeout)

    def exec_popen(self, args):
        return subprocess.Popen([PODMAN, "--runtime", "runc", "exec", self.name] + list(args),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self):
        """podman stop (SIGTERM, then SIGKILL after the grace period): (exit code, seconds)."""
        t0 = time.monotonic()
        podman(["stop", "--time", str(self.grace_s or 30), self.name], check=False, timeout=(self.grace_s or 30) + 60)
        elapsed = time.monotonic() - t0
        return self.state()[1], elapsed

    def remove(self):
        podman(["rm", "-f", "--time", "0", self.name], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
