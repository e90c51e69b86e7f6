"""bench/run.py's storm part on the real kernel, small: a pool of idle connections reset at a
low rate with the agent, then with each set of reference programs (bench/hookfloor.bpf.c).

What it proves (not how fast anything is: no timing is asserted): the generator resets every
connection it opened; the agent sees exactly one RST sent and one received per connection and
loses none; every reference program loads, attaches and runs as often as rstwatch's hook on
its tracepoint; the table names each hook against its references; and the run leaves the
machine as it found it (bpf_stats, namespaces, processes, the CPU cgroups standing for pods).

Needs root and BPF: RSTWATCH_BIN (the agent), RSTWATCH_BUILD_DIR (bench/connload,
bench/hookfloor). With RSTWATCH_REQUIRE_BPF=1 a missing BPF fails instead of skipping.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

import netns  # noqa: E402

STATS = "/proc/sys/kernel/bpf_stats_enabled"
RATE = 20000  # records/s: 10,000 connections reset per second
SECONDS = 2
STRAY = 50  # counts are machine-wide: room for a few RSTs of other sockets, never for a lost one


def namespaces():
    out = subprocess.run([netns.IP, "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


class StormOnTheKernel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        netns.require_bpf()
        build = os.environ.get("RSTWATCH_BUILD_DIR", os.path.join(REPO, "build"))
        for tool in ("connload", "hookfloor", "hookfloor.bpf.o"):
            path = os.path.join(build, "bench", tool)
            if not os.path.exists(path):
                raise AssertionError("%s not built (cmake --build %s)" % (path, build))
        with open(STATS) as f:
            cls.stats_before = f.read().strip()
        cls.netns_before = namespaces()
        cls.tmp = tempfile.mkdtemp(prefix="rw-storm-test-")
        out = os.path.join(cls.tmp, "storm.md")
        cls.bench = subprocess.run(
            [sys.executable, os.path.join(REPO, "bench", "run.py"), "--only", "storm", "--storm-rate", str(RATE),
             "--storm-seconds", str(SECONDS), "--storm-reps", "1", "--build-dir", build, "--out", out],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        cls.table = open(out).read() if os.path.exists(out) else ""
        raw = os.path.splitext(out)[0] + ".json"
        cls.results = json.load(open(raw)) if os.path.exists(raw) else {}

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(getattr(cls, "tmp", ""), ignore_errors=True)

    def setUp(self):
        self.assertEqual(self.bench.returncode, 0, self.bench.stdout[-3000:])
        self.assertNotIn("errors", self.results, self.results.get("errors"))

    def about(self, value, expected):
        self.assertGreaterEqual(value, expected)
        self.assertLessEqual(value, expected + STRAY)

    def test_every_connection_gives_one_rst_sent_and_one_received_none_lost(self):
        st = self.results["storm"]
        self.assertEqual(st["generator"], "pool")
        conns = RATE // 2 * SECONDS
        self.assertEqual(st["connections"], conns)
        row = st["phases"]  # per round: the agent's hooks in the reset phase
        self.assertEqual(st["resets"]["values"], [conns], "the generator reset every connection it opened")
        self.assertEqual(st["lost"]["values"], [0])
        self.about(st["records"]["values"][0], 2 * conns)
        hooks = row["rstwatch"]["reset"][0]
        self.about(hooks["rw_rst_received"]["calls"], conns)
        self.about(hooks["rw_rst_sent"]["calls"], conns)

    def test_reference_programs_run_as_often_as_rstwatchs_hooks(self):
        phases = self.results["storm"]["phases"]
        conns = RATE // 2 * SECONDS
        for kind, progs in (("floor_empty", ("floor_state_empty", "floor_rst_recv_empty", "floor_rst_sent_empty")),
                            ("floor_record", ("floor_state_storage", "floor_rst_recv_record",
                                              "floor_rst_sent_record")),
                            ("floor_lookup", ("floor_state_storage", "floor_rst_recv_lookup",
                                              "floor_rst_sent_record")),
                            ("floor_reads", ("floor_state_storage", "floor_rst_recv_reads",
                                             "floor_rst_sent_record"))):
            reset = phases[kind]["reset"][0]
            for prog in progs:
                self.assertIn(prog, reset, "%s did not run in the %s round" % (prog, kind))
                self.assertGreater(reset[prog]["ns"], 0)
            self.about(reset[progs[1]]["calls"], conns)
            self.about(reset[progs[2]]["calls"], conns)
            # Opening the pool: the state tracepoint ran for every connection made (both ends).
            self.assertGreaterEqual(phases[kind]["open"][0][progs[0]]["calls"], 2 * conns)

    def test_the_table_sets_each_hook_beside_its_references(self):
        for hook, refs in (("rw_rst_received", ("floor_rst_recv_empty", "floor_rst_recv_record")),
                           ("rw_rst_sent", ("floor_rst_sent_empty", "floor_rst_sent_record")),
                           ("rw_state", ("floor_state_empty", "floor_state_storage"))):
            for ref in refs:
                self.assertIn("kernel cost %s minus %s, pool reset (ns/call)" % (hook, ref), self.table)
        for ref in ("floor_rst_recv_lookup", "floor_rst_recv_reads"):
            self.assertIn("kernel cost rw_rst_received minus %s, pool reset (ns/call)" % ref, self.table)
        for kind in ("rstwatch", "floor_empty", "floor_record", "floor_lookup", "floor_reads"):
            self.assertIn("kernel cost per connection reset, state and reset tracepoints together, %s (ns)" % kind,
                          self.table)
        self.assertIn("storm: records/s reached (%d s, a pool of %d idle connections reset)"
                      % (SECONDS, RATE // 2 * SECONDS), self.table)

    def test_the_machine_is_left_as_found(self):
        with open(STATS) as f:
            self.assertEqual(f.read().strip(), self.stats_before)
        self.assertEqual(namespaces(), self.netns_before)
        leftover = subprocess.run(["pgrep", "-f", "bench/(connload|hookfloor)"], stdout=subprocess.PIPE,
                                  text=True).stdout.split()
        self.assertEqual(leftover, [])
        import glob
        self.assertEqual(glob.glob("/sys/fs/cgroup/**/rstwatch-bench-*", recursive=True), [],
                         "the run's CPU cgroups were not removed")


if __name__ == "__main__":
    unittest.main()
