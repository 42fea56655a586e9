/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record layout of the exec gadget; mirrored in exec/mod.rs (size checked). */
#ifndef __PLUMB_EXEC_H
#define __PLUMB_EXEC_H

#define EXEC_FILENAME_LEN 256
#define EXEC_ARGS_LIMIT 4096            /* bytes of arguments kept */
#define EXEC_ARGS_SIZE (2 * EXEC_ARGS_LIMIT) /* room the verifier can prove */
#define EXEC_MAX_ARGS 64                /* argv pointers followed on failure */

struct exec_event {
	struct plumb_hdr hdr;
	__u64 start_ns;        /* when execve was entered */
	__u32 ppid;
	__s32 retval;          /* 0, or -errno */
	__u32 args_size;       /* bytes used in args: NUL-separated strings */
	__u32 args_truncated;  /* more arguments than kept */
	char filename[EXEC_FILENAME_LEN];
	char args[EXEC_ARGS_SIZE];
};

#endif
