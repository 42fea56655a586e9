// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * CPU profiler: a perf_event program on every CPU's software clock.
 *
 * Samples are aggregated here, not streamed: each sample increments a count
 * keyed by thread, process image and the ids of its kernel and user stacks.
 * User space reads the maps once at the end. The only records streamed are
 * notes of process images seen for the first time (or that mapped new code
 * since), so user space can capture their memory mappings while they still
 * exist: a process that exits before the end is still symbolized.
 */
#include "plumb.h"
#include "profile.h"

#define PROT_EXEC 0x4
#define EFAULT 14

/*
 * Never read: it puts struct proc_note (which only travels through the ring
 * buffer) into the skeleton's types, so the Rust mirror's size is checked.
 */
const volatile struct proc_note proc_note_layout = {};

/* Which stacks to take (set before load). */
const volatile __u32 want_kernel = 1;
const volatile __u32 want_user = 1;

/*
 * The tgid of the process running the profiler (plumb, the agent): its own
 * threads are left out and counted as filtered. 0 keeps them.
 */
const volatile __u32 exclude_tgid = 0;

/*
 * bpf_get_current_task_btf() is there (5.11): the sample reads the task
 * with plain loads, not a helper call per field. On older kernels the
 * branch is pruned by the verifier, which never sees the helper.
 */
const volatile __u32 task_btf = 0;

/*
 * The code segment of the interrupted context. The regs of a perf_event
 * program's context are the user-visible pt_regs (uapi asm/ptrace.h), whose
 * x86-64 layout is ABI: read at that fixed place, not through vmlinux's
 * pt_regs, whose name for the word changed (`cs`, then `csx` with FRED in
 * 6.9) and whose CO-RE fallback the verifier refuses on a context.
 */
struct user_pt_regs_x86_64 {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

static __always_inline __u64 interrupted_cs(struct bpf_perf_event_data *ctx)
{
	return ((const struct user_pt_regs_x86_64 *)ctx)->cs;
}

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

/*
 * The image last announced to user space, per process. A sample whose image
 * differs (a reused pid, an exec) is announced again; deleting an entry (new
 * executable code mapped) asks for a new note too. An eviction only costs a
 * duplicate note.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct image_id);
} seen SEC(".maps");

/*
 * The image each process runs now, as far as this program saw it (samples
 * and execs). User space checks it before it trusts /proc/PID/maps for an
 * image: after an exec, /proc shows the new image's mappings. A missing
 * entry (evicted) means "unknown", never a wrong image.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct image_id);
} latest SEC(".maps");

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

static __always_inline void current_image(struct image_id *img)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	img->start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	img->exec_id = (__u32)BPF_CORE_READ(task, self_exec_id);
	img->pad = 0;
}

/* The sample's image and cgroup id, read the cheapest way the kernel allows. */
static __always_inline __u64 sample_image(struct image_id *img)
{
	if (task_btf) {
		struct task_struct *task = bpf_get_current_task_btf();

		img->start_ns = task->group_leader->start_boottime;
		img->exec_id = (__u32)task->self_exec_id;
		img->pad = 0;
		return task->cgroups->dfl_cgrp->kn->id;
	}
	current_image(img);
	return bpf_get_current_cgroup_id();
}

SEC("tp/sched/sched_process_exec")
int plumb_profile_exec(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct image_id img;

	current_image(&img);
	bpf_map_update_elem(&latest, &pid, &img, BPF_ANY);
	return 0;
}

/* dlopen() and JITs map new code: announce the process again. */
SEC("tp/syscalls/sys_enter_mmap")
int plumb_profile_mmap(struct trace_event_raw_sys_enter *ctx)
{
	__u32 pid;

	if (!(ctx->args[2] & PROT_EXEC))
		return 0;
	pid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&seen, &pid);
	return 0;
}

SEC("perf_event")
int plumb_profile_sample(struct bpf_perf_event_data *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	struct sample_key key = {};
	struct image_id *was;
	__u64 one = 1, *n;

	if ((__u32)pid_tgid == 0) {
		stat_inc(STAT_IDLE);
		return 0;
	}
	if ((exclude_tgid && pid == exclude_tgid) || !plumb_task_wanted()) {
		stat_inc(STAT_FILTERED);
		return 0;
	}
	key.pid = pid;
	key.tid = (__u32)pid_tgid;
	key.cgroup_id = sample_image(&key.image);
	bpf_get_current_comm(key.comm, sizeof(key.comm));

	key.kstack = -1;
	key.ustack = -1;
	/*
	 * A negative id is kept in the key: -EFAULT means there was no stack to
	 * take (interrupted in user mode; a kernel thread), anything else that
	 * the stack could not be recorded, which user space counts.
	 */
	/*
	 * Interrupted in user mode (the lowest two bits of CS are the
	 * privilege level, 3 for user): there is no kernel stack to take, and
	 * the helper would only find that out (-EFAULT) at a cost.
	 */
	if (want_kernel)
		key.kstack = (interrupted_cs(ctx) & 3) == 3 ? -EFAULT : bpf_get_stackid(ctx, &stacks, 0);
	if (want_user)
		key.ustack = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);

	n = bpf_map_lookup_elem(&counts, &key);
	if (n) {
		/*
		 * A key counted before: its image was checked against `seen`
		 * when the key was new. Code mapped since (dlopen) gives new
		 * stacks, hence new keys, which are checked again. A plain
		 * add: the key names the thread, and a thread is sampled on
		 * the CPU it runs on, so no two CPUs count one key at once.
		 */
		*n += 1;
		stat_inc(STAT_SAMPLES);
		return 0;
	}
	if (bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST)) {
		/* Another CPU may have inserted the same key meanwhile. */
		n = bpf_map_lookup_elem(&counts, &key);
		if (!n) {
			stat_inc(STAT_LOST_FULL);
			return 0;
		}
		__sync_fetch_and_add(n, 1);
	}
	stat_inc(STAT_SAMPLES);

	if (!want_user)
		return 0;
	was = bpf_map_lookup_elem(&seen, &pid);
	if (!was || was->start_ns != key.image.start_ns || was->exec_id != key.image.exec_id) {
		struct proc_note note = {
			.image = key.image,
			.cgroup_id = key.cgroup_id,
			.pid = pid,
			.tid = key.tid,
		};

		__builtin_memcpy(note.comm, key.comm, sizeof(note.comm));
		bpf_map_update_elem(&seen, &pid, &key.image, BPF_ANY);
		bpf_map_update_elem(&latest, &pid, &key.image, BPF_ANY);
		if (bpf_ringbuf_output(&events, &note, sizeof(note), 0))
			stat_inc(STAT_NOTE_LOST);
	}
	return 0;
}
