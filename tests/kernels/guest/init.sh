#!/bin/busybox sh
# PID 1 of a kernel-matrix guest (tests/kernels): runs every check and scenario in this one
# boot and writes the results to the second serial port (/dev/ttyS1), which the host test
# reads from a file. The kernel's console is ttyS0. Then powers off (qemu exits).
#
# Results: sections "@@begin NAME" ... "@@end NAME rc=N" (rc "-" for plain file dumps),
# "@@info KEY VALUE" lines, and "@@done" last. The host test (test_kernels.py) asserts.

/bin/busybox mkdir -p /bin /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up

stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3>/dev/ttyS1

THRESHOLD=0.5   # --idle-threshold the scenarios are written for (rwscenario.c)
AGENT_PORT=9740
STEP_LIMIT=120  # seconds any one command may take

info() { echo "@@info $*" >&3; }
dump() {  # dump NAME FILE [RC]
	echo "@@begin $1" >&3
	[ -f "$2" ] && cat "$2" >&3
	echo "@@end $1 rc=${3:--}" >&3
}
run() {  # run NAME CMD...: stdout and stderr dumped as NAME.out / NAME.err
	name=$1
	shift
	timeout -s KILL $STEP_LIMIT "$@" > /tmp/$name.out 2> /tmp/$name.err
	rc=$?
	dump $name.out /tmp/$name.out $rc
	dump $name.err /tmp/$name.err $rc
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# http_get PATH OUTFILE: GET http://127.0.0.1:$AGENT_PORT/PATH (status line, headers, body)
# into OUTFILE; 0 on "200". busybox nc: Debian 12's busybox-static wget crashes (SIGSEGV).
http_get() {
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" |
		nc -w 10 127.0.0.1 $AGENT_PORT > "$2" 2>&1
	head -n 1 "$2" | grep -q '^HTTP/1\.[01] 200 '
}

# alive PID: the process exists and is not a zombie (the shell reaps only at `wait`).
alive() {
	state=$(cut -d' ' -f3 /proc/$1/stat 2>/dev/null)
	[ -n "$state" ] && [ "$state" != Z ]
}

# wait_line FILE TEXT PID SECONDS: 0 once FILE has TEXT, 1 if PID exits or time runs out.
wait_line() {
	i=0
	while [ $i -lt $(($4 * 10)) ]; do
		grep -q "$2" "$1" 2>/dev/null && return 0
		alive "$3" || return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

# stop_pid PID SIGNAL SECONDS: sends SIGNAL, waits; SIGKILL after SECONDS. Sets STOPPED_RC to
# the exit status, or "killed" (no subshell: only this shell can wait for its children).
stop_pid() {
	kill -"$2" "$1" 2>/dev/null
	i=0
	while alive "$1" && [ $i -lt $(($3 * 10)) ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if alive "$1"; then
		kill -KILL "$1"
		wait "$1"
		STOPPED_RC=killed
		return
	fi
	wait "$1"
	STOPPED_RC=$?
}

scenarios() {  # scenarios OUTFILE: every scenario once, one JSON line each
	for s in "write_after_fin" "write_after_fin --delay 0" "write_after_fin -6" \
		"write_after_fin --delay 0 -6" "idle_close_rst" "idle_close_rst -6" "healthy" "healthy -6"; do
		timeout -s KILL 60 rwscenario $s >> "$1" 2>> "$1.err" || echo "@@scenario-failed $s" >> "$1.err"
	done
}

info boot "$(uname -r)" "$(uptime_s)"
info cmdline "$(cat /proc/cmdline)"
info nproc "$(nproc)"
info clocksource "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"

run check-auto rstwatch check
for mode in tp_btf fentry kprobe; do
	run check-$mode rstwatch check --write-hook $mode
done

# trace: one tracer per write-hook mode (forced), all scenarios under each.
for mode in tp_btf fentry kprobe; do
	info trace-start "$mode" "$(uptime_s)"
	rstwatch trace -o json --idle-threshold $THRESHOLD --write-hook $mode \
		> /tmp/trace-$mode.json 2> /tmp/trace-$mode.err &
	pid=$!
	: > /tmp/scenarios-$mode.json
	if wait_line /tmp/trace-$mode.err "tracing TCP" $pid 60; then
		bpftool -j prog show > /tmp/progs-during-$mode.json 2>&1
		scenarios /tmp/scenarios-$mode.json
		sleep 0.5  # the last records reach the tracer
	fi
	stop_pid $pid INT 20
	rc=$STOPPED_RC
	dump trace-$mode.json /tmp/trace-$mode.json $rc
	dump trace-$mode.err /tmp/trace-$mode.err $rc
	dump progs-during-$mode /tmp/progs-during-$mode.json
	dump scenarios-$mode /tmp/scenarios-$mode.json
	dump scenarios-$mode.err /tmp/scenarios-$mode.json.err
	bpftool -j prog show > /tmp/progs-after-$mode.json 2>&1
	dump progs-after-$mode /tmp/progs-after-$mode.json
	info trace-end "$mode" "$(uptime_s)"
done

# agent (write hook auto): /metrics counts the incidents, SIGTERM detaches and exits 0.
info agent-start "$(uptime_s)"
rstwatch agent --listen 127.0.0.1:$AGENT_PORT --idle-threshold $THRESHOLD \
	> /tmp/agent.out 2> /tmp/agent.err &
pid=$!
ready=0
i=0
while [ $i -lt 600 ] && alive $pid; do
	if http_get /readyz /tmp/readyz; then
		ready=1
		break
	fi
	sleep 0.1
	i=$((i + 1))
done
info agent-ready $ready "$(uptime_s)"
: > /tmp/agent-scenarios.json
if [ $ready = 1 ]; then
	bpftool -j prog show > /tmp/agent-progs-during.json 2>&1
	bpftool -j link show > /tmp/agent-links-during.json 2>&1
	for s in "write_after_fin" "idle_close_rst -6"; do
		timeout -s KILL 60 rwscenario $s >> /tmp/agent-scenarios.json 2>> /tmp/agent-scenarios.err
	done
	sleep 1  # the incidents reach the metrics
	http_get /metrics /tmp/metrics
	info metrics-rc $?
fi
stop_pid $pid TERM 30
rc=$STOPPED_RC
bpftool -j prog show > /tmp/agent-progs-after.json 2>&1
bpftool -j link show > /tmp/agent-links-after.json 2>&1
dump agent.out /tmp/agent.out $rc
dump agent.err /tmp/agent.err $rc
dump agent-scenarios /tmp/agent-scenarios.json
dump agent-scenarios.err /tmp/agent-scenarios.err
dump metrics /tmp/metrics
dump agent-progs-during /tmp/agent-progs-during.json
dump agent-links-during /tmp/agent-links-during.json
dump agent-progs-after /tmp/agent-progs-after.json
dump agent-links-after /tmp/agent-links-after.json
info agent-end "$(uptime_s)"
dmesg > /tmp/dmesg 2>&1
dump dmesg /tmp/dmesg

echo "@@done" >&3
sync
poweroff -f
