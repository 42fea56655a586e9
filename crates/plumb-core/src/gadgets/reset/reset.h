/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record layout of the reset gadget; mirrored in reset/mod.rs (size checked). */
#ifndef __PLUMB_RESET_H
#define __PLUMB_RESET_H

#include "plumb_net.h"

enum reset_dir { RESET_SENT = 1, RESET_RECEIVED = 2 };

struct reset_event {
	struct plumb_hdr hdr;
	struct plumb_flow flow;  /* the RST's direction: saddr sent it */
	__u32 reason;            /* enum sk_rst_reason (sent only), names from BTF */
	__u8 direction;          /* enum reset_dir */
	__u8 state;              /* TCP state of the socket, 0 if there is none */
	__u8 has_reason;
	__u8 _pad;
};

#endif
