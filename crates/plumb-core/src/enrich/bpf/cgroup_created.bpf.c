// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * The path of every cgroup-v2 directory made while plumb runs, kept by id.
 *
 * A container's cgroup goes when the container ends. An event of a
 * short-lived container, read by user space a moment later, then has an id
 * the kernel can no longer turn into a path (open_by_handle_at fails), and
 * so no container and no pod. This program remembers each new cgroup's path
 * when it is made; user space asks the map only when the kernel no longer
 * knows the id. The map is an LRU: the oldest paths go first.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define PATH_LEN 256

struct cgroup_path {
	char path[PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct cgroup_path);
} paths SEC(".maps");

/* Scratch space: the value is too big for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cgroup_path);
} scratch SEC(".maps");

SEC("tp/cgroup/cgroup_mkdir")
int plumb_cgroup_mkdir(struct trace_event_raw_cgroup *ctx)
{
	struct cgroup_path *p;
	__u32 zero = 0;
	__u64 id;

	/* Hierarchy 0 is the unified (v2) one, whose ids BPF programs see. */
	if (ctx->root != 0)
		return 0;
	p = bpf_map_lookup_elem(&scratch, &zero);
	if (!p)
		return 0;
	if (bpf_probe_read_kernel_str(p->path, sizeof(p->path),
				      (void *)ctx + (ctx->__data_loc_path & 0xffff)) < 0)
		return 0;
	id = ctx->id;
	bpf_map_update_elem(&paths, &id, p, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
