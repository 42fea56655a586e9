#!/usr/bin/env bash
# The network lab for humans. The plumb-netlab crate's own binary builds the
# lab the tests build: names and subnets unique on this machine (parallel
# labs never collide), IPv4 and IPv6 (ULA) per pod, no route out, a second
# node with --remote-pods, and with --k8s a process per pod in a
# kubepods-style cgroup so tracers name the pod UID and container id. It
# prints the pods and holds the lab until Ctrl-C or SIGTERM, then tears it
# down; what a killed run left behind is removed by the next start.
#
#   sudo scripts/netlab.sh up [--pods N] [--remote-pods K] [--k8s]
#   sudo scripts/netlab.sh sh NETNS CMD...          # a command inside a lab namespace
#   sudo scripts/netlab.sh drop NETNS PORT [tcp|udp] # iptables DROP for PORT in NETNS
#   sudo scripts/netlab.sh drop6 NETNS PORT         # the same with ip6tables (TCP)
#   sudo scripts/netlab.sh drop-icmp NETNS          # drop ICMP echo requests in NETNS
#   sudo scripts/netlab.sh lossy NETNS PORT PROB    # drop TCP/PORT at random (0 < PROB < 1)
#   sudo scripts/netlab.sh down                     # remove labs whose owner is gone
#
# NETNS is a name printed by `up` (pl<id>-<tag>-<pod>). Commands enter it
# with nsenter --net= (not ip netns exec, which would hide tracefs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/plumb-netlab"

lab_ns() {
    case "$1" in
    pl[0-9]*-*) [ -e "/run/netns/$1" ] || { echo "no lab namespace $1" >&2; exit 2; } ;;
    *) echo "$1 is not a lab namespace (pl<id>-...)" >&2; exit 2 ;;
    esac
}
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
up | down)
    if [ ! -x "$bin" ] || [ -n "$(find "$root/crates/plumb-netlab" -newer "$bin" -name '*.rs' -print -quit)" ]; then
        (cd "$root" && cargo build --release -q -p plumb-netlab --bin plumb-netlab)
    fi
    if [ "$cmd" = up ]; then exec "$bin" "$@"; else exec "$bin" --clean; fi
    ;;
sh)
    lab_ns "$1"; ns=$1; shift
    in_ns "$ns" "$@"
    ;;
drop)
    lab_ns "$1"
    in_ns "$1" iptables -w -A INPUT -p "${3:-tcp}" --dport "$2" -j DROP
    ;;
drop6)
    lab_ns "$1"
    in_ns "$1" ip6tables -w -A INPUT -p tcp --dport "$2" -j DROP
    ;;
drop-icmp)
    lab_ns "$1"
    in_ns "$1" iptables -w -A INPUT -p icmp --icmp-type echo-request -j DROP
    ;;
lossy)
    lab_ns "$1"
    in_ns "$1" iptables -w -A INPUT -p tcp --dport "$2" -m statistic --mode random --probability "$3" -j DROP
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
