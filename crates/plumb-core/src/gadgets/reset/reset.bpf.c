// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * reset: every TCP RST sent (tcp_send_reset, with the kernel's reason) or
 * received (tcp_receive_reset). The flow is given in the RST's own
 * direction (source = the side that sent it), so the "sent" record of one
 * side and the "received" record of the other carry the same tuple.
 *
 * Two programs for tcp_send_reset: reset_send where it carries the reason
 * (Linux 6.10 and newer), reset_send_noreason where it does not. User space
 * reads the running kernel's prototype from its BTF and loads only the one
 * that fits. The socket may be a TIME_WAIT or request socket (or none):
 * only what every socket shares is read from it (see flow_fullsock).
 */
#include "plumb.h"
#include "plumb_net.h"
#include "reset.h"

/* Never written: gives the skeleton the record's layout for a size check. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reset_event);
} reset_layout SEC(".maps");

/* Swap source and destination: a flow read from a socket has the local end
 * as source; a received RST came from the remote end. */
static __always_inline void flow_reverse(struct plumb_flow *f)
{
	__u32 a[4];
	__u16 p;

	__builtin_memcpy(a, f->saddr, sizeof(a));
	__builtin_memcpy(f->saddr, f->daddr, sizeof(a));
	__builtin_memcpy(f->daddr, a, sizeof(a));
	p = f->sport;
	f->sport = f->dport;
	f->dport = p;
}

/* A record for a flow that passed the filter; NULL when the buffer is full. */
static __always_inline struct reset_event *start_event(const struct plumb_flow *f, __u8 dir)
{
	struct reset_event *e;

	if (!plumb_flow_wanted(f))
		return NULL;
	e = plumb_net_reserve(sizeof(*e));
	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	plumb_fill_hdr_notask(&e->hdr, PLUMB_KIND_RESET);
	e->flow = *f;
	e->hdr.cgroup_id = f->sk_cgroup;
	e->direction = dir;
	return e;
}

static __always_inline int reset_sent(const struct sock *sk, const struct sk_buff *skb,
				      __u32 reason, __u8 has_reason)
{
	struct plumb_flow flow = {};
	struct reset_event *e;
	__u32 netns = 0;

	if (skb && skb->dev)
		netns = skb->dev->nd_net.net->ns.inum;
	else if (sk)
		netns = sk->__sk_common.skc_net.net->ns.inum;
	if (!plumb_owner_wanted(netns, sk))
		return 0;
	if (skb) {
		/* The packet that caused the RST; the RST goes back to its source. */
		flow_from_skb(&flow, skb);
		flow_reverse(&flow);
	} else if (sk) {
		flow_from_sock(&flow, sk);
	}
	if (sk)
		flow_sock_owner(&flow, sk);
	e = start_event(&flow, RESET_SENT);
	if (!e)
		return 0;
	if (sk)
		e->state = sk->__sk_common.skc_state;
	e->reason = reason;
	e->has_reason = has_reason;
	plumb_submit(e);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(reset_send, const struct sock *sk, const struct sk_buff *skb, int reason)
{
	return reset_sent(sk, skb, reason, 1);
}

/* Kernels before 6.10: tcp_send_reset(sk, skb), no reason. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(reset_send_noreason, const struct sock *sk, const struct sk_buff *skb)
{
	return reset_sent(sk, skb, 0, 0);
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(reset_receive, struct sock *sk)
{
	struct plumb_flow flow = {};
	struct reset_event *e;

	if (!plumb_owner_wanted(sk->__sk_common.skc_net.net->ns.inum, sk))
		return 0;
	flow_from_sock(&flow, sk);
	flow_reverse(&flow);
	e = start_event(&flow, RESET_RECEIVED);
	if (!e)
		return 0;
	e->state = sk->__sk_common.skc_state;
	plumb_submit(e);
	return 0;
}
