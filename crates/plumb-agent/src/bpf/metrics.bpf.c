// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The agent's always-on counters. Nothing is streamed: every hook adds one
 * to a per-CPU hash slot, and the agent sums the slots when Prometheus
 * scrapes it. Keys are the network namespace (network events: a pod's
 * namespace names the pod) or the cgroup (exec), never a flow, so the maps
 * stay small however busy the node is.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "metrics.h"

#define MAX_KEYS 16384

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_KEYS);
	__type(key, struct metrics_drop_key);
	__type(value, __u64);
} drop_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_KEYS);
	__type(key, struct metrics_tcp_key);
	__type(value, __u64);
} tcp_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_KEYS);
	__type(key, __u64);
	__type(value, __u64);
} exec_counts SEC(".maps");

/* Increments that found the map full: reported, never silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} map_full SEC(".maps");

static __always_inline void bump(void *map, const void *key)
{
	__u64 one = 1, *n = bpf_map_lookup_elem(map, key);
	__u32 zero = 0;

	if (n) {
		*n += 1;
		return;
	}
	if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
		return;
	/* Another CPU may have inserted it meanwhile. */
	n = bpf_map_lookup_elem(map, key);
	if (n) {
		*n += 1;
		return;
	}
	n = bpf_map_lookup_elem(&map_full, &zero);
	if (n)
		*n += 1;
}

static __always_inline __u32 sock_netns(const struct sock *sk)
{
	return sk ? BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) : 0;
}

static __always_inline void bump_tcp(const struct sock *sk, __u32 what)
{
	struct metrics_tcp_key k = { .netns = sock_netns(sk), .what = what };

	bump(&tcp_counts, &k);
}

static __always_inline void count_drop(const struct sk_buff *skb, __u32 reason)
{
	struct metrics_drop_key k = { .reason = reason };
	struct net_device *dev;

	dev = BPF_CORE_READ(skb, dev);
	if (dev)
		k.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	else
		k.netns = sock_netns(BPF_CORE_READ(skb, sk));
	bump(&drop_counts, &k);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(metrics_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	/* Ordinary frees, not losses. */
	if (reason == SKB_DROP_REASON_NOT_SPECIFIED || reason == SKB_CONSUMED)
		return 0;
	count_drop(skb, reason);
	return 0;
}

/*
 * Kernels before 5.17: kfree_skb(skb, location), no reason (counted under
 * reason 0, which user space names UNKNOWN there); consume_skb has its own
 * tracepoint, so every kfree_skb is a drop.
 */
SEC("tp_btf/kfree_skb")
int BPF_PROG(metrics_kfree_skb_noreason, struct sk_buff *skb, void *location)
{
	count_drop(skb, 0);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(metrics_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	bump_tcp(sk, MT_RETRANSMIT);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(metrics_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	struct metrics_tcp_key k = { .what = MT_RESET_SENT };

	/* A reset answering a packet with no socket has only the packet. */
	if (sk) {
		k.netns = sock_netns(sk);
	} else if (skb) {
		struct net_device *dev = BPF_CORE_READ(skb, dev);

		if (dev)
			k.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	}
	bump(&tcp_counts, &k);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(metrics_receive_reset, struct sock *sk)
{
	bump_tcp(sk, MT_RESET_RECEIVED);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(metrics_sock_state, const struct sock *sk, int oldstate, int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP || newstate != TCP_ESTABLISHED)
		return 0;
	if (oldstate == TCP_SYN_SENT)
		bump_tcp(sk, MT_CONNECT);
	else if (oldstate == TCP_SYN_RECV)
		bump_tcp(sk, MT_ACCEPT);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(metrics_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 cg = bpf_get_current_cgroup_id();

	bump(&exec_counts, &cg);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
