// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * BTF fixture: the tracepoint prototypes of Linux 6.18 (as bpftool shows
 * them on this project's test machine): kfree_skb with its reason and the
 * receiving socket, tcp_send_reset with enum sk_rst_reason,
 * tcp_retransmit_skb with int err.
 * Only the object's BTF is used. No headers: they would define these types.
 */
struct sk_buff;
struct sock;
struct request_sock;

enum skb_drop_reason {
	SKB_NOT_DROPPED_YET = 0,
	SKB_CONSUMED = 1,
	SKB_DROP_REASON_NOT_SPECIFIED = 2,
	SKB_DROP_REASON_NO_SOCKET = 3,
	SKB_DROP_REASON_NETFILTER_DROP = 12,
	SKB_DROP_REASON_IP_NOPROTO = 19,
	SKB_DROP_REASON_MAX = 128,
	SKB_DROP_REASON_SUBSYS_MASK = 0xffff0000,
};

enum sk_rst_reason {
	SK_RST_REASON_NOT_SPECIFIED = 0,
	SK_RST_REASON_NO_SOCKET = 1,
};

typedef void (*btf_trace_kfree_skb)(void *, struct sk_buff *, void *, enum skb_drop_reason, struct sock *);
typedef void (*btf_trace_tcp_send_reset)(void *, const struct sock *, const struct sk_buff *, const enum sk_rst_reason);
typedef void (*btf_trace_tcp_receive_reset)(void *, struct sock *);
typedef void (*btf_trace_tcp_retransmit_skb)(void *, const struct sock *, const struct sk_buff *, int);
typedef void (*btf_trace_tcp_retransmit_synack)(void *, const struct sock *, const struct request_sock *);

struct trace_event_raw_tcp_send_reset {
	int fixture;
};

btf_trace_kfree_skb fixture_kfree_skb;
btf_trace_tcp_send_reset fixture_send_reset;
btf_trace_tcp_receive_reset fixture_receive_reset;
btf_trace_tcp_retransmit_skb fixture_retransmit_skb;
btf_trace_tcp_retransmit_synack fixture_retransmit_synack;
struct trace_event_raw_tcp_send_reset fixture_event;

char LICENSE[] __attribute__((section("license"), used)) = "Dual BSD/GPL";
