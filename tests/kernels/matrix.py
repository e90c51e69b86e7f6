"""Kernel matrix harness: Debian 12's own kernels, booted under qemu (TCG), each running the
guest checks and scenarios of tests/kernels/guest/init.sh in one boot.

    line = KernelLine("6.1", "linux-image-amd64")
    kernel = fetch_kernel(line, cache_dir)            # apt-cache depends + apt-get download
    initrd = build_initramfs(kernel, work_dir, rstwatch_bin, scenario_bin)
    boot = boot_kernel(kernel, initrd, work_dir, timeout_s=420)
    boot.sections["check-auto.out"] -> Section(rc, lines)

Standard library only. Everything it writes stays under the directories it is given (the
build tree); the one process it starts per boot is its own qemu, ended by PID.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_INIT = os.path.join(HERE, "guest", "init.sh")
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"  # busybox-static
BPFTOOL = "/usr/sbin/bpftool"


class MatrixError(Exception):
    """The harness could not do its part (resolve, download, build, boot)."""


class DownloadError(MatrixError):
    """A kernel package could not be resolved or downloaded."""


class ToolMissing(MatrixError):
    """A program the harness needs is not installed (scripts/deps.sh --test installs it)."""


def require_tools():
    """ToolMissing naming every missing program (qemu-system-x86, busybox-static, cpio, bpftool)."""
    missing = [p for p in (QEMU, "cpio", "strip", "dpkg-deb", "apt-get", "setpriv")
               if not shutil.which(p)]
    missing += [p for p in (BUSYBOX, BPFTOOL) if not os.access(p, os.X_OK)]
    if missing:
        raise ToolMissing("not installed: %s (scripts/deps.sh --test installs qemu-system-x86, "
                          "busybox-static, cpio and bpftool)" % ", ".join(missing))


class KernelLine:
    """A Debian 12 kernel line, named by the meta package that always depends on its newest
    image (so no ABI number is pinned here)."""

    def __init__(self, line, meta):
        self.line = line  # "6.1", "6.12"
        self.meta = meta  # "linux-image-amd64", "linux-image-6.12-amd64"

    def __repr__(self):
        return "KernelLine(%s, %s)" % (self.line, self.meta)


class Kernel:
    """An image package resolved and unpacked: vmlinuz and its config."""

    def __init__(self, line, package, version, release, vmlinuz, config, deb):
        self.line = line
        self.package = package  # linux-image-6.1.0-57-amd64
        self.version = version  # 6.1.192-3
        self.release = release  # 6.1.0-57-amd64 (uname -r)
        self.vmlinuz = vmlinuz
        self.config = config
        self.deb = deb

    def config_value(self, key):
        with open(self.config) as f:
            for line in f:
                if line.startswith(key + "="):
                    return line.strip().split("=", 1)[1]
        return None


def _run(cmd, timeout=600, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, **kw)


# ---------------------------------------------------------------- packages

_apt_lock = threading.Lock()
_apt_updated = False


def _apt_update():
    """`apt-get update`, at most once per process (kernel lines are fetched in parallel)."""
    global _apt_updated
    with _apt_lock:
        if _apt_updated:
            return
        if os.geteuid() != 0:
            raise DownloadError("apt metadata is stale or missing and `apt-get update` needs root")
        res = _run(["apt-get", "update", "-q"])
        if res.returncode != 0:
            raise DownloadError("apt-get update failed (%d):\n%s" % (res.returncode, res.stderr))
        _apt_updated = True


def resolve_image(meta):
    """(image package, candidate version) the meta package currently depends on."""
    res = _run(["apt-cache", "depends", meta])
    deps = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", res.stdout, re.M)
    if res.returncode != 0 or not deps:
        raise DownloadError("`apt-cache depends %s` names no linux-image package (rc %d): %s%s" % (
            meta, res.returncode, res.stdout.strip(), res.stderr.strip()))
    package = deps[0]
    res = _run(["apt-cache", "policy", package])
    m = re.search(r"^\s*Candidate:\s*(\S+)", res.stdout, re.M)
    if not m or m.group(1) == "(none)":
        raise DownloadError("no candidate version of %s:\n%s" % (package, res.stdout))
    return package, m.group(1)


def _deb_name(package, version):
    return "%s_%s_amd64.deb" % (package, version.replace(":", "%3a"))


def _download(package, version, debs_dir):
    """apt-get download into debs_dir (cached): the .deb's path, or DownloadError."""
    os.makedirs(debs_dir, exist_ok=True)
    path = os.path.join(debs_dir, _deb_name(package, version))
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return path
    res = _run(["apt-get", "download", "-q", "%s=%s" % (package, version)], cwd=debs_dir)
    if res.returncode != 0 or not os.path.isfile(path):
        raise DownloadError("apt-get download %s=%s failed (%d):\n%s" % (
            package, version, res.returncode, res.stderr.strip()))
    return path


def fetch_kernel(line, cache_dir, log=None):
    """Resolves line.meta to its image package, downloads it (cached in cache_dir/debs) and
    unpacks its /boot into cache_dir/PACKAGE_VERSION. Stale or missing apt metadata (the meta
    package unknown, the resolved version gone from the mirror) gets one `apt-get update`."""
    log = log or (lambda msg: None)
    cache_dir = os.path.abspath(cache_dir)
    updated = False
    while True:
        try:
            package, version = resolve_image(line.meta)
            deb = _download(package, version, os.path.join(cache_dir, "debs"))
            break
        except DownloadError as exc:
            if updated:
                raise
            log("%s: %s; running apt-get update once" % (line.meta, str(exc).splitlines()[0]))
            _apt_update()
            updated = True
    unpacked = os.path.join(cache_dir, "%s_%s" % (package, version))
    boot = os.path.join(unpacked, "boot")
    if not glob.glob(os.path.join(boot, "vmlinuz-*")):
        tmp = unpacked + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        # Only /boot: vmlinuz and config (modules are not needed, see init.sh).
        res = subprocess.run("dpkg-deb --fsys-tarfile '%s' | tar -x -C '%s' ./boot" % (deb, tmp),
                             shell=True, stderr=subprocess.PIPE, text=True, timeout=300)
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MatrixError("unpacking %s failed: %s" % (deb, res.stderr))
        shutil.rmtree(unpacked, ignore_errors=True)
        os.rename(tmp, unpacked)
    vmlinuz = glob.glob(os.path.join(boot, "vmlinuz-*"))
    config = glob.glob(os.path.join(boot, "config-*"))
    if len(vmlinuz) != 1 or len(config) != 1:
        raise MatrixError("%s: expected one vmlinuz and one config in /boot, found %s %s" % (
            deb, vmlinuz, config))
    release = os.path.basename(vmlinuz[0])[len("vmlinuz-"):]
    return Kernel(line, package, version, release, vmlinuz[0], config[0], deb)


# ---------------------------------------------------------------- initramfs

def shared_libraries(binary):
    """Paths of binary's shared libraries and its dynamic loader, from ldd."""
    res = _run(["ldd", binary], timeout=60)
    if res.returncode != 0:
        raise MatrixError("ldd %s failed: %s" % (binary, res.stderr))
    paths = []
    for line in res.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            paths.append(m.group(1))
    if not any("ld-linux" in p for p in paths):
        raise MatrixError("ldd %s shows no dynamic loader:\n%s" % (binary, res.stdout))
    return paths


def build_initramfs(kernel, work_dir, rstwatch_bin, scenario_bin):
    """A gzip'd newc cpio for kernel: busybox, init.sh as /init, rstwatch (debug info
    stripped) and bpftool with their libraries, rwscenario, and the kernel's config at
    /boot/config-RELEASE (rstwatch reads CONFIG_HZ there). Returns its path."""
    work_dir = os.path.abspath(work_dir)
    root = os.path.join(work_dir, "root")
    shutil.rmtree(root, ignore_errors=True)

    def put(src, dest, mode=None):
        dest = os.path.join(root, dest.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(src, dest)  # follows symlinks: the library's content under ldd's name
        os.chmod(dest, mode if mode is not None else os.stat(src).st_mode & 0o7777)

    require_tools()
    for needed in (rstwatch_bin, scenario_bin):
        if not os.path.isfile(needed):
            raise MatrixError("missing %s (the build makes rstwatch and rwscenario)" % needed)
    put(BUSYBOX, "/bin/busybox", 0o755)
    put(GUEST_INIT, "/init", 0o755)
    put(scenario_bin, "/usr/bin/rwscenario", 0o755)
    put(BPFTOOL, "/usr/sbin/bpftool", 0o755)
    stripped = os.path.join(root, "usr/bin/rstwatch")
    res = _run(["strip", "--strip-debug", "-o", stripped, rstwatch_bin], timeout=120)
    if res.returncode != 0:
        raise MatrixError("strip %s failed: %s" % (rstwatch_bin, res.stderr))
    for lib in sorted(set(shared_libraries(rstwatch_bin) + shared_libraries(BPFTOOL))):
        put(lib, lib)
    put(kernel.config, "/boot/config-" + kernel.release, 0o644)
    for d in ("proc", "sys", "dev", "tmp", "run"):
        os.makedirs(os.path.join(root, d), exist_ok=True)

    initrd = os.path.join(work_dir, "initramfs.cpio.gz")
    cmd = "cd '%s' && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 > '%s'" % (
        root, initrd + ".tmp")
    res = subprocess.run(cmd, shell=True, stderr=subprocess.PIPE, text=True, timeout=300)
    if res.returncode != 0:
        raise MatrixError("building the initramfs failed: %s" % res.stderr)
    os.rename(initrd + ".tmp", initrd)
    shutil.rmtree(root, ignore_errors=True)
    return initrd


# ---------------------------------------------------------------- boot

class Section:
    def __init__(self, rc, lines):
        self.rc = rc  # int, "killed", or None ("-": a plain file dump)
        self.lines = lines

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return "Section(rc=%r, %d lines)" % (self.rc, len(self.lines))


class Boot:
    """One guest run: its sections, @@info lines, console and timing."""

    def __init__(self, kernel, returncode, elapsed_s, timed_out, console, results):
        self.kernel = kernel
        self.returncode = returncode
        self.elapsed_s = elapsed_s
        self.timed_out = timed_out
        self.console = console
        self.results = results
        self.sections, self.info, self.done = parse_results(results)

    def section(self, name):
        if name not in self.sections:
            raise AssertionError("%s: the guest wrote no section %r (sections: %s)\n%s" % (
                self.kernel.release, name, sorted(self.sections), self.console_tail()))
        return self.sections[name]

    def console_tail(self, lines=40):
        return "console (last %d lines):\n%s" % (lines, "\n".join(
            self.console.splitlines()[-lines:]))


def parse_results(text):
    """(sections {name: Section}, info {key: [values...]}, done) from the guest's ttyS1."""
    sections, info, done = {}, {}, False
    current, lines = None, []
    for raw in text.replace("\r", "").split("\n"):
        if current is not None:
            m = re.match(r"^@@end (\S+) rc=(\S+)$", raw)
            if m and m.group(1) == current:
                rc = m.group(2)
                sections[current] = Section(int(rc) if rc.lstrip("-").isdigit() and rc != "-"
                                            else (None if rc == "-" else rc), lines)
                current, lines = None, []
            else:
                lines.append(raw)
            continue
        if raw.startswith("@@begin "):
            current, lines = raw.split(" ", 1)[1].strip(), []
        elif raw.startswith("@@info "):
            parts = raw.split()
            if len(parts) >= 2:
                info.setdefault(parts[1], []).append(parts[2:])
        elif raw.strip() == "@@done":
            done = True
    return sections, info, done


def boot_kernel(kernel, initrd, work_dir, timeout_s, memory_mb=1024, cpus=2):
    """Boots kernel with initrd under qemu TCG; the guest's results (ttyS1) and console
    (ttyS0) go to files in work_dir. qemu is ended by its PID after timeout_s."""
    work_dir = os.path.abspath(work_dir)
    console = os.path.join(work_dir, "console.log")
    results = os.path.join(work_dir, "results.log")
    for path in (console, results):
        if os.path.exists(path):
            os.unlink(path)
    # setpriv (util-linux) execs qemu with SIGKILL as its parent-death signal: qemu cannot outlive
    # this harness (a ctest timeout, SIGTERM); the PID is still qemu's own.
    cmd = ["setpriv", "--pdeathsig", "KILL", QEMU, "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mb),
           "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-serial", "file:" + console, "-serial", "file:" + results,
           "-kernel", kernel.vmlinuz, "-initrd", initrd,
           "-append", "console=ttyS0 panic=-1 rdinit=/init loglevel=4 "
                      "random.trust_cpu=on mitigations=off"]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise MatrixError("cannot start %s: %s (scripts/deps.sh --test installs "
                          "qemu-system-x86)" % (QEMU, exc))
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    elapsed = time.monotonic() - t0

    def read(path):
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    text = read(console)
    if out.strip():
        text += "\n[qemu] " + out.strip()
    return Boot(kernel, proc.returncode, elapsed, timed_out, text, read(results))
