#!/usr/bin/env bash
# Regenerate bpf/include/vmlinux.h from the running kernel's BTF.
#
# The vendored header only provides type *names and shapes* for CO-RE: field
# offsets are relocated at load time against the BTF of whatever kernel
# plumb runs on, so one header serves every kernel >= 5.8. Regenerate it when
# a gadget needs a type or field the current header does not have.
set -euo pipefail
cd "$(dirname "$0")/.."
btf=${1:-/sys/kernel/btf/vmlinux}
[ -r "$btf" ] || { echo "gen-vmlinux: $btf is not readable (kernel without BTF?)" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "gen-vmlinux: bpftool is not installed (apt-get install bpftool)" >&2; exit 1; }
bpftool btf dump file "$btf" format c > bpf/include/vmlinux.h.tmp
mv bpf/include/vmlinux.h.tmp bpf/include/vmlinux.h
echo "bpf/include/vmlinux.h regenerated from $btf ($(uname -r))"
