#!/usr/bin/env python3
"""plumb side by side with bpftrace: one command, as root.

    sudo python3 bench/run.py [--quick] [--out bench/results]

Every scenario runs a load generator (bench/load/loadgen.c, built here with
cc) that counts what it generated, three ways: alone (the baseline), under
plumb and under bpftrace, interleaved, for several repetitions. For each
tool it measures events delivered (the tool's own output, counted by the
load's marker), events the tool reported lost, tool CPU (utime+stime from
/proc/PID/stat) per million events, the kernel-side run time of the tool's
BPF programs (kernel.bpf_stats_enabled), peak RSS (VmHWM), time from start
to the first event delivered, and the load's throughput against the
baseline. Medians go to results.md and every run to results.json.

The packet capture scenario (--only capture) compares `plumb capture` with
tcpdump instead: a 100k packets/s UDP stream into a lab pod, captured by
each tool in turn with the same filter on the same interface; delivered
(packets in the file), lost and CPU per packet.

Everything the harness creates (processes, network namespaces, the iptables
rules inside them, its cgroup, the bpf_stats sysctl) is undone on exit, on
failure and on Ctrl-C. The exit status is non-zero when plumb's accounting
does not add up (delivered + lost != generated); speed never fails a run.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

TOOL_CPU = 0  # the tracer runs here
LOAD_CPU = 1  # the load runs here (when there are two CPUs or more)


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Fatal(Exception):
    """A setup problem: one line on stderr, exit 1."""


# ---------------------------------------------------------------- cleanup


class Cleanup:
    """Undo actions, run last-in first-out, each once, whatever happens."""

    def __init__(self):
        self.actions = []

    def push(self, what, fn):
        self.actions.append((what, fn))

    def run(self):
        while self.actions:
            what, fn = self.actions.pop()
            try:
                fn()
            except Exception as e:  # keep undoing the rest
                log(f"cleanup: {what}: {e}")


CLEANUP = Cleanup()
CHILDREN = set()  # pids this harness started and has not reaped yet


def kill_children():
    for pid in list(CHILDREN):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        CHILDREN.discard(pid)


def sh(*cmd, check=True, quiet=False):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise Fatal(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


# ---------------------------------------------------------------- process helpers


def preexec(cpu=None, cgroup_procs=None):
    """Child set-up: CPU pinning, no memlock limit (bpftrace asks), cgroup."""

    def fn():
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass
        if cgroup_procs:
            with open(cgroup_procs, "w") as f:
                f.write(str(os.getpid()))

    return fn


def spawn(cmd, stdout, stderr, cpu=None, cgroup_procs=None):
    p = subprocess.Popen(
        cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, preexec_fn=preexec(cpu, cgroup_procs)
    )
    CHILDREN.add(p.pid)
    return p


def reap(p, timeout):
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    CHILDREN.discard(p.pid)


def reap_rusage(p, timeout):
    """Wait for p (killing it after timeout); its exit code and rusage.

    ru_maxrss is the peak RSS over the whole life, exit work included."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)
    CHILDREN.discard(p.pid)
    return p.returncode, ru


def clk_tck():
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime+stime of pid (all its threads) plus its live and reaped children."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
        total += sum(int(x) for x in fields[11:15])
    except (FileNotFoundError, ProcessLookupError):
        return None
    for child in os.listdir("/proc"):
        if not child.isdigit():
            continue
        try:
            with open(f"/proc/{child}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == pid:
                total += int(rest[11]) + int(rest[12])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total / clk_tck()


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def bpf_prog_ids(pid):
    """Ids of the BPF programs pid holds (prog and link fds name them)."""
    ids = set()
    d = f"/proc/{pid}/fdinfo"
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return ids
    for n in names:
        try:
            with open(f"{d}/{n}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except (FileNotFoundError, ValueError, OSError):
            continue
    return ids


def bpf_run_stats(ids):
    """Sum of run_time_ns and run_cnt over these programs (bpftool prog show -j)."""
    if not ids:
        return 0, 0
    out = sh("bpftool", "prog", "show", "-j")
    t = c = 0
    for prog in json.loads(out):
        if prog.get("id") in ids:
            t += prog.get("run_time_ns", 0)
            c += prog.get("run_cnt", 0)
    return t, c


# ---------------------------------------------------------------- host set-up


def cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[:1] == ["cgroup2"]:
                return pre.split()[4]
    raise Fatal("no cgroup2 mount: the benchmark filters both tools by a cgroup v2 id")


def set_sysctl(name, value):
    path = "/proc/sys/" + name.replace(".", "/")
    with open(path) as f:
        old = f.read().strip()
    if old != value:
        with open(path, "w") as f:
            f.write(value)
        CLEANUP.push(f"restore {name}={old}", lambda: open(path, "w").write(old))
    return old


def build_loads(work):
    cc = shutil.which("cc") or shutil.which("clang")
    if not cc:
        raise Fatal("no C compiler (cc or clang): the load generators are C (apt-get install gcc libc6-dev)")
    load = os.path.join(work, "bnch_load")
    target = os.path.join(work, "bnch_target")
    sh(cc, "-O2", "-Wall", "-static", "-o", load, os.path.join(HERE, "load", "loadgen.c"))
    sh(cc, "-O2", "-static", "-nostdlib", "-o", target, os.path.join(HERE, "load", "target.c"))
    # The exec ping is the same binary under another name (another comm).
    shutil.copy(target, os.path.join(work, "bnch_ping"))
    os.makedirs(os.path.join(work, "ping"))
    for d in (work, os.path.join(work, "ping")):
        open(os.path.join(d, "bnch_exists"), "w").close()
    return load


class Lab:
    """Two network namespaces joined by a veth: a client and a server side."""

    def __init__(self):
        tag = f"pb{os.getpid() % 100000}"
        self.a, self.b = f"{tag}a", f"{tag}b"
        self.ip_a, self.ip_b = "10.251.0.1", "10.251.0.2"
        self.dev_a, self.dev_b = f"{tag}va", f"{tag}vb"
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            CLEANUP.push(f"ip netns del {ns}", lambda ns=ns: sh("ip", "netns", "del", ns, check=False))
        sh("ip", "link", "add", f"{tag}va", "netns", self.a, "type", "veth", "peer", "name", f"{tag}vb", "netns", self.b)
        for ns, dev, ip in ((self.a, f"{tag}va", self.ip_a), (self.b, f"{tag}vb", self.ip_b)):
            self.sh(ns, "ip", "addr", "add", f"{ip}/30", "dev", dev)
            self.sh(ns, "ip", "link", "set", dev, "up")
            self.sh(ns, "ip", "link", "set", "lo", "up")

    @staticmethod
    def path(ns):
        return f"/run/netns/{ns}"

    def sh(self, ns, *cmd, check=True):
        return sh("nsenter", f"--net={self.path(ns)}", "--", *cmd, check=check)

    def add_drop(self, port):
        rule = ["INPUT", "-p", "udp", "--dport", str(port), "-j", "DROP"]
        self.sh(self.b, "iptables", "-w", "-A", *rule)
        CLEANUP.push(
            f"iptables -D {' '.join(rule)} in {self.b}",
            lambda: self.sh(self.b, "iptables", "-w", "-D", *rule, check=False),
        )

    def drop_count(self, port):
        out = self.sh(self.b, "iptables", "-w", "-L", "INPUT", "-v", "-n", "-x")
        for line in out.splitlines():
            if f"dpt:{port}" in line and "DROP" in line:
                return int(line.split()[0])
        raise Fatal(f"DROP rule for udp/{port} not found in {self.b}")

    def zero_counters(self):
        self.sh(self.b, "iptables", "-w", "-Z", "INPUT")


# ---------------------------------------------------------------- output scanning


def scan(path, fn, start=0, chunk=1 << 24):
    """Call fn(bytes) on the whole lines of path from offset start.

    Returns the offset just after the last whole line seen."""
    end = start
    with open(path, "rb") as f:
        f.seek(start)
        tail = b""
        while True:
            data = f.read(chunk)
            if not data:
                break
            data = tail + data
            cut = data.rfind(b"\n") + 1
            if cut:
                fn(data[:cut])
                end += cut
            tail = data[cut:]
    return end


def count_matches(path, pattern):
    n = 0

    def fn(buf):
        nonlocal n
        n += sum(1 for _ in pattern.finditer(buf))

    scan(path, fn)
    return n


def first_match(path, pattern, start):
    """(found, offset to continue from) for pattern in path's lines after start."""
    found = False

    def fn(buf):
        nonlocal found
        if pattern.search(buf):
            found = True

    try:
        off = scan(path, fn, start)
    except FileNotFoundError:
        return False, start
    return found, off


def plumb_lost(out_path, err_path):
    """plumb's reported losses: `type: lost` records and its stderr summary line."""
    records = 0

    def fn(buf):
        nonlocal records
        if b'"lost"' not in buf:
            return
        for line in buf.splitlines():
            if b'"type":"lost"' in line:
                records += int(json.loads(line).get("count", 0))

    scan(out_path, fn)
    summary = None
    with open(err_path, errors="replace") as f:
        for line in f:
            m = re.match(r"plumb: (\d+) events, (\d+) lost", line)
            if m:
                summary = int(m.group(2))
    return records, summary


def bpftrace_lost(out_path, err_path):
    n = 0
    for p in (out_path, err_path):
        with open(p, "rb") as f:
            for line in f:
                m = re.search(rb"Lost (\d+) events", line)
                if m:
                    n += int(m.group(1))
    return n


# ---------------------------------------------------------------- scenarios


class Scenario:
    """One workload, its marker, and how each tool is asked to watch it."""

    name = ""
    title = ""
    rate = 0
    tools = ("baseline", "plumb", "bpftrace")

    def __init__(self, h):
        self.h = h

    def prepare(self):
        """Once, before any run (e.g. the iptables rule)."""

    def before_run(self):
        """Before each run, before the tool starts (e.g. servers)."""

    def after_run(self):
        """After each run: extra generated counts (e.g. server accepts)."""
        return {}

    def ping(self):
        """A short burst of ping-marked events (not counted as load)."""
        raise NotImplementedError

    def load_cmd(self, seconds):
        raise NotImplementedError

    def generated(self, load, extra):
        return load["ops"]


class ExecStorm(Scenario):
    def __init__(self, h, rate):
        super().__init__(h)
        self.rate = rate
        label = f"{rate // 1000}k/s" if rate else "unthrottled"
        self.name = f"exec-{label.replace('/s', '')}"
        self.title = f"exec storm {label}"

    def plumb_args(self):
        return ["trace", "exec", "-o", "json", "--fields", "pid,comm,filename", "--cgroup", self.h.cgroup]

    def bpftrace_prog(self):
        return (
            f'tracepoint:sched:sched_process_exec /cgroup == cgroupid("{self.h.cgroup}")/ '
            '{ printf("pid=%d comm=%s filename=%s\\n", pid, comm, str(args->filename)); }'
        )

    def pattern(self, tool, ping=False):
        name = b"bnch_ping" if ping else b"bnch_target"
        return re.compile(b'"comm":"' + name + b'"' if tool == "plumb" else b"comm=" + name + b" ")

    def ping(self):
        return [self.h.load, "--cgroup", self.h.procs, "exec", os.path.join(self.h.work, "bnch_ping"), "0", "0.02"]

    def load_cmd(self, seconds):
        return [self.h.load, "--cgroup", self.h.procs, "exec", os.path.join(self.h.work, "bnch_target"), str(self.rate), str(seconds)]


class OpenStorm(Scenario):
    def __init__(self, h, rate):
        super().__init__(h)
        self.rate = rate
        label = f"{rate // 1000}k/s" if rate else "unthrottled"
        self.name = f"open-{label.replace('/s', '')}"
        self.title = f"open storm {label} (existing + missing)"

    def plumb_args(self):
        return ["trace", "open", "-o", "json", "--fields", "pid,comm,flags,fd,errno,path", "--cgroup", self.h.cgroup]

    def bpftrace_prog(self):
        cg = f'cgroup == cgroupid("{self.h.cgroup}")'
        return (
            f"tracepoint:syscalls:sys_enter_openat /{cg}/ "
            "{ @path[tid] = str(args->filename); @flags[tid] = args->flags; } "
            f"tracepoint:syscalls:sys_exit_openat /{cg}/ "
            '{ printf("pid=%d comm=%s flags=%d ret=%d path=%s\\n", pid, comm, @flags[tid], args->ret, @path[tid]); '
            "delete(@path[tid]); delete(@flags[tid]); } "
            "END { clear(@path); clear(@flags); }"
        )

    def pattern(self, tool, ping=False):
        d = os.path.join(self.h.work, "ping") if ping else self.h.work
        paths = re.escape(os.path.join(d, "bnch_").encode()) + rb"(?:exists|missing)"
        if tool == "plumb":
            return re.compile(rb'"path":"' + paths + rb'"')
        return re.compile(rb"path=" + paths + rb"$", re.M)

    def ping(self):
        return [self.h.load, "--cgroup", self.h.procs, "open", os.path.join(self.h.work, "ping"), "5000", "0.02"]

    def load_cmd(self, seconds):
        return [self.h.load, "--cgroup", self.h.procs, "open", self.h.work, str(self.rate), str(seconds)]


class TcpStorm(Scenario):
    """connect/accept/close over a veth between two lab namespaces."""

    port, ping_port = 7000, 7001

    def __init__(self, h, rate):
        super().__init__(h)
        self.rate = rate
        label = f"{rate // 1000}k/s" if rate else "unthrottled"
        self.name = f"tcp-{label.replace('/s', '')}"
        self.title = f"TCP connect/accept/close {label} (veth)"
        self.servers = []

    def plumb_args(self):
        return [
            "trace", "tcp", "-o", "json", "--fields", "pid,comm,event,saddr,sport,daddr,dport", "--cgroup", self.h.cgroup
        ]

    def bpftrace_prog(self):
        # The same three transitions plumb reports, filtered in the kernel
        # to the load's sockets as plumb's --cgroup filters them: this
        # tracepoint names no cgroup, so the filter is on the load's two
        # ports. plumb keeps the socket's owner from connect()/accept(); a
        # one-liner prints the interrupted task, as bpftrace users usually do.
        ports = " || ".join(
            f"args->sport == {p} || args->dport == {p}" for p in (self.port, self.ping_port)
        )
        return (
            f"tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->family == 2 && ({ports})/ {{ "
            "$o = args->oldstate; $n = args->newstate; "
            'if ($o == 2 && $n == 1) { printf("pid=%d comm=%s event=connect saddr=%s sport=%d daddr=%s dport=%d\\n", '
            "pid, comm, ntop(args->saddr), args->sport, ntop(args->daddr), args->dport); } "
            'if ($o == 3 && $n == 1) { printf("pid=%d comm=%s event=accept saddr=%s sport=%d daddr=%s dport=%d\\n", '
            "pid, comm, ntop(args->saddr), args->sport, ntop(args->daddr), args->dport); } "
            'if ($n == 7 && $o != 2 && $o != 10) { printf("pid=%d comm=%s event=close saddr=%s sport=%d daddr=%s dport=%d\\n", '
            "pid, comm, ntop(args->saddr), args->sport, ntop(args->daddr), args->dport); } }"
        )

    def pattern(self, tool, ping=False):
        # The client's socket has dport = the server port, the server's sport.
        port = str(self.ping_port if ping else self.port).encode()
        ip = rb"10\.251\.0\.[12]"
        if tool == "plumb":
            return re.compile(
                rb'"event":"(?:connect|accept|close)","saddr":"' + ip + rb'","sport":(?:' + port
                + rb',|\d+,"daddr":"' + ip + rb'","dport":' + port + rb"\})"
            )
        return re.compile(
            rb"event=(?:connect|accept|close) saddr=" + ip + rb" sport=(?:" + port
            + rb" |\d+ daddr=" + ip + rb" dport=" + port + rb"$)",
            re.M,
        )

    def server(self, port, seconds):
        cmd = [self.h.load, "--cgroup", self.h.procs, "--netns", Lab.path(self.h.lab.b), "tcp-server", str(port), str(seconds)]
        p = spawn(cmd, subprocess.PIPE, subprocess.PIPE, cpu=self.h.load_cpu)
        line = p.stdout.readline()
        if line.strip() != b"ready":
            reap(p, 1)
            raise Fatal(f"tcp server on port {port} did not start: {p.stderr.read().decode().strip()}")
        return p

    def before_run(self):
        self.servers = [self.server(self.port, 3600), self.server(self.ping_port, 3600)]

    def after_run(self):
        results = []
        for p in self.servers:
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=10)
            CHILDREN.discard(p.pid)
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        self.servers = []
        return {"accepted": results[0]["ops"]}

    def ping(self):
        return [
            self.h.load, "--cgroup", self.h.procs, "--netns", Lab.path(self.h.lab.a),
            "tcp-client", self.h.lab.ip_b, str(self.ping_port), "0", "0.02",
        ]

    def load_cmd(self, seconds):
        return [
            self.h.load, "--cgroup", self.h.procs, "--netns", Lab.path(self.h.lab.a),
            "tcp-client", self.h.lab.ip_b, str(self.port), str(self.rate), str(seconds),
        ]

    def generated(self, load, extra):
        # connect + close on the client, accept + close on the server
        return 2 * load["ops"] + 2 * extra.get("accepted", 0)


class DropStorm(Scenario):
    """UDP datagrams into an iptables DROP rule in the server namespace."""

    port, ping_port = 9000, 9001
    filtered = False  # drops happen in softirq: no task, no cgroup to filter on

    def __init__(self, h, rate):
        super().__init__(h)
        self.rate = rate
        label = f"{rate // 1000}k/s" if rate else "unthrottled"
        self.name = f"drop-{label.replace('/s', '')}"
        self.title = f"drop storm {label} (iptables DROP)"

    def prepare(self):
        if not self.h.drop_rules:
            self.h.lab.add_drop(self.port)
            self.h.lab.add_drop(self.ping_port)
            self.h.drop_rules = True
        self.reason = self.h.drop_reason_number("NETFILTER_DROP")

    def before_run(self):
        self.h.lab.zero_counters()

    def after_run(self):
        return {"rule_packets": self.h.lab.drop_count(self.port)}

    def plumb_args(self):
        return ["trace", "drop", "-o", "json", "--fields", "reason,proto,saddr,sport,daddr,dport,location"]

    def bpftrace_prog(self):
        # Same tracepoint and reason filter as plumb (NOT_SPECIFIED left out),
        # the flow read from the packet, the location symbolized.
        return (
            "tracepoint:skb:kfree_skb /args->reason > 2/ { "
            "$skb = (struct sk_buff *)args->skbaddr; "
            "$ip = (struct iphdr *)($skb->head + $skb->network_header); "
            "$th = $skb->head + $skb->transport_header; "
            "$sp = *(uint16 *)$th; $dp = *(uint16 *)($th + 2); "
            'printf("reason=%d proto=%d saddr=%s sport=%d daddr=%s dport=%d location=%s\\n", '
            "args->reason, $ip->protocol, ntop($ip->saddr), (($sp & 0xff) << 8) | ($sp >> 8), "
            "ntop($ip->daddr), (($dp & 0xff) << 8) | ($dp >> 8), ksym(args->location)); }"
        )

    def pattern(self, tool, ping=False):
        port = str(self.ping_port if ping else self.port).encode()
        flow = rb"10\.251\.0\.1\D.{0,12}\d+\D.{0,12}10\.251\.0\.2\D.{0,12}" + port + rb"\D"
        if tool == "plumb":
            return re.compile(rb'"reason":"NETFILTER_DROP","proto":"udp","saddr":"' + flow)
        return re.compile(b"reason=%d proto=17 saddr=" % self.reason + flow)

    def ping(self):
        return [
            self.h.load, "--netns", Lab.path(self.h.lab.a), "udp", self.h.lab.ip_b, str(self.ping_port), "20000", "0.02",
        ]

    def load_cmd(self, seconds):
        return [
            self.h.load, "--netns", Lab.path(self.h.lab.a), "udp", self.h.lab.ip_b, str(self.port), str(self.rate), str(seconds),
        ]

    def generated(self, load, extra):
        # The kernel's own count of what the rule dropped.
        return extra["rule_packets"]


class DropOtherPod(DropStorm):
    """Drops traced for one pod (netns) while ANOTHER pod's drop storm runs.

    The traced pod only receives the ping datagrams (its own DROP rule);
    the storm goes into the other pod's DROP rule. Both tools filter on the
    traced pod's network namespace in the kernel: plumb with --netns,
    bpftrace on the packet device's namespace inode. Delivered counts the
    storm's packets in the output and must be 0; the figure that matters is
    BPF time per packet of the other pod's storm (the filter's cost).
    """

    filtered = True

    def __init__(self, h):
        super().__init__(h, 0)
        self.name = "drop-other-pod"
        self.title = "drop storm of another pod (unthrottled), one pod traced"

    def prepare(self):
        super().prepare()
        lab = self.h.lab
        self.ns = lab.a[:-1] + "c"
        self.ip_a, self.ip = "10.251.0.5", "10.251.0.6"
        sh("ip", "netns", "add", self.ns)
        CLEANUP.push(f"ip netns del {self.ns}", lambda: sh("ip", "netns", "del", self.ns, check=False))
        va, vc = self.ns + "x", self.ns + "y"
        sh("ip", "link", "add", va, "netns", lab.a, "type", "veth", "peer", "name", vc, "netns", self.ns)
        lab.sh(lab.a, "ip", "addr", "add", f"{self.ip_a}/30", "dev", va)
        lab.sh(lab.a, "ip", "link", "set", va, "up")
        lab.sh(self.ns, "ip", "addr", "add", f"{self.ip}/30", "dev", vc)
        lab.sh(self.ns, "ip", "link", "set", vc, "up")
        rule = ["INPUT", "-p", "udp", "--dport", str(self.ping_port), "-j", "DROP"]
        lab.sh(self.ns, "iptables", "-w", "-A", *rule)
        self.inum = os.stat(Lab.path(self.ns)).st_ino

    def plumb_args(self):
        return super().plumb_args() + ["--netns", self.ns]

    def bpftrace_prog(self):
        prog = super().bpftrace_prog()
        return prog.replace(
            "/args->reason > 2/",
            f"/args->reason > 2 && ((struct sk_buff *)args->skbaddr)->dev->nd_net.net->ns.inum == {self.inum}/",
        )

    def pattern(self, tool, ping=False):
        if not ping:
            return super().pattern(tool)
        flow = rb"10\.251\.0\.5\D.{0,12}\d+\D.{0,12}10\.251\.0\.6\D.{0,12}" + str(self.ping_port).encode() + rb"\D"
        if tool == "plumb":
            return re.compile(rb'"reason":"NETFILTER_DROP","proto":"udp","saddr":"' + flow)
        return re.compile(b"reason=%d proto=17 saddr=" % self.reason + flow)

    def ping(self):
        return [self.h.load, "--netns", Lab.path(self.h.lab.a), "udp", self.ip, str(self.ping_port), "20000", "0.02"]


class ProfileCpu(Scenario):
    """A CPU-bound load sampled at hz: samples received vs expected."""

    aggregated = True  # both tools count stacks in the kernel and print at the end

    def __init__(self, h, hz):
        super().__init__(h)
        self.hz = hz
        self.name = f"profile-{hz}hz"
        self.title = f"CPU profile {hz} Hz (1 busy CPU)"

    def tool_cmd(self, tool, seconds):
        if tool == "plumb":
            return [
                self.h.plumb, "profile", "cpu", "-F", str(self.hz), "-d", f"{int(seconds) + 120}s",
                "-o", "json", "--cgroup", self.h.cgroup,
            ]
        return [
            "bpftrace", "-e",
            f'profile:hz:{self.hz} /cgroup == cgroupid("{self.h.cgroup}")/ {{ @[kstack, ustack, comm, pid] = count(); }}',
        ]

    def load_cmd(self, seconds):
        return [self.h.load, "--cgroup", self.h.procs, "burn", str(seconds)]

    def generated(self, load, extra):
        # Expected samples: hz x seconds x CPUs busy. The load is one thread,
        # and its own CPU time says how long it really ran (other work on
        # the host may have taken its CPU for a while).
        return round(self.hz * load["cpu_s"])

    @staticmethod
    def samples(tool, out, err):
        """(samples delivered, samples reported lost) from the tool's output."""
        if tool == "plumb":
            with open(out) as f:
                d = json.load(f)
            return d["samples"], d["lost"]
        total = 0

        def fn(buf):
            nonlocal total
            total += sum(int(m.group(1)) for m in re.finditer(rb"\]: (\d+)$", buf, re.M))

        scan(out, fn)
        return total, bpftrace_lost(out, err)


class CaptureStream(Scenario):
    """Packet capture in a lab pod: plumb capture and tcpdump, one after the
    other, on the same interface of the same network namespace with the same
    filter and ring size, while a 100k packets/s UDP stream comes in from
    the other lab namespace (plus a slower one to another port, which the
    filter rejects in the kernel). Both tools run libpcap-compiled classic
    BPF on a TPACKET_V3 ring; what differs is the user-space side: reading
    the ring and writing the file (plumb: pcapng with a comment per packet;
    tcpdump: pcap). Sent is the generator's own count for the filtered
    port, delivered the packets in the tool's file (capinfos), lost sent -
    delivered; the tool's own count and its kernel drop count are kept
    beside them."""

    kind = "capture"
    tools = ("baseline", "plumb", "tcpdump")
    port, other_port = 9200, 9201
    ring_mib = 4  # plumb's default ring; tcpdump's -B is in KiB
    settle_s = 1.5  # > tcpdump's 1 s block timeout: the last block is read

    def __init__(self, h, rate=100000, other_rate=10000):
        super().__init__(h)
        self.rate, self.other_rate = rate, other_rate
        self.name = f"capture-{rate // 1000}k"
        self.filter = f"udp dst port {self.port}"
        self.title = f"capture {rate // 1000}k/s UDP in a pod (`{self.filter}`)"

    def prepare(self):
        lab = self.h.need_lab()
        # Nothing listens in the pod: the DROP rules keep the stream from
        # raising ICMP port unreachables, and count what arrived. AF_PACKET
        # sees packets before netfilter, so both tools see them all.
        lab.add_drop(self.port)
        lab.add_drop(self.other_port)
        self.ns, self.dev = lab.b, lab.dev_b

    def tool_cmd(self, tool, path):
        if tool == "plumb":
            return [
                self.h.plumb, "capture", "--netns", self.ns, "-i", self.dev,
                "-B", f"{self.ring_mib}MiB", "-w", path, self.filter,
            ]
        return [
            "nsenter", f"--net={Lab.path(self.ns)}", "--",
            "tcpdump", "-i", self.dev, "-B", str(self.ring_mib * 1024), "-w", path, self.filter,
        ]

    def file_ext(self, tool):
        return "pcapng" if tool == "plumb" else "pcap"

    def load_cmds(self, seconds):
        lab, load = self.h.lab, self.h.load
        return {
            "stream": [load, "--netns", Lab.path(lab.a), "udp", lab.ip_b, str(self.port), str(self.rate), str(seconds)],
            "other": [
                load, "--netns", Lab.path(lab.a), "udp", lab.ip_b, str(self.other_port), str(self.other_rate), str(seconds),
            ],
        }

    def ready(self, pid):
        """Has pid a packet socket bound to the pod's interface with a
        filter attached (ss -0 -b -p in the pod's namespace)? plumb attaches
        its filter and then binds, libpcap binds and then tcpdump sets the
        filter: once both are there, every matching packet goes into the
        tool's ring."""
        out = self.h.lab.sh(self.ns, "ss", "-0", "-b", "-p", "-n", check=False)
        mine = False
        for line in out.splitlines():
            if not line[:1].isspace():
                mine = f"pid={pid}," in line and f":{self.dev} " in line + " "
            elif mine and "bpf filter" in line:
                return True
        return False

    @staticmethod
    def counts(tool, err_path):
        """The tool's end-of-capture report: (packets it wrote, kernel drops)."""
        with open(err_path, errors="replace") as f:
            text = f.read()
        if tool == "plumb":
            m = re.findall(r"^plumb: (\d+) packets, (\d+) dropped by the kernel", text, re.M)
            return (int(m[-1][0]), int(m[-1][1])) if m else (None, None)
        got = re.findall(r"^(\d+) packets? captured", text, re.M)
        dropped = re.findall(r"^(\d+) packets? dropped by kernel", text, re.M)
        return (int(got[-1]) if got else None, int(dropped[-1]) if dropped else None)


def file_packets(path):
    """Packets in a pcap or pcapng file: capinfos, else tshark; None without either."""
    if not os.path.exists(path):
        return None
    if shutil.which("capinfos"):
        out = sh("capinfos", "-c", "-M", path, check=False)
        m = re.search(r"Number of packets:\s+(\d+)", out)
        if m:
            return int(m.group(1))
    if shutil.which("tshark"):
        r = subprocess.run(
            ["tshark", "-r", path, "-T", "fields", "-e", "frame.number"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        return r.stdout.count(b"\n") if r.returncode == 0 else None
    return None


def task_cpu_s(pid):
    """CPU time of pid's live threads in ns resolution (schedstat's
    sum_exec_runtime), the same clock wait4's rusage totals at exit; falls
    back to /proc/PID/stat's clock ticks."""
    total, found = 0, False
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                continue
    except FileNotFoundError:
        return None
    return total / 1e9 if found else cpu_seconds(pid)


class AgentScenario(Scenario):
    """A `plumb agent` run: the API on a private unix socket, metrics on a
    loopback port the agent picks (read from its ready line by agent_ready
    into `self.metrics`): nothing reachable from outside, no clash with a
    running agent."""

    tools = ("plumb",)  # bpftrace has no always-on agent to compare with
    socket = "agent.sock"

    def tool_cmd(self):
        self.metrics = None
        return [
            self.h.plumb, "agent", "--listen", f"unix:{os.path.join(self.h.work, self.socket)}",
            "--metrics-listen", "127.0.0.1:0", "--node-name", "bench",
        ]

    def get_metrics(self):
        """The agent's /metrics page: (HTTP status, body)."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as resp:
            return resp.status, resp.read()


class IdleAgent(AgentScenario):
    """plumb agent on an idle host: CPU and memory over a minute."""

    name = "agent-idle"
    title = "idle agent"

    def __init__(self, h, usage):
        super().__init__(h)
        self.usage = usage

    def scrape(self):
        """It must answer at the end of the idle run: status and size."""
        status, body = self.get_metrics()
        return status, len(body)


class FakePod:
    """A cgroup laid out as the kubelet's systemd driver lays it out, so that
    the agent attributes what runs inside to a pod uid; with `netns`, a
    process inside holds that network namespace (as a pod sandbox does), so
    the namespace's packets belong to the pod too."""

    def __init__(self, root, tag, netns=None):
        import uuid

        self.uid = str(uuid.uuid4())
        self.slice = os.path.join(root, f"plumb-bench-{os.getpid()}-{tag}.slice")
        pod = os.path.join(self.slice, f"kubepods-besteffort-pod{self.uid.replace('-', '_')}.slice")
        self.scope = os.path.join(pod, f"cri-containerd-{uuid.uuid4().hex}{uuid.uuid4().hex}.scope")
        self.dirs = [self.slice, pod, self.scope]
        os.makedirs(self.scope)
        CLEANUP.push(f"rmdir {self.scope} and its parents", self.remove)
        self.procs = os.path.join(self.scope, "cgroup.procs")
        self.holder = None
        if netns:
            self.holder = spawn(
                ["nsenter", f"--net={netns}", "--", "sleep", "3600"],
                subprocess.DEVNULL,
                subprocess.DEVNULL,
                cgroup_procs=self.procs,
            )

    def remove(self):
        if self.holder is not None:
            self.holder.kill()
            reap(self.holder, 10)
            self.holder = None
        for _ in range(50):
            with open(self.procs) as f:
                pids = [int(x) for x in f.read().split()]
            if not pids:
                break
            for pid in pids:  # ours: started in this cgroup by the harness
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for d in reversed(self.dirs):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except OSError as e:
                    if e.errno != 16:  # EBUSY: a task still leaving
                        raise
                    time.sleep(0.05)


class LoadedAgent(AgentScenario):
    """plumb agent while a steady load runs: execs in one fake pod, UDP into a
    DROP rule and TCP connections between two others (lab namespaces). The
    counters in /metrics must equal the load's own counts."""

    name = "agent-load"
    title = "agent under steady load"
    socket = "agent-load.sock"
    exec_rate, drop_rate, tcp_rate = 1000, 10000, 500
    drop_port, tcp_port = 9000, 7100

    def prepare(self):
        lab = self.h.need_lab()
        if not self.h.drop_rules:
            lab.add_drop(DropStorm.port)
            lab.add_drop(DropStorm.ping_port)
            self.h.drop_rules = True
        root = cgroup2_root()
        # A process of each pod holds its namespace, as a pod sandbox does.
        self.client = FakePod(root, "client", Lab.path(lab.a))
        self.server = FakePod(root, "server", Lab.path(lab.b))
        self.execs = FakePod(root, "exec")

    def scrape(self):
        return self.get_metrics()[1].decode()

    @staticmethod
    def value(text, name, **labels):
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            series, _, v = line.rpartition(" ")
            if all(f'{k}="{x}"' in series for k, x in labels.items()):
                total += float(v)
        return total

    def counts(self, text):
        """The agent's counters for this load's pods."""
        v = self.value
        return {
            "execs": v(text, "plumb_execs_total", pod_uid=self.execs.uid),
            "drops": v(text, "plumb_packet_drops_total", pod_uid=self.server.uid, reason="NETFILTER_DROP"),
            "connections_out": v(text, "plumb_tcp_connections_total", pod_uid=self.client.uid, direction="outbound"),
            "connections_in": v(text, "plumb_tcp_connections_total", pod_uid=self.server.uid, direction="inbound"),
            "map_full": v(text, "plumb_counter_map_full_total"),
        }

    def loads(self, seconds):
        lab, load = self.h.lab, self.h.load
        target = os.path.join(self.h.work, "bnch_target")
        return {
            "exec": [load, "--cgroup", self.execs.procs, "exec", target, str(self.exec_rate), str(seconds)],
            # The pods' own processes make their traffic, in their cgroups.
            "udp": [
                load, "--cgroup", self.client.procs, "--netns", Lab.path(lab.a), "udp", lab.ip_b,
                str(self.drop_port), str(self.drop_rate), str(seconds),
            ],
            "tcp": [
                load, "--cgroup", self.client.procs, "--netns", Lab.path(lab.a), "tcp-client", lab.ip_b,
                str(self.tcp_port), str(self.tcp_rate), str(seconds),
            ],
        }


def agent_ready(p, err, timeout=60.0):
    """Wait for the agent's ready line on stderr (written once its counter
    programs are attached and its listeners bound): "plumb agent: node N api
    A metrics http://M/metrics counter programs ..."; returns M."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise Fatal(f"plumb agent exited with {p.returncode}: {tail(err)}")
        with open(err, errors="replace") as f:
            for line in f:
                if line.startswith("plumb agent: node "):
                    words = line.split()
                    url = words[words.index("metrics") + 1]
                    return url.removeprefix("http://").removesuffix("/metrics")
        time.sleep(0.05)
    raise Fatal(f"plumb agent not ready after {timeout:.0f} s: {tail(err)}")


# ---------------------------------------------------------------- the harness


class Harness:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.seconds = args.seconds or (2.0 if args.quick else 5.0)
        self.reps = args.reps or (1 if args.quick else 3)
        self.plumb = args.plumb
        self.ncpu = os.cpu_count() or 1
        self.tool_cpu = TOOL_CPU if self.ncpu > 1 else None
        self.load_cpu = LOAD_CPU if self.ncpu > 1 else None
        self.drop_rules = False
        self.work = tempfile.mkdtemp(prefix="plumb-bench-")
        CLEANUP.push(f"rm -r {self.work}", lambda: shutil.rmtree(self.work, ignore_errors=True))
        self.load = build_loads(self.work)
        root = cgroup2_root()
        self.cgroup = os.path.join(root, f"plumb-bench-{os.getpid()}")
        os.mkdir(self.cgroup)
        CLEANUP.push(f"rmdir {self.cgroup}", self.remove_cgroup)
        self.procs = os.path.join(self.cgroup, "cgroup.procs")
        self.lab = None

    def remove_cgroup(self):
        # Anything still inside is ours: kill it by pid before removing.
        for _ in range(50):
            with open(self.procs) as f:
                pids = [int(x) for x in f.read().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        os.rmdir(self.cgroup)

    def need_lab(self):
        if self.lab is None:
            self.lab = Lab()
        return self.lab

    def drop_reason_number(self, name):
        """The kernel's number for a drop reason, from the tracepoint's format."""
        for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
            try:
                with open(f"{base}/events/skb/kfree_skb/format") as f:
                    m = re.search(r'\{ (\d+), "' + name + r'" \}', f.read())
                    if m:
                        return int(m.group(1))
            except FileNotFoundError:
                continue
        raise Fatal(f"drop reason {name} not found in the kfree_skb tracepoint format")

    # -------------------------------------------------------- one run

    def run_load(self, sc, seconds):
        p = spawn(sc.load_cmd(seconds), subprocess.PIPE, subprocess.PIPE, cpu=self.load_cpu)
        out, err = p.communicate(timeout=seconds + 120)
        CHILDREN.discard(p.pid)
        if p.returncode != 0:
            raise Fatal(f"load {' '.join(sc.load_cmd(seconds))} failed: {err.decode().strip()}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def ping(self, sc):
        p = spawn(sc.ping(), subprocess.DEVNULL, subprocess.PIPE, cpu=self.load_cpu)
        _, err = p.communicate(timeout=30)
        CHILDREN.discard(p.pid)
        if p.returncode != 0:
            raise Fatal(f"ping {' '.join(sc.ping())} failed: {err.decode().strip()}")

    def tool_cmd(self, sc, tool):
        if tool == "plumb":
            return [self.plumb] + sc.plumb_args()
        return ["bpftrace", "-e", sc.bpftrace_prog()]

    def run_one(self, sc, tool, rep):
        if getattr(sc, "aggregated", False):
            return self.run_profile(sc, tool, rep)
        if isinstance(sc, IdleAgent):
            return self.run_agent(sc, rep)
        if isinstance(sc, LoadedAgent):
            return self.run_loaded_agent(sc, rep)
        if isinstance(sc, CaptureStream):
            return self.run_capture(sc, tool, rep)
        r = {"scenario": sc.name, "tool": tool, "rep": rep}
        sc.before_run()
        tool_p = None
        try:
            if tool == "baseline":
                r["load"] = self.run_load(sc, self.seconds)
                r["extra"] = sc.after_run()
                r["generated"] = sc.generated(r["load"], r["extra"])
                return r
            out = os.path.join(self.work, f"{sc.name}.{tool}.{rep}.out")
            err = os.path.join(self.work, f"{sc.name}.{tool}.{rep}.err")
            with open(out, "wb") as fo, open(err, "wb") as fe:
                t0 = time.monotonic()
                tool_p = spawn(self.tool_cmd(sc, tool), fo, fe, cpu=self.tool_cpu)
            ping_re = sc.pattern(tool, ping=True)
            off, ready = 0, None
            while time.monotonic() - t0 < 120:
                if tool_p.poll() is not None:
                    raise Fatal(f"{tool} exited with {tool_p.returncode} before its first event: {tail(err)}")
                self.ping(sc)
                found, off = first_match(out, ping_re, off)
                if found:
                    ready = time.monotonic() - t0
                    break
                time.sleep(0.01)
            if ready is None:
                raise Fatal(f"{tool} delivered no event within 120 s: {tail(err)}")
            r["first_event_s"] = ready
            cpu0 = cpu_seconds(tool_p.pid)
            ids = bpf_prog_ids(tool_p.pid)
            bpf0 = bpf_run_stats(ids)
            r["startup_cpu_s"] = cpu0
            r["load"] = self.run_load(sc, self.seconds)
            r["extra"] = sc.after_run()
            r["generated"] = sc.generated(r["load"], r["extra"])
            wait_quiet(out)
            cpu1 = cpu_seconds(tool_p.pid)
            bpf1 = bpf_run_stats(ids)
            r["peak_rss_kib"] = vm_hwm_kib(tool_p.pid)
            r["cpu_s"] = cpu1 - cpu0
            r["bpf_run_ns"] = bpf1[0] - bpf0[0]
            r["bpf_run_cnt"] = bpf1[1] - bpf0[1]
            r["bpf_progs"] = len(ids)
            tool_p.send_signal(signal.SIGINT)
            r["exit_code"], ru = reap_rusage(tool_p, 60)
            r["total_cpu_s"] = ru.ru_utime + ru.ru_stime
            r["peak_rss_kib"] = max(r["peak_rss_kib"] or 0, ru.ru_maxrss)
            tool_p = None
            r["delivered"] = count_matches(out, sc.pattern(tool))
            if tool == "plumb":
                records, summary = plumb_lost(out, err)
                r["lost_records"], r["lost_summary"] = records, summary
                r["lost"] = summary if summary is not None else records
            else:
                r["lost"] = bpftrace_lost(out, err)
            r["accounted"] = accounted(sc, r)
            if not self.args.keep:
                os.unlink(out)
            return r
        finally:
            if tool_p is not None:
                tool_p.kill()
                reap(tool_p, 10)
            for p in getattr(sc, "servers", []):
                p.kill()
                reap(p, 10)
            if hasattr(sc, "servers"):
                sc.servers = []

    def run_profile(self, sc, tool, rep):
        """Aggregating tools print once at the end: no first event to time.

        The load starts once the tool's sampling programs are attached (its
        perf_event fds, one per CPU, exist); `first event` is that time."""
        r = {"scenario": sc.name, "tool": tool, "rep": rep, "extra": {}}
        if tool == "baseline":
            r["load"] = self.run_load(sc, self.seconds)
            r["generated"] = sc.generated(r["load"], {})
            return r
        out = os.path.join(self.work, f"{sc.name}.{tool}.{rep}.out")
        err = os.path.join(self.work, f"{sc.name}.{tool}.{rep}.err")
        tool_p = None
        try:
            with open(out, "wb") as fo, open(err, "wb") as fe:
                t0 = time.monotonic()
                tool_p = spawn(sc.tool_cmd(tool, self.seconds), fo, fe, cpu=self.tool_cpu)
            while perf_event_fds(tool_p.pid) < self.ncpu:
                if tool_p.poll() is not None:
                    raise Fatal(f"{tool} exited with {tool_p.returncode} before sampling: {tail(err)}")
                if time.monotonic() - t0 > 120:
                    raise Fatal(f"{tool} did not attach its sampling programs within 120 s: {tail(err)}")
                time.sleep(0.01)
            r["first_event_s"] = time.monotonic() - t0
            r["first_event_is_attach"] = True
            time.sleep(0.2)  # attach of the last CPU's program
            cpu0 = cpu_seconds(tool_p.pid)
            ids = bpf_prog_ids(tool_p.pid)
            bpf0 = bpf_run_stats(ids)
            r["startup_cpu_s"] = cpu0
            r["load"] = self.run_load(sc, self.seconds)
            r["generated"] = sc.generated(r["load"], {})
            bpf1 = bpf_run_stats(ids)
            r["peak_rss_kib"] = vm_hwm_kib(tool_p.pid)
            r["bpf_run_ns"] = bpf1[0] - bpf0[0]
            r["bpf_run_cnt"] = bpf1[1] - bpf0[1]
            r["bpf_progs"] = len(ids)
            # The profile (stack walk results, symbols) is written on SIGINT:
            # that work is part of the tool's cost, so CPU runs to its exit.
            tool_p.send_signal(signal.SIGINT)
            r["exit_code"], ru = reap_rusage(tool_p, 120)
            tool_p = None
            r["total_cpu_s"] = ru.ru_utime + ru.ru_stime
            r["cpu_s"] = r["total_cpu_s"] - cpu0
            r["peak_rss_kib"] = max(r["peak_rss_kib"] or 0, ru.ru_maxrss)
            r["delivered"], r["lost"] = sc.samples(tool, out, err)
            # Timer sampling: expected is approximate, allow 3%.
            g = r["generated"]
            r["accounted"] = abs(r["delivered"] + r["lost"] - g) <= max(2, 0.03 * g)
            if not self.args.keep:
                os.unlink(out)
            return r
        finally:
            if tool_p is not None:
                tool_p.kill()
                reap(tool_p, 10)

    def run_loads(self, cmds):
        """Run the load commands side by side; their JSON reports by key."""
        procs = {k: spawn(cmd, subprocess.PIPE, subprocess.PIPE, cpu=self.load_cpu) for k, cmd in cmds.items()}
        try:
            out = {}
            for k, p in procs.items():
                o, e = p.communicate(timeout=self.seconds + 120)
                CHILDREN.discard(p.pid)
                if p.returncode != 0:
                    raise Fatal(f"load {' '.join(cmds[k])} failed: {e.decode().strip()}")
                out[k] = json.loads(o.decode().strip().splitlines()[-1])
            return out
        finally:
            for p in procs.values():
                if p.pid in CHILDREN:
                    p.kill()
                    reap(p, 10)

    def run_capture(self, sc, tool, rep):
        """One capture run: the tool starts, the load runs once the tool's
        filtered socket is bound, the last block is left time to be read,
        then SIGINT. CPU is from the tool's readiness to its exit (reading
        the ring, writing and closing the file); start-up is left out."""
        r = {"scenario": sc.name, "kind": sc.kind, "tool": tool, "rep": rep, "extra": {}}
        self.lab.zero_counters()
        if tool == "baseline":
            loads = self.run_loads(sc.load_cmds(self.seconds))
            r["load"], r["other_load"] = loads["stream"], loads["other"]
            r["generated"] = loads["stream"]["ops"]
            r["extra"] = {"rule_packets": self.lab.drop_count(sc.port)}
            return r
        path = os.path.join(self.work, f"{sc.name}.{tool}.{rep}.{sc.file_ext(tool)}")
        err = os.path.join(self.work, f"{sc.name}.{tool}.{rep}.err")
        p = None
        try:
            with open(err, "wb") as fe:
                t0 = time.monotonic()
                p = spawn(sc.tool_cmd(tool, path), subprocess.DEVNULL, fe, cpu=self.tool_cpu)
            while not sc.ready(p.pid):
                if p.poll() is not None:
                    raise Fatal(f"{tool} exited with {p.returncode} before capturing: {tail(err)}")
                if time.monotonic() - t0 > 60:
                    raise Fatal(f"{tool} had no filtered packet socket on {sc.dev} after 60 s: {tail(err)}")
                time.sleep(0.01)
            r["ready_s"] = time.monotonic() - t0
            cpu0 = task_cpu_s(p.pid)
            r["startup_cpu_s"] = cpu0
            loads = self.run_loads(sc.load_cmds(self.seconds))
            r["load"], r["other_load"] = loads["stream"], loads["other"]
            r["generated"] = loads["stream"]["ops"]
            r["extra"] = {
                "rule_packets": self.lab.drop_count(sc.port),
                "other_rule_packets": self.lab.drop_count(sc.other_port),
            }
            time.sleep(sc.settle_s)
            if p.poll() is not None:
                raise Fatal(f"{tool} exited with {p.returncode} during the capture: {tail(err)}")
            r["run_cpu_s"] = task_cpu_s(p.pid) - cpu0
            r["peak_rss_kib"] = vm_hwm_kib(p.pid)
            p.send_signal(signal.SIGINT)
            r["exit_code"], ru = reap_rusage(p, 60)
            p = None
            r["total_cpu_s"] = ru.ru_utime + ru.ru_stime
            r["total_utime_s"], r["total_stime_s"] = ru.ru_utime, ru.ru_stime  # start-up included
            r["cpu_s"] = r["total_cpu_s"] - cpu0
            # Peak RSS is VmHWM read before SIGINT: wait4's ru_maxrss starts
            # from the forking Python's RSS (kept across exec), larger than both.
            r["ru_maxrss_kib"] = ru.ru_maxrss
            r["reported"], r["kernel_drops"] = sc.counts(tool, err)
            r["file_packets"] = file_packets(path)
            r["file_bytes"] = os.path.getsize(path) if os.path.exists(path) else None
            # The file is the reference; without capinfos/tshark, the tool's count.
            r["delivered"] = r["file_packets"] if r["file_packets"] is not None else r["reported"]
            g, d = r["generated"], r["delivered"]
            r["lost"] = g - d if d is not None else None
            r["cpu_us_per_packet"] = r["cpu_s"] / d * 1e6 if d else None
            # Every packet sent to the port is in the file or in the tool's
            # kernel drop count, and the tool's count is the file's.
            r["accounted"] = (
                d is not None and r["kernel_drops"] is not None and d + r["kernel_drops"] == g
                and r["reported"] == d
            )
            log(
                f"  sent {g} delivered {d} (tool says {r['reported']}, kernel drops {r['kernel_drops']}) "
                f"lost {r['lost']} cpu {r['cpu_s'] * 1e3:.1f} ms = {fmt(r['cpu_us_per_packet'], '{:.3f}')} us/packet "
                f"rss {r['peak_rss_kib']} KiB ready {r['ready_s']:.2f}s"
            )
            if not self.args.keep and os.path.exists(path):
                os.unlink(path)
            return r
        finally:
            if p is not None:
                p.kill()
                reap(p, 10)

    def run_agent(self, sc, rep):
        """CPU and peak memory of an agent left alone (warm-up excluded)."""
        seconds = 5.0 if self.quick else 60.0
        err = os.path.join(self.work, f"{sc.name}.{rep}.err")
        r = {"scenario": sc.name, "tool": "plumb", "rep": rep, "seconds": seconds}
        p = None
        try:
            with open(err, "wb") as fe:
                p = spawn(sc.tool_cmd(), subprocess.DEVNULL, fe, cpu=self.tool_cpu)
            sc.metrics = agent_ready(p, err)
            time.sleep(1.0)  # what follows start-up settles: not counted
            cpu0 = cpu_seconds(p.pid)
            time.sleep(seconds)
            if p.poll() is not None:
                raise Fatal(f"plumb agent exited with {p.returncode}: {tail(err)}")
            r["cpu_s"] = cpu_seconds(p.pid) - cpu0
            r["cpu_pct"] = 100.0 * r["cpu_s"] / seconds
            r["peak_rss_kib"] = vm_hwm_kib(p.pid)
            r["bpf_progs"] = len(bpf_prog_ids(p.pid))
            r["metrics_status"], r["metrics_bytes"] = sc.scrape()
            p.send_signal(signal.SIGTERM)
            r["exit_code"], ru = reap_rusage(p, 30)
            p = None
            r["peak_rss_kib"] = max(r["peak_rss_kib"] or 0, ru.ru_maxrss)
            return r
        finally:
            if p is not None:
                p.kill()
                reap(p, 10)

    def run_loaded_agent(self, sc, rep):
        """Agent CPU and memory while the load runs, /metrics scraped every
        10 s as Prometheus would; its counters against the load's counts."""
        seconds = 5.0 if self.quick else 60.0
        err = os.path.join(self.work, f"{sc.name}.{rep}.err")
        r = {"scenario": sc.name, "tool": "plumb", "rep": rep, "seconds": seconds}
        p, server, loads = None, None, {}
        try:
            with open(err, "wb") as fe:
                p = spawn(sc.tool_cmd(), subprocess.DEVNULL, fe, cpu=self.tool_cpu)
            sc.metrics = agent_ready(p, err)
            self.lab.zero_counters()
            server = spawn(
                [
                    self.load, "--cgroup", sc.server.procs, "--netns", Lab.path(self.lab.b),
                    "tcp-server", str(sc.tcp_port), "3600",
                ],
                subprocess.PIPE, subprocess.PIPE, cpu=self.load_cpu,
            )
            if server.stdout.readline().strip() != b"ready":
                raise Fatal(f"tcp server did not start: {server.stderr.read().decode().strip()}")
            before = sc.counts(sc.scrape())
            ids = bpf_prog_ids(p.pid)
            bpf0 = bpf_run_stats(ids)
            cpu0 = cpu_seconds(p.pid)
            t0 = time.monotonic()
            loads = {k: spawn(cmd, subprocess.PIPE, subprocess.PIPE, cpu=self.load_cpu) for k, cmd in sc.loads(seconds).items()}
            scrapes = 0
            while any(l.poll() is None for l in loads.values()):
                time.sleep(0.2)
                if time.monotonic() - t0 >= 10 * (scrapes + 1):
                    sc.scrape()
                    scrapes += 1
            load = {}
            for k, l in loads.items():
                out, e = l.communicate(timeout=120)
                CHILDREN.discard(l.pid)
                if l.returncode != 0:
                    raise Fatal(f"load {k} failed: {e.decode().strip()}")
                load[k] = json.loads(out.decode().strip().splitlines()[-1])
            loads = {}
            server.send_signal(signal.SIGTERM)
            out, _ = server.communicate(timeout=10)
            CHILDREN.discard(server.pid)
            accepted = json.loads(out.decode().strip().splitlines()[-1])["ops"]
            server = None
            cpu1 = cpu_seconds(p.pid)
            bpf1 = bpf_run_stats(ids)
            after = sc.counts(sc.scrape())
            got = {k: after[k] - before[k] for k in after}
            want = {
                "execs": load["exec"]["ops"],
                "drops": self.lab.drop_count(sc.drop_port),
                "connections_out": load["tcp"]["ops"],
                "connections_in": accepted,
            }
            r["load"] = {k: v for k, v in load.items()}
            r["want"], r["got"] = want, got
            r["generated"] = sum(want.values())
            r["delivered"] = sum(got[k] for k in want)
            r["lost"] = got["map_full"]
            r["accounted"] = all(got[k] == want[k] for k in want)
            r["cpu_s"] = cpu1 - cpu0
            r["cpu_pct"] = 100.0 * r["cpu_s"] / seconds
            r["cpu_s_per_M"] = r["cpu_s"] / r["generated"] * 1e6 if r["generated"] else None
            r["events_per_s"] = r["generated"] / seconds
            # The counters run for every event of the host, the load's and
            # any other: per load event this is an upper bound.
            r["bpf_run_ns"], r["bpf_run_cnt"] = bpf1[0] - bpf0[0], bpf1[1] - bpf0[1]
            r["bpf_ns_per_event"] = r["bpf_run_ns"] / r["generated"] if r["generated"] else None
            r["scrapes"] = scrapes + 2
            r["peak_rss_kib"] = vm_hwm_kib(p.pid)
            r["bpf_progs"] = len(bpf_prog_ids(p.pid))
            p.send_signal(signal.SIGTERM)
            r["exit_code"], ru = reap_rusage(p, 30)
            p = None
            r["peak_rss_kib"] = max(r["peak_rss_kib"] or 0, ru.ru_maxrss)
            log(
                f"  load {r['events_per_s']:.0f} events/s, agent cpu {r['cpu_s']:.2f}s "
                f"({r['cpu_s_per_M'] or 0:.2f} s/M), bpf {r['bpf_ns_per_event'] or 0:.0f} ns/event, "
                f"rss {r['peak_rss_kib']} KiB, counts {got} vs {want}"
            )
            return r
        finally:
            for l in list(loads.values()) + [x for x in (server, p) if x is not None]:
                l.kill()
                reap(l, 10)


def perf_event_fds(pid):
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]":
                    n += 1
            except OSError:
                continue
    except FileNotFoundError:
        pass
    return n


def tail(path, n=3):
    try:
        with open(path, errors="replace") as f:
            lines = [x.strip() for x in f if x.strip() and "RLIMIT_MEMLOCK" not in x]
        return " | ".join(lines[-n:]) or "(no output)"
    except FileNotFoundError:
        return "(no output)"


def wait_quiet(path, quiet=0.5, limit=120):
    """Wait until the tool has written everything it had queued."""
    last, since, start = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit:
        size = os.path.getsize(path)
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def accounted(sc, r):
    """delivered + lost == generated; for unfiltered gadgets (drop) the loss
    count may include other hosts' packets, so only bound it; for a storm
    the tool filters out (another pod's), nothing delivered, nothing lost."""
    d, lost, g = r["delivered"], r["lost"], r["generated"]
    if isinstance(sc, DropOtherPod):
        return d == 0 and lost == 0
    if getattr(sc, "filtered", True):
        return d + lost == g
    return d <= g <= d + lost


# ---------------------------------------------------------------- report


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs):
    """Medians per scenario and tool, and the plumb/bpftrace ratios."""
    out = {}
    for r in runs:
        out.setdefault(r["scenario"], {}).setdefault(r["tool"], []).append(r)
    table = {}
    for name, tools in out.items():
        if name == IdleAgent.name:
            rs = tools["plumb"]
            table[name] = {
                "plumb": {
                    "reps": len(rs),
                    "seconds": rs[0]["seconds"],
                    "cpu_pct": median([r["cpu_pct"] for r in rs]),
                    "peak_rss_mib": median([r["peak_rss_kib"] / 1024 for r in rs]),
                    "bpf_progs": rs[0]["bpf_progs"],
                }
            }
            continue
        if name == LoadedAgent.name:
            rs = tools["plumb"]
            mid = sorted(rs, key=lambda r: r["generated"])[len(rs) // 2]
            table[name] = {
                "plumb": {
                    "reps": len(rs),
                    "seconds": rs[0]["seconds"],
                    "events_per_s": median([r["events_per_s"] for r in rs]),
                    "cpu_pct": median([r["cpu_pct"] for r in rs]),
                    "cpu_s_per_M": median([r["cpu_s_per_M"] for r in rs]),
                    "bpf_ns_per_event": median([r["bpf_ns_per_event"] for r in rs]),
                    "peak_rss_mib": median([r["peak_rss_kib"] / 1024 for r in rs]),
                    "bpf_progs": rs[0]["bpf_progs"],
                    "accounted_all_reps": all(r["accounted"] for r in rs),
                    "want": mid["want"],
                    "got": mid["got"],
                    "load_rates": {k: v["rate"] for k, v in mid["load"].items()},
                }
            }
            continue
        if any(r.get("kind") == "capture" for rs in tools.values() for r in rs):
            table[name] = summarize_capture(tools)
            continue
        base_rate = median([r["load"]["rate"] for r in tools.get("baseline", [])])
        row = {"baseline_rate": base_rate}
        for tool in ("plumb", "bpftrace"):
            rs = tools.get(tool, [])
            if not rs:
                continue
            gen = [r["generated"] for r in rs]
            # Counts come from one run (the median by generated), so that a
            # row's generated, delivered and lost belong together.
            mid = sorted(rs, key=lambda r: r["generated"])[len(rs) // 2]
            m = {
                "reps": len(rs),
                "generated": mid["generated"],
                "delivered": mid["delivered"],
                "lost": mid["lost"],
                "lost_per_rep": [r["lost"] for r in rs],
                "accounted_all_reps": all(r["accounted"] for r in rs),
                "cpu_s_per_M": median([r["cpu_s"] / g * 1e6 if g else None for r, g in zip(rs, gen)]),
                "bpf_ns_per_event": median([r["bpf_run_ns"] / g if g else None for r, g in zip(rs, gen)]),
                "peak_rss_mib": median([r["peak_rss_kib"] / 1024 for r in rs if r.get("peak_rss_kib")]),
                "first_event_s": median([r["first_event_s"] for r in rs]),
                "startup_cpu_s": median([r["startup_cpu_s"] for r in rs]),
                "load_rate": median([r["load"]["rate"] for r in rs]),
            }
            m["delivered_pct"] = 100.0 * m["delivered"] / m["generated"] if m["generated"] else None
            if base_rate and m["load_rate"] is not None:
                m["slowdown_pct"] = 100.0 * (1 - m["load_rate"] / base_rate)
            row[tool] = m
        if "plumb" in row and "bpftrace" in row:
            ratio = {}
            for k in ("cpu_s_per_M", "bpf_ns_per_event", "peak_rss_mib", "first_event_s"):
                a, b = row["plumb"].get(k), row["bpftrace"].get(k)
                ratio[k] = a / b if a is not None and b else None
            row["ratio_plumb_over_bpftrace"] = ratio
        table[name] = row
    return table


def summarize_capture(tools):
    """plumb capture and tcpdump: medians, the plumb/tcpdump ratios and the
    issue's requirement (plumb loses no more, spends no more CPU per packet)."""
    base_rate = median([r["load"]["rate"] for r in tools.get("baseline", [])])
    row = {"baseline_rate": base_rate}
    for tool in ("plumb", "tcpdump"):
        rs = tools.get(tool, [])
        if not rs:
            continue
        mid = sorted(rs, key=lambda r: r["generated"])[len(rs) // 2]
        m = {
            "reps": len(rs),
            "generated": mid["generated"],
            "other_generated": mid["other_load"]["ops"],
            "delivered": mid["delivered"],
            "reported": mid["reported"],
            "lost": mid["lost"],
            "kernel_drops": mid["kernel_drops"],
            "lost_per_rep": [r["lost"] for r in rs],
            "accounted_all_reps": all(r["accounted"] for r in rs),
            "cpu_us_per_packet": median([r["cpu_us_per_packet"] for r in rs]),
            "cpu_us_per_packet_per_rep": [r["cpu_us_per_packet"] for r in rs],
            "peak_rss_mib": median([r["peak_rss_kib"] / 1024 for r in rs if r.get("peak_rss_kib")]),
            "ready_s": median([r["ready_s"] for r in rs]),
            "startup_cpu_s": median([r["startup_cpu_s"] for r in rs]),
            "file_bytes_per_packet": median(
                [r["file_bytes"] / r["delivered"] if r.get("file_bytes") and r["delivered"] else None for r in rs]
            ),
            "load_rate": median([r["load"]["rate"] for r in rs]),
        }
        if base_rate and m["load_rate"] is not None:
            m["slowdown_pct"] = 100.0 * (1 - m["load_rate"] / base_rate)
        row[tool] = m
    if "plumb" in row and "tcpdump" in row:
        a, b = row["plumb"], row["tcpdump"]
        row["ratio_plumb_over_tcpdump"] = {
            k: a[k] / b[k] if a.get(k) is not None and b.get(k) else None
            for k in ("cpu_us_per_packet", "peak_rss_mib", "ready_s")
        }
        # Runs of the same repetition side by side (they ran one after the other).
        by_rep = {}
        for tool in ("plumb", "tcpdump"):
            for r in tools[tool]:
                by_rep.setdefault(r["rep"], {})[tool] = r
        pairs = [v for _, v in sorted(by_rep.items()) if len(v) == 2]

        def no_more(x, y):
            return x is not None and y is not None and x <= y

        row["requirement"] = {
            "lost_no_more": no_more(a["lost"], b["lost"]) and no_more(max(a["lost_per_rep"]), max(b["lost_per_rep"])),
            "cpu_no_more": no_more(a["cpu_us_per_packet"], b["cpu_us_per_packet"]),
            "reps": len(pairs),
            "reps_lost_no_more": sum(no_more(v["plumb"]["lost"], v["tcpdump"]["lost"]) for v in pairs),
            "reps_cpu_no_more": sum(
                no_more(v["plumb"]["cpu_us_per_packet"], v["tcpdump"]["cpu_us_per_packet"]) for v in pairs
            ),
        }
    return row


def fmt(v, spec="{:.2f}"):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    return spec.format(v)


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except FileNotFoundError:
        pass
    bt = sh("bpftrace", "--version", check=False).strip()
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": model,
        "bpftrace": bt,
        "tcpdump": (sh("tcpdump", "--version", check=False).splitlines() or [""])[0].strip()
        if shutil.which("tcpdump")
        else "",
        "plumb": sh(BENCH_PLUMB[0], "--version", check=False).strip() if BENCH_PLUMB else "",
    }


BENCH_PLUMB = []


def markdown(meta, scenarios, table, skipped, m, runs=()):
    """scenarios: [{name, title, aggregated, kind}] in table order."""
    capture = any(sc.get("kind") == "capture" for sc in scenarios)
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['bpftrace']}, {m['plumb']}.",
        f"Mode: {meta['mode']}; {meta['seconds']:g} s of load per run, {meta['reps']} repetition(s), "
        f"medians; baseline, plumb and bpftrace{' (tcpdump for capture)' if capture else ''} interleaved in each "
        "repetition.",
    ]
    head = len(lines)
    lines += [
        "",
        "| scenario | tool | generated | delivered | lost | adds up | CPU s / M events | BPF ns / event "
        "| peak RSS MiB | first event s | load rate /s | load slowdown |",
        "|---|---|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in scenarios:
        row = table.get(sc["name"])
        if not row or sc["name"] in (IdleAgent.name, LoadedAgent.name) or sc.get("kind") == "capture":
            continue
        for tool in ("plumb", "bpftrace"):
            t = row.get(tool)
            if not t:
                continue
            lines.append(
                f"| {sc['title']} | {tool} | {fmt(t['generated'], '{:.0f}')} | {fmt(t['delivered'], '{:.0f}')} "
                f"| {fmt(t['lost'], '{:.0f}')} | {fmt(t['accounted_all_reps'])} | {fmt(t['cpu_s_per_M'])} "
                f"| {fmt(t['bpf_ns_per_event'], '{:.0f}')} | {fmt(t['peak_rss_mib'], '{:.1f}')} "
                f"| {fmt(t['first_event_s'])}{' ¹' if sc['aggregated'] else ''} | {fmt(t['load_rate'], '{:.0f}')} | {fmt(t.get('slowdown_pct'), '{:.1f}%')} |"
            )
    tracing = len(lines) > head + 3  # rows of the tracing table
    if not tracing:
        del lines[head:]
    lines += [
        "",
        "plumb / bpftrace (below 1: plumb uses less):",
        "",
        "| scenario | CPU per event | BPF time per event | peak RSS | time to first event | delivered (plumb vs bpftrace) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    head = len(lines)
    for sc in scenarios:
        row = table.get(sc["name"], {})
        ratio = row.get("ratio_plumb_over_bpftrace")
        if not ratio:
            continue
        lines.append(
            f"| {sc['title']} | {fmt(ratio['cpu_s_per_M'])} | {fmt(ratio['bpf_ns_per_event'])} "
            f"| {fmt(ratio['peak_rss_mib'])} | {fmt(ratio['first_event_s'])} "
            f"| {fmt(row['plumb']['delivered_pct'], '{:.1f}%')} vs {fmt(row['bpftrace']['delivered_pct'], '{:.1f}%')} |"
        )
    if len(lines) == head:
        del lines[head - 5 :]
    agent = table.get(IdleAgent.name, {}).get("plumb")
    if agent:
        lines.append(
            f"\nIdle agent (`plumb agent`, no load, {agent['seconds']:g} s from 1 s after the agent said it was ready): "
            + (
                f"{agent['cpu_pct']:.2f}% of one CPU"
                if agent["cpu_pct"]
                else f"not one 10 ms CPU tick (under {100 * 0.01 / agent['seconds']:.3f}% of one CPU)"
            )
            + f", peak RSS {agent['peak_rss_mib']:.1f} MiB, "
            f"{agent['bpf_progs']} BPF programs loaded, /metrics answering."
        )
    loaded = table.get(LoadedAgent.name, {}).get("plumb")
    if loaded:
        w, g, rates = loaded["want"], loaded["got"], loaded["load_rates"]
        lines.append(
            f"\nAgent under steady load ({loaded['seconds']:g} s of execs at {rates['exec']:.0f}/s in one fake pod, "
            f"UDP into a DROP rule at {rates['udp']:.0f}/s and TCP connections at {rates['tcp']:.0f}/s between two "
            f"others, /metrics scraped at the start, every 10 s and at the end; {loaded['reps']} run(s), medians): "
            f"{loaded['events_per_s']:.0f} counted events/s; agent user-space CPU {loaded['cpu_pct']:.2f}% of one CPU, "
            f"{fmt(loaded['cpu_s_per_M'])} CPU s per million events; its {loaded['bpf_progs']} BPF programs "
            f"{fmt(loaded['bpf_ns_per_event'], '{:.0f}')} ns of kernel time per load event (the host's other "
            f"events included); peak RSS {loaded['peak_rss_mib']:.1f} MiB. "
            f"/metrics against the load's own counts: execs {g['execs']:.0f} = {w['execs']}, "
            f"drops {g['drops']:.0f} = {w['drops']} (the rule's counter), connections out {g['connections_out']:.0f} = "
            f"{w['connections_out']}, in {g['connections_in']:.0f} = {w['connections_in']}; "
            f"all equal in every run: {fmt(loaded['accounted_all_reps'])}."
        )
    for sc in scenarios:
        if sc.get("kind") == "capture" and sc["name"] in table:
            lines += capture_markdown(sc, table[sc["name"]], meta, m)
    for name, why in skipped:
        lines.append(f"\nNot measured: {name}: {why}.")
    for note in meta.get("extra_notes", []):
        lines.append(f"\n{note}")
    lossy = [r for r in runs if r.get("lost")]
    if lossy:
        lines.append("\nRuns where a tool reported lost events (rows above show the median run):")
        for r in lossy:
            lines.append(
                f"- {r['scenario']} rep {r['rep'] + 1}: {r['tool']} generated {r['generated']}, "
                f"delivered {r['delivered']}, reported lost {r['lost']}"
            )
    stuck = [r for r in runs if r.get("exit_code") not in (None, 0)]
    if stuck:
        lines.append("\nRuns where the tool did not exit cleanly on SIGINT (killed after 60 s or failed):")
        for r in stuck:
            lines.append(f"- {r['scenario']} rep {r['rep'] + 1}: {r['tool']} exit code {r['exit_code']}")
    lines += ["", NOTES.strip(), ""] if tracing else [""]
    return "\n".join(lines)


NOTES = """
Notes. Generated is the load generator's own count (for drops, the DROP
rule's packet counter). Delivered counts only the load's marker events in
the tool's output (its comm, paths, ports). Lost is what the tool reported:
plumb's `N lost` summary and `type: lost` records, bpftrace's `Lost N
events`. Both tools print the same fields per event on the same hook, and
both filter in the kernel to the load's events: for exec and open on the
load's cgroup v2 (plumb `--cgroup`, bpftrace `cgroup == cgroupid(...)`),
for TCP plumb on the cgroup and bpftrace on the load's ports (its
tracepoint names no cgroup); drops are not filtered by either. CPU is the tool's utime+stime from /proc/PID/stat while
the load ran (start-up excluded), per million generated events. BPF time is
the kernel's run_time_ns for the tool's programs (kernel.bpf_stats_enabled)
over the same window, per generated event. The tool is pinned to CPU 0 and
the load to CPU 1; with two CPUs the tool, the load and the kernel's
softirq work still compete, so slowdowns include that contention.
First event is measured from the tool's start by repeated 20 ms bursts of
ping events, so its resolution is about 30 ms. CPU time comes in clock
ticks (10 ms), so at low rates CPU per event is coarse.

CPU profiles: generated is the expected sample count (Hz x the CPU
seconds the one-thread load itself consumed, by CLOCK_PROCESS_CPUTIME_ID), delivered is the samples the tool attributed to the
load's cgroup; "adds up" allows 3% for timer jitter. Both tools count stacks
in the kernel and print once at the end, so CPU runs to the tool's exit
(symbolization included), load rate is the load's millions of loop
iterations per second, and ¹ marks the time until the tool's sampling
programs were attached (one perf event per CPU), not a first event.
"""


def capture_markdown(sc, row, meta, m):
    p, t = row.get("plumb"), row.get("tcpdump")
    if not p and not t:
        return []
    any_row = p or t
    lines = [
        "",
        f"Packet capture: {sc['title']}, `plumb capture` against {m.get('tcpdump') or 'tcpdump'}, one after the "
        f"other in each repetition (who goes first alternates), on the same interface of the same lab pod (network "
        f"namespace) with the same filter, a {CaptureStream.ring_mib} MiB ring (`-B {CaptureStream.ring_mib}MiB` / "
        f"`-B {CaptureStream.ring_mib * 1024}`) and the default 262144-byte snaplen; "
        f"{any_row['other_generated']} more packets per run went to port {CaptureStream.other_port}, which the "
        f"filter rejects. {any_row['reps']} run(s) per tool of {meta['seconds']:g} s of load, medians:",
        "",
        "| tool | sent | delivered (in file) | tool's count | lost | kernel drops | adds up | CPU µs / packet "
        "| peak RSS MiB | bytes / packet in file | ready s | load rate /s |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for tool, x in (("plumb", p), ("tcpdump", t)):
        if not x:
            continue
        lines.append(
            f"| {tool} | {fmt(x['generated'], '{:.0f}')} | {fmt(x['delivered'], '{:.0f}')} | {fmt(x['reported'], '{:.0f}')} "
            f"| {fmt(x['lost'], '{:.0f}')} | {fmt(x['kernel_drops'], '{:.0f}')} | {fmt(x['accounted_all_reps'])} "
            f"| {fmt(x['cpu_us_per_packet'], '{:.3f}')} | {fmt(x['peak_rss_mib'], '{:.1f}')} "
            f"| {fmt(x['file_bytes_per_packet'], '{:.0f}')} | {fmt(x['ready_s'])} | {fmt(x['load_rate'], '{:.0f}')} |"
        )
    ratio, req = row.get("ratio_plumb_over_tcpdump"), row.get("requirement")
    if ratio and req:
        lines += [
            "",
            "| plumb / tcpdump | CPU per packet | peak RSS | time to ready | lost (plumb vs tcpdump) |",
            "|---|---:|---:|---:|---:|",
            f"| {sc['title']} | {fmt(ratio['cpu_us_per_packet'])} | {fmt(ratio['peak_rss_mib'])} "
            f"| {fmt(ratio['ready_s'])} | {fmt(p['lost'], '{:.0f}')} vs {fmt(t['lost'], '{:.0f}')} |",
            "",
            f"Requirement (plumb loses no more than tcpdump and spends no more CPU per packet): "
            f"loses no more {fmt(req['lost_no_more'])} ({req['reps_lost_no_more']}/{req['reps']} repetitions), "
            f"no more CPU per packet {fmt(req['cpu_no_more'])} (medians; {req['reps_cpu_no_more']}/{req['reps']} "
            "repetitions).",
        ]
    lines += [
        "",
        "Sent is the generator's own count for the filtered port; delivered the packets in the tool's file "
        "(capinfos); lost = sent - delivered; tool's count and kernel drops are what the tool printed at the end "
        "(plumb's `N packets, M dropped by the kernel`, tcpdump's `packets captured` and `dropped by kernel`); adds "
        "up: delivered + kernel drops = sent and the tool's count is the file's, in every run. CPU is the tool's "
        "utime+stime (ns resolution: schedstat at readiness, wait4's rusage at exit) from the moment its filtered "
        "socket was bound (ss) to its exit after SIGINT, start-up excluded, the last 1.5 s idle (so that "
        "tcpdump's 1 s block timeout hands over the last block), divided by delivered. Peak RSS is VmHWM just "
        "before SIGINT. Both tools are pinned to CPU 0, the load to CPU 1; the files go to the harness's "
        "temporary directory, so CPU includes that file system's write path. The filter and the copy "
        "into the ring run in the kernel's softirq on the load's CPU for both tools alike and are not in these "
        "figures. plumb writes pcapng with a comment per packet, tcpdump pcap.",
    ]
    return lines


def plumb_has(h, *sub):
    """Does this plumb build have the subcommand (`plumb SUB --help` works)?"""
    r = subprocess.run([h.plumb, *sub, "--help"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return r.returncode == 0, r.stdout


def scenario_list(h):
    """The scenarios, and those this plumb build cannot run yet (name, why)."""
    out = [ExecStorm(h, 1000), ExecStorm(h, 5000), ExecStorm(h, 0)]
    out += [OpenStorm(h, 10000), OpenStorm(h, 0)]
    out += [TcpStorm(h, 1000), TcpStorm(h, 0)]
    out += [DropStorm(h, r) for r in (1000, 10000, 100000, 0)]
    out.append(DropOtherPod(h))
    skipped = []
    if plumb_has(h, "profile", "cpu")[0]:
        out += [ProfileCpu(h, 99), ProfileCpu(h, 999)]
    else:
        skipped.append(("CPU profile 99/999 Hz", "profile not built (`plumb profile cpu` missing)"))
    if not plumb_has(h, "capture")[0]:
        skipped.append(("packet capture", "capture not built (`plumb capture` missing)"))
    elif not shutil.which("tcpdump"):
        skipped.append(("packet capture", "tcpdump not found (apt-get install tcpdump)"))
    else:
        out.append(CaptureStream(h))
    ok, usage = plumb_has(h, "agent")
    if ok:
        out.append(IdleAgent(h, usage))
        out.append(LoadedAgent(h))
    else:
        skipped.append(("idle agent", "agent not built (`plumb agent` missing)"))
        skipped.append(("agent under steady load", "agent not built (`plumb agent` missing)"))
    return out, skipped


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds per scenario, one repetition (CI)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for results.md and results.json")
    ap.add_argument("--plumb", default=os.path.join(REPO, "target", "release", "plumb"), help="the plumb binary")
    ap.add_argument("--seconds", type=float, help="load seconds per run (default 5, quick 2)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--only", help="comma-separated scenario name prefixes (exec,open,tcp,drop,profile,capture,agent)")
    ap.add_argument("--keep", action="store_true", help="keep the tools' raw output in the work directory")
    ap.add_argument("--render", metavar="RESULTS_JSON", help="only rewrite results.md from a results.json")
    args = ap.parse_args()

    if args.render:
        with open(args.render) as f:
            d = json.load(f)
        table = summarize(d["runs"])
        md = markdown(d, d["scenarios"], table, list(d["skipped"].items()), d["machine"], d["runs"])
        with open(os.path.join(os.path.dirname(args.render), "results.md"), "w") as f:
            f.write(md)
        print(md)
        return 0

    if os.geteuid() != 0:
        print("bench: run as root (sudo python3 bench/run.py)", file=sys.stderr)
        return 3
    for tool in ("bpftrace", "bpftool", "ip", "iptables", "nsenter"):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (bash scripts/setup.sh installs it)", file=sys.stderr)
            return 3
    if not os.access(args.plumb, os.X_OK):
        print(f"bench: {args.plumb} not found: cargo build --release --locked -p plumb", file=sys.stderr)
        return 3
    BENCH_PLUMB.append(args.plumb)

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    failures = []
    try:
        h = Harness(args)
        set_sysctl("kernel.bpf_stats_enabled", "1")
        scenarios, skipped = scenario_list(h)
        if args.only:
            want = args.only.split(",")
            scenarios = [s for s in scenarios if any(s.name.startswith(w) for w in want)]
        for sc in scenarios:
            if isinstance(sc, (TcpStorm, DropStorm)):
                h.need_lab()
            sc.prepare()
        runs = []
        for rep in range(h.reps):
            for sc in scenarios:
                # Alternate who goes first so warm caches favour neither.
                compared = [t for t in sc.tools if t != "baseline"]
                if rep % 2:
                    compared.reverse()
                order = ["baseline"] * ("baseline" in sc.tools) + compared
                for tool in order:
                    log(f"rep {rep + 1}/{h.reps} {sc.name} {tool}")
                    r = h.run_one(sc, tool, rep)
                    runs.append(r)
                    if tool != "baseline" and "first_event_s" in r:
                        log(
                            f"  generated {r['generated']} delivered {r['delivered']} lost {r['lost']} "
                            f"cpu {r['cpu_s']:.2f}s first {r['first_event_s']:.2f}s rss {r['peak_rss_kib']} KiB"
                        )
                    if tool == "plumb" and not r.get("accounted", True) and not getattr(sc, "aggregated", False):
                        failures.append(
                            f"{sc.name} rep {rep + 1}: plumb delivered {r['delivered']} + lost {r['lost']} "
                            f"!= generated {r['generated']}"
                        )
        table = summarize(runs)
        m = machine()
        os.makedirs(args.out, exist_ok=True)
        meta = {"mode": "quick" if h.quick else "full", "seconds": h.seconds, "reps": h.reps}
        order = [
            {"name": s.name, "title": s.title, "aggregated": getattr(s, "aggregated", False), "kind": getattr(s, "kind", None)}
            for s in scenarios
        ]
        md = markdown(meta, order, table, skipped, m, runs)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(
                {
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "machine": m,
                    **meta,
                    "scenarios": order,
                    "summary": table,
                    "skipped": dict(skipped),
                    "runs": runs,
                    "plumb_accounting_failures": failures,
                },
                f,
                indent=1,
            )
        print(md)
        log(f"wrote {args.out}/results.md and results.json")
    except Fatal as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"bench: interrupted ({e}); cleaned up", file=sys.stderr)
        return 130
    finally:
        kill_children()
        CLEANUP.run()
    if failures:
        for f in failures:
            print(f"bench: accounting: {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
