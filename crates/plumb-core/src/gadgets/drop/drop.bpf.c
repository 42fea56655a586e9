// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * drop: every packet the kernel frees as dropped (skb:kfree_skb), with the
 * kernel's drop reason, the flow, and optionally the kernel stack.
 *
 * Reasons are filtered here with a bitmap user space builds from the
 * kernel's own enum skb_drop_reason, so normal frees cost one test.
 */
#include "plumb.h"
#include "plumb_net.h"
#include "drop.h"

/* Bit r set: report reason r. Reasons >= 1024 (subsystem reasons) always pass. */
const volatile __u64 drop_reasons[DROP_REASON_WORDS] = {};
const volatile __u32 drop_filter_reasons = 0;
const volatile __u32 drop_want_stack = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct drop_event);
} drop_scratch SEC(".maps");

SEC("tp_btf/kfree_skb")
int BPF_PROG(drop_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	__u32 zero = 0, r = reason;
	struct drop_event *e;
	__u64 size;

	if (drop_filter_reasons && r < DROP_REASON_WORDS * 64) {
		__u32 word = r >> 6;

		/* Mask after the barrier so the verifier sees the bound. */
		barrier_var(word);
		word &= DROP_REASON_WORDS - 1;
		if (!(drop_reasons[word] & (1ULL << (r & 63))))
			return 0;
	}
	e = bpf_map_lookup_elem(&drop_scratch, &zero);
	if (!e)
		return 0;
	plumb_fill_hdr_notask(&e->hdr, PLUMB_KIND_DROP);
	__builtin_memset(&e->flow, 0, sizeof(e->flow));
	flow_from_skb(&e->flow, skb);
	e->hdr.cgroup_id = e->flow.sk_cgroup;
	e->location = (__u64)location;
	e->reason = r;
	e->stack_len = 0;
	if (drop_want_stack) {
		long n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);

		if (n > 0)
			e->stack_len = n;
	}
	size = offsetof(struct drop_event, stack) + e->stack_len;
	if (size > sizeof(*e))
		size = sizeof(*e);
	plumb_output(e, size);
	return 0;
}
