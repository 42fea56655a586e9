// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * BTF fixture: Linux 6.9, where tcp_send_reset became an event of its own
 * (struct trace_event_raw_tcp_send_reset) that also fires for RSTs sent
 * without a socket, but has no reason argument yet (6.10).
 * Only the object's BTF is used. No headers: they would define these types.
 */
struct sk_buff;
struct sock;

typedef void (*btf_trace_tcp_send_reset)(void *, const struct sock *, const struct sk_buff *);
typedef void (*btf_trace_tcp_receive_reset)(void *, struct sock *);

struct trace_event_raw_tcp_send_reset {
	int fixture;
};

btf_trace_tcp_send_reset fixture_send_reset;
btf_trace_tcp_receive_reset fixture_receive_reset;
struct trace_event_raw_tcp_send_reset fixture_event;

char LICENSE[] __attribute__((section("license"), used)) = "Dual BSD/GPL";
