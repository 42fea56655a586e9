// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * CPU profiler: a perf_event program on every CPU's software clock.
 *
 * Samples are aggregated here, not streamed: each sample increments a count
 * keyed by thread and the ids of its kernel and user stacks. User space reads
 * the maps once at the end. The only records streamed are notes of processes
 * seen for the first time, so user space can capture their memory mappings
 * while they still exist (a process that exits before the end is still
 * symbolized).
 */
#include "plumb.h"
#include "profile.h"

/* Which stacks to take (set before load). */
const volatile __u32 want_kernel = 1;
const volatile __u32 want_user = 1;

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PROFILE_MAX_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sample_key);
	__type(value, __u64);
} counts SEC(".maps");

/* Processes already announced to user space. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} seen SEC(".maps");

/*
 * Processes that exec'd during the profile, and how often: a new image
 * means new mappings, so samples and notes carry this generation and user
 * space keeps one set of mappings per (process, generation).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} gens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &slot);

	if (n)
		*n += 1;
}

SEC("tp/sched/sched_process_exec")
int plumb_profile_exec(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u32 *g = bpf_map_lookup_elem(&gens, &pid);
	__u32 next = g ? *g + 1 : 1;

	bpf_map_update_elem(&gens, &pid, &next, BPF_ANY);
	/* Announce the new image on its next sample. */
	bpf_map_delete_elem(&seen, &pid);
	return 0;
}

SEC("perf_event")
int plumb_profile_sample(struct bpf_perf_event_data *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	struct sample_key key = {};
	__u64 one = 1, *n;
	__u32 *gen;
	__u8 yes = 1;

	if ((__u32)pid_tgid == 0) {
		stat_inc(STAT_IDLE);
		return 0;
	}
	if (!plumb_task_wanted()) {
		stat_inc(STAT_FILTERED);
		return 0;
	}
	key.pid = pid;
	key.tid = (__u32)pid_tgid;
	key.cgroup_id = bpf_get_current_cgroup_id();
	gen = bpf_map_lookup_elem(&gens, &pid);
	key.gen = gen ? *gen : 0;
	bpf_get_current_comm(key.comm, sizeof(key.comm));

	key.kstack = -1;
	key.ustack = -1;
	if (want_kernel) {
		key.kstack = bpf_get_stackid(ctx, &stacks, 0);
		/* -EFAULT: interrupted in user mode, no kernel stack to take. */
		if (key.kstack < 0 && key.kstack != -14)
			stat_inc(STAT_KSTACK_LOST);
	}
	if (want_user) {
		key.ustack = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
		/* -EFAULT: a kernel thread, which has no user stack. */
		if (key.ustack < 0 && key.ustack != -14)
			stat_inc(STAT_USTACK_LOST);
	}

	n = bpf_map_lookup_elem(&counts, &key);
	if (n) {
		__sync_fetch_and_add(n, 1);
	} else if (bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST)) {
		/* Another CPU may have inserted the same key meanwhile. */
		n = bpf_map_lookup_elem(&counts, &key);
		if (!n) {
			stat_inc(STAT_LOST_FULL);
			return 0;
		}
		__sync_fetch_and_add(n, 1);
	}
	stat_inc(STAT_SAMPLES);

	if (want_user && !bpf_map_lookup_elem(&seen, &pid)) {
		struct proc_note note = { .pid = pid, .gen = key.gen };

		bpf_map_update_elem(&seen, &pid, &yes, BPF_ANY);
		if (bpf_ringbuf_output(&events, &note, sizeof(note), 0))
			stat_inc(STAT_NOTE_LOST);
	}
	return 0;
}
