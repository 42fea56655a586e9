/*
 * bnch_load: the benchmark's load generators, one binary with a mode each.
 *
 * Every mode counts what it generated itself and prints one JSON line at
 * the end, so the harness compares each tracer with the load's own count
 * (and, for drops, with the kernel's rule counter). Built statically by
 * bench/run.py so that starting it opens no files (no dynamic loader): the
 * only events it raises are the ones it counts.
 *
 *   bnch_load [--cgroup PROCS] [--netns PATH] MODE ARGS...
 *     exec  TARGET RATE SECONDS        posix_spawn TARGET, reap, repeat
 *     open  DIR RATE SECONDS           openat DIR/bnch_exists, DIR/bnch_missing, alternately
 *     tcp-server PORT SECONDS          accept, write 1 byte, close; until SIGTERM or SECONDS
 *     tcp-client ADDR PORT RATE SECONDS  connect, read 1 byte, close with RST
 *     udp   ADDR PORT RATE SECONDS     send 16-byte datagrams
 *     burn  SECONDS                    spin; report iterations per second
 *
 * RATE is operations per second; 0 means as fast as possible. --cgroup
 * moves this process into a cgroup (write to its cgroup.procs) after exec,
 * --netns enters a network namespace (setns, like nsenter --net=PATH).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static volatile sig_atomic_t stop_requested;

static void on_term(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "bnch_load: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: bnch_load [--cgroup PROCS] [--netns PATH] "
			"exec|open|tcp-server|tcp-client|udp|burn ARGS...\n");
	exit(2);
}

static double number(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	if (*s == 0 || *end != 0 || v < 0) {
		fprintf(stderr, "bnch_load: bad number '%s'\n", s);
		exit(2);
	}
	return v;
}

/*
 * Pacing: operation n is due at start + n/rate. When ahead, sleep until the
 * next one is due (absolute time, so sleeps do not accumulate drift).
 */
struct pace {
	double start, end, rate;
	uint64_t done;
};

static void pace_init(struct pace *p, double rate, double seconds)
{
	p->start = now();
	p->end = p->start + seconds;
	p->rate = rate;
	p->done = 0;
}

/* Returns 0 when the run is over. */
static int pace_next(struct pace *p)
{
	double t = now();

	if (t >= p->end || stop_requested)
		return 0;
	if (p->rate > 0) {
		double due = p->start + p->done / p->rate;

		if (due > t) {
			struct timespec ts;
			double abs;

			if (due >= p->end)
				return 0;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			abs = ts.tv_sec + ts.tv_nsec / 1e9 + (due - t);
			ts.tv_sec = (time_t)abs;
			ts.tv_nsec = (long)((abs - ts.tv_sec) * 1e9);
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		}
	}
	return 1;
}

/* cpu_s: this process's own CPU time (a profiler's expected samples). */
static void report(const char *mode, uint64_t ops, uint64_t failed, double seconds)
{
	struct timespec cpu;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
	printf("{\"mode\":\"%s\",\"ops\":%llu,\"failed\":%llu,\"seconds\":%.6f,\"rate\":%.1f,"
	       "\"cpu_s\":%.6f}\n",
	       mode, (unsigned long long)ops, (unsigned long long)failed, seconds,
	       seconds > 0 ? ops / seconds : 0.0, cpu.tv_sec + cpu.tv_nsec / 1e9);
	fflush(stdout);
}

/* exec: posix_spawn the target with up to 32 children in flight. */
static int run_exec(char **argv)
{
	const char *target = argv[0];
	struct pace p;
	uint64_t ok = 0, failed = 0;
	int in_flight = 0, status;
	char *child_argv[] = {(char *)target, NULL};

	pace_init(&p, number(argv[1]), number(argv[2]));
	while (pace_next(&p)) {
		pid_t pid;
		int err;

		while (in_flight >= 32) {
			if (wait(&status) > 0) {
				in_flight--;
				if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
					failed++;
			}
		}
		/* glibc's posix_spawn returns the exec's error: 0 means it ran. */
		err = posix_spawn(&pid, target, NULL, NULL, child_argv, environ);
		p.done++;
		if (err) {
			failed++;
			continue;
		}
		ok++;
		in_flight++;
		while (in_flight > 0 && waitpid(-1, &status, WNOHANG) > 0) {
			in_flight--;
			if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
				failed++;
		}
	}
	while (in_flight > 0 && wait(&status) > 0)
		in_flight--;
	report("exec", ok, failed, now() - p.start);
	return 0;
}

/* open: an existing file and a missing one, alternately; every call counts. */
static int run_open(char **argv)
{
	char exists[4096], missing[4096];
	struct pace p;
	uint64_t ok = 0, enoent = 0, other = 0;

	snprintf(exists, sizeof(exists), "%s/bnch_exists", argv[0]);
	snprintf(missing, sizeof(missing), "%s/bnch_missing", argv[0]);
	pace_init(&p, number(argv[1]), number(argv[2]));
	while (pace_next(&p)) {
		const char *path = (p.done & 1) ? missing : exists;
		int fd = openat(AT_FDCWD, path, O_RDONLY);

		p.done++;
		if (fd >= 0) {
			ok++;
			close(fd);
		} else if (errno == ENOENT) {
			enoent++;
		} else {
			other++;
		}
	}
	/* Every openat is one event whatever its result. */
	report("open", ok + enoent + other, other, now() - p.start);
	return 0;
}

static void addr_of(struct sockaddr_in *sa, const char *ip, const char *port)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)number(port));
	if (inet_pton(AF_INET, ip, &sa->sin_addr) != 1) {
		fprintf(stderr, "bnch_load: bad IPv4 address '%s'\n", ip);
		exit(2);
	}
}

static int run_tcp_server(char **argv)
{
	struct sockaddr_in sa;
	struct sigaction act;
	double start, end;
	uint64_t accepted = 0, failed = 0;
	int one = 1, ls;

	addr_of(&sa, "0.0.0.0", argv[0]);
	memset(&act, 0, sizeof(act));
	act.sa_handler = on_term; /* no SA_RESTART: accept() returns EINTR */
	sigaction(SIGTERM, &act, NULL);
	sigaction(SIGINT, &act, NULL);
	ls = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0)
		die("socket");
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 4096))
		die("bind/listen");
	printf("ready\n");
	fflush(stdout);
	start = now();
	end = start + number(argv[1]);
	while (!stop_requested && now() < end) {
		int c = accept4(ls, NULL, NULL, 0);

		if (c < 0) {
			if (errno != EINTR)
				failed++;
			continue;
		}
		accepted++;
		if (write(c, "x", 1) != 1)
			failed++;
		close(c);
	}
	close(ls);
	report("tcp-server", accepted, failed, now() - start);
	return 0;
}

static int run_tcp_client(char **argv)
{
	struct sockaddr_in sa;
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	struct pace p;
	uint64_t ok = 0, failed = 0;

	addr_of(&sa, argv[0], argv[1]);
	pace_init(&p, number(argv[2]), number(argv[3]));
	while (pace_next(&p)) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		char b;

		p.done++;
		if (s < 0) {
			failed++;
			continue;
		}
		if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			/* Wait for the server's byte: it has accepted and closed. */
			if (read(s, &b, 1) == 1)
				ok++;
			else
				failed++;
			/* RST on close: no TIME_WAIT, so ports never run out. */
			setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		} else {
			failed++;
		}
		close(s);
	}
	report("tcp-client", ok, failed, now() - p.start);
	return 0;
}

static int run_udp(char **argv)
{
	struct sockaddr_in sa;
	struct pace p;
	uint64_t ok = 0, failed = 0;
	char payload[16] = "bnch_load udp..";
	int s;

	addr_of(&sa, argv[0], argv[1]);
	s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)))
		die("udp socket");
	pace_init(&p, number(argv[2]), number(argv[3]));
	while (pace_next(&p)) {
		p.done++;
		if (send(s, payload, sizeof(payload), 0) == (ssize_t)sizeof(payload))
			ok++;
		else
			failed++;
	}
	close(s);
	report("udp", ok, failed, now() - p.start);
	return 0;
}

static int run_burn(char **argv)
{
	volatile uint64_t x = 0;
	uint64_t iters = 0;
	double start = now(), end = start + number(argv[0]);

	while (!stop_requested) {
		for (int i = 0; i < 1000000; i++)
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		iters++;
		if (now() >= end)
			break;
	}
	/* ops: millions of iterations */
	report("burn", iters, 0, now() - start);
	return 0;
}

static void join_cgroup(const char *procs)
{
	FILE *f = fopen(procs, "w");

	if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f))
		die(procs);
}

static void enter_netns(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || setns(fd, CLONE_NEWNET))
		die(path);
	close(fd);
}

int main(int argc, char **argv)
{
	const char *cgroup = NULL;
	int i = 1;

	/* Precise sleeps for the pacing loop. */
	prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
	while (i + 1 < argc && argv[i][0] == '-' && argv[i][1] == '-') {
		if (!strcmp(argv[i], "--cgroup"))
			cgroup = argv[i + 1];
		else if (!strcmp(argv[i], "--netns"))
			enter_netns(argv[i + 1]);
		else
			usage();
		i += 2;
	}
	if (i >= argc)
		usage();
	/* Last, so that the namespace switch is not counted as the load's work. */
	if (cgroup)
		join_cgroup(cgroup);
	argv += i;
	argc -= i;
#define NEED(n)                     \
	do {                        \
		if (argc != (n) + 1) \
			usage();    \
	} while (0)
	if (!strcmp(argv[0], "exec")) {
		NEED(3);
		return run_exec(argv + 1);
	}
	if (!strcmp(argv[0], "open")) {
		NEED(3);
		return run_open(argv + 1);
	}
	if (!strcmp(argv[0], "tcp-server")) {
		NEED(2);
		return run_tcp_server(argv + 1);
	}
	if (!strcmp(argv[0], "tcp-client")) {
		NEED(4);
		return run_tcp_client(argv + 1);
	}
	if (!strcmp(argv[0], "udp")) {
		NEED(4);
		return run_udp(argv + 1);
	}
	if (!strcmp(argv[0], "burn")) {
		NEED(1);
		return run_burn(argv + 1);
	}
	usage();
	return 2;
}
