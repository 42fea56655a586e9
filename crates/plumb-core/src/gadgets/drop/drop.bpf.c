// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * drop: every packet the kernel frees as dropped (skb:kfree_skb), with the
 * kernel's drop reason, the flow, and optionally the kernel stack.
 *
 * Two programs for two kernel generations: drop_kfree_skb where the
 * tracepoint carries the reason (Linux 5.17 and newer), and
 * drop_kfree_skb_noreason where it does not. User space reads the running
 * kernel's prototype from its BTF and loads only the one that fits.
 *
 * Reasons are filtered here with a bitmap user space builds from the
 * kernel's own enum skb_drop_reason, so normal frees cost one test.
 * Subsystem reasons (a subsystem id in the high 16 bits) are let through
 * per subsystem; user space keeps exactly the ones asked for.
 */
#include "plumb.h"
#include "plumb_net.h"
#include "drop.h"

#define DROP_SUBSYS_SHIFT 16

/* Bit r set: report core reason r. */
const volatile __u64 drop_reasons[DROP_REASON_WORDS] = {};
const volatile __u32 drop_filter_reasons = 0;
/* With the filter on: bit s set lets subsystem s's reasons through. */
const volatile __u32 drop_subsys_mask = 0;
const volatile __u32 drop_want_stack = 0;
/* Count drops per key in drop_counts instead of writing records (--summary). */
const volatile __u32 drop_count_only = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, DROP_COUNT_KEYS);
	__type(key, struct drop_count_key);
	__type(value, __u64);
} drop_counts SEC(".maps");

/* Per CPU: drops that found drop_counts full (not counted anywhere else). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drop_count_overflow SEC(".maps");

/* Count one drop under its summary key (reason, namespace, destination). */
static __always_inline int drop_count(const struct plumb_flow *f, __u32 r, __u16 flags)
{
	struct drop_count_key k = {};
	__u64 one = 1, *n;

	k.reason = r;
	k.flags = flags;
	k.netns = f->netns;
	k.family = f->family;
	__builtin_memcpy(k.daddr, f->daddr, sizeof(k.daddr));
	n = bpf_map_lookup_elem(&drop_counts, &k);
	if (n) {
		*n += 1;
		return 0;
	}
	if (bpf_map_update_elem(&drop_counts, &k, &one, BPF_NOEXIST)) {
		/* Full (or another CPU inserted it first: then count there). */
		n = bpf_map_lookup_elem(&drop_counts, &k);
		if (n) {
			*n += 1;
			return 0;
		}
		__u32 zero = 0;
		__u64 *o = bpf_map_lookup_elem(&drop_count_overflow, &zero);

		if (o)
			*o += 1;
	}
	return 0;
}

/* Never written: gives the skeleton the record's layout for a size check. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct drop_event);
} drop_layout SEC(".maps");

static __always_inline bool reason_wanted(__u32 r)
{
	if (!drop_filter_reasons)
		return true;
	if (r < DROP_REASON_WORDS * 64) {
		__u32 word = r >> 6;

		/* Mask after the barrier so the verifier sees the bound. */
		barrier_var(word);
		word &= DROP_REASON_WORDS - 1;
		return drop_reasons[word] & (1ULL << (r & 63));
	}
	r >>= DROP_SUBSYS_SHIFT;
	return r > 0 && r < 32 && (drop_subsys_mask & (1U << r));
}

/*
 * Cheapest checks first: the reason (one bit test: most frees are not
 * drops), then the owner (the device's or socket's namespace, one hash
 * lookup), and only then the packet's headers, which cost helper calls.
 * Nothing is reserved in the ring buffer until every check has passed.
 */
static __always_inline int drop_record(void *ctx, struct sk_buff *skb, void *location, __u32 r,
				       __u16 flags)
{
	struct plumb_flow flow = {};
	struct drop_event *e;

	if ((flags & DROP_FLAG_REASON) && !reason_wanted(r))
		return 0;
	if (plumb_net_filter.netns || plumb_net_filter.owner || plumb_net_filter.sk_cgroup) {
		struct net_device *dev = skb->dev;
		struct sock *sk = skb->sk;
		__u32 netns = 0;

		if (dev)
			netns = dev->nd_net.net->ns.inum;
		else if (sk)
			netns = sk->__sk_common.skc_net.net->ns.inum;
		if (!plumb_owner_wanted(netns, sk))
			return 0;
	}
	flow_from_skb(&flow, skb);
	if (!plumb_flow_wanted(&flow))
		return 0;
	if (drop_count_only)
		return drop_count(&flow, r, flags);
	/* Without a stack the record stops before it: a constant size either way. */
	if (drop_want_stack)
		e = plumb_net_reserve(sizeof(*e));
	else
		e = plumb_net_reserve(offsetof(struct drop_event, stack));
	if (!e)
		return 0;
	plumb_fill_hdr_notask(&e->hdr, PLUMB_KIND_DROP);
	e->flow = flow;
	e->hdr.cgroup_id = flow.sk_cgroup;
	e->location = (__u64)location;
	e->reason = r;
	e->stack_len = 0;
	if (drop_want_stack) {
		long n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);

		flags |= DROP_FLAG_STACK;
		if (n > 0)
			e->stack_len = n;
		else
			flags |= DROP_FLAG_NO_STACK;
	}
	e->hdr.flags |= flags;
	plumb_submit(e);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(drop_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	return drop_record(ctx, skb, location, reason, DROP_FLAG_REASON);
}

/* Kernels before 5.17: kfree_skb(skb, location), no reason. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(drop_kfree_skb_noreason, struct sk_buff *skb, void *location)
{
	return drop_record(ctx, skb, location, 0, 0);
}
