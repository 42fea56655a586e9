/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Shared between profile.bpf.c and its Rust owner (mirrored in lib.rs). */
#ifndef __PLUMB_PROFILE_H
#define __PLUMB_PROFILE_H

#define PROFILE_MAX_DEPTH 127

/* Aggregation key: one (thread, stack pair) as sampled. */
struct sample_key {
	__u64 cgroup_id;
	__u32 pid;   /* tgid */
	__u32 tid;
	__s32 kstack; /* stack id, or a negative errno: no kernel stack */
	__s32 ustack; /* stack id, or a negative errno: no user stack */
	__u32 gen;    /* how many times the process exec'd during the profile */
	__u32 pad;
	char comm[16];
};

/* A process seen for the first time: user space snapshots its mappings. */
struct proc_note {
	__u32 pid;
	__u32 gen;
};

/* Slots of the per-CPU `stats` array. */
enum profile_stat {
	STAT_SAMPLES = 0,      /* samples aggregated */
	STAT_IDLE = 1,         /* samples of the idle task, not aggregated */
	STAT_FILTERED = 2,     /* samples of tasks the filter left out */
	STAT_LOST_FULL = 3,    /* samples lost: the counts map was full */
	STAT_KSTACK_LOST = 4,  /* kernel stack not recorded (stack map full or collision) */
	STAT_USTACK_LOST = 5,  /* user stack not recorded (stack map full or collision) */
	STAT_NOTE_LOST = 6,    /* new-process notes the ring buffer could not take */
	STAT_MAX = 8,
};

#endif
