/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The network part shared by the drop, retrans and reset gadgets: a flow
 * (5-tuple, namespace, interface) read from a packet or from a socket.
 *
 * Network events often fire in softirq context, where the current task is
 * unrelated; a flow is therefore attributed by the network namespace of the
 * packet's device or of the socket, and by the cgroup of the socket's
 * creator, never by the current task.
 */
#ifndef __PLUMB_NET_H
#define __PLUMB_NET_H

#include "plumb.h"

#define PLUMB_AF_INET 2
#define PLUMB_AF_INET6 10
#define PLUMB_ETH_P_IP 0x0800
#define PLUMB_ETH_P_IPV6 0x86DD
#define PLUMB_IPPROTO_ICMP 1
#define PLUMB_IPPROTO_TCP 6
#define PLUMB_IPPROTO_UDP 17
#define PLUMB_IPPROTO_ICMPV6 58
/* IPv6 extension headers the flow parser walks past */
#define PLUMB_IPV6_HOPOPTS 0
#define PLUMB_IPV6_ROUTING 43
#define PLUMB_IPV6_FRAGMENT 44
#define PLUMB_IPV6_AUTH 51
#define PLUMB_IPV6_DSTOPTS 60
#define PLUMB_IPV6_MAX_EXT 8

struct plumb_flow {
	__u32 saddr[4];   /* network order words; IPv4 in saddr[0] */
	__u32 daddr[4];
	__u16 sport;      /* host order; ICMP: type */
	__u16 dport;      /* host order; ICMP: code */
	__u16 family;     /* AF_INET, AF_INET6, 0 if not IP */
	__u8 proto;       /* IPPROTO_* */
	__u8 has_ports;   /* TCP/UDP ports or ICMP type/code were read */
	__u32 netns;      /* inode of the network namespace, 0 if unknown */
	__u32 ifindex;
	__u64 sk_cgroup;  /* cgroup v2 id of the socket's creator, 0 if none */
	char ifname[16];
};

/*
 * Every program of the network gadgets is tp_btf: its arguments are typed
 * kernel pointers, so their fields are read directly (the verifier turns
 * each load into a fault-safe load; a NULL pointer reads as 0), which is
 * much cheaper than a bpf_probe_read_kernel() call per field. Only packet
 * bytes and variable offsets still go through the helper.
 */
static __always_inline void flow_dev(struct plumb_flow *f, const struct net_device *dev)
{
	if (!dev)
		return;
	f->ifindex = dev->ifindex;
	f->netns = dev->nd_net.net->ns.inum;
	bpf_probe_read_kernel_str(f->ifname, sizeof(f->ifname), dev->name);
}

/*
 * sk_fullsock(): TIME_WAIT and request sockets are smaller structs that
 * share only struct sock_common with a full socket; fields past it (the
 * cgroup, inet_sock's ports) must not be read from them.
 */
static __always_inline bool flow_fullsock(const struct sock *sk)
{
	__u8 state = sk->__sk_common.skc_state;

	return state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;
}

static __always_inline void flow_sock_owner(struct plumb_flow *f, const struct sock *sk)
{
	if (!sk)
		return;
	if (!f->netns)
		f->netns = sk->__sk_common.skc_net.net->ns.inum;
	if (flow_fullsock(sk))
		f->sk_cgroup = sk->sk_cgrp_data.cgroup->kn->id;
}

/* Ports (or ICMP type/code) at `l4` of the packet. */
static __always_inline void flow_l4(struct plumb_flow *f, const void *l4)
{
	if (f->proto == PLUMB_IPPROTO_TCP || f->proto == PLUMB_IPPROTO_UDP) {
		__u16 ports[2];

		if (bpf_probe_read_kernel(ports, sizeof(ports), l4) == 0) {
			f->sport = bpf_ntohs(ports[0]);
			f->dport = bpf_ntohs(ports[1]);
			f->has_ports = 1;
		}
	} else if (f->proto == PLUMB_IPPROTO_ICMP || f->proto == PLUMB_IPPROTO_ICMPV6) {
		__u8 tc[2];

		if (bpf_probe_read_kernel(tc, sizeof(tc), l4) == 0) {
			f->sport = tc[0];
			f->dport = tc[1];
			f->has_ports = 1;
		}
	}
}

/* The flow of a packet, from its network header. */
static __always_inline void flow_from_skb(struct plumb_flow *f, const struct sk_buff *skb)
{
	unsigned char *head = skb->head;
	__u16 nh = skb->network_header;
	__u16 proto = bpf_ntohs(skb->protocol);

	flow_dev(f, skb->dev);
	flow_sock_owner(f, skb->sk);
	if (nh == (__u16)~0U || !head)
		return;
	if (proto == PLUMB_ETH_P_IP) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return;
		if (ip.version != 4)
			return;
		f->family = PLUMB_AF_INET;
		f->proto = ip.protocol;
		f->saddr[0] = ip.saddr;
		f->daddr[0] = ip.daddr;
		/* Fragments after the first carry no ports. */
		if (bpf_ntohs(ip.frag_off) & 0x1fff)
			return;
		flow_l4(f, head + nh + ip.ihl * 4);
	} else if (proto == PLUMB_ETH_P_IPV6) {
		struct ipv6hdr ip6;
		__u32 off = nh + sizeof(ip6);
		__u8 next;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		f->family = PLUMB_AF_INET6;
		__builtin_memcpy(f->saddr, &ip6.saddr, 16);
		__builtin_memcpy(f->daddr, &ip6.daddr, 16);
		next = ip6.nexthdr;
		/* Walk the extension headers (bounded) to the transport header. */
		for (int i = 0; i < PLUMB_IPV6_MAX_EXT; i++) {
			__u8 h[4];

			if (next != PLUMB_IPV6_HOPOPTS && next != PLUMB_IPV6_ROUTING &&
			    next != PLUMB_IPV6_FRAGMENT && next != PLUMB_IPV6_AUTH &&
			    next != PLUMB_IPV6_DSTOPTS)
				break;
			/* h[0]: next header; h[1]: length; fragment: h[2..3] offset */
			if (bpf_probe_read_kernel(h, sizeof(h), head + off)) {
				f->proto = next;
				return;
			}
			if (next == PLUMB_IPV6_FRAGMENT) {
				f->proto = h[0];
				/* Fragments after the first carry no ports. */
				if (((h[2] << 8) | h[3]) & 0xfff8)
					return;
				off += 8;
			} else if (next == PLUMB_IPV6_AUTH) {
				off += ((__u32)h[1] + 2) * 4;
			} else {
				off += ((__u32)h[1] + 1) * 8;
			}
			next = h[0];
		}
		f->proto = next;
		flow_l4(f, head + off);
	}
}

/*
 * The flow of a TCP socket: local end as source. struct sock_common is
 * read, which is safe for TIME_WAIT and request sockets too, except for one
 * case: a full socket moved to CLOSE has released its bound port (skc_num
 * is 0 by the time tcp_disconnect sends its RST), so its port is then read
 * from inet_sock's inet_sport, which keeps it.
 */
static __always_inline void flow_from_sock(struct plumb_flow *f, const struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	flow_sock_owner(f, sk);
	f->proto = PLUMB_IPPROTO_TCP;
	f->family = family;
	f->sport = sk->__sk_common.skc_num;
	if (f->sport == 0 && flow_fullsock(sk))
		f->sport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	f->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	f->has_ports = 1;
	if (family == PLUMB_AF_INET) {
		f->saddr[0] = sk->__sk_common.skc_rcv_saddr;
		f->daddr[0] = sk->__sk_common.skc_daddr;
	} else if (family == PLUMB_AF_INET6) {
		BPF_CORE_READ_INTO(&f->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32);
		BPF_CORE_READ_INTO(&f->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
	}
}

#include "plumb_net_filter.h"

#endif /* __PLUMB_NET_H */
