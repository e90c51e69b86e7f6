/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Rate-limited ring-buffer wakeups, shared by rstwatch.bpf.c and the benchmark's reference
 * programs (bench/hookfloor.bpf.c), so the reference pays exactly what rstwatch pays to hand
 * a record over.
 *
 * Waking the reader costs the producer an irq_work (12.5 us per received RST on an AMD EPYC
 * guest in a reset storm, with the ring buffer's default wakeup; 0.27 us without). So a
 * record wakes the reader only if this CPU has not woken it for `interval_ns`: the first
 * record after a quiet spell is delivered at once, storms cost at most one wakeup per CPU per
 * interval, and the reader picks up records left without a wakeup at its poll timeout.
 * `last_wakeup_map` is a one-entry BPF_MAP_TYPE_PERCPU_ARRAY of __u64.
 */
#ifndef RSTWATCH_RINGBUF_WAKEUP_H
#define RSTWATCH_RINGBUF_WAKEUP_H

static __always_inline __u64 rw_submit_flags(void *last_wakeup_map, __u64 interval_ns, __u64 now_ns)
{
	__u32 zero = 0;
	__u64 *last = bpf_map_lookup_elem(last_wakeup_map, &zero);

	if (!last)
		return 0;
	if (now_ns - *last < interval_ns)
		return BPF_RB_NO_WAKEUP;
	*last = now_ns;
	return BPF_RB_FORCE_WAKEUP;
}

#endif
