// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcp: connect, accept, close (with duration) and failed connects.
 *
 * State changes come from tp_btf/inet_sock_set_state, which often fires in
 * softirq context where the current task is unrelated. So a socket's owner
 * is recorded where the kernel runs in the owner's context: connect() (the
 * CLOSE -> SYN_SENT change) and accept() (the syscall's exit, which returns
 * the new socket's fd). Records raised later carry that owner, never the
 * interrupted task.
 *
 * Owners live in an LRU map so that sockets we never see close cannot fill
 * it. An eviction would lose that socket's later events silently, so
 * inserts of new keys and deletes are counted: user space reports
 * inserted - deleted - entries left as lost.
 */
#include "plumb.h"
#include "tcp.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tcp_owner);
} tcp_owners SEC(".maps");

/* [0]: owners inserted under a new key, [1]: owners deleted. Per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} tcp_owner_churn SEC(".maps");

static __always_inline void churn(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&tcp_owner_churn, &slot);

	if (n)
		*n += 1;
}

/* Insert or replace an owner, counting new keys. */
static __always_inline void owner_put(__u64 *key, struct tcp_owner *o)
{
	if (!bpf_map_update_elem(&tcp_owners, key, o, BPF_NOEXIST))
		churn(0);
	else if (bpf_map_update_elem(&tcp_owners, key, o, BPF_EXIST))
		plumb_count_lost();
}

static __always_inline void owner_del(__u64 *key)
{
	if (!bpf_map_delete_elem(&tcp_owners, key))
		churn(1);
}

/* Never written: gives the skeleton the record's layout for a size check. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcp_event);
} tcp_layout SEC(".maps");

static __always_inline void own_current(struct tcp_owner *o)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	o->cgroup_id = bpf_get_current_cgroup_id();
	o->pid = pid_tgid >> 32;
	o->tid = (__u32)pid_tgid;
	o->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

static __always_inline void emit(const struct sock *sk, const struct tcp_owner *o, __u8 ev, __s32 error)
{
	struct tcp_event *e = plumb_reserve(sizeof(*e));
	__u16 family;

	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.ts_ns = bpf_ktime_get_boot_ns();
	e->hdr.kind = PLUMB_KIND_TCP;
	e->hdr.cgroup_id = o->cgroup_id;
	e->hdr.pid = o->pid;
	e->hdr.tid = o->tid;
	e->hdr.uid = o->uid;
	__builtin_memcpy(e->hdr.comm, o->comm, sizeof(e->hdr.comm));
	e->event = ev;
	e->active = o->active;
	e->error = error;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->family = family;
	/* inet_sport, not skc_num: the bound port is released before CLOSE. */
	e->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (family == AF_INET) {
		e->saddr[0] = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		e->daddr[0] = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32);
	}
	if (ev == TCP_EV_CLOSE) {
		const struct tcp_sock *tp = (const struct tcp_sock *)sk;

		if (o->start_ns)
			e->duration_ns = e->hdr.ts_ns - o->start_ns;
		e->rx_bytes = BPF_CORE_READ(tp, bytes_received);
		e->tx_bytes = BPF_CORE_READ(tp, bytes_acked);
	}
	plumb_submit(e);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	struct tcp_owner *o;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	if (newstate == TCP_SYN_SENT) {
		/* connect(): the caller's own context. */
		struct tcp_owner n = {};

		if (!plumb_task_wanted())
			return 0;
		own_current(&n);
		n.active = 1;
		owner_put(&key, &n);
		return 0;
	}
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* Passive open: no owner until someone accepts it. */
		struct tcp_owner n = {};

		n.start_ns = bpf_ktime_get_boot_ns();
		owner_put(&key, &n);
		return 0;
	}

	o = bpf_map_lookup_elem(&tcp_owners, &key);
	if (!o)
		return 0;
	if (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) {
		o->start_ns = bpf_ktime_get_boot_ns();
		emit(sk, o, TCP_EV_CONNECT, 0);
		return 0;
	}
	if (newstate != TCP_CLOSE)
		return 0;
	if (oldstate == TCP_SYN_SENT) {
		emit(sk, o, TCP_EV_CONNECT_FAILED, BPF_CORE_READ(sk, sk_err));
	} else if (o->pid || !plumb_task_filter_active()) {
		emit(sk, o, TCP_EV_CLOSE, 0);
	}
	owner_del(&key);
	return 0;
}

/* accept() returned fd `ret`: find its socket through the fd table. */
static __always_inline int on_accept_exit(long ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds;
	struct file *f = NULL;
	struct socket *sock;
	struct sock *sk;
	struct tcp_owner *o, n = {};
	__u64 key;

	if (ret < 0)
		return 0;
	fds = BPF_CORE_READ(task, files, fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[ret]) || !f)
		return 0;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	key = (__u64)sk;
	o = bpf_map_lookup_elem(&tcp_owners, &key);
	if (!plumb_task_wanted()) {
		if (o)
			owner_del(&key);
		return 0;
	}
	if (!o) {
		/* Established before we started: owner known, duration not. */
		owner_put(&key, &n);
		o = bpf_map_lookup_elem(&tcp_owners, &key);
		if (!o)
			return 0;
	}
	own_current(o);
	o->active = 0;
	emit(sk, o, TCP_EV_ACCEPT, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}
