// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * retrans: every TCP retransmission (tcp_retransmit_skb, and SYN-ACKs
 * retransmitted for pending connections), with the flow, the socket's state
 * and the number of segments, which is what the kernel's TcpRetransSegs
 * counter adds up. Failed attempts are not retransmissions and are not
 * reported.
 *
 * Two programs for tcp_retransmit_skb: retrans_skb where it carries the
 * attempt's result (newer kernels; only results equal to retrans_ok, what
 * the kernel's BTF says success is, are reported), and retrans_skb_noerr
 * where it does not (older kernels fire it only for successful attempts).
 * User space loads only the one that fits the running kernel.
 */
#include "plumb.h"
#include "plumb_net.h"
#include "retrans.h"

/* Never written: gives the skeleton the record's layout for a size check. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct retrans_event);
} retrans_layout SEC(".maps");

/* A record for a flow that passed the filter; NULL when the buffer is full. */
static __always_inline struct retrans_event *start_event(const struct plumb_flow *f)
{
	struct retrans_event *e;

	if (!plumb_flow_wanted(f))
		return NULL;
	e = plumb_net_reserve(sizeof(*e));
	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	plumb_fill_hdr_notask(&e->hdr, PLUMB_KIND_RETRANS);
	e->flow = *f;
	e->hdr.cgroup_id = f->sk_cgroup;
	return e;
}

/* The value of tcp_retransmit_skb's third argument that means "sent". */
const volatile __s64 retrans_ok = 0;

static __always_inline int retrans_record(const struct sock *sk, const struct sk_buff *skb)
{
	struct plumb_flow flow = {};
	struct retrans_event *e;
	struct tcp_skb_cb *cb;
	__u16 segs;

	if (!plumb_owner_wanted(sk->__sk_common.skc_net.net->ns.inum, sk))
		return 0;
	flow_from_sock(&flow, sk);
	e = start_event(&flow);
	if (!e)
		return 0;
	e->state = sk->__sk_common.skc_state;
	cb = (struct tcp_skb_cb *)&skb->cb[0];
	segs = BPF_CORE_READ(cb, tcp_gso_segs);
	e->segs = segs ? segs : 1;
	e->tcp_flags = BPF_CORE_READ(cb, tcp_flags);
	plumb_submit(e);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(retrans_skb, const struct sock *sk, const struct sk_buff *skb, long result)
{
	if ((__s64)(int)result != retrans_ok)
		return 0;
	return retrans_record(sk, skb);
}

/* Kernels whose tracepoint has no result: it fires only for sent segments. */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(retrans_skb_noerr, const struct sock *sk, const struct sk_buff *skb)
{
	return retrans_record(sk, skb);
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(retrans_synack, const struct sock *sk, const struct request_sock *req)
{
	const struct sock_common *c = &req->__req_common;
	struct plumb_flow flow = {};
	struct retrans_event *e;
	__u16 family;

	flow.netns = c->skc_net.net->ns.inum;
	if (!plumb_owner_wanted(flow.netns, sk))
		return 0;
	family = c->skc_family;
	flow.family = family;
	flow.proto = PLUMB_IPPROTO_TCP;
	flow.sport = c->skc_num;
	flow.dport = bpf_ntohs(c->skc_dport);
	flow.has_ports = 1;
	if (family == PLUMB_AF_INET) {
		flow.saddr[0] = c->skc_rcv_saddr;
		flow.daddr[0] = c->skc_daddr;
	} else {
		BPF_CORE_READ_INTO(&flow.saddr, c, skc_v6_rcv_saddr.in6_u.u6_addr32);
		BPF_CORE_READ_INTO(&flow.daddr, c, skc_v6_daddr.in6_u.u6_addr32);
	}
	flow_sock_owner(&flow, sk);
	e = start_event(&flow);
	if (!e)
		return 0;
	e->state = TCP_SYN_RECV;
	e->synack = 1;
	e->segs = 1;
	plumb_submit(e);
	return 0;
}
