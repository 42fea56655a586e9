/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record layout of the retrans gadget; mirrored in retrans/mod.rs (size checked). */
#ifndef __PLUMB_RETRANS_H
#define __PLUMB_RETRANS_H

#include "plumb_net.h"

struct retrans_event {
	struct plumb_hdr hdr;
	struct plumb_flow flow;  /* local end as source */
	__u32 segs;              /* segments retransmitted (what TcpRetransSegs counts) */
	__u8 state;              /* TCP state of the socket */
	__u8 synack;             /* a SYN-ACK retransmitted for a pending connection */
	__u16 tcp_flags;
};

#endif
