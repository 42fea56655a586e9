// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* (The file is named openat, not open, so that its skeleton type is not
 * called OpenSkel, the name of a libbpf-rs trait.) */
/*
 * open: open, openat and openat2 with their result.
 *
 * sys_enter keeps the path pointer and flags; sys_exit reads the path (the
 * kernel has faulted the page in by then, so the read succeeds where a read
 * at entry could fail) and writes the record with the fd or the error.
 */
#include "plumb.h"
#include "open.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, struct open_start);
} open_starts SEC(".maps");

/* Never written: gives the skeleton the record's layout for a size check. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct open_event);
} open_layout SEC(".maps");

static __always_inline int on_enter(int dirfd, const char *path, __u64 flags, __u32 mode, __u32 sys)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct open_start s = {};

	if (!plumb_task_wanted())
		return 0;
	s.path = path;
	s.flags = flags;
	s.mode = mode;
	s.syscall = sys;
	s.dirfd = dirfd;
	/* A full map loses this open: count it. */
	if (bpf_map_update_elem(&open_starts, &tid, &s, BPF_ANY))
		plumb_count_lost();
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_open")
int open_enter(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(-100, (const char *)ctx->args[0], ctx->args[1], ctx->args[2], OPEN_SYS_OPEN);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int openat_enter(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx->args[0], (const char *)ctx->args[1], ctx->args[2], ctx->args[3],
			OPEN_SYS_OPENAT);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int openat2_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return on_enter(ctx->args[0], (const char *)ctx->args[1], how.flags, how.mode,
			OPEN_SYS_OPENAT2);
}

static __always_inline int on_exit(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct open_start *s = bpf_map_lookup_elem(&open_starts, &tid);
	struct open_event *e;
	long n;

	if (!s)
		return 0;
	e = plumb_reserve(sizeof(*e));
	if (!e) {
		bpf_map_delete_elem(&open_starts, &tid);
		return 0;
	}
	plumb_fill_hdr(&e->hdr, PLUMB_KIND_OPEN);
	e->ret = ret;
	e->flags = s->flags;
	e->mode = s->mode;
	e->syscall = s->syscall;
	e->dirfd = s->dirfd;
	n = bpf_probe_read_user_str(e->path, sizeof(e->path), s->path);
	e->path_len = n > 0 ? n : 0;
	bpf_map_delete_elem(&open_starts, &tid);
	plumb_submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_open")
int open_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int openat_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int openat2_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}
