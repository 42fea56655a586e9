// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * exec: every execve/execveat, successful or not.
 *
 * sys_enter remembers the caller and the user pointers; sys_exit writes the
 * record. On success the old address space is gone, so the arguments are read
 * from the new one (mm->arg_start..arg_end, one copy); on failure they are read
 * through the saved argv pointers.
 *
 * The enter -> exit state is keyed by thread id. When a thread other than
 * the leader execs, the kernel gives it the leader's id during the exec;
 * sched_process_exec (which carries both ids) moves the state along.
 */
#include "plumb.h"
#include "exec.h"

struct exec_start {
	const char *const *argv;
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 uid;
	__u32 _pad;
	char filename[EXEC_FILENAME_LEN];
};

/* A plain hash, not an LRU: a full map fails the insert, which is counted
 * as a lost event, where an LRU would evict another exec silently. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, struct exec_start);
} exec_starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_event);
} exec_scratch SEC(".maps");

/* Zero-initialised value used to create map entries without a stack copy. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_start);
} start_scratch SEC(".maps");

static __always_inline int on_enter(const char *filename, const char *const *argv)
{
	__u32 zero = 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_start *s;

	/* The command name is checked at exit: exec changes it. */
	if (!plumb_task_wanted_any_comm())
		return 0;
	s = bpf_map_lookup_elem(&start_scratch, &zero);
	if (!s)
		return 0;
	s->argv = argv;
	s->ts_ns = bpf_ktime_get_boot_ns();
	s->cgroup_id = bpf_get_current_cgroup_id();
	s->uid = (__u32)bpf_get_current_uid_gid();
	if (bpf_probe_read_user_str(s->filename, sizeof(s->filename), filename) < 0)
		s->filename[0] = 0;
	if (bpf_map_update_elem(&exec_starts, &tid, s, BPF_ANY))
		plumb_count_lost();
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int exec_enter(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter((const char *)ctx->args[0], (const char *const *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int execat_enter(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter((const char *)ctx->args[1], (const char *const *)ctx->args[2]);
}

/* Arguments of a successful exec: one copy from the new mm. */
static __always_inline void args_from_mm(struct exec_event *e)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	unsigned long len = end > start ? end - start : 0;

	if (len > EXEC_ARGS_LIMIT) {
		len = EXEC_ARGS_LIMIT;
		e->args_truncated = 1;
	}
	len &= EXEC_ARGS_SIZE - 1;
	if (len && bpf_probe_read_user(e->args, len, (void *)start) == 0)
		e->args_size = len;
}

/* Arguments of a failed exec: through the caller's argv, which still exists. */
static __always_inline void args_from_argv(struct exec_event *e, const char *const *argv)
{
	__u32 off = 0;

	for (int i = 0; i < EXEC_MAX_ARGS; i++) {
		const char *arg = NULL;
		long n;

		if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) || !arg)
			goto done;
		if (off >= EXEC_ARGS_LIMIT) {
			e->args_truncated = 1;
			goto done;
		}
		n = bpf_probe_read_user_str(&e->args[off & (EXEC_ARGS_LIMIT - 1)], EXEC_ARGS_LIMIT, arg);
		if (n <= 0)
			goto done;
		off += n;
		/* The last string kept ran past the limit: it was cut. */
		if (off > EXEC_ARGS_LIMIT) {
			e->args_truncated = 1;
			goto done;
		}
	}
	/* More pointers than we follow. */
	e->args_truncated = 1;
done:
	e->args_size = off > EXEC_ARGS_LIMIT ? EXEC_ARGS_LIMIT : off;
}

static __always_inline int on_exit(long ret)
{
	__u32 zero = 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_start *s = bpf_map_lookup_elem(&exec_starts, &tid);
	struct exec_event *e;
	struct task_struct *task;
	__u64 size;

	if (!s)
		return 0;
	if (!plumb_comm_wanted()) {
		bpf_map_delete_elem(&exec_starts, &tid);
		return 0;
	}
	e = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!e) {
		bpf_map_delete_elem(&exec_starts, &tid);
		return 0;
	}
	plumb_fill_hdr(&e->hdr, PLUMB_KIND_EXEC);
	/* Identity as it was when exec was called. */
	e->hdr.cgroup_id = s->cgroup_id;
	e->hdr.uid = s->uid;
	task = (struct task_struct *)bpf_get_current_task();
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->retval = ret;
	e->args_size = 0;
	e->args_truncated = 0;
	e->start_ns = s->ts_ns;
	__builtin_memcpy(e->filename, s->filename, sizeof(e->filename));
	if (ret == 0)
		args_from_mm(e);
	else
		args_from_argv(e, s->argv);
	bpf_map_delete_elem(&exec_starts, &tid);

	size = offsetof(struct exec_event, args) + e->args_size;
	if (size > sizeof(*e))
		size = sizeof(*e);
	plumb_output(e, size);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int exec_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int execat_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

/*
 * A successful exec by a thread other than the leader: the thread now has
 * the leader's id, so the state saved under its old id moves to the new one.
 */
SEC("tracepoint/sched/sched_process_exec")
int exec_rekey(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 old = ctx->old_pid, now = ctx->pid;
	struct exec_start *s;

	if (old == now)
		return 0;
	s = bpf_map_lookup_elem(&exec_starts, &old);
	if (!s)
		return 0;
	if (bpf_map_update_elem(&exec_starts, &now, s, BPF_ANY))
		plumb_count_lost();
	bpf_map_delete_elem(&exec_starts, &old);
	return 0;
}
