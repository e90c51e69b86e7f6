// SPDX-License-Identifier: GPL-2.0
// The benchmark's reference floor (bench/hookfloor.c): programs on rstwatch's write
// tracepoint that do nothing, and nothing but rstwatch's first step (the socket-storage
// lookup). Their bpf_stats cost per call is what any program on that hook pays before it
// does its own work (dispatch, the statistics' clock reads), so the benchmark can say how
// much of rstwatch's write-hook cost is its own.
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

SEC("tp_btf/tcp_sendmsg_locked")
int floor_lookup(__u64 *ctx)
{
	struct sock *sk = (void *)ctx[0];
	__u64 *seen = bpf_sk_storage_get(&floor_storage, sk, 0, 0);

	return seen ? 1 : 0;
}
