// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* A cgroup egress counter: IPv4 packets the cgroup's sockets send, per protocol. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u64);
} egress_protos SEC(".maps");

SEC("cgroup_skb/egress")
int cg_egress(struct __sk_buff *skb)
{
	__u8 proto;
	__u32 k;
	__u64 *n;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 1;
	/* A cgroup program's packet starts at the IP header. */
	if (bpf_skb_load_bytes(skb, 9, &proto, 1))
		return 1;
	k = proto;
	n = bpf_map_lookup_elem(&egress_protos, &k);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
