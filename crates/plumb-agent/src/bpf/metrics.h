/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Map keys shared by metrics.bpf.c and its Rust owner (metrics_bpf.rs). */
#ifndef __PLUMB_AGENT_METRICS_H
#define __PLUMB_AGENT_METRICS_H

struct metrics_drop_key {
	__u32 netns;   /* inode of the packet's network namespace, 0 if unknown */
	__u32 reason;  /* enum skb_drop_reason */
};

enum metrics_tcp_what {
	MT_RETRANSMIT = 0,
	MT_RESET_SENT = 1,
	MT_RESET_RECEIVED = 2,
	MT_CONNECT = 3,  /* an outgoing connection got established */
	MT_ACCEPT = 4,   /* an incoming connection got established */
};

struct metrics_tcp_key {
	__u32 netns;
	__u32 what;    /* enum metrics_tcp_what */
};

#endif
