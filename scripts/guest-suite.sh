#!/usr/bin/env bash
# The kernel-matrix guest suite (issue 22): this checkout's own test
# executables, run inside QEMU guests on Debian's 5.10, 6.1 and 6.12 cloud
# kernels (scripts/vm.sh boots them). .ci/run calls it after the host's
# tests, which have built the executables.
#
#   sudo scripts/guest-suite.sh [SERIES...]      # default: 5.10 6.1 6.12
#
# Each guest runs, in order: `plumb gadgets` compared with what that kernel
# must report (scripts/guest-expect/SERIES.gadgets); every gadget's root
# tests (each program variant a gadget can pick is picked by one of these
# kernels or by this machine's 6.18: see the README's kernel table; all
# but the forced result-enum variant of retrans, which needs an int-err
# kernel such as this machine's); the
# profiler's sampling and cgroup tests; the agent's per-pod counters; and
# the tests that need kprobes, which this machine lacks (they are #[ignore]d
# on the host, named so, and run here with --ignored): bpftrace's, and
# plumb run's kprobe and fentry counters.
#
# Guests run under TCG, many times slower than the host: deadlines are
# stretched by PLUMB_TEST_SLOWDOWN (see plumb_core::testing::patience),
# never what a test asserts. Guests run PLUMB_VM_JOBS at a time (default 2:
# one per core). Each guest's whole console is kept in target/guest-suite/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/guest-suite
SLOWDOWN=${PLUMB_TEST_SLOWDOWN:-8}
die() { echo "guest-suite: $*" >&2; exit 1; }

# The steps, one per line: a label, the test executable (package/target),
# and its arguments.
steps() {
    cat <<'EOF'
gadgets-root-tests   plumb-core/plumb_core  root_tests --skip forced_result_enum --test-threads=1
profile              plumb/profile          hot_function_carries_the_samples_with_main_below_it cgroup_filter_yields_only_that_cgroups_samples --test-threads=1
agent-counters       plumb/agent_metrics    series_carry_the_pod_uid_with_the_kernels_own_counts --exact --test-threads=1
kprobe-tests         plumb/bpftrace         kprobe --ignored --test-threads=1
run-kprobe-fentry    plumb-run/run          kprobe_and_fentry_counters_count_calls_in_a_guest --exact --ignored --test-threads=1
EOF
}

# The root tests a kernel leaves out, as libtest --skip filters. Linux 5.10
# has no drop reasons, so every kfree_skb is a drop there, and it frees the
# IPv6 neighbour discovery and MLD packets it has handled with kfree_skb:
# the drop tests that count every drop in a lab pod's namespace ("nothing
# else", every drop of a namespace in a summary, or a pod selected by its
# namespace with nothing left to user space) count those too. The drop
# tests that select by tuple, port or address in the kernel and the reason
# table run there.
skips() {
    case $1 in
    5.10)
        printf -- '--skip %s ' \
            drop::root_tests::netfilter_drop_counts_match \
            drop::root_tests::three_reasons_from_real_drops \
            drop::root_tests::ipv6_and_icmp_drops \
            drop::root_tests::ipv6_extension_headers \
            drop::root_tests::a_drop_on_another_node \
            drop::filter_root_tests::netns_by_name_selects \
            drop::filter_root_tests::a_containers_drops_are_delivered \
            drop::filter_root_tests::summary_counts_in_the_kernel
        ;;
    esac
}

# Inside a guest: `plumb gadgets` against the expected report, then each
# step; the exit status is the number of failed parts.
inside() {
    local series=$1 exes=$2 failed=0
    local want=$ROOT/scripts/guest-expect/$series.gadgets
    echo "=== plumb gadgets"
    if "$ROOT"/target/release/plumb gadgets >/tmp/gadgets 2>&1 && diff -u "$want" /tmp/gadgets; then
        echo "=== PART gadgets ok"
    else
        cat /tmp/gadgets
        echo "=== PART gadgets FAILED (expected: $want)"
        failed=$((failed + 1))
    fi
    local label exe args path dir
    while read -r label exe args; do
        read -r path dir < <(awk -v k="$exe" '$1 == k { print $2, $3 }' "$exes")
        [ -n "$path" ] || { echo "=== PART $label FAILED (no executable $exe)"; failed=$((failed + 1)); continue; }
        echo "=== $label: $exe $args"
        local t0=$SECONDS
        # A step that selects no test has not passed: libtest's summary
        # must count at least one.
        # shellcheck disable=SC2086 # the arguments are words
        if (cd "$dir" && PLUMB_TEST_SLOWDOWN=$SLOWDOWN "$path" $args) 2>&1 | tee /tmp/step.log &&
            grep -Eq '^test result: ok\. [1-9][0-9]* passed' /tmp/step.log; then
            echo "=== PART $label ok ($(grep -Eo '[0-9]+ passed' /tmp/step.log | tail -1), $((SECONDS - t0)) s)"
        else
            echo "=== PART $label FAILED ($((SECONDS - t0)) s)"
            failed=$((failed + 1))
        fi
    done < <(steps | sed "s|^gadgets-root-tests .*|& $(skips "$series")|")
    return "$failed"
}

# On the host: the executables cargo built (package/target, path, package
# directory), for the guests to find.
list_executables() {
    cargo test --release --locked --workspace --no-run --message-format=json 2>/dev/null | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        d = os.path.dirname(m["manifest_path"])
        print(os.path.basename(d) + "/" + m["target"]["name"], m["executable"], d)
'
}

host() {
    [ "$(id -u)" = 0 ] || die "needs root (QEMU, and root tests inside the guests)"
    local series=("$@")
    [ ${#series[@]} -gt 0 ] || series=(5.10 6.1 6.12)
    rm -rf "$OUT" && mkdir -p "$OUT"
    bash scripts/vm.sh kernels
    list_executables >"$OUT"/executables
    [ -s "$OUT"/executables ] || die "cargo listed no test executables"
    local jobs=${PLUMB_VM_JOBS:-2} pids=() names=() s
    for s in "${series[@]}"; do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
        echo "guest-suite: starting $s ($(date +%T))"
        (
            t0=$SECONDS
            rc=0
            bash scripts/vm.sh run "$s" "bash $ROOT/scripts/guest-suite.sh --inside $s $OUT/executables" \
                >"$OUT/$s.log" 2>&1 || rc=$?
            echo "$rc $((SECONDS - t0))" >"$OUT/$s.status"
        ) &
        pids+=($!)
        names+=("$s")
    done
    wait "${pids[@]}" || true
    local bad=0 rc took
    echo
    echo "guest-suite: kernel, parts, time"
    for s in "${names[@]}"; do
        read -r rc took <"$OUT/$s.status"
        local ver; ver=$(sed -n 's/.*PLUMB-VM-START //p' "$OUT/$s.log" | head -1)
        printf '  %-6s %-30s %s  %4s s\n' "$s" "${ver:-?}" \
            "$(grep -c '^=== PART .* ok' "$OUT/$s.log") ok, $(grep -c '^=== PART .* FAILED' "$OUT/$s.log") failed" "$took"
        grep '^=== PART' "$OUT/$s.log" | sed 's/^=== PART /      /'
        if [ "$rc" != 0 ]; then
            bad=$((bad + 1))
            echo "---- $s: the end of its console ($OUT/$s.log)"
            grep -v '^test .* \.\.\. ok$' "$OUT/$s.log" | tail -80
        fi
    done
    [ "$bad" = 0 ] || die "$bad of ${#names[@]} guests failed"
    echo "guest-suite: all ${#names[@]} guests passed"
}

case ${1:-} in
--inside) shift; inside "$@" ;;
*) host "$@" ;;
esac
