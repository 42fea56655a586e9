/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record layout of the drop gadget; mirrored in drop/mod.rs (size checked). */
#ifndef __PLUMB_DROP_H
#define __PLUMB_DROP_H

#include "plumb_net.h"

#define DROP_MAX_STACK 32
#define DROP_REASON_WORDS 16 /* bitmap of reasons 0..1023 */

/* plumb_hdr.flags of a drop record, above the PLUMB_HDR_* bits it keeps */
#define DROP_FLAG_REASON 8    /* `reason` is the kernel's (it has drop reasons) */
#define DROP_FLAG_STACK 16    /* a stack was asked for */
#define DROP_FLAG_NO_STACK 32 /* ... and bpf_get_stack failed */

struct drop_event {
	struct plumb_hdr hdr;
	struct plumb_flow flow;
	__u64 location;      /* address of the freeing call site */
	__u32 reason;        /* enum skb_drop_reason (names from the kernel's BTF) */
	__u32 stack_len;     /* bytes of stack below */
	__u64 stack[DROP_MAX_STACK];
};

/*
 * With --summary, drops are counted in the kernel under this key: what the
 * summary groups by (reason, the packet's namespace, and the destination
 * address, from which user space names dst_who), not one record each.
 */
#define DROP_COUNT_KEYS 16384
struct drop_count_key {
	__u32 reason;
	__u32 netns;
	__u32 daddr[4];  /* network order; IPv4 in daddr[0] */
	__u16 family;    /* AF_INET, AF_INET6, 0 if not IP */
	__u16 flags;     /* DROP_FLAG_REASON when `reason` is the kernel's */
};

#endif
