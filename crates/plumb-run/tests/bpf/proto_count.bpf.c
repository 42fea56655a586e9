// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The protocol counter of the kube-bpf story: a socket filter counting the
 * IPv4 packets it sees per IP protocol, in a hash map keyed by a struct.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define ETH_HLEN 14

struct proto_key {
	__u32 proto;
};

struct proto_val {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct proto_key);
	__type(value, struct proto_val);
} proto_count SEC(".maps");

SEC("socket")
int count_protocols(struct __sk_buff *skb)
{
	struct proto_key k = {};
	struct proto_val *v, zero = {};
	__u8 proto;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1))
		return 0;
	k.proto = proto;
	v = bpf_map_lookup_elem(&proto_count, &k);
	if (!v) {
		bpf_map_update_elem(&proto_count, &k, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&proto_count, &k);
		if (!v)
			return 0;
	}
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, skb->len);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
