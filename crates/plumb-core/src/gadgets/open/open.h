/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record layout of the open gadget; mirrored in open/mod.rs (size checked). */
#ifndef __PLUMB_OPEN_H
#define __PLUMB_OPEN_H

#define OPEN_PATH_LEN 256

enum open_syscall { OPEN_SYS_OPEN = 0, OPEN_SYS_OPENAT = 1, OPEN_SYS_OPENAT2 = 2 };

struct open_event {
	struct plumb_hdr hdr;
	__s64 ret;          /* fd, or -errno */
	__u64 flags;
	__u32 mode;
	__u32 syscall;      /* enum open_syscall */
	__s32 dirfd;        /* AT_FDCWD (-100) for plain paths */
	__u32 path_len;     /* bytes in path including the NUL; 0 if unreadable */
	char path[OPEN_PATH_LEN];
};

/* Present in a map so the skeleton carries its layout for the size check. */
struct open_start {
	const char *path;
	__u64 flags;
	__u32 mode;
	__u32 syscall;
	__s32 dirfd;
	__u32 _pad;
};

#endif
