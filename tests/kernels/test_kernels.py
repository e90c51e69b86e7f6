"""Kernel matrix: rstwatch on Debian 12's own kernels (6.1 and 6.12), booted under qemu TCG.

Each kernel boots once (tests/kernels/matrix.py); its /init (guest/init.sh) runs `rstwatch
check` (auto and every --write-hook), one `rstwatch trace -o json` per write-hook mode with
every scenario of guest/rwscenario.c under it, and the agent; this file asserts the results.
Expectations come from the kernel's version (Debian's kernels: tp_btf/tcp_sendmsg_locked from
6.16, the kernel reset reason and resets from TIME_WAIT sockets in tcp_send_reset from 6.10;
fentry and kprobes on every Debian kernel), never from what rstwatch reports.

Environment: RSTWATCH_BIN (rstwatch), RSTWATCH_SCENARIO_BIN (rwscenario, static),
RSTWATCH_KERNELS_DIR (cache and work directory in the build tree), optional
RSTWATCH_KERNELS (e.g. "6.12": a subset of lines), RSTWATCH_KERNELS_BOOT_TIMEOUT (seconds per
boot, default 480), RSTWATCH_KERNELS_PARALLEL (0: boot one kernel after the other).
A download failure or a missing tool (qemu, busybox-static, cpio) fails with CI=true or
RSTWATCH_REQUIRE_BPF=1 and skips (with the reason) otherwise; a kernel that does not boot, a
write-hook mode missing or a wrong incident always fails.
"""

import json
import os
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

import matrix  # noqa: E402
import prom  # noqa: E402
import scenarios  # noqa: E402
from netns import describe  # noqa: E402

LINES = [matrix.KernelLine("6.1", "linux-image-amd64"),
         matrix.KernelLine("6.12", "linux-image-6.12-amd64")]
MODES = ("tp_btf", "fentry", "kprobe")
MODE_NAMES = {"tp_btf": "tp_btf/tcp_sendmsg_locked", "fentry": "fentry/tcp_sendmsg",
              "kprobe": "kprobe/tcp_sendmsg"}
MODE_PROGRAMS = {"tp_btf": "rw_write_tp", "fentry": "rw_write_fentry",
                 "kprobe": "rw_write_kprobe"}
# The guest's scenario list (guest/init.sh): name, family, client delay (write_after_fin).
TRACE_SCENARIOS = [("write_after_fin", 4, 300.0), ("write_after_fin", 4, 0.0),
                   ("write_after_fin", 6, 300.0), ("write_after_fin", 6, 0.0),
                   ("idle_close_rst", 4, None), ("idle_close_rst", 6, None),
                   ("healthy", 4, None), ("healthy", 6, None)]
AGENT_SCENARIOS = [("write_after_fin", 4, 300.0), ("idle_close_rst", 6, None)]
AGENT_PORT = 9740
# idle_before_write_ms against the client's own measure (CLOCK_MONOTONIC). Each incident: 200 ms
# (tests/lib/scenarios.py uses 60 on the host): under TCG the guest's timer ticks can arrive late
# when the host is busy, and jiffies (the kernel's idle clock) lag the TSC until the next tick;
# seen up to 90 ms on a loaded 2-core host, usually under 10. The median over a run: 15 ms.
IDLE_TOL_MS = 200.0
IDLE_MEDIAN_TOL_MS = 15.0


def _truthy(name):
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def required():
    """Download failures fail (not skip) in CI and with RSTWATCH_REQUIRE_BPF=1."""
    return _truthy("CI") or os.environ.get("RSTWATCH_REQUIRE_BPF") == "1"


def version_of(release):
    """(major, minor) of a kernel release string ("6.12.118+deb12-amd64" -> (6, 12))."""
    major, minor = release.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()))


class Expect:
    """What a Debian kernel of this version offers (Debian builds every kernel with BTF,
    CONFIG_KPROBES and fentry/BPF trampolines)."""

    def __init__(self, release):
        v = version_of(release)
        self.offered = [m for m in MODES if m != "tp_btf" or v >= (6, 16)]
        self.chosen = self.offered[0]
        self.reset_reason = v >= (6, 10)  # sk_rst_reason; resets from TIME_WAIT traced too


# ---------------------------------------------------------------- running the matrix once

class Run:
    """One kernel line's fetch, initramfs and boot (or the reason it has none)."""

    def __init__(self, line):
        self.line = line
        self.kernel = None
        self.boot = None
        self.error = None  # (kind, message): kind "download", "tools" or "harness"
        self.fetch_s = None
        self.initramfs_s = None


_runs = None
_lock = threading.Lock()


def _log(msg):
    print("[kernels] " + msg, file=sys.stderr, flush=True)


def _run_line(run, work_root, rstwatch_bin, scenario_bin, timeout_s, cpus):
    try:
        matrix.require_tools()
        t0 = time.monotonic()
        run.kernel = matrix.fetch_kernel(run.line, work_root, log=_log)
        run.fetch_s = time.monotonic() - t0
        work = os.path.join(work_root, "run-" + run.line.line)
        os.makedirs(work, exist_ok=True)
        t0 = time.monotonic()
        initrd = matrix.build_initramfs(run.kernel, work, rstwatch_bin, scenario_bin)
        run.initramfs_s = time.monotonic() - t0
        _log("%s: booting %s (%s), initramfs %.1f MB" % (
            run.line.line, run.kernel.package, run.kernel.version, os.path.getsize(initrd) / 1e6))
        run.boot = matrix.boot_kernel(run.kernel, initrd, work, timeout_s, cpus=cpus)
        _log("%s: guest finished in %.1f s (qemu exit %s%s)" % (
            run.line.line, run.boot.elapsed_s, run.boot.returncode,
            ", TIMED OUT" if run.boot.timed_out else ""))
    except matrix.DownloadError as exc:
        run.error = ("download", str(exc))
    except matrix.ToolMissing as exc:
        run.error = ("tools", str(exc))
    except Exception as exc:  # reported by every test of this kernel
        run.error = ("harness", "%s: %s" % (type(exc).__name__, exc))


def runs():
    """Runs the matrix once per process (all lines, in parallel unless
    RSTWATCH_KERNELS_PARALLEL=0) and returns {line: Run}."""
    global _runs
    with _lock:
        if _runs is not None:
            return _runs
        rstwatch_bin = os.environ.get("RSTWATCH_BIN", "")
        scenario_bin = os.environ.get("RSTWATCH_SCENARIO_BIN", "")
        work_root = os.environ.get("RSTWATCH_KERNELS_DIR", "")
        if not (rstwatch_bin and scenario_bin and work_root):
            raise AssertionError("set RSTWATCH_BIN, RSTWATCH_SCENARIO_BIN and RSTWATCH_KERNELS_DIR "
                                 "(ctest does: ctest -L kernels)")
        wanted = [w.strip() for w in os.environ.get("RSTWATCH_KERNELS", "").split(",") if w.strip()]
        lines = [l for l in LINES if not wanted or l.line in wanted]
        timeout_s = float(os.environ.get("RSTWATCH_KERNELS_BOOT_TIMEOUT", "480"))
        parallel = os.environ.get("RSTWATCH_KERNELS_PARALLEL", "1") != "0"
        os.makedirs(work_root, exist_ok=True)
        result = {l.line: Run(l) for l in lines}
        t0 = time.monotonic()
        # One vCPU each (TCG: one host thread per vCPU): a guest with two ran slower here
        # (73 s instead of 45-60 s), and two guests in parallel fill the 2 cores.
        cpus = 1
        threads = [threading.Thread(target=_run_line, args=(
            r, work_root, rstwatch_bin, scenario_bin, timeout_s, cpus)) for r in result.values()]
        for t in threads:
            t.start()
            if not parallel:
                t.join()
        for t in threads:
            t.join()
        _log("matrix: %d kernel(s) in %.1f s wall" % (len(lines), time.monotonic() - t0))
        _runs = result
        return _runs


# ---------------------------------------------------------------- guest output

def json_lines(section, what):
    out = []
    for line in section.lines:
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError("%s: not JSON: %r" % (what, line))
    return out


def bpf_programs(section, what):
    text = section.text.strip()
    try:
        progs = json.loads(text) if text else None
    except ValueError:
        progs = None
    if not isinstance(progs, list):
        raise AssertionError("%s: `bpftool -j` did not give a JSON list: %r" % (what, text[:300]))
    return progs


def rw_program_names(progs):
    return sorted(p.get("name", "") for p in progs if p.get("name", "").startswith("rw_"))


class ConnRef:
    """A connection of a scenario, in the shape tests/lib/scenarios.py matches against."""

    def __init__(self, conn):
        self.client_ep = (conn["client"]["ip"], conn["client"]["port"])
        self.server_ep = (conn["server"]["ip"], conn["server"]["port"])
        self.exchanges = conn["exchanges"]

    @property
    def ports(self):
        return {self.client_ep[1], self.server_ep[1]}


def expected_incidents(result, expect):
    """The incidents rstwatch must report for one rwscenario result on this kernel, and the
    connections they belong to."""
    conns = [ConnRef(c) for c in result["conns"]]
    name = result["scenario"]
    if name == "healthy":
        return [], conns
    conn = conns[0]
    client = dict(observer="client", conn=conn, pid=result["pid"], comm=result["comm"],
                  idle_ms=result["idle_ms"], requests=conn.exchanges, reset_reason=None)
    reason = (lambda r: r if expect.reset_reason else None)
    if name == "idle_close_rst":
        return [dict(client, cause="idle_close_race", state="ESTABLISHED"),
                dict(cause="abort_on_close", observer="server", conn=conn, requests=2,
                     state="CLOSE", reset_reason=reason("TCP_ABORT_ON_CLOSE"))], conns
    if name == "write_after_fin":
        exp = [dict(client, cause="write_after_fin", state="CLOSE_WAIT")]
        server_state = result.get("server_state")
        if server_state == "FIN_WAIT1":
            # The write carried the ACK of the FIN: the full (orphaned) socket answers.
            exp.append(dict(cause="data_after_close", observer="server", conn=conn, requests=2,
                            state="CLOSE", reset_reason=reason("TCP_ABORT_ON_DATA")))
        elif server_state in ("FIN_WAIT2", "TIME_WAIT"):
            # A TIME_WAIT socket answers: tcp_send_reset reports that only from Linux 6.10.
            if expect.reset_reason:
                exp.append(dict(cause="data_after_close", observer="server", conn=conn,
                                requests=1, state="TIME_WAIT",
                                reset_reason="TCP_TIMEWAIT_SOCKET"))
        else:
            raise AssertionError("write_after_fin: server socket %r before the write" % (
                server_state,))
        return exp, conns
    raise AssertionError("unknown scenario %r" % name)


def incidents_of_conns(incidents, conns):
    """The incidents of exactly these connections (both endpoints). Every scenario runs on
    loopback with ports the kernel picks, so a later scenario can get a port number an earlier
    one used: matching by port alone gave one scenario's incidents to another."""
    wanted = {(c.client_ep, c.server_ep) for c in conns}
    return [i for i in incidents if (tuple(scenarios.client_ep(i)), tuple(scenarios.server_ep(i))) in wanted]


def idle_deviations(incidents, results):
    """idle_before_write_ms minus the client's own measure, for each client incident."""
    out = []
    for result in results:
        if result.get("idle_ms") is None:
            continue
        conn = ConnRef(result["conns"][0])
        for inc in incidents_of_conns(incidents, [conn]):
            if inc.get("observer") == "client" and inc.get("idle_before_write_ms") is not None:
                out.append(inc["idle_before_write_ms"] - result["idle_ms"])
    return out


def scenario_key(result):
    return (result["scenario"], result["family"], result.get("delay_ms"))


def scenario_label(result):
    label = "%s/IPv%d" % (result["scenario"], result["family"])
    if result.get("delay_ms") is not None:
        label += "/write %.0f ms after FIN (server %s)" % (result["delay_ms"],
                                                           result.get("server_state"))
    return label


def match_scenarios(incidents, results, expect):
    """([(scenario label, [problem, ...]) per result], incidents of no scenario)."""
    outcomes, claimed = [], []
    for result in results:
        expected, conns = expected_incidents(result, expect)
        got = incidents_of_conns(incidents, conns)
        claimed += got
        problems = [] if result.get("ok") else ["the scenario failed: %s" % result.get("error")]
        problems += scenarios.incident_problems(got, expected, tol_ms=IDLE_TOL_MS)
        outcomes.append((scenario_label(result), problems))
    return outcomes, [i for i in incidents if i not in claimed]


# ---------------------------------------------------------------- the tests

class KernelCase(unittest.TestCase):
    """Base of the per-kernel classes below (LINE set by make_case)."""

    LINE = None
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.run_ = runs().get(cls.LINE.line)

    def setUp(self):
        r = self.run_
        if r is None:
            self.skipTest("kernel line %s not selected (RSTWATCH_KERNELS)" % self.LINE.line)
        if r.error:
            kind, message = r.error
            if kind in ("download", "tools") and not required():
                self.skipTest("kernel %s cannot be run here (CI=true or RSTWATCH_REQUIRE_BPF=1 "
                              "makes this a failure): %s" % (self.LINE.meta, message))
            self.fail("kernel %s (%s): %s" % (self.LINE.line, self.LINE.meta, message))
        self.boot = r.boot
        self.kernel = r.kernel
        self.expect = Expect(self.kernel.release)
        if not self.boot.done:
            self.fail("kernel %s did not boot and finish its run (qemu exit %s, %.0f s%s; "
                      "results sections: %s)\n%s" % (
                          self.kernel.release, self.boot.returncode, self.boot.elapsed_s,
                          ", killed at the time limit" if self.boot.timed_out else "",
                          sorted(self.boot.sections), self.boot.console_tail()))

    # -- boot and check

    def test_boot(self):
        """The guest runs the package's kernel and reports everything."""
        release, uptime = self.boot.info["boot"][0]
        self.assertEqual(release, self.kernel.release)
        self.assertTrue(release.startswith(self.LINE.line + "."), release)
        self.assertFalse(self.boot.timed_out)
        _log("%s: kernel %s, /init at %s s uptime, guest run %.1f s" % (
            self.LINE.line, release, uptime, self.boot.elapsed_s))

    def test_check_auto(self):
        """`rstwatch check`: exit 0, HZ from the package's config, the modes this kernel offers
        and the one chosen, the reset reason."""
        s = self.boot.section("check-auto.out")
        out = s.text
        self.assertEqual(s.rc, 0, out + self.boot.section("check-auto.err").text)
        hz = self.kernel.config_value("CONFIG_HZ")
        self.assertIn("HZ             %s (/boot/config-%s)" % (hz, self.kernel.release), out)
        self.assertIn("kernel reset reason: %s" % ("yes" if self.expect.reset_reason else "no"),
                      out)
        chosen = MODE_NAMES[self.expect.chosen]
        for mode in MODES:
            line = self.write_hook_line(out, mode)
            status, why = self.hook_status(line, mode)
            if mode == self.expect.chosen:
                self.assertEqual(status, "supported, chosen", line)
            elif mode in self.expect.offered:
                # Attached too, but a hook earlier in the order is used.
                self.assertEqual((status, why), ("supported", "not needed: %s comes first" % chosen), line)
            else:
                # Not offered is harmless once a hook attached: the line says which one is used.
                self.assertTrue(status.startswith("not offered by this kernel ("), line)
                self.assertEqual(why, "fine: %s is used" % chosen, line)
        self.assertIn("chosen         write hook %s\n" % chosen, out)
        self.assertRegex(out, r"\n {15}per-socket state: (socket storage|LRU hash of \d+ entries) \(")
        self.assertIn("result: rstwatch can run here (write hook %s)" % chosen, out)

    def write_hook_line(self, out, mode):
        for line in out.splitlines():
            if MODE_NAMES[mode] + ":" in line:
                return line.strip()
        self.fail("no write hook line for %s in:\n%s" % (mode, out))

    @staticmethod
    def hook_status(line, mode):
        """("STATUS", "WHY") of a write hook's line `NAME: STATUS[ -- WHY]` ("" when no why)."""
        status, _, why = line.split(MODE_NAMES[mode] + ": ", 1)[1].partition(" -- ")
        return status, why

    def test_check_each_write_hook(self):
        """`rstwatch check --write-hook MODE`: exit 0 with MODE chosen where offered; exit 1
        with the kernel's refusal where not."""
        for mode in MODES:
            with self.subTest(mode=mode):
                s = self.boot.section("check-%s.out" % mode)
                err = self.boot.section("check-%s.err" % mode).text
                line = self.write_hook_line(s.text, mode)
                if mode in self.expect.offered:
                    self.assertEqual(s.rc, 0, s.text + err)
                    self.assertEqual(self.hook_status(line, mode), ("supported, chosen", ""), line)
                    self.assertIn("write hook %s)" % MODE_NAMES[mode], s.text)
                else:
                    self.assertEqual(s.rc, 1, s.text + err)
                    self.assertIn("refused by the kernel (E", line)
                    self.assertIn("not offered by this kernel", line)
                    self.assertIn("result: rstwatch cannot run here: no write hook attached: %s refused "
                                  "by the kernel (E" % MODE_NAMES[mode], s.text)
                # The loader's refusal warning is not repeated on stderr: the report says it.
                self.assertNotIn("refused by the kernel", err)
                for other in MODES:
                    if other != mode:
                        self.assertEqual(self.hook_status(self.write_hook_line(s.text, other), other),
                                         ("not tried (--write-hook)", ""))

    # -- trace, per write-hook mode

    def check_trace_mode(self, mode):
        trace = self.boot.section("trace-%s.json" % mode)
        err = self.boot.section("trace-%s.err" % mode).text
        after = rw_program_names(bpf_programs(self.boot.section("progs-after-%s" % mode),
                                              "programs after trace --write-hook " + mode))
        self.assertEqual(after, [], "BPF programs left after trace --write-hook %s" % mode)
        if mode not in self.expect.offered:
            # Refused with one clear error line ("rstwatch: cannot trace: ..."), nothing run.
            self.assertNotEqual(trace.rc, 0, err)
            errors = [l for l in err.splitlines() if l.startswith("rstwatch: ") or " error " in l]
            self.assertEqual(len(errors), 1, err)
            self.assertIn("rstwatch: cannot trace:", errors[0])
            self.assertEqual(json_lines(trace, "trace output"), [])
            return
        self.assertEqual(trace.rc, 0, "trace --write-hook %s exit status\n%s" % (mode, err))
        self.assertIn("write hook %s," % MODE_NAMES[mode], err)
        self.assertIn(", 0 records lost", err)
        during = rw_program_names(bpf_programs(self.boot.section("progs-during-%s" % mode),
                                               "programs during trace --write-hook " + mode))
        self.assertIn(MODE_PROGRAMS[mode], during)
        for other in MODES:
            if other != mode:
                self.assertNotIn(MODE_PROGRAMS[other], during)
        results = json_lines(self.boot.section("scenarios-%s" % mode), "scenarios")
        self.assertEqual(self.boot.section("scenarios-%s.err" % mode).text.strip(), "",
                         "scenario errors under --write-hook %s" % mode)
        self.assertEqual(sorted(map(scenario_key, results)),
                         sorted((n, f, d) for n, f, d in TRACE_SCENARIOS), "scenarios run")
        incidents = json_lines(trace, "trace --write-hook %s output" % mode)
        self.assert_incidents(incidents, results, "trace --write-hook %s" % mode)
        self.assert_idle_precision(incidents, results)

    def assert_incidents(self, incidents, results, context):
        """Per scenario: its connections' incidents are exactly the expected ones; and every
        incident belongs to a scenario."""
        for result in results:
            self.assertTrue(result["ok"], "%s: scenario failed: %r" % (context, result))
        outcomes, strays = match_scenarios(incidents, results, self.expect)
        problems = ["%s %s: %s" % (context, key, p) for key, ps in outcomes for p in ps]
        problems += ["%s: incident of no scenario: %s" % (context, describe(i)) for i in strays]
        if problems:
            self.fail("\n".join(problems) + "\nall incidents:\n" +
                      "\n".join("  " + describe(i) for i in incidents))

    def assert_idle_precision(self, incidents, results):
        """idle_before_write_ms counts kernel jiffies (whole multiples of 1000/CONFIG_HZ ms) and
        agrees with the clients' own measure: median deviation within IDLE_MEDIAN_TOL_MS."""
        step = 1000.0 / int(self.kernel.config_value("CONFIG_HZ"))
        idles = [i["idle_before_write_ms"] for i in incidents
                 if i.get("idle_before_write_ms") is not None]
        self.assertTrue(idles)
        for idle in idles:
            k = idle / step
            self.assertLess(abs(k - round(k)), 0.05,
                            "idle_before_write_ms %s is not a multiple of %.1f ms" % (idle, step))
        deviations = sorted(idle_deviations(incidents, results))
        self.assertGreaterEqual(len(deviations), 6, deviations)
        median = deviations[len(deviations) // 2]
        self.assertLessEqual(abs(median), IDLE_MEDIAN_TOL_MS,
                             "idle_before_write_ms - client idle (ms): %s" % deviations)

    def test_trace_tp_btf(self):
        self.check_trace_mode("tp_btf")

    def test_trace_fentry(self):
        self.check_trace_mode("fentry")

    def test_trace_kprobe(self):
        self.check_trace_mode("kprobe")

    def test_every_offered_mode_traced(self):
        """Each write-hook mode the kernel offers carried a full trace run."""
        for mode in self.expect.offered:
            self.assertEqual(self.boot.section("trace-%s.json" % mode).rc, 0, mode)
            self.assertTrue(json_lines(self.boot.section("scenarios-%s" % mode), mode))

    # -- agent

    def test_agent(self):
        """`rstwatch agent` (write hook auto): /readyz, /metrics counts the incidents of the
        scenarios run under it, SIGTERM detaches (no rw_* program or link left) and exits 0."""
        info = self.boot.info
        agent_err = self.boot.section("agent.err").text
        self.assertEqual(info.get("agent-ready", [["0"]])[0][0], "1",
                         "agent never answered /readyz 200:\n" + agent_err)
        self.assertIn("write hook %s," % MODE_NAMES[self.expect.chosen], agent_err)
        self.assertEqual(info["metrics-rc"][0][0], "0", "GET /metrics did not answer 200")
        results = json_lines(self.boot.section("agent-scenarios"), "agent scenarios")
        self.assertEqual(self.boot.section("agent-scenarios.err").text.strip(), "")
        self.assertEqual(sorted(map(scenario_key, results)), sorted(AGENT_SCENARIOS))
        metrics_text = self.boot.section("metrics").text
        body = metrics_text.split("\n\n", 1)[1] if "\n\n" in metrics_text else ""
        exposition = prom.parse(body)
        problems = []
        for result in results:
            expected, conns = expected_incidents(result, self.expect)
            conn = conns[0]
            for cause, observer in {(e["cause"], e["observer"]) for e in expected}:
                want = sum(1 for e in expected if (e["cause"], e["observer"]) == (cause, observer))
                got = exposition.value("rstwatch_incidents_total", cause=cause, observer=observer,
                                       client_workload=conn.client_ep[0],
                                       server_workload=conn.server_ep[0],
                                       server_port=str(conn.server_ep[1]))
                if got != want:
                    problems.append("%s/%s on %s: %s, expected %d" % (
                        cause, observer, conn.server_ep, got, want))
            total = exposition.total("rstwatch_incidents_total", server_port=str(conn.server_ep[1]))
            if total != len(expected):
                problems.append("%d incidents on server port %d, expected %d" % (
                    total, conn.server_ep[1], len(expected)))
        self.assertEqual(problems, [], "\n" + body)
        self.assertEqual(exposition.value("rstwatch_records_lost_total"), 0)
        self.assertEqual(exposition.value("rstwatch_build_info",
                                          write_hook=MODE_NAMES[self.expect.chosen]), 1)
        # SIGTERM: exit 0, programs and links gone (they were there while it ran).
        self.assertEqual(self.boot.section("agent.err").rc, 0, "agent exit status\n" + agent_err)
        self.assertIn("info stopped:", agent_err)
        during = rw_program_names(bpf_programs(self.boot.section("agent-progs-during"),
                                               "programs while the agent ran"))
        self.assertIn(MODE_PROGRAMS[self.expect.chosen], during)
        self.assertIn("rw_state", during)
        self.assertTrue(bpf_programs(self.boot.section("agent-links-during"), "links during"))
        self.assertEqual(rw_program_names(bpf_programs(self.boot.section("agent-progs-after"),
                                                       "programs after SIGTERM")), [])
        self.assertEqual(bpf_programs(self.boot.section("agent-links-after"),
                                      "links after SIGTERM"), [])


# ---------------------------------------------------------------- summary of the run

def summarize(run):
    """One kernel's row of the matrix table (docs/deploy.md), from its guest's results."""
    row = {"line": run.line.line, "meta": run.line.meta}
    if run.error or not run.boot:
        row["error"] = run.error[1] if run.error else "no boot"
        return row
    boot, kernel = run.boot, run.kernel
    row.update(package=kernel.package, version=kernel.version, release=kernel.release,
               guest_s=round(boot.elapsed_s, 1), boot_done=boot.done,
               init_uptime_s=float(boot.info.get("boot", [["", "nan"]])[0][1]),
               initramfs_s=round(run.initramfs_s or 0, 1), fetch_s=round(run.fetch_s or 0, 1))
    if not boot.done:
        return row
    expect = Expect(kernel.release)
    check = boot.sections.get("check-auto.out")
    chosen = [m for m in MODES if check and "%s: supported, chosen" % MODE_NAMES[m] in check.text]
    row["write_hook_chosen"] = MODE_NAMES[chosen[0]] if chosen else None
    row["write_hooks_offered"] = [MODE_NAMES[m] for m in MODES
                                  if check and "%s: supported" % MODE_NAMES[m] in check.text]
    row["modes"] = {}
    reasons = set()
    for mode in MODES:
        trace = boot.sections.get("trace-%s.json" % mode)
        if trace is None or trace.rc != 0:
            row["modes"][mode] = {"ran": False}
            continue
        try:
            incidents = json_lines(trace, mode)
            results = json_lines(boot.sections["scenarios-%s" % mode], mode)
            outcomes, strays = match_scenarios(incidents, results, expect)
        except (AssertionError, KeyError) as exc:
            row["modes"][mode] = {"ran": True, "error": str(exc)}
            continue
        reasons |= {i.get("reset_reason") for i in incidents if i.get("observer") == "server"}
        deviations = idle_deviations(incidents, results)
        row["modes"][mode] = {
            "ran": True, "scenarios": len(outcomes),
            "passed": sum(1 for _, problems in outcomes if not problems),
            "failed": [label for label, problems in outcomes if problems],
            "stray_incidents": len(strays), "incidents": len(incidents),
            "idle_deviation_ms": [round(min(deviations), 1), round(max(deviations), 1)]
            if deviations else None}
    row["server_reset_reasons"] = sorted("null" if r is None else r for r in reasons)
    return row


def tearDownModule():
    """Writes RSTWATCH_KERNELS_DIR/last-run.json and prints the matrix table."""
    if not _runs:
        return
    rows = [summarize(r) for r in _runs.values()]
    path = os.path.join(os.environ["RSTWATCH_KERNELS_DIR"], "last-run.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"rstwatch": os.environ.get("RSTWATCH_BIN"), "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)
    _log("results: " + path)
    for row in rows:
        if "error" in row or not row.get("boot_done"):
            _log("%s: %s" % (row["line"], row.get("error", "did not finish")))
            continue
        passed = ", ".join("%s %d/%d" % (m, v["passed"], v["scenarios"])
                           for m, v in row["modes"].items() if v.get("ran") and "passed" in v)
        _log("%s | %s | %s | reset reason %s | %s | /init at %.1f s, guest %.1f s" % (
            row["release"], row["version"], row["write_hook_chosen"],
            ", ".join(row["server_reset_reasons"]), passed, row["init_uptime_s"], row["guest_s"]))


class ScenarioMatching(unittest.TestCase):
    """The harness's own matching, without a guest: incidents go to the scenario whose
    connection they are on, also when a later scenario's connection reuses a port number."""

    def test_a_port_reused_by_a_later_scenario_does_not_move_incidents(self):
        ep = lambda port: {"ip": "127.0.0.1", "port": port}  # noqa: E731
        waf = {"scenario": "write_after_fin", "family": 4, "ok": True, "pid": 253, "comm": "rwcli",
               "idle_ms": 604.0, "delay_ms": 0.0, "server_state": "FIN_WAIT1",
               "conns": [{"client": ep(53226), "server": ep(34351), "exchanges": 2}]}
        # The healthy scenario's client got 34351, the number the first scenario's server had.
        healthy = {"scenario": "healthy", "family": 4, "ok": True, "pid": 254, "comm": "rwcli",
                   "conns": [{"client": ep(34351), "server": ep(40001), "exchanges": 300},
                             {"client": ep(45000), "server": ep(40001), "exchanges": 10}]}
        incidents = [
            {"cause": "write_after_fin", "observer": "client", "client": ep(53226), "server": ep(34351),
             "pid": 253, "comm": "rwcli", "idle_before_write_ms": 604.0, "state": "CLOSE_WAIT",
             "reset_reason": None, "requests": 2},
            {"cause": "data_after_close", "observer": "server", "client": ep(53226), "server": ep(34351),
             "state": "CLOSE", "reset_reason": None, "requests": 2}]
        self.assertEqual(len(scenarios.incidents_of(incidents, [ConnRef(c) for c in healthy["conns"]])), 2,
                         "the data do collide by port")
        outcomes, strays = match_scenarios(incidents, [waf, healthy], Expect("6.1.0-57-amd64"))
        self.assertEqual(outcomes, [("write_after_fin/IPv4/write 0 ms after FIN (server FIN_WAIT1)", []),
                                    ("healthy/IPv4", [])])
        self.assertEqual(strays, [])
        # An incident on none of the connections is a stray, whatever its ports.
        other = dict(incidents[0], client=ep(53227))
        self.assertEqual(match_scenarios(incidents + [other], [waf, healthy], Expect("6.1.0-57-amd64"))[1],
                         [other])


def make_case(line):
    name = "TestKernel_" + line.line.replace(".", "_")
    return type(name, (KernelCase,), {"LINE": line, "__doc__": "Debian's %s kernel (%s)" % (
        line.line, line.meta)})


for _line in LINES:
    globals()["TestKernel_" + _line.line.replace(".", "_")] = make_case(_line)
del _line


def load_tests(loader, standard_tests, pattern):
    """Only the per-kernel classes (not the KernelCase base)."""
    suite = unittest.TestSuite()
    suite.addTests(loader.loadTestsFromTestCase(ScenarioMatching))
    for line in LINES:
        suite.addTests(loader.loadTestsFromTestCase(globals()["TestKernel_" + line.line.replace(
            ".", "_")]))
    return suite


if __name__ == "__main__":
    unittest.main(verbosity=2)
