// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * BTF fixture: the tracepoint prototypes and drop-reason enums of Linux
 * 6.6. kfree_skb has its reason (numbered as 6.6 numbers it, not as today's
 * kernels do), subsystem drop reasons exist (with mac80211's monitor
 * subsystem, since removed, and a built-in openvswitch enum), and
 * tcp_send_reset has neither a reason nor RSTs without a socket yet.
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
	SKB_DROP_REASON_PKT_TOO_SMALL = 4,
	SKB_DROP_REASON_TCP_CSUM = 5,
	SKB_DROP_REASON_SOCKET_FILTER = 6,
	SKB_DROP_REASON_UDP_CSUM = 7,
	SKB_DROP_REASON_NETFILTER_DROP = 8,
	SKB_DROP_REASON_OTHERHOST = 9,
	SKB_DROP_REASON_IP_NOPROTO = 14,
	SKB_DROP_REASON_MAX = 80,
	SKB_DROP_REASON_SUBSYS_MASK = 0xffff0000,
};

enum skb_drop_reason_subsys {
	SKB_DROP_REASON_SUBSYS_CORE = 0,
	SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE = 1,
	SKB_DROP_REASON_SUBSYS_MAC80211_MONITOR = 2,
	SKB_DROP_REASON_SUBSYS_OPENVSWITCH = 3,
	SKB_DROP_REASON_SUBSYS_NUM = 4,
};

/* Built in on this fixture's "kernel", so its names are in vmlinux. */
enum ovs_drop_reason {
	OVS_DROP_LAST_ACTION = 3 << 16,
	OVS_DROP_ACTION_ERROR = (3 << 16) + 1,
	OVS_DROP_EXPLICIT = (3 << 16) + 2,
	OVS_DROP_REASON_MAX = (3 << 16) + 3,
};

typedef void (*btf_trace_kfree_skb)(void *, struct sk_buff *, void *, enum skb_drop_reason);
typedef void (*btf_trace_tcp_send_reset)(void *, const struct sock *, const struct sk_buff *);
typedef void (*btf_trace_tcp_receive_reset)(void *, struct sock *);
typedef void (*btf_trace_tcp_retransmit_skb)(void *, const struct sock *, const struct sk_buff *);
typedef void (*btf_trace_tcp_retransmit_synack)(void *, const struct sock *, const struct request_sock *);

struct trace_event_raw_tcp_event_sk_skb {
	int fixture;
};

btf_trace_kfree_skb fixture_kfree_skb;
btf_trace_tcp_send_reset fixture_send_reset;
btf_trace_tcp_receive_reset fixture_receive_reset;
btf_trace_tcp_retransmit_skb fixture_retransmit_skb;
btf_trace_tcp_retransmit_synack fixture_retransmit_synack;
struct trace_event_raw_tcp_event_sk_skb fixture_class;
enum skb_drop_reason fixture_reason;
enum skb_drop_reason_subsys fixture_subsys;
enum ovs_drop_reason fixture_ovs;

char LICENSE[] __attribute__((section("license"), used)) = "Dual BSD/GPL";
