/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Definitions shared by every plumb gadget's kernel side.
 *
 * Every record a gadget writes to its ring buffer starts with struct
 * plumb_hdr. The Rust side mirrors these structs in plumb-core's
 * `raw` module and checks their sizes against the skeletons' own types at
 * compile time, so a change here that is not mirrored fails the build.
 */
#ifndef __PLUMB_H
#define __PLUMB_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define PLUMB_COMM_LEN 16
#define PLUMB_MAX_CGROUPS 8

/* Record kinds; the first field of every record after the header. */
enum plumb_kind {
	PLUMB_KIND_EXEC = 1,
	PLUMB_KIND_OPEN = 2,
	PLUMB_KIND_TCP = 3,
	PLUMB_KIND_DROP = 4,
	PLUMB_KIND_RETRANS = 5,
	PLUMB_KIND_RESET = 6,
};

/*
 * Never read: puts enum plumb_kind into every object's BTF, so that each
 * gadget checks the Rust mirror (`raw::kind`) against it at build time.
 */
const volatile enum plumb_kind plumb_kind_btf = 0;

/* Common header: who and when. 48 bytes. */
struct plumb_hdr {
	__u64 ts_ns;      /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id;  /* cgroup v2 id of the task (0 when not in task context) */
	__u32 pid;        /* tgid */
	__u32 tid;
	__u32 uid;
	__u16 kind;       /* enum plumb_kind */
	__u16 flags;      /* PLUMB_HDR_* */
	char comm[PLUMB_COMM_LEN];
};

/* plumb_hdr.flags: raised where no task is meaningful (softirq); pid, tid,
 * uid and comm are then unknown, not zero. */
#define PLUMB_HDR_NO_TASK 1

/*
 * In-kernel pre-filter, written by user space before load (read-only data,
 * so the verifier prunes the branches that are switched off). User space
 * applies the complete filter again: this only saves work.
 */
struct plumb_filter {
	__u32 pid;        /* 0: any pid */
	__u32 uid;
	__u32 has_uid;
	__u32 n_cgroups;  /* 0: any cgroup */
	__u64 cgroup_ids[PLUMB_MAX_CGROUPS];
	__u32 cgroup_levels[PLUMB_MAX_CGROUPS];
	/*
	 * When non-zero, tasks in a cgroup whose id is above this also pass the
	 * cgroup check. cgroup ids only grow, so these are cgroups created after
	 * user space chose the targets (a pod or container that started since):
	 * user space decides whether they match.
	 */
	__u64 cgroups_newer_than;
	__u32 has_comm;
	char comm[PLUMB_COMM_LEN];
	/*
	 * 1: the kernel does not let these programs call
	 * bpf_get_current_ancestor_cgroup_id (Linux 5.10 offers it to cgroup
	 * programs only; user space probes for it): read the current task's
	 * cgroup ancestors from the task instead (plumb_ancestor_cgroup_id).
	 */
	__u32 ancestor_by_task;
};

const volatile struct plumb_filter plumb_filter = {};

/*
 * When non-zero, a record wakes the reader only once this many bytes are
 * waiting; user space polls with a short timeout for the rest. This batches
 * wake-ups on busy hosts (one per many events instead of one per event).
 */
const volatile __u32 plumb_wakeup_bytes = 0;

/* The ring buffer every gadget writes to; user space sizes it before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Records that could not be written (ring buffer full), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} plumb_lost SEC(".maps");

static __always_inline void plumb_count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&plumb_lost, &zero);

	if (n)
		*n += 1;
}

static __always_inline __u64 plumb_wakeup_flags(void)
{
	if (!plumb_wakeup_bytes)
		return 0;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= plumb_wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/* Reserve a record; counts the loss when the buffer is full. */
static __always_inline void *plumb_reserve(__u64 size)
{
	void *rec = bpf_ringbuf_reserve(&events, size, 0);

	if (!rec)
		plumb_count_lost();
	return rec;
}

static __always_inline void plumb_submit(void *rec)
{
	bpf_ringbuf_submit(rec, plumb_wakeup_flags());
}

/* Copy a finished record of `size` bytes; counts the loss on failure. */
static __always_inline void plumb_output(void *data, __u64 size)
{
	if (bpf_ringbuf_output(&events, data, size, plumb_wakeup_flags()))
		plumb_count_lost();
}

/* Linux 5.10 to 6.0 keep the ids of a cgroup's ancestors in the cgroup. */
struct cgroup___ancestor_ids {
	__u64 ancestor_ids[0];
} __attribute__((preserve_access_index));

/*
 * The id of the current task's cgroup-v2 ancestor at `level` (0 on a
 * level below its own), as bpf_get_current_ancestor_cgroup_id gives it;
 * read from the task where that helper is not offered. The branch not
 * taken is pruned by the verifier (plumb_filter is read-only data), so an
 * old kernel never sees the helper call.
 */
static __always_inline __u64 plumb_ancestor_cgroup_id(__u32 level)
{
	struct task_struct *task;
	struct cgroup *cg, *up = NULL;
	__u64 id = 0;

	if (!plumb_filter.ancestor_by_task)
		return bpf_get_current_ancestor_cgroup_id(level);
	task = (struct task_struct *)bpf_get_current_task();
	cg = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	if (!cg || level > (__u32)BPF_CORE_READ(cg, level) || level >= 256)
		return 0;
	if (bpf_core_field_exists(((struct cgroup___ancestor_ids *)0)->ancestor_ids)) {
		bpf_probe_read_kernel(&id, sizeof(id),
				      &((struct cgroup___ancestor_ids *)cg)->ancestor_ids[level]);
		return id;
	}
	bpf_probe_read_kernel(&up, sizeof(up), &cg->ancestors[level]);
	return up ? BPF_CORE_READ(up, kn, id) : 0;
}

/* Is the current task in one of the cgroups the user asked for? */
static __always_inline bool plumb_cgroup_wanted(void)
{
	if (!plumb_filter.n_cgroups && !plumb_filter.cgroups_newer_than)
		return true;
	if (plumb_filter.cgroups_newer_than &&
	    bpf_get_current_cgroup_id() > plumb_filter.cgroups_newer_than)
		return true;
	for (int i = 0; i < PLUMB_MAX_CGROUPS; i++) {
		if (i >= plumb_filter.n_cgroups)
			break;
		if (plumb_ancestor_cgroup_id(plumb_filter.cgroup_levels[i]) ==
		    plumb_filter.cgroup_ids[i])
			return true;
	}
	return false;
}

/* Does a command name equal the one the user asked for? */
static __always_inline bool plumb_comm_equal(const char *comm)
{
	for (int i = 0; i < PLUMB_COMM_LEN; i++) {
		if (comm[i] != plumb_filter.comm[i])
			return false;
		if (!comm[i])
			break;
	}
	return true;
}

/* Is the current task's command name the one the user asked for? */
static __always_inline bool plumb_comm_wanted(void)
{
	char comm[PLUMB_COMM_LEN];

	if (!plumb_filter.has_comm)
		return true;
	bpf_get_current_comm(comm, sizeof(comm));
	return plumb_comm_equal(comm);
}

/*
 * Is the current task one the user asked for, leaving its command name
 * aside? (exec checks the name at exit: exec changes it.)
 */
static __always_inline bool plumb_task_wanted_any_comm(void)
{
	if (plumb_filter.pid && (bpf_get_current_pid_tgid() >> 32) != plumb_filter.pid)
		return false;
	if (plumb_filter.has_uid && (__u32)bpf_get_current_uid_gid() != plumb_filter.uid)
		return false;
	return plumb_cgroup_wanted();
}

/* Is the current task one the user asked for? */
static __always_inline bool plumb_task_wanted(void)
{
	return plumb_task_wanted_any_comm() && plumb_comm_wanted();
}

/* Is any part of the task filter switched on? */
static __always_inline bool plumb_task_filter_active(void)
{
	return plumb_filter.pid || plumb_filter.has_uid || plumb_filter.n_cgroups ||
	       plumb_filter.cgroups_newer_than || plumb_filter.has_comm;
}

/* Fill the header from the current task. */
static __always_inline void plumb_fill_hdr(struct plumb_hdr *h, __u16 kind)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	h->ts_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->uid = (__u32)bpf_get_current_uid_gid();
	h->kind = kind;
	h->flags = 0;
	bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* Fill the header for a record raised where no task is meaningful (softirq). */
static __always_inline void plumb_fill_hdr_notask(struct plumb_hdr *h, __u16 kind)
{
	__builtin_memset(h, 0, sizeof(*h));
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->kind = kind;
	h->flags = PLUMB_HDR_NO_TASK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#endif /* __PLUMB_H */
