// SPDX-License-Identifier: GPL-2.0
// The benchmark's reference programs (bench/hookfloor.c) on rstwatch's tracepoints: ones
// that do nothing, and ones that do only part of what rstwatch's hooks do. Their bpf_stats
// cost per call is what any program on that hook pays before it does its own work (dispatch,
// the statistics' clock reads), and what each step adds, so the benchmark can say how much
// of a hook's cost is its own and where it goes.
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "rstwatch.h"
#include "ringbuf_wakeup.h"

#define IPPROTO_TCP 6

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} floor_storage SEC(".maps");

SEC("tp_btf/tcp_sendmsg_locked")
int floor_empty(__u64 *ctx)
{
	return 0;
}

/* Only a socket-storage lookup: what a hook pays that finds its per-socket state first
 * (rstwatch's write hook did, before its early return). */
SEC("tp_btf/tcp_sendmsg_locked")
int floor_lookup(__u64 *ctx)
{
	struct sock *sk = (void *)ctx[0];
	__u64 *seen = bpf_sk_storage_get(&floor_storage, sk, 0, 0);

	return seen ? 1 : 0;
}

/* The typed view of the socket that rstwatch's early return needs. */
SEC("tp_btf/tcp_sendmsg_locked")
int floor_cast(__u64 *ctx)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)ctx[0]);

	return tp ? tp->inet_conn.icsk_inet.sk.__sk_common.skc_state : 0;
}

/* The cast, the state and the age of the last send: rstwatch's early return (bpf/rstwatch.bpf.c
 * on_write, at the default 1 s threshold at HZ=250), i.e. the least any write-time idle check
 * reads: the socket's last-send time and the clock. */
SEC("tp_btf/tcp_sendmsg_locked")
int floor_sndtime(__u64 *ctx)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)ctx[0]);

	if (!tp)
		return 0;
	return tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == 8 ||
	       (__u32)bpf_jiffies64() - tp->lsndtime > 250;
}

/* floor_sndtime without the helper call: the socket typed by bpf_rdonly_cast (Linux >= 6.2),
 * which the verifier turns into a plain register move, instead of bpf_skc_to_tcp_sock() (a
 * call and a return, and on CPUs with return-thunk mitigations a costly return). Safe on this
 * tracepoint: its socket is always a full TCP socket, and the loads fault-check. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

SEC("tp_btf/tcp_sendmsg_locked")
int floor_rdonly(__u64 *ctx)
{
	const struct tcp_sock *tp = bpf_rdonly_cast((void *)ctx[0], bpf_core_type_id_kernel(struct tcp_sock));

	return tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == 8 ||
	       (__u32)bpf_jiffies64() - tp->lsndtime > 250;
}

/* ---- state changes and resets (bench/run.py's storm part) ---------------------------- */

SEC("tp_btf/inet_sock_set_state")
int floor_state_empty(__u64 *ctx)
{
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int floor_rst_recv_empty(__u64 *ctx)
{
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int floor_rst_sent_empty(__u64 *ctx)
{
	return 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rw_conn_snapshot);
} floor_conn_storage SEC(".maps");

/* What keeping per-socket state in the kernel costs on the state tracepoint, and nothing
 * else: rstwatch's storage of the same size, created when a TCP connection starts (as
 * rstwatch's track_new does, client at SYN_SENT, server at SYN_RECV -> ESTABLISHED), looked
 * up at every other change of a TCP socket. */
SEC("tp_btf/inet_sock_set_state")
int floor_state_storage(__u64 *ctx)
{
	struct sock *sk = (void *)ctx[0];
	int old_state = (int)ctx[1], new_state = (int)ctx[2];
	struct rw_conn_snapshot *st;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (new_state == RW_TCP_SYN_SENT || (old_state == RW_TCP_SYN_RECV && new_state == RW_TCP_ESTABLISHED)) {
		st = bpf_sk_storage_get(&floor_conn_storage, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (st)
			st->role = new_state == RW_TCP_SYN_SENT ? RW_ROLE_CLIENT : RW_ROLE_SERVER;
		return 0;
	}
	st = bpf_sk_storage_get(&floor_conn_storage, sk, 0, 0);
	return st ? st->role : 0;
}

/* Handing one record of rstwatch's size to user space, and nothing else: reserve, zero,
 * time stamp, submit with rstwatch's wakeup rule (bench/hookfloor.c reads the buffer as the
 * agent does: woken, or at a 10 ms poll timeout). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* rstwatch's default --ring-buffer-size */
} floor_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} floor_last_wakeup SEC(".maps");

static __always_inline int floor_record(const struct sock *sk, __u8 type)
{
	struct rw_record *r = bpf_ringbuf_reserve(&floor_events, sizeof(*r), 0);

	if (!r)
		return 0;
	__builtin_memset(r, 0, sizeof(*r));
	r->ts_ns = bpf_ktime_get_ns();
	r->sock_id = (__u64)sk;
	r->type = type;
	bpf_ringbuf_submit(r, rw_submit_flags(&floor_last_wakeup, 10000000, r->ts_ns));
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int floor_rst_recv_record(__u64 *ctx)
{
	return floor_record((void *)ctx[0], RW_REC_RST_RECEIVED);
}

SEC("tp_btf/tcp_send_reset")
int floor_rst_sent_record(__u64 *ctx)
{
	return floor_record((void *)ctx[0], RW_REC_RST_SENT);
}

/* Where a reset hook's cost goes beyond the record (rstwatch's rw_rst_received against
 * floor_rst_recv_record): its per-socket state found (the first program after the socket's
 * idle period to touch that storage pays its cache misses: without it, the state hook pays
 * them at the reset's CLOSE that follows), and then the socket fields a reset record holds. */
SEC("tp_btf/tcp_receive_reset")
int floor_rst_recv_lookup(__u64 *ctx)
{
	struct rw_conn_snapshot *st = bpf_sk_storage_get(&floor_conn_storage, (struct sock *)ctx[0], 0, 0);

	if (st)
		st->flags |= RW_F_RST_RECEIVED;
	return 0;
}

/* The lookup, then every socket field rstwatch's reset record reads for a server socket in
 * ESTABLISHED (the storm's receiving end), through the same typed view; no record. */
SEC("tp_btf/tcp_receive_reset")
int floor_rst_recv_reads(__u64 *ctx)
{
	const struct sock *sk = (void *)ctx[0];
	const struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	const struct sock_common *skc = &sk->__sk_common;
	struct rw_conn_snapshot *st;
	__u64 sum;

	if (!tp)
		return 0;
	st = bpf_sk_storage_get(&floor_conn_storage, (struct sock *)sk, 0, 0);
	if (st)
		st->flags |= RW_F_RST_RECEIVED;
	sum = skc->skc_state + skc->skc_family + skc->skc_rcv_saddr + skc->skc_daddr + skc->skc_dport +
	      tp->inet_conn.icsk_inet.inet_sport + skc->skc_net.net->ns.inum;
	sum += tp->lsndtime + tp->inet_conn.icsk_ack.lrcvtime + bpf_jiffies64();
	sum += tp->rcv_nxt - tp->copied_seq + tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags;
	sum += tp->bytes_received + tp->bytes_acked + tp->snd_una + tp->write_seq + tp->data_segs_in;
	if (st)
		st->armed_write_seq = (__u32)sum;
	return (int)(sum & 1);
}
