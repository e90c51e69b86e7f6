// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * rstwatch kernel side. Per-socket state lives in `conns`; a record reaches
 * the ring buffer only for an armed write (after idle, or after the peer's
 * FIN), a FIN/close on an armed or idle connection, and every RST. An
 * ordinary write on a busy connection emits nothing.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "rstwatch.h"
#include "ringbuf_wakeup.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load. */
const volatile __u32 idle_threshold_jiffies = 250;
/* Closes of connections idle this long are reported (idle-timeout inference); lower than the
 * write threshold so a server timeout equal to it is still seen. */
const volatile __u32 close_idle_threshold_jiffies = 125;
const volatile __u64 jiffy_ns = 4000000;

/* Read by no program: it puts struct rw_record into this object's BTF, where a unit test
 * (tests/unit/capture/record_layout_test.cpp) checks every field against include/rstwatch.h
 * as the agent compiles it. */
const struct rw_record *const rw_record_layout = (void *)0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* resized by the loader */
} events SEC(".maps");

/* A record wakes the agent at most once per CPU per interval (bpf/ringbuf_wakeup.h); the
 * agent reads records left without a wakeup at its poll timeout (RecordSource::poll). */
const volatile __u64 wakeup_interval_ns = 10000000;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_wakeup_ns SEC(".maps");

static __always_inline __u64 submit_flags(__u64 now_ns)
{
	return rw_submit_flags(&last_wakeup_ns, wakeup_interval_ns, now_ns);
}

/* Per-socket state in socket local storage (Linux >= 5.11, BTF-typed programs): found from
 * the socket itself, freed with it. Otherwise (kprobe writes, older kernels) in `conns`. */
const volatile bool use_sk_storage = false;

/* The state, reset and destroy hooks read the socket through bpf_skc_to_tcp_sock()'s typed
 * pointer with plain loads (Linux >= 5.9); the loader clears this where that helper is
 * missing, and they fall back to probe reads (a helper call per field: a reset record reads
 * ~25 fields). */
const volatile bool typed_reads = true;

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rw_conn_snapshot);
} conn_storage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072); /* resized by the loader */
	__type(key, __u64); /* struct sock * */
	__type(value, struct rw_conn_snapshot);
} conns SEC(".maps");

/* A connection's 4-tuple: names it after our own close, when the full socket became a
 * timewait socket or was destroyed before the kernel sent its RST. */
struct rw_tuple {
	__u8 saddr[RW_ADDR_LEN];
	__u8 daddr[RW_ADDR_LEN];
	__u16 sport;
	__u16 dport;
	__u32 netns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rw_tuple);
	__type(value, struct rw_conn_snapshot);
} closed_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RW_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &which);

	if (value)
		*value += 1;
}

static __always_inline void v4_mapped(__u8 *out, __u32 addr_be)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr_be, 4);
}

/* Reads a field through a BTF-typed pointer (a plain load) where the program has one
 * (tp_btf, fentry), else with a probe read (kprobe), which is a helper call each: a reset
 * record reads ~25 fields. `direct` is a compile-time constant or typed_reads (read-only data the
 * verifier knows, so it checks only the path taken). Programs with BTF-typed
 * arguments reach tcp_sock fields through bpf_skc_to_tcp_sock()'s typed pointer `tp`; probe
 * reads take `tp` as the socket itself. SKC/INET/ICSK name the embedded structs from `tp`. */
#define RW_READ(direct, ptr, field) ((direct) ? (ptr)->field : BPF_CORE_READ(ptr, field))
#define SKC(field) inet_conn.icsk_inet.sk.__sk_common.field
#define INET(field) inet_conn.icsk_inet.field
#define ICSK(field) inet_conn.field

/* Addresses and ports of any socket kind (full, timewait, request). For a full socket the
 * local port comes from inet_sport: moving to CLOSE releases the port (skc_num = 0) before
 * the state-change tracepoint fires. Only `sk`'s sock_common is read unless `full` (then
 * `tp` is the full socket's typed view). */
static __always_inline void read_tuple(const struct sock *sk, const struct tcp_sock *tp, const bool direct,
				       bool full, struct rw_tuple *t, __u8 *family)
{
	const struct sock_common *skc = &sk->__sk_common;
	__u16 fam = RW_READ(direct, skc, skc_family);

	*family = fam;
	if (fam == AF_INET) {
		v4_mapped(t->saddr, RW_READ(direct, skc, skc_rcv_saddr));
		v4_mapped(t->daddr, RW_READ(direct, skc, skc_daddr));
	} else if (direct) {
		__builtin_memcpy(t->saddr, skc->skc_v6_rcv_saddr.in6_u.u6_addr8, RW_ADDR_LEN);
		__builtin_memcpy(t->daddr, skc->skc_v6_daddr.in6_u.u6_addr8, RW_ADDR_LEN);
	} else {
		BPF_CORE_READ_INTO(&t->saddr, skc, skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t->daddr, skc, skc_v6_daddr.in6_u.u6_addr8);
	}
	if (full)
		t->sport = bpf_ntohs(RW_READ(direct, tp, INET(inet_sport)));
	else
		t->sport = RW_READ(direct, skc, skc_num);
	t->dport = bpf_ntohs(RW_READ(direct, skc, skc_dport));
	t->netns = direct ? skc->skc_net.net->ns.inum : BPF_CORE_READ(skc, skc_net.net, ns.inum);
}

/* Data bytes received: tcp_sock.bytes_received also counts the peer's FIN (one sequence
 * number), which is no response byte. */
static __always_inline __u64 data_received(__u64 received, const struct rw_conn_snapshot *st)
{
	if (st && (st->flags & RW_F_PEER_FIN) && received > 0)
		received--;
	return received;
}

static __always_inline __u32 idle_since(__u32 last_send, __u32 last_recv)
{
	__u32 last = (__s32)(last_send - last_recv) > 0 ? last_send : last_recv;

	return (__u32)bpf_jiffies64() - last;
}

/* Data our application never read: received bytes not copied to the application, the peer's
 * FIN (one sequence number, SOCK_DONE) not counted. */
static __always_inline __s32 unread_data(const struct tcp_sock *tp, const bool direct)
{
	__s32 unread = (__s32)(RW_READ(direct, tp, rcv_nxt) - RW_READ(direct, tp, copied_seq));
	unsigned long sk_flags = RW_READ(direct, tp, SKC(skc_flags));

	if (unread > 0 && (sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))))
		unread--;
	return unread;
}

/* As many bytes as one protected TLS alert record (a close_notify). */
static __always_inline bool tls_alert_sized(__s64 bytes)
{
	return bytes >= RW_TLS_ALERT_MIN_BYTES && bytes <= RW_TLS_ALERT_MAX_BYTES;
}

/* The peer's last data is one TLS alert record our application has not read yet: a TLS
 * server's close_notify ahead of its FIN (or RST). */
static __always_inline bool tls_alert_unread(const struct tcp_sock *tp, const bool direct)
{
	return tls_alert_sized(unread_data(tp, direct));
}

/* Idle age in jiffies: since the connection last sent or received data. A TLS alert not yet read does not end the idle period (the close is not
 * traffic): then it runs from our last send, which for a client is its last request (the
 * response time included). */
static __always_inline __u32 idle_jiffies(const struct tcp_sock *tp, const bool direct)
{
	__u32 last_send = RW_READ(direct, tp, lsndtime);

	if (tls_alert_unread(tp, direct))
		return (__u32)bpf_jiffies64() - last_send;
	return idle_since(last_send, RW_READ(direct, tp, ICSK(icsk_ack.lrcvtime)));
}

static __always_inline struct rw_conn_snapshot *conn_of(const struct sock *sk)
{
	__u64 key = (__u64)sk;

	if (use_sk_storage)
		return bpf_sk_storage_get(&conn_storage, (struct sock *)sk, 0, 0);
	return bpf_map_lookup_elem(&conns, &key);
}

/* Requests the connection has carried, from the kernel's own counters (no per-write
 * bookkeeping): a client's data segments sent, a server's data segments received, i.e. one
 * per request while requests fit one segment. Retransmissions are not requests. */
static __always_inline __u32 requests_of(const struct tcp_sock *tp, const bool direct, __u8 role)
{
	if (role == RW_ROLE_SERVER)
		return RW_READ(direct, tp, data_segs_in);
	return RW_READ(direct, tp, data_segs_out) - RW_READ(direct, tp, total_retrans);
}

/* Payload bytes of a received segment (SYN and FIN not counted), from its TCP header and
 * length wherever skb->data points (at or past the TCP header). */
static __always_inline __u32 segment_payload(const struct sk_buff *skb)
{
	__u64 head = (__u64)BPF_CORE_READ(skb, head);
	__u64 data = (__u64)BPF_CORE_READ(skb, data);
	__u64 transport = head + BPF_CORE_READ(skb, transport_header);
	__s64 payload;
	struct tcphdr th = {};

	if (bpf_probe_read_kernel(&th, sizeof(th), (const void *)transport))
		return 0;
	payload = (__s64)BPF_CORE_READ(skb, len) + (__s64)(data - transport) - th.doff * 4;
	return payload > 0 ? (__u32)payload : 0;
}

/* Emits one record for a socket. `full` = sk is a full TCP socket (not timewait/request),
 * with `tp` its typed view (see RW_READ). For state changes, old_state/new_state are the
 * transition (the socket still holds the old state while the tracepoint runs); otherwise
 * both are 0 and the state is read. */
static __always_inline void emit(const struct sock *sk, const struct tcp_sock *tp, const bool direct, bool full,
				 __u8 type, __u8 old_state, __u8 new_state,
				 const struct rw_conn_snapshot *snap, __u16 extra_flags, __u32 rst_reason,
				 __u32 segment_bytes)
{
	struct rw_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	struct rw_tuple tuple = {};

	if (!r) {
		count(RW_CNT_LOST);
		return;
	}
	__builtin_memset(r, 0, sizeof(*r));
	r->ts_ns = bpf_ktime_get_ns();
	r->sock_id = (__u64)sk;
	r->type = type;
	r->old_state = old_state;
	r->rst_reason = rst_reason;
	r->segment_bytes = segment_bytes;
	r->state = new_state ? new_state : RW_READ(direct, sk, __sk_common.skc_state);
	read_tuple(sk, tp, direct, full, &tuple, &r->family);
	__builtin_memcpy(r->saddr, tuple.saddr, RW_ADDR_LEN);
	__builtin_memcpy(r->daddr, tuple.daddr, RW_ADDR_LEN);
	r->sport = tuple.sport;
	r->dport = tuple.dport;
	r->netns = tuple.netns;
	if (full) {
		r->idle_ns = (__u64)idle_jiffies(tp, direct) * jiffy_ns;
		r->bytes_received = data_received(RW_READ(direct, tp, bytes_received), snap);
		r->bytes_acked = RW_READ(direct, tp, bytes_acked);
		r->snd_una = RW_READ(direct, tp, snd_una);
		__s32 unread = unread_data(tp, direct);

		r->unread_bytes = unread > 0 ? unread : 0;
		r->send_after_recv = (__s32)(RW_READ(direct, tp, lsndtime) - RW_READ(direct, tp, ICSK(icsk_ack.lrcvtime)));
		r->unacked_bytes = RW_READ(direct, tp, write_seq) - r->snd_una;
	}
	if (type == RW_REC_IDLE_WRITE || type == RW_REC_CLOSE_WAIT_WRITE) {
		__u64 pid_tgid = bpf_get_current_pid_tgid();

		r->pid = pid_tgid >> 32;
		r->tid = (__u32)pid_tgid;
		bpf_get_current_comm(r->comm, sizeof(r->comm));
	}
	if (snap)
		__builtin_memcpy(&r->conn, snap, sizeof(r->conn));
	/* A write record comes before its own segment is sent: count the request it carries. */
	if (full && snap)
		r->conn.requests = requests_of(tp, direct, snap->role) +
				   (type == RW_REC_IDLE_WRITE || type == RW_REC_CLOSE_WAIT_WRITE);
	r->conn.flags |= extra_flags;
	bpf_ringbuf_submit(r, submit_flags(r->ts_ns));
}

/* ---- application writes ------------------------------------------------ */

/* Linux < 6.4 names the iovec array of an iov_iter "iov" (now "__iov"). */
struct iov_iter___pre64 {
	const struct iovec *iov;
} __attribute__((preserve_access_index));

/* The content type of a write that is exactly one TLS alert record: 0x15 (TLS <= 1.2), or
 * 0x17 for TLS 1.3, where an alert travels as a protected record of 19-24 bytes (2-byte alert,
 * content type, 16-byte tag, little padding; a request is never that small once protected).
 * A TLS stack answers the peer's close_notify with its own after the peer's FIN: such a write
 * after FIN loses no request, and one at an idle close is no reuse. Only writes after idle or
 * after FIN get here. 0: not such a record, or the
 * kernel's iov_iter is not one this reads (kernels before 5.14). */
static __noinline __u8 tls_alert_record(const struct msghdr *msg)
{
	const struct iov_iter *it;
	const void *base = NULL;
	__u8 head[5] = {};
	__u64 count;
	__u32 length;
	__u8 type;

	if (!msg || !bpf_core_field_exists(((struct iov_iter *)0)->iter_type))
		return 0;
	it = &msg->msg_iter;
	count = BPF_CORE_READ(it, count);
	if (count < 5 + 19 || count > 5 + 64)
		return 0;
	type = BPF_CORE_READ(it, iter_type);
	if (bpf_core_enum_value_exists(enum iter_type, ITER_UBUF) &&
	    type == bpf_core_enum_value(enum iter_type, ITER_UBUF)) {
		base = BPF_CORE_READ(it, ubuf);
	} else if (type == bpf_core_enum_value(enum iter_type, ITER_IOVEC)) {
		const struct iovec *iov;

		if (bpf_core_field_exists(it->__iov))
			iov = BPF_CORE_READ(it, __iov);
		else
			iov = BPF_CORE_READ((const struct iov_iter___pre64 *)it, iov);
		base = BPF_CORE_READ(iov, iov_base);
	}
	if (!base || bpf_probe_read_user(head, sizeof(head), base + BPF_CORE_READ(it, iov_offset)))
		return 0;
	length = ((__u32)head[3] << 8) | head[4];
	if (head[1] != 3 || length + 5 != count)
		return 0;
	if (head[0] == 0x15)
		return 0x15;
	if (head[0] == 0x17 && head[2] == 3 && length >= 19 && length <= 24)
		return 0x17;
	return 0;
}

/* A write after idle or in CLOSE_WAIT: arm the connection (remember the write) and report
 * it, unless an earlier armed write still waits for its answer. */
static __always_inline void arm_write(const struct sock *sk, const struct tcp_sock *tp, const struct msghdr *msg,
				      __u8 state, const bool direct)
{
	const bool in_close_wait = state == RW_TCP_CLOSE_WAIT;
	__u32 idle = idle_jiffies(tp, direct); /* the slow path: the write was after idle, or after FIN */
	struct rw_conn_snapshot *st;
	__u64 received, pid_tgid;

	if (!in_close_wait && idle < idle_threshold_jiffies)
		return; /* data was received since: not idle after all */
	st = conn_of(sk);
	if (!st)
		return; /* no history: connection predates rstwatch, or not TCP */
	if (st->role == RW_ROLE_SERVER) {
		/* A server's TLS alert after idle or after the peer's FIN (its close_notify): the
		 * peer's TLS stack may answer it after our close, with bytes that lose no request. */
		__u8 tls = tls_alert_record(msg);

		if (tls) {
			st->armed_tls = tls;
			st->flags |= RW_F_TLS_ALERT_SENT;
		}
		return;
	}
	/* Only the connecting side reuses pooled connections. */
	if (st->role != RW_ROLE_CLIENT)
		return;
	received = data_received(RW_READ(direct, tp, bytes_received), st);
	if (st->flags & RW_F_ARMED) {
		/* Still waiting: the armed write got no response byte yet (or the peer had gone). */
		if ((st->flags & RW_F_WRITE_IN_CLOSE_WAIT) || received == st->armed_bytes_received)
			return;
		st->flags &= ~RW_F_ARMED; /* answered: this write starts a new wait */
	}

	pid_tgid = bpf_get_current_pid_tgid();
	st->flags |= RW_F_ARMED | (in_close_wait ? RW_F_WRITE_IN_CLOSE_WAIT : 0);
	st->armed_write_ns = bpf_ktime_get_ns();
	st->armed_idle_ns = (__u64)idle * jiffy_ns;
	st->armed_bytes_received = received;
	st->armed_write_seq = RW_READ(direct, tp, write_seq);
	st->armed_state = state;
	st->armed_tls = tls_alert_record(msg); /* a close_notify is no request, idle or not */
	st->flags &= ~RW_F_ARMED_INFERRED;
	st->writer_pid = pid_tgid >> 32;
	st->writer_tid = (__u32)pid_tgid;
	bpf_get_current_comm(st->writer_comm, sizeof(st->writer_comm));
	emit(sk, tp, direct, true, in_close_wait ? RW_REC_CLOSE_WAIT_WRITE : RW_REC_IDLE_WRITE, 0, 0, st, 0,
	     RW_RST_REASON_NONE, 0);
}

/* Subprograms of their own: the common early return then runs in a small stack frame. */
static __noinline int arm_write_direct(const struct sock *sk, const struct tcp_sock *tp, const struct msghdr *msg,
					__u8 state)
{
	arm_write(sk, tp, msg, state, true);
	return 0;
}

static __noinline int arm_write_probe(const struct sock *sk, const struct msghdr *msg, __u8 state)
{
	arm_write(sk, (const void *)sk, msg, state, false);
	return 0;
}

/* Types a pointer without a call: the verifier turns it into a register move (Linux >= 6.2).
 * Weak: resolved to nothing on older kernels, where no program that calls it is loaded. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* The write hook: runs for every application write. An ordinary write (sent within the idle
 * threshold, peer's FIN not seen) returns after reading the socket's state and last-send
 * time, before any map or storage lookup: the idle age since the last send or receive is at
 * most the age of the last send. `direct`: the program has BTF-typed arguments (tp_btf,
 * fentry). `rdonly`: its socket is always a full TCP socket and its kernel has
 * bpf_rdonly_cast, which types the socket without bpf_skc_to_tcp_sock()'s call: on CPUs whose
 * returns go through mitigation thunks that call cost as much as the rest of this early
 * return (bench/hookfloor.bpf.c's floor_rdonly against floor_sndtime). */
static __always_inline void on_write(const struct sock *sk, const struct msghdr *msg, const bool direct,
				     const bool rdonly)
{
	const struct tcp_sock *tp;
	__u32 last_send;
	__u8 state;

	if (rdonly) {
		tp = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
		state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
		last_send = tp->lsndtime;
	} else if (direct) {
		tp = bpf_skc_to_tcp_sock((void *)sk);
		if (!tp)
			return;
		state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
		last_send = tp->lsndtime;
	} else {
		state = BPF_CORE_READ(sk, __sk_common.skc_state);
		last_send = BPF_CORE_READ((const struct tcp_sock *)sk, lsndtime);
	}
	if (state != RW_TCP_CLOSE_WAIT && (__u32)bpf_jiffies64() - last_send < idle_threshold_jiffies)
		return;
	if (direct)
		arm_write_direct(sk, tp, msg, state);
	else
		arm_write_probe(sk, msg, state);
}

/* Preferred: the send-loop tracepoint (Linux >= 6.16, so bpf_rdonly_cast is there; its socket
 * is a locked full TCP socket). */
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(rw_write_tp, const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
	     int size_goal)
{
	on_write(sk, msg, true, true);
	return 0;
}

SEC("fentry/tcp_sendmsg")
int BPF_PROG(rw_write_fentry, struct sock *sk, struct msghdr *msg)
{
	on_write(sk, msg, true, false);
	return 0;
}

SEC("kprobe/tcp_sendmsg")
int BPF_KPROBE(rw_write_kprobe, struct sock *sk, struct msghdr *msg)
{
	on_write(sk, msg, false, false);
	return 0;
}

/* ---- state changes ------------------------------------------------------ */

static __always_inline void track_new(const struct sock *sk, __u8 role)
{
	struct rw_conn_snapshot fresh = {};
	__u64 key = (__u64)sk;

	fresh.start_ns = bpf_ktime_get_ns();
	fresh.role = role;
	if (role == RW_ROLE_CLIENT) {
		/* connect() runs in the process that owns the connection (the write hook records
		 * the writer again at each armed write). */
		__u64 pid_tgid = bpf_get_current_pid_tgid();

		fresh.writer_pid = pid_tgid >> 32;
		fresh.writer_tid = (__u32)pid_tgid;
		bpf_get_current_comm(fresh.writer_comm, sizeof(fresh.writer_comm));
	}
	if (use_sk_storage) {
		struct rw_conn_snapshot *st =
			bpf_sk_storage_get(&conn_storage, (struct sock *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

		if (!st) {
			count(RW_CNT_TRACK_FAILED);
			return;
		}
		/* A reused socket (connect() again after close) starts a new connection. */
		if (st->start_ns == 0)
			count(RW_CNT_TRACK_ADDED);
		*st = fresh;
		return;
	}
	if (bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST) == 0) {
		count(RW_CNT_TRACK_ADDED);
		return;
	}
	/* The socket was reused (connect() again after close): a new connection. */
	if (bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY))
		count(RW_CNT_TRACK_FAILED);
}

/* An idle write whose answer arrived is no longer waiting: settled at every state change,
 * since the write hook stops before the socket's state on busy writes. A write after the
 * peer's FIN stays armed (the answer that matters is the RST or the ACK). Call after
 * RW_F_PEER_FIN is up to date. */
static __always_inline void settle_armed(const struct tcp_sock *tp, const bool direct, struct rw_conn_snapshot *st)
{
	if ((st->flags & (RW_F_ARMED | RW_F_WRITE_IN_CLOSE_WAIT)) != RW_F_ARMED)
		return;
	__u64 answer = data_received(RW_READ(direct, tp, bytes_received), st) - st->armed_bytes_received;

	/* One alert-sized record may be a TLS server's close_notify, read or not: the request
	 * still waits, and the agent decides with what it knows of the server (no HTTP answer
	 * fits in one alert-sized record). */
	if (answer != 0 && !tls_alert_sized((__s64)answer))
		st->flags &= ~RW_F_ARMED;
}

/* A request that awaits its answer although the write hook did not record it (written within
 * the idle threshold), found from what the kernel keeps per socket: our application's data is
 * not yet acknowledged, or our last data went out after the last data came in. Arms the
 * snapshot as the write hook would have, with the idle age before that write measured from the
 * kernel's own timestamps (lsndtime - icsk_ack.lrcvtime, in jiffies). Clients only.
 * `at_fin`: the peer's FIN crossed our data, which alone tells the peer closed without having
 * the request. At a RST the request must also have followed an idle gap of at least
 * RW_IDLE_CLOSE_FLOOR_MS (a reset right after a response is an abort, not an idle close). */
static __always_inline bool infer_waiting_request(const struct tcp_sock *tp, const bool direct,
						  struct rw_conn_snapshot *st, const bool at_fin)
{
	__u32 last_send, unacked;
	__s32 gap;

	if (st->role != RW_ROLE_CLIENT || (st->flags & RW_F_ARMED))
		return false;
	last_send = RW_READ(direct, tp, lsndtime);
	gap = (__s32)(last_send - RW_READ(direct, tp, ICSK(icsk_ack.lrcvtime)));
	unacked = RW_READ(direct, tp, write_seq) - RW_READ(direct, tp, snd_una);
	if (at_fin ? (unacked == 0 && gap <= 0)
		   : (gap <= 0 || (__u64)gap * jiffy_ns < RW_IDLE_CLOSE_FLOOR_MS * 1000000ULL))
		return false;
	st->flags = (st->flags & ~RW_F_WRITE_IN_CLOSE_WAIT) | RW_F_ARMED | RW_F_ARMED_INFERRED;
	/* After an unread TLS alert the gap runs from the alert, not from the last response: the
	 * idle before the request is unknown (0). */
	st->armed_idle_ns = gap > 0 && !tls_alert_unread(tp, direct) ? (__u64)gap * jiffy_ns : 0;
	st->armed_write_ns = bpf_ktime_get_ns() - (__u64)((__u32)bpf_jiffies64() - last_send) * jiffy_ns;
	st->armed_bytes_received = data_received(RW_READ(direct, tp, bytes_received), st);
	st->armed_write_seq = RW_READ(direct, tp, snd_una);
	st->armed_state = RW_TCP_ESTABLISHED;
	st->armed_tls = 0;
	return true;
}

/* The state, reset and destroy hooks' view of a full TCP socket (see typed_reads): typed by
 * bpf_skc_to_tcp_sock (NULL if it is no full TCP socket), or the socket itself for probe reads. */
static __always_inline const struct tcp_sock *tcp_view(const struct sock *sk)
{
	if (typed_reads)
		return bpf_skc_to_tcp_sock((void *)sk);
	return (const void *)sk;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(rw_state, const struct sock *sk, int old_state, int new_state)
{
	const bool peer_fin = old_state == RW_TCP_ESTABLISHED && new_state == RW_TCP_CLOSE_WAIT;
	const struct tcp_sock *tp;
	struct rw_conn_snapshot *st;
	__u32 idle;
	bool idle_long;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (new_state == RW_TCP_SYN_SENT) {
		track_new(sk, RW_ROLE_CLIENT);
		return 0;
	}
	if (old_state == RW_TCP_SYN_RECV && new_state == RW_TCP_ESTABLISHED) {
		track_new(sk, RW_ROLE_SERVER);
		return 0;
	}
	st = conn_of(sk);
	if (!st)
		return 0;
	tp = tcp_view(sk);
	if (!tp)
		return 0;
	if (peer_fin)
		st->flags |= RW_F_PEER_FIN; /* before settling: bytes_received now counts the FIN */
	settle_armed(tp, typed_reads, st);

	if (peer_fin) {
		/* The peer's FIN was processed. If it crossed a request we wrote within the idle
		 * threshold (no write record), the socket's counters still tell: that is the race. */
		st->peer_fin_ns = bpf_ktime_get_ns();
		infer_waiting_request(tp, typed_reads, st, true);
		idle = idle_jiffies(tp, typed_reads);
		if ((st->flags & RW_F_ARMED) || idle >= close_idle_threshold_jiffies)
			emit(sk, tp, typed_reads, true, RW_REC_PEER_FIN, old_state, new_state, st, 0, RW_RST_REASON_NONE, 0);
		return 0;
	}
	if ((old_state == RW_TCP_ESTABLISHED && new_state == RW_TCP_FIN_WAIT1) ||
	    (old_state == RW_TCP_CLOSE_WAIT && new_state == RW_TCP_LAST_ACK)) {
		/* Our application closed (or shut down writing). */
		st->flags |= RW_F_APP_CLOSED;
		st->app_close_ns = bpf_ktime_get_ns();
		idle = old_state == RW_TCP_ESTABLISHED ? idle_jiffies(tp, typed_reads) : 0;
		idle_long = idle >= close_idle_threshold_jiffies;
		st->idle_closed = idle_long;
		if ((__u64)idle * jiffy_ns >= RW_IDLE_CLOSE_FLOOR_MS * 1000000ULL)
			st->flags |= RW_F_CLOSED_WHILE_IDLE;
		if ((st->flags & RW_F_ARMED) || idle_long)
			emit(sk, tp, typed_reads, true, RW_REC_OWN_CLOSE, old_state, new_state, st, 0, RW_RST_REASON_NONE, 0);
		return 0;
	}
	if (new_state != RW_TCP_CLOSE)
		return 0;

	/* Straight to CLOSE without a received RST: an abortive close by the application
	 * (close() with unread data, SO_LINGER 0), which sends its RST right after this. */
	if ((old_state == RW_TCP_ESTABLISHED || old_state == RW_TCP_CLOSE_WAIT) &&
	    !(st->flags & (RW_F_RST_RECEIVED | RW_F_APP_CLOSED))) {
		st->flags |= RW_F_APP_CLOSED;
		st->app_close_ns = bpf_ktime_get_ns();
	}
	if (st->flags & RW_F_ARMED)
		emit(sk, tp, typed_reads, true, RW_REC_CLOSED, old_state, new_state, st, 0, RW_RST_REASON_NONE, 0);
	/* Closed after our own close of an idle connection (entering TIME_WAIT, or aborted on
	 * late data): keep the history under the 4-tuple, so the RST that the timewait socket
	 * sends for a request that raced the close, or that follows the socket's destruction,
	 * is tied to this connection, whatever the idle threshold. Busy closes (Connection:
	 * close, right after the response) skip this map update. */
	if ((old_state == RW_TCP_FIN_WAIT1 || old_state == RW_TCP_FIN_WAIT2 ||
	     old_state == RW_TCP_CLOSING) &&
	    ((st->role == RW_ROLE_SERVER && (st->flags & RW_F_CLOSED_WHILE_IDLE)) || (st->flags & RW_F_ARMED))) {
		struct rw_tuple tuple = {};
		__u8 family;

		read_tuple(sk, tp, typed_reads, true, &tuple, &family);
		st->requests = requests_of(tp, typed_reads, st->role); /* records from the 4-tuple have no socket */
		bpf_map_update_elem(&closed_conns, &tuple, st, BPF_ANY);
	}
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(rw_destroy, const struct sock *sk)
{
	struct rw_conn_snapshot *st = conn_of(sk);
	const struct tcp_sock *tp;
	__u64 key = (__u64)sk;

	/* A server socket our application closed (or shut down writing), destroyed with a request
	 * it never read and no RST to show for it: the request arrived after its FIN and the
	 * peer's FIN followed (half-closed servers such as Tomcat's keepalive timeout). */
	if (st && st->role == RW_ROLE_SERVER && (st->flags & RW_F_APP_CLOSED) &&
	    (tp = tcp_view(sk)) && unread_data(tp, typed_reads) > 0)
		emit(sk, tp, typed_reads, true, RW_REC_UNREAD_AT_DESTROY, 0, 0, st, 0, RW_RST_REASON_NONE, 0);
	/* Socket storage goes with the socket (freed by the kernel at destruct): only count it. */
	if (use_sk_storage) {
		if (st)
			count(RW_CNT_TRACK_REMOVED);
		return 0;
	}
	if (bpf_map_delete_elem(&conns, &key) == 0)
		count(RW_CNT_TRACK_REMOVED);
	return 0;
}

/* ---- resets -------------------------------------------------------------- */

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(rw_rst_received, const struct sock *sk)
{
	const struct tcp_sock *tp = tcp_view(sk);
	struct rw_conn_snapshot *st;

	if (!tp)
		return 0; /* the tracepoint's socket is a full TCP socket */
	st = conn_of(sk);
	if (st) {
		st->flags |= RW_F_RST_RECEIVED;
		/* A request written within the idle threshold that the peer answers with RST (it
		 * closed with the request unread): found from the socket's counters. */
		if (sk->__sk_common.skc_state == RW_TCP_ESTABLISHED) {
			settle_armed(tp, typed_reads, st);
			infer_waiting_request(tp, typed_reads, st, false);
		} else if (st->role == RW_ROLE_SERVER && (st->flags & RW_F_APP_CLOSED)) {
			/* Data after our close: the kernel resets the socket (this tracepoint), tears
			 * it down, then sends the RST that tells it. Keep the history for that RST
			 * under the 4-tuple (the per-socket entry may be gone by then). */
			struct rw_tuple tuple = {};
			__u8 family;

			read_tuple(sk, tp, typed_reads, true, &tuple, &family);
			st->requests = requests_of(tp, typed_reads, st->role);
			bpf_map_update_elem(&closed_conns, &tuple, st, BPF_ANY);
		}
	}
	emit(sk, tp, typed_reads, true, RW_REC_RST_RECEIVED, 0, 0, st, 0, RW_RST_REASON_NONE, 0);
	return 0;
}

/* A RST sent with no socket: take the addresses from the packet it answers. */
static __always_inline void emit_no_socket(const struct sk_buff *skb, __u32 reason)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 network = BPF_CORE_READ(skb, network_header);
	__u16 transport = BPF_CORE_READ(skb, transport_header);
	struct rw_record *r;
	__u8 version = 0;
	struct tcphdr th = {};

	bpf_probe_read_kernel(&version, 1, head + network);
	version >>= 4;
	if (version != 4 && version != 6)
		return;
	if (bpf_probe_read_kernel(&th, sizeof(th), head + transport))
		return;
	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count(RW_CNT_LOST);
		return;
	}
	__builtin_memset(r, 0, sizeof(*r));
	r->ts_ns = bpf_ktime_get_ns();
	r->type = RW_REC_RST_SENT;
	r->rst_reason = reason;
	r->conn.flags = RW_F_NO_SOCKET;
	/* The packet came from the peer: its destination is our side. */
	r->sport = bpf_ntohs(th.dest);
	r->dport = bpf_ntohs(th.source);
	if (version == 4) {
		struct iphdr ip = {};

		bpf_probe_read_kernel(&ip, sizeof(ip), head + network);
		r->family = AF_INET;
		v4_mapped(r->saddr, ip.daddr);
		v4_mapped(r->daddr, ip.saddr);
	} else {
		struct ipv6hdr ip6 = {};

		bpf_probe_read_kernel(&ip6, sizeof(ip6), head + network);
		r->family = AF_INET6;
		__builtin_memcpy(r->saddr, &ip6.daddr, RW_ADDR_LEN);
		__builtin_memcpy(r->daddr, &ip6.saddr, RW_ADDR_LEN);
	}
	bpf_ringbuf_submit(r, submit_flags(r->ts_ns));
}

static __always_inline void on_send_reset(const struct sock *sk, const struct sk_buff *skb, __u32 reason)
{
	struct rw_conn_snapshot *st = NULL;
	const struct tcp_sock *tp;
	__u8 state;

	if (!sk) {
		if (skb)
			emit_no_socket(skb, reason);
		return;
	}
	state = sk->__sk_common.skc_state;
	if (state == RW_TCP_TIME_WAIT) {
		struct rw_tuple tuple = {};
		__u8 family;

		read_tuple(sk, NULL, typed_reads, false, &tuple, &family);
		emit(sk, NULL, typed_reads, false, RW_REC_RST_SENT, 0, 0, bpf_map_lookup_elem(&closed_conns, &tuple),
		     RW_F_FROM_TIMEWAIT, reason, skb ? segment_payload(skb) : 0);
		return;
	}
	if (state == RW_TCP_NEW_SYN_RECV) {
		emit(sk, NULL, typed_reads, false, RW_REC_RST_SENT, 0, 0, NULL, 0, reason, 0);
		return;
	}
	tp = tcp_view(sk);
	if (!tp)
		return;
	st = conn_of(sk);
	if (!st) {
		/* Data after our close on an orphaned socket: the kernel destroys the socket
		 * (tcp_done) before its caller sends the RST. */
		struct rw_tuple tuple = {};
		__u8 family;

		read_tuple(sk, tp, typed_reads, true, &tuple, &family);
		st = bpf_map_lookup_elem(&closed_conns, &tuple);
	}
	/* With an skb the RST answers a segment that arrived (before 6.10 the only sign of
	 * data after our close on a full socket); without, it is an active reset. */
	emit(sk, tp, typed_reads, true, RW_REC_RST_SENT, 0, 0, st, skb ? RW_F_REPLY_RST : 0, reason,
	     skb ? segment_payload(skb) : 0);
}

/* Linux >= 6.10: the reason is the third argument (numbers differ between versions:
 * the agent names them through the running kernel's BTF). */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(rw_rst_sent, const struct sock *sk, const struct sk_buff *skb, int reason)
{
	on_send_reset(sk, skb, (__u32)reason);
	return 0;
}

/* Linux < 6.10: no reason, full sockets only. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(rw_rst_sent_noreason, const struct sock *sk, const struct sk_buff *skb)
{
	on_send_reset(sk, skb, RW_RST_REASON_NONE);
	return 0;
}
