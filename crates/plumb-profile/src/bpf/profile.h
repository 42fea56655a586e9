/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Shared between profile.bpf.c and its Rust owner (mirrored in sampler.rs). */
#ifndef __PLUMB_PROFILE_H
#define __PLUMB_PROFILE_H

/* Frames kept per stack; deeper stacks lose their outermost frames. */
#define PROFILE_MAX_DEPTH 127

/*
 * Which image of which process a sample ran: a pid alone is not enough,
 * because pids are reused and exec replaces a process's mappings.
 */
struct image_id {
	__u64 start_ns; /* group leader's start_boottime: /proc/PID/stat starttime, in ns */
	__u32 exec_id;  /* task->self_exec_id (low bits): every exec bumps it */
	__u32 pad;
};

/* Aggregation key: one (thread, stack pair) as sampled. 56 bytes. */
struct sample_key {
	__u64 cgroup_id;
	struct image_id image;
	__u32 pid;    /* tgid */
	__u32 tid;
	__s32 kstack; /* stack id, or a negative errno: no kernel stack */
	__s32 ustack; /* stack id, or a negative errno: no user stack */
	char comm[16];
};

/*
 * A process image sampled for the first time, or again after it mapped new
 * executable code: user space snapshots its mappings (and checks the
 * user-space part of the filter on the comm and cgroup first). 48 bytes.
 */
struct proc_note {
	struct image_id image;
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	char comm[16];
};

/* Slots of the per-CPU `stats` array. */
enum profile_stat {
	STAT_SAMPLES = 0,      /* samples aggregated */
	STAT_IDLE = 1,         /* samples of the idle task, not aggregated */
	STAT_FILTERED = 2,     /* samples of tasks the filter left out */
	STAT_LOST_FULL = 3,    /* samples lost: the counts map was full */
	STAT_NOTE_LOST = 4,    /* process notes the ring buffer could not take */
	STAT_MAX = 5,
};

#endif
