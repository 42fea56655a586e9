#!/usr/bin/env bash
# The kernel-matrix lab (issue 22): QEMU guests on Debian's cloud kernels,
# sharing this machine's root file system read-only over virtiofs, so a
# guest runs the very binaries and test executables of this checkout. The
# guest suite (scripts/guest-suite.sh, which .ci/run calls) and the
# three-VM cluster fixture (crates/plumb/tests/support/vm_cluster.rs) boot
# their guests with it.
#
#   sudo scripts/vm.sh kernels             # fetch and unpack 5.10, 6.1, 6.12
#   sudo scripts/vm.sh run VERSION CMD...  # boot VERSION, run CMD as root, exit with its status
#
# With PLUMB_VM_TAP=TAP and PLUMB_VM_ADDR=A.B.C.D/N the guest gets a
# virtio NIC on that tap device (made by the caller, e.g. on a bridge:
# crates/plumb/tests/support/vm_cluster.rs) with that address and no route.
#
# Kernel packages are fetched with apt-get download through a private apt
# configuration (its own sources, lists and cache under $PLUMB_VM_CACHE), so
# the machine's own package sources stay untouched. Versions are pinned; a
# pinned package that has left the archive falls back to the newest one of
# the same series. Guests run under TCG (-accel tcg): this machine's /dev/kvm
# is paravirtual and crashes stock kernels.
set -euo pipefail
CACHE=${PLUMB_VM_CACHE:-/var/cache/plumb-vm}
# series pinned-package
PINS=(
    "5.10 linux-image-5.10.0-46-cloud-amd64"
    "6.1 linux-image-6.1.0-50-cloud-amd64"
    "6.12 linux-image-6.12.118+deb13-cloud-amd64"
)
die() { echo "vm.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (QEMU, virtiofsd and the shared root)"

apt_private() {
    local a=$CACHE/apt
    mkdir -p "$a"/lists/partial "$a"/archives/partial "$a"/sources.list.d "$a"/preferences.d
    cat >"$a"/sources.list.d/plumb-vm.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bullseye-security trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    APT_OPTS=(-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$a"/sources.list.d
        -o Dir::Etc::preferencesparts="$a"/preferences.d -o Dir::State::lists="$a"/lists
        -o Dir::Cache="$a" -o Dir::Cache::archives="$a"/archives -o APT::Sandbox::User=root)
}

# The module tree inside an unpacked package (/lib or, from trixie, /usr/lib).
moddir() { local r=$CACHE/k/$1; [ -d "$r/lib/modules/$1" ] && echo "$r/lib/modules/$1" || echo "$r/usr/lib/modules/$1"; }

kernels() {
    apt_private
    apt-get -q "${APT_OPTS[@]}" update >/dev/null
    mkdir -p "$CACHE"/debs
    local series pkg
    for pin in "${PINS[@]}"; do
        read -r series pkg <<<"$pin"
        if ! apt-cache "${APT_OPTS[@]}" show "$pkg" >/dev/null 2>&1; then
            local esc=${series//./\\.}
            pkg=$(apt-cache "${APT_OPTS[@]}" pkgnames linux-image-"$series" |
                grep -E "^linux-image-${esc}(\.0-[0-9]+|\.[0-9]+\+deb[0-9.]+)-cloud-amd64$" |
                sort -V | tail -1) || true
            [ -n "$pkg" ] || die "no $series cloud kernel in the archive"
            echo "vm.sh: pinned $series kernel gone, using $pkg" >&2
        fi
        local ver=${pkg#linux-image-}
        if [ ! -f "$CACHE/k/$ver/.unpacked" ]; then
            (cd "$CACHE"/debs && apt-get -q "${APT_OPTS[@]}" download "$pkg" >/dev/null)
            mkdir -p "$CACHE/k/$ver"
            dpkg-deb -x "$CACHE"/debs/"${pkg}"_*.deb "$CACHE/k/$ver"
            local m; m=$(moddir "$ver")
            depmod -b "${m%/lib/modules/*}" "$ver"
            touch "$CACHE/k/$ver/.unpacked"
        fi
        ln -sfn "$ver" "$CACHE/k/$series"
        echo "$series $ver"
    done
}

# An initramfs holding static busybox and, decompressed, the modules needed
# to reach the virtiofs root (built in on 6.12, modules on 5.10 and 6.1).
initramfs() {
    local ver=$1 out=$2 m; m=$(moddir "$ver")
    local d; d=$(mktemp -d)
    mkdir -p "$d"/{bin,dev,proc,sys,newroot,lower,upper,mods}
    cp /bin/busybox "$d"/bin/busybox
    local order=() want
    for want in virtio_pci virtiofs overlay; do
        local line; line=$(grep -E "/${want}\.ko(\.xz)?:" "$m"/modules.dep || true)
        [ -n "$line" ] || continue
        local deps=${line#*:} self=${line%%:*} f
        # modules.dep lists a module's dependencies with the deepest last.
        for f in $(echo "$deps" | tr ' ' '\n' | tac) "$self"; do
            [[ " ${order[*]-} " == *" $f "* ]] || order+=("$f")
        done
    done
    local i=0 f
    for f in "${order[@]}"; do
        i=$((i + 1))
        local dst; dst=$d/mods/$(printf %02d $i)-$(basename "${f%%.ko*}").ko
        case $f in
        *.xz) xz -dc "$m/$f" >"$dst" ;;
        *) cp "$m/$f" "$dst" ;;
        esac
    done
    cat >"$d"/init <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in /mods/*.ko; do [ -e "$m" ] && /bin/busybox insmod "$m"; done
/bin/busybox mount -t virtiofs -o ro root /lower || { echo "PLUMB-VM: no virtiofs root"; /bin/busybox poweroff -f; }
# This machine's files, read-only, under a writable layer that dies with the guest.
/bin/busybox mount -t tmpfs upper /upper && /bin/busybox mkdir -p /upper/u /upper/w
/bin/busybox mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w root /newroot || { echo "PLUMB-VM: no overlay root"; /bin/busybox poweroff -f; }
for p in proc sys dev; do /bin/busybox mount --move /$p /newroot/$p; done
exec /bin/busybox switch_root /newroot /bin/bash "$(/bin/busybox sed -n 's/.*plumb.stage2=\([^ ]*\).*/\1/p' /newroot/proc/cmdline)"
EOF
    chmod +x "$d"/init
    (cd "$d" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
    rm -rf "$d"
}

run() {
    local series=$1; shift
    [ $# -gt 0 ] || die "run: no command"
    [ -e "$CACHE/k/$series" ] || die "no kernel $series: run 'scripts/vm.sh kernels' first"
    local ver; ver=$(readlink "$CACHE/k/$series")
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86 is not installed"
    local run; run=$(mktemp -d "$CACHE/run.XXXXXX")
    vfs_pid="" qemu_pid=""
    # shellcheck disable=SC2317
    cleanup() {
        local st=$?
        set +e
        [ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null
        [ -z "$vfs_pid" ] || kill "$vfs_pid" 2>/dev/null
        wait 2>/dev/null
        rm -rf "$run"
        exit "$st"
    }
    trap cleanup EXIT INT TERM
    initramfs "$ver" "$run"/initrd.gz
    printf '%s\n' "$*" >"$run"/cmd
    cat >"$run"/stage2 <<EOF
set +e
# /tmp stays the overlay's (writes land in the guest's tmpfs upper layer):
# a checkout under this machine's /tmp must stay visible to the guest.
mount -t tmpfs run /run; mount -t tmpfs var /var/tmp
# What devtmpfs leaves out: /dev/fd and the std links, ptys, shared memory.
ln -sf /proc/self/fd /dev/fd; ln -sf fd/0 /dev/stdin; ln -sf fd/1 /dev/stdout; ln -sf fd/2 /dev/stderr
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm
mkdir -p /usr/lib/modules/$ver
mount --bind $(moddir "$ver") /usr/lib/modules/$ver
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf; mount -t tracefs tracefs /sys/kernel/tracing; mount -t debugfs debugfs /sys/kernel/debug
ip link set lo up
if [ -n "${PLUMB_VM_ADDR:-}" ]; then
    modprobe virtio_net 2>/dev/null
    nic=\$(ls /sys/class/net | grep -v '^lo\$' | head -1)
    ip addr add ${PLUMB_VM_ADDR:-} dev "\$nic" && ip link set "\$nic" up
fi
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
cd $PWD
echo PLUMB-VM-START \$(uname -r)
bash -c "\$(cat $run/cmd)"
echo PLUMB-VM-EXIT=\$?
echo o >/proc/sysrq-trigger
sleep 10
EOF
    /usr/lib/qemu/virtiofsd --socket-path="$run"/vfs.sock -o source=/ -o cache=auto -o sandbox=chroot \
        -o log_level=err >"$run"/virtiofsd.log 2>&1 &
    vfs_pid=$!
    for _ in $(seq 50); do [ -S "$run"/vfs.sock ] && break; sleep 0.1; done
    : >"$run"/console
    local nic=(-nic none)
    if [ -n "${PLUMB_VM_TAP:-}" ]; then
        [ -n "${PLUMB_VM_ADDR:-}" ] || die "PLUMB_VM_TAP needs PLUMB_VM_ADDR"
        # A MAC of the locally administered range, from the tap's name.
        local mac; mac=52:54:$(printf %s "$PLUMB_VM_TAP" | md5sum | sed 's/\(..\)\(..\)\(..\)\(..\).*/\1:\2:\3:\4/')
        nic=(-netdev tap,id=n0,ifname="$PLUMB_VM_TAP",script=no,downscript=no
            -device virtio-net-pci,netdev=n0,mac="$mac")
    fi
    qemu-system-x86_64 -accel tcg -m "${PLUMB_VM_MEM:-2048}" -smp "${PLUMB_VM_CPUS:-1}" -nographic -no-reboot \
        -kernel "$CACHE/k/$ver/boot/vmlinuz-$ver" -initrd "$run"/initrd.gz \
        -append "console=ttyS0 quiet panic=-1 plumb.stage2=$run/stage2" \
        -object memory-backend-memfd,id=mem,size="${PLUMB_VM_MEM:-2048}"M,share=on -numa node,memdev=mem \
        -chardev socket,id=vfs,path="$run"/vfs.sock -device vhost-user-fs-pci,chardev=vfs,tag=root \
        "${nic[@]}" -serial stdio -monitor none </dev/null >"$run"/console &
    qemu_pid=$!
    # The guest's own output, from the command's start on.
    tail -n +1 -f --pid=$qemu_pid "$run"/console | tr -d '\r' | sed -u -n '/PLUMB-VM-START/,$p' &
    wait $qemu_pid || true
    qemu_pid=""
    sleep 0.2
    local rc; rc=$(tr -d '\r' <"$run"/console | sed -n 's/^PLUMB-VM-EXIT=\([0-9]*\)$/\1/p' | tail -1)
    if [ -z "$rc" ]; then
        tr -d '\r' <"$run"/console | tail -40 >&2
        die "guest $ver did not finish its command (its console's end is above)"
    fi
    exit "$rc"
}

case ${1:-} in
kernels) kernels ;;
run) shift; run "$@" ;;
*) die "usage: vm.sh kernels | run VERSION CMD..." ;;
esac
