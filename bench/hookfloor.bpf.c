// SPDX-License-Identifier: GPL-2.0
// The benchmark's reference programs (bench/hookfloor.c) on rstwatch's write tracepoint:
// one that does nothing, and ones that do only part of what rstwatch's write hook does.
// Their bpf_stats cost per call is what any program on that hook pays before it does its
// own work (dispatch, the statistics' clock reads), and what each step adds, so the
// benchmark can say how much of rstwatch's write-hook cost is its own and where it goes.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

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
