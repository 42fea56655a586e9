// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * A tracepoint counter with a struct key (pid, comm, flags) and a per-CPU
 * twin and a twin without BTF, limited to one process by a read-only
 * global plumb sets from --pid; a log2 histogram of the byte counts asked
 * of write(2); and a ring buffer and a perf buffer record per write of
 * exactly marker_len bytes.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

typedef __u32 plumb_log2;

const volatile __u32 plumb_target_pid = 0;
const volatile __u64 marker_len = 0;

struct write_key {
	__u32 pid;
	char comm[16];
	__u32 fd;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct write_key);
	__type(value, __u64);
} writes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} writes_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__type(key, plumb_log2);
	__type(value, __u64);
} write_sizes SEC(".maps");

struct write_event {
	__u32 pid;
	__u32 fd;
	__u64 count;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} events SEC(".maps");

/* No BTF for key or value (sizes only): shown as bytes, with a warning. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u64));
} raw_writes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_events SEC(".maps");

/* Not decoded by plumb run: it says so. */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 8 * sizeof(__u64));
} stacks SEC(".maps");

/* Name the record types of the ring buffer and the perf buffer. */
struct write_event *events_record;
struct write_event *perf_events_record;

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;
	for (int i = 0; i < 64; i++) {
		if (v < 2)
			break;
		v >>= 1;
		r++;
	}
	return r;
}

SEC("tracepoint/syscalls/sys_enter_write")
int on_write(struct trace_event_raw_sys_enter *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct write_key k = {};
	__u64 one = 1, *n, count = ctx->args[2];
	__u32 b;

	if (plumb_target_pid && pid != plumb_target_pid)
		return 0;
	k.pid = pid;
	k.fd = ctx->args[0];
	bpf_get_current_comm(k.comm, sizeof(k.comm));
	n = bpf_map_lookup_elem(&writes, &k);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&writes, &k, &one, BPF_NOEXIST);

	n = bpf_map_lookup_elem(&writes_percpu, &pid);
	if (n)
		*n += 1;
	else
		bpf_map_update_elem(&writes_percpu, &pid, &one, BPF_NOEXIST);

	b = log2_u64(count);
	n = bpf_map_lookup_elem(&write_sizes, &b);
	if (n)
		__sync_fetch_and_add(n, 1);

	n = bpf_map_lookup_elem(&raw_writes, &pid);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&raw_writes, &pid, &one, BPF_NOEXIST);

	if (marker_len && count == marker_len) {
		struct write_event ev = { .pid = pid, .fd = k.fd, .count = count };
		__builtin_memcpy(ev.comm, k.comm, sizeof(ev.comm));
		struct write_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (e) {
			__builtin_memcpy(e, &ev, sizeof(ev));
			bpf_ringbuf_submit(e, 0);
		}
		bpf_perf_event_output(ctx, &perf_events, BPF_F_CURRENT_CPU, &ev, sizeof(ev));
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
