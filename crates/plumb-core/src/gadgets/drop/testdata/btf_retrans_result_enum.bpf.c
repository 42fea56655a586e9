// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * BTF fixture: tcp_retransmit_skb with its result as an enum, as proposed
 * on netdev (enum tcp_retransmit_result, success not numbered 0), to test
 * that success is read from the enum rather than assumed to be 0.
 * Only the object's BTF is used. No headers: they would define these types.
 */
struct sk_buff;
struct sock;

enum tcp_retransmit_result {
	TCP_RETRANS_ERR_DEFAULT = 0,
	TCP_RETRANS_SUCCESS = 1,
	TCP_RETRANS_IN_HOST_QUEUE = 2,
};

typedef void (*btf_trace_tcp_retransmit_skb)(void *, const struct sock *, const struct sk_buff *,
					     enum tcp_retransmit_result);

btf_trace_tcp_retransmit_skb fixture_retransmit_skb;
enum tcp_retransmit_result fixture_result;

char LICENSE[] __attribute__((section("license"), used)) = "Dual BSD/GPL";
