/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The in-kernel filter of the network gadgets (drop, retrans, reset), so
 * that an event the user did not ask for never costs a ring-buffer record.
 *
 * Network events fire in softirq context, so the task filter of plumb.h
 * says nothing about them. They are narrowed instead by:
 *  - the network namespace of the packet's device or socket, looked up in
 *    plumb_netns (a hash map user space fills, and refills while the run
 *    goes on, so a pod that starts later is added);
 *  - the cgroup of the socket's creator, where the packet has a (full)
 *    socket, checked against plumb_filter's cgroup list;
 *  - ports and address prefixes on either side of the flow.
 * Each part is switched on in plumb_net_filter (read-only data: the
 * verifier prunes what is off). User space applies the complete filter
 * again; this part only saves work, so it never rejects an event user
 * space would keep.
 *
 * The rust mirror is `raw::RawNetFilter` (size checked against the
 * skeletons' BTF).
 */
#ifndef __PLUMB_NET_FILTER_H
#define __PLUMB_NET_FILTER_H

#define PLUMB_MAX_PORTS 8
#define PLUMB_MAX_CIDRS 16

/* Bits of a plumb_netns value. */
#define PLUMB_NETNS_ASKED 1 /* named by --netns */
#define PLUMB_NETNS_OWNER 2 /* holds a process of the selected pods/containers */

/* plumb_net_filter.owner */
#define PLUMB_OWNER_OFF 0
/* A PLUMB_NETNS_OWNER namespace, or a socket in plumb_filter's cgroups. */
#define PLUMB_OWNER_CGROUPS 1
/* A PLUMB_NETNS_OWNER namespace, or any full socket (the selected
 * cgroups did not fit plumb_filter: user space decides). */
#define PLUMB_OWNER_ANY_SOCKET 2

/* An address prefix: (addr & mask) == addr. Words in network order. */
struct plumb_cidr {
	__u32 addr[4];
	__u32 mask[4];
	__u32 family; /* AF_INET, AF_INET6 */
};

struct plumb_net_filter {
	__u32 netns;     /* the namespace must carry PLUMB_NETNS_ASKED */
	__u32 owner;     /* PLUMB_OWNER_* */
	__u32 sk_cgroup; /* the socket must be in plumb_filter's cgroups */
	__u32 n_ports;   /* either port of a TCP/UDP flow is one of these */
	__u16 ports[PLUMB_MAX_PORTS];
	__u32 n_cidrs;   /* either address is inside one of these */
	struct plumb_cidr cidrs[PLUMB_MAX_CIDRS];
};

const volatile struct plumb_net_filter plumb_net_filter = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);   /* netns inode */
	__type(value, __u32); /* PLUMB_NETNS_* bits */
} plumb_netns SEC(".maps");

/* Per CPU: [0] events the filter kept out, [1] records written. */
#define PLUMB_NET_FILTERED 0
#define PLUMB_NET_WRITTEN 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} plumb_net_counts SEC(".maps");

static __always_inline void plumb_net_count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&plumb_net_counts, &slot);

	if (n)
		*n += 1;
}

static __always_inline bool plumb_net_filter_on(void)
{
	return plumb_net_filter.netns || plumb_net_filter.owner || plumb_net_filter.sk_cgroup ||
	       plumb_net_filter.n_ports || plumb_net_filter.n_cidrs;
}

/* Is the socket's creator in one of plumb_filter's cgroup subtrees? */
static __always_inline bool plumb_sk_cgroup_wanted(const struct sock *sk)
{
	struct cgroup *cg;
	__u64 id;
	int level;

	if (!sk || !flow_fullsock(sk))
		return false;
	/* Read as a plain value: the ancestor below is at a variable offset. */
	cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	if (!cg)
		return false;
	id = BPF_CORE_READ(cg, kn, id);
	if (plumb_filter.cgroups_newer_than && id > plumb_filter.cgroups_newer_than)
		return true;
	level = BPF_CORE_READ(cg, level);
	for (int i = 0; i < PLUMB_MAX_CGROUPS; i++) {
		struct cgroup *a = NULL;
		__u32 l;

		if (i >= plumb_filter.n_cgroups)
			break;
		l = plumb_filter.cgroup_levels[i];
		if (l > (__u32)level)
			continue;
		if (l == (__u32)level) {
			if (id == plumb_filter.cgroup_ids[i])
				return true;
			continue;
		}
		/* cgroup->ancestors[l] is the ancestor at level l (Linux 5.19+). */
		if (!bpf_core_field_exists(cg->ancestors))
			continue;
		if (bpf_probe_read_kernel(&a, sizeof(a), &cg->ancestors[l & 0xff]) || !a)
			continue;
		if (BPF_CORE_READ(a, kn, id) == plumb_filter.cgroup_ids[i])
			return true;
	}
	return false;
}

/*
 * Is an event in namespace `netns`, with socket `sk` (NULL if none), one
 * the user asked for, as far as its owner goes? Cheap: one hash lookup,
 * and the socket's cgroup only where that decides. Counts what it rejects.
 */
static __always_inline bool plumb_owner_wanted(__u32 netns, const struct sock *sk)
{
	__u32 bits = 0, *v;

	if (!plumb_net_filter.netns && !plumb_net_filter.owner && !plumb_net_filter.sk_cgroup)
		return true;
	if (plumb_net_filter.netns || plumb_net_filter.owner) {
		v = bpf_map_lookup_elem(&plumb_netns, &netns);
		if (v)
			bits = *v;
	}
	if (plumb_net_filter.netns && !(bits & PLUMB_NETNS_ASKED))
		goto out;
	if (plumb_net_filter.sk_cgroup && !plumb_sk_cgroup_wanted(sk))
		goto out;
	if (plumb_net_filter.owner && !(bits & PLUMB_NETNS_OWNER)) {
		if (plumb_net_filter.owner == PLUMB_OWNER_ANY_SOCKET) {
			if (!sk || !flow_fullsock(sk))
				goto out;
		} else if (!plumb_sk_cgroup_wanted(sk)) {
			goto out;
		}
	}
	return true;
out:
	plumb_net_count(PLUMB_NET_FILTERED);
	return false;
}

static __always_inline bool plumb_addr_in(const __u32 *a, __u16 family, const struct plumb_cidr *c)
{
	if (c->family != family)
		return false;
	for (int w = 0; w < 4; w++)
		if ((a[w] & c->mask[w]) != c->addr[w])
			return false;
	return true;
}

/* Do the flow's ports and addresses match? Counts what it rejects. */
static __always_inline bool plumb_flow_wanted(const struct plumb_flow *f)
{
	if (plumb_net_filter.n_ports) {
		bool hit = false;

		if (!f->has_ports ||
		    (f->proto != PLUMB_IPPROTO_TCP && f->proto != PLUMB_IPPROTO_UDP))
			goto out;
		for (int i = 0; i < PLUMB_MAX_PORTS; i++) {
			if (i >= plumb_net_filter.n_ports)
				break;
			if (f->sport == plumb_net_filter.ports[i] ||
			    f->dport == plumb_net_filter.ports[i]) {
				hit = true;
				break;
			}
		}
		if (!hit)
			goto out;
	}
	if (plumb_net_filter.n_cidrs) {
		bool hit = false;

		for (int i = 0; i < PLUMB_MAX_CIDRS; i++) {
			if (i >= plumb_net_filter.n_cidrs)
				break;
			if (plumb_addr_in(f->saddr, f->family, &plumb_net_filter.cidrs[i]) ||
			    plumb_addr_in(f->daddr, f->family, &plumb_net_filter.cidrs[i])) {
				hit = true;
				break;
			}
		}
		if (!hit)
			goto out;
	}
	return true;
out:
	plumb_net_count(PLUMB_NET_FILTERED);
	return false;
}

/* Reserve a record of a network gadget; counts it, or its loss. */
static __always_inline void *plumb_net_reserve(__u64 size)
{
	void *rec = plumb_reserve(size);

	if (rec)
		plumb_net_count(PLUMB_NET_WRITTEN);
	return rec;
}

#endif /* __PLUMB_NET_FILTER_H */
