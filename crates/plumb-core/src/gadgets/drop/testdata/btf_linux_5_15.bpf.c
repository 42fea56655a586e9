// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * BTF fixture: the tracepoint prototypes of Linux 5.15, as its vmlinux BTF
 * describes them (btf_trace_<name> typedefs), for the unit tests that pick
 * a program variant from the running kernel's BTF. 5.15 has no drop reasons
 * (5.17), no reset reasons (6.10), tcp_send_reset only for RSTs sent by a
 * socket (6.9), and tcp_retransmit_skb without its err argument.
 * Only the object's BTF is used. No headers: they would define these types.
 */
struct sk_buff;
struct sock;
struct request_sock;

typedef void (*btf_trace_kfree_skb)(void *, struct sk_buff *, void *);
typedef void (*btf_trace_tcp_send_reset)(void *, const struct sock *, const struct sk_buff *);
typedef void (*btf_trace_tcp_receive_reset)(void *, struct sock *);
typedef void (*btf_trace_tcp_retransmit_skb)(void *, const struct sock *, const struct sk_buff *);
typedef void (*btf_trace_tcp_retransmit_synack)(void *, const struct sock *, const struct request_sock *);

/* tcp_send_reset is still an event of this class. */
struct trace_event_raw_tcp_event_sk_skb {
	int fixture;
};

btf_trace_kfree_skb fixture_kfree_skb;
btf_trace_tcp_send_reset fixture_send_reset;
btf_trace_tcp_receive_reset fixture_receive_reset;
btf_trace_tcp_retransmit_skb fixture_retransmit_skb;
btf_trace_tcp_retransmit_synack fixture_retransmit_synack;
struct trace_event_raw_tcp_event_sk_skb fixture_class;

char LICENSE[] __attribute__((section("license"), used)) = "Dual BSD/GPL";
