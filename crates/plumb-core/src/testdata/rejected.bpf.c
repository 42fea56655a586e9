// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * A program the verifier must refuse, for the test of load errors: it
 * writes through a hash map lookup's result without checking it for NULL.
 * Built like the gadgets, loaded only by that test.
 */
#include "plumb.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int rejected(void *ctx)
{
	__u32 key = bpf_get_smp_processor_id();
	__u64 *n = bpf_map_lookup_elem(&counts, &key);

	*n += 1;
	return 0;
}
