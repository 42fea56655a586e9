/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record layout of the tcp gadget; mirrored in tcp/mod.rs (size checked). */
#ifndef __PLUMB_TCP_H
#define __PLUMB_TCP_H

enum tcp_ev { TCP_EV_CONNECT = 1, TCP_EV_ACCEPT = 2, TCP_EV_CLOSE = 3, TCP_EV_CONNECT_FAILED = 4 };

struct tcp_event {
	struct plumb_hdr hdr;
	__u64 duration_ns;  /* close: since established; 0 if it predates us */
	__u64 rx_bytes;     /* close */
	__u64 tx_bytes;     /* close: bytes acked by the peer */
	__u32 saddr[4];     /* local */
	__u32 daddr[4];     /* remote */
	__u16 sport;        /* host order */
	__u16 dport;        /* host order */
	__u16 family;       /* AF_INET, AF_INET6 */
	__u8 event;         /* enum tcp_ev */
	__u8 active;        /* 1: we connected, 0: we accepted */
	__s32 error;        /* connect_failed: the socket's errno */
	__u32 netns;        /* inode number of the socket's network namespace */
};

/* Who owns a tracked socket, kept from a moment in process context. */
struct tcp_owner {
	__u64 start_ns;     /* established (0: unknown) */
	__u64 cgroup_id;
	__u32 pid;          /* 0: not yet accepted by anyone */
	__u32 tid;
	__u32 uid;
	__u32 active;
	char comm[PLUMB_COMM_LEN];
};

#endif
