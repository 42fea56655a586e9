// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * BTF fixture for the drop-reason name test: an enum skb_drop_reason laid
 * out as an older kernel numbered it (before reasons were renumbered), so
 * the test proves names are read from BTF rather than from a table. Built
 * like every gadget source; only its BTF is used.
 */
/* No headers at all: kernel headers would define the enum themselves. */

enum skb_drop_reason {
	SKB_DROP_REASON_NOT_SPECIFIED = 2,
	SKB_DROP_REASON_NO_SOCKET = 3,
	SKB_DROP_REASON_PKT_TOO_SMALL = 4,
	SKB_DROP_REASON_TCP_CSUM = 5,
	SKB_DROP_REASON_SOCKET_FILTER = 6,
	SKB_DROP_REASON_UDP_CSUM = 7,
	SKB_DROP_REASON_NETFILTER_DROP = 8,
	SKB_DROP_REASON_MAX = 9,
};

enum skb_drop_reason fixture_reason = SKB_DROP_REASON_NOT_SPECIFIED;

char LICENSE[] __attribute__((section("license"), used)) = "Dual BSD/GPL";
