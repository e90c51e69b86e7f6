"""Kernel fault tests of `rstwatch agent` (docs/reliability.md, "Faults"):

- SIGKILL: no BPF program or link of the killed agent remains (bpftool); a new agent, on
  connections it did not see begin, counts their resets but invents no cause for them, and
  classifies a connection that begins after it exactly;
- ring-buffer overflow: the agent stalls (SIGSTOP, as when it is starved of CPU) while a storm
  of RSTs fills a small ring buffer (--ring-buffer-size); the kernel's drops are counted in
  rstwatch_records_lost_total and logged once per poll, and once resumed the agent keeps
  running and classifies the next incident exactly;
- wall-clock steps (libfaketime, +1 day then -1 day, monotonic untouched): incident times
  follow the wall clock, causes, counts and idle times do not change.

Run as root from the repo root:  /usr/bin/python3 -m unittest -v tests/kernel/test_faults.py
"""

import datetime
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import scenarios  # noqa: E402
from agent import BPFTOOL, IncidentStream, bpf_fd_ids, identity_of, rw_links  # noqa: E402
from agent_case import AgentTestCase, expected_from, ours_by_workloads  # noqa: E402
from scenarios import connect_to  # noqa: E402

CLIENT = dict(namespace="ingress-nginx", pod="ingress-nginx-controller-5d88c8b7f-f4ult",
              workload="ingress-nginx-controller")
SERVER = dict(namespace="shop", pod="web-7d4b9c6f5d-f4ult", workload="web")


def entry(pod, ident):
    e = dict(ident)
    e["ip"] = pod.ip4
    return e


def prog_ids_now():
    out = subprocess.run([BPFTOOL, "-j", "prog", "show"], stdout=subprocess.PIPE, text=True,
                         check=True, timeout=30).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def loopback_rst_storm(count):
    """count loopback connections, each ended by the client with SO_LINGER 0: one RST sent
    and one received per connection (records on both sockets)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    try:
        for _ in range(count):
            c = socket.create_connection(lsock.getsockname())
            s, _ = lsock.accept()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            s.close()
    finally:
        lsock.close()


def metric_sum_when(ag, name, condition, timeout):
    """The sum of metric `name` over its series, scraped every 0.2 s until condition(sum)
    holds or timeout seconds passed (then the last sum)."""
    deadline = time.monotonic() + timeout
    while True:
        value = sum(s.value for s in ag.scrape().samples_of(name))
        if condition(value) or time.monotonic() >= deadline:
            return value
        time.sleep(0.2)


class TestFaults(AgentTestCase):

    def pair_setup(self):
        c = self.make_cluster(["server", "client"])
        pm = self.make_pod_map([entry(c["server"], SERVER), entry(c["client"], CLIENT)])
        ids = (identity_of(entry(c["client"], CLIENT)), identity_of(entry(c["server"], SERVER)))
        return c, pm, ids

    def assert_race_classified(self, ag, cli, srv, c, ids, port, context):
        """An idle race on a new connection: exactly its two incidents; then the agent exits 0."""
        _, exp = scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=port)
        self.settle()
        self.assertIncidentCounts(ag.scrape(), expected_from([exp], ids, port),
                                  ours_by_workloads({CLIENT["workload"], SERVER["workload"]}), context)
        self.assertEqual(ag.stop(), 0, ag.stderr)

    def test_sigkill_leaves_nothing_and_restart_invents_no_cause(self):
        c, pm, (cid, sid) = self.pair_setup()
        ours = ours_by_workloads({CLIENT["workload"], SERVER["workload"]})
        first = self.start_agent(["--pod-map", pm.path, "--kube", "off"], name="agent-killed")
        progs = bpf_fd_ids(first.proc.pid)[0]
        links = set(first.links)
        self.assertTrue(progs and links, "the agent holds no BPF programs or links?")
        self.assertTrue(links <= set(rw_links()), "the agent's links are not rw_* links")

        # Connections that begin (and are used) under the first agent.
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        port = srv.step("listen", family="inet", port=8093)["port"]
        conns = {}
        for name in ("a", "b", "r"):
            conns[name] = connect_to(cli, srv, port, host=c["server"].ip4, name=name)
            conns[name].exchange(count=3, resp=100)

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left_progs, left_links = progs & prog_ids_now(), links & set(rw_links())
            if not left_progs and not left_links:
                break
            time.sleep(0.1)
        self.assertEqual((left_progs, left_links), (set(), set()),
                         "programs/links of the SIGKILLed agent still present after 10 s")

        second = self.start_agent(["--pod-map", pm.path, "--kube", "off"], name="agent-restarted")
        # r: the idle race on a connection the new agent did not see begin; a: the client
        # aborts; b: the server aborts.
        scenarios.resets_on(cli, srv, race="r", client_abort="a", server_abort="b", idle_s=scenarios.IDLE_S)
        self.settle()
        m = second.scrape()
        self.assertIncidentCounts(m, {}, ours, "connections that predate the agent")
        resets = sum(s.value for s in m.samples_of("rstwatch_resets_total")
                     if s.labels_dict["server_port"] == str(port) and ours(s.labels_dict))
        self.assertGreaterEqual(resets, 4, "their RSTs (r, a, b: sent and received) are still counted")

        # A connection that begins under the new agent is classified exactly.
        self.assert_race_classified(second, cli, srv, c, (cid, sid), 8094, "a connection the new agent saw begin")

    def test_ring_buffer_overflow_is_counted_and_the_agent_goes_on(self):
        c, pm, (cid, sid) = self.pair_setup()
        # 16 KiB: ~78 records of 208 bytes.
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off", "--ring-buffer-size", "16384"],
                              name="agent-small-ring")
        lost_before = metric_sum_when(ag, "rstwatch_records_lost_total", lambda v: True, 0)
        log_start = len(ag.lines())

        ag.send_signal(signal.SIGSTOP)
        try:
            loopback_rst_storm(600)  # >= 1200 records: most cannot fit
        finally:
            ag.send_signal(signal.SIGCONT)

        lost = metric_sum_when(ag, "rstwatch_records_lost_total", lambda v: v > lost_before, 10)
        self.assertGreater(lost - lost_before, 500, "the storm's drops are counted")
        self.assertIsNotNone(ag.wait_log(r"records lost: the ring buffer was full", start=log_start),
                             ag.stderr)
        # rstwatch_records_total is refreshed once a second.
        records = metric_sum_when(ag, "rstwatch_records_total", lambda v: v > 0, 5)
        self.assertGreater(records, 0, "what fitted was read")
        self.assertTrue(ag.running(), ag.stderr)

        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        self.assert_race_classified(ag, cli, srv, c, (cid, sid), 8095, "after the overflow")

    def test_wall_clock_steps_change_only_printed_times(self):
        """libfaketime steps the agent's CLOCK_REALTIME (only: DONT_FAKE_MONOTONIC) by +1 day and
        then -1 day between three idle races: each incident's `ts` follows the stepped wall
        clock, and the causes, counts and idle times (kernel monotonic time) are unchanged."""
        lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
        self.assertTrue(os.path.exists(lib), "libfaketime missing (scripts/deps.sh --test installs it)")
        c, pm, ids = self.pair_setup()
        step_file = os.path.join(pm.dir, "faketime")
        with open(step_file, "w") as f:
            f.write("+0\n")
        env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": step_file, "FAKETIME_NO_CACHE": "1",
               "DONT_FAKE_MONOTONIC": "1"}
        if "ASAN_OPTIONS" in os.environ:  # the sanitizer run: ASan's runtime is not first then
            env["ASAN_OPTIONS"] = os.environ["ASAN_OPTIONS"] + ":verify_asan_link_order=0"
        ag = self.start_agent(["--pod-map", pm.path, "--kube", "off"], name="agent-clock-steps", env=env)
        stream = IncidentStream(ag.url)
        self.addCleanup(stream.close)
        srv = self.make_actor(c["server"], comm="rwsrv")
        cli = self.make_actor(c["client"], comm="rwcli")
        day = 86400.0
        expected = {}
        for i, (step, offset) in enumerate((("+0", 0.0), ("+1d", day), ("-1d", -day))):
            with open(step_file, "w") as f:
                f.write(step + "\n")
            time.sleep(0.3)  # the agent re-reads its wall-clock offset every poll (10 ms)
            port = 8096 + i
            _, exp = scenarios.idle_close_rst(cli, srv, host=c["server"].ip4, port=port)
            expected.update(expected_from([exp], ids, port))
            real_now = time.time()
            deadline = time.monotonic() + 5
            got = []
            while time.monotonic() < deadline and len(got) < 2:
                got = [x for x in stream.incidents() if x["server"]["port"] == port]
                time.sleep(0.05)
            self.assertEqual(sorted(x["cause"] for x in got), ["abort_on_close", "idle_close_race"], got)
            for x in got:
                ts = datetime.datetime.strptime(x["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
                self.assertLess(abs(ts - (real_now + offset)), 10.0,
                                "step %s: ts %s, expected about %s" % (step, x["ts"], real_now + offset))
                if x["cause"] == "idle_close_race":
                    self.assertLess(abs(x["idle_before_write_ms"] - scenarios.IDLE_S * 1000.0), 60.0, x)
        self.settle()
        self.assertIncidentCounts(ag.scrape(), expected,
                                  ours_by_workloads({CLIENT["workload"], SERVER["workload"]}), "after the steps")
        self.assertEqual(ag.stop(), 0, ag.stderr)

    def test_ring_buffer_size_errors_exit_2(self):
        from agent import run_agent_expecting_failure
        for value in ("12345", "1024", "abc", str(1 << 31)):
            rc, stderr, stdout, leaked = run_agent_expecting_failure(["--ring-buffer-size", value])
            self.assertEqual(rc, 2, stderr)
            lines = [l for l in stderr.splitlines() if l.strip()]
            self.assertEqual(len(lines), 1, stderr)
            self.assertIn("--ring-buffer-size", lines[0])
            self.assertEqual(leaked, {}, "links left behind")


if __name__ == "__main__":
    unittest.main()
