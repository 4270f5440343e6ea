// SPDX-License-Identifier: GPL-2.0
/*
 * aem_ktests: the KTAP harness of harness.h. Usage:
 *   aem_ktests              run every test
 *   aem_ktests NAME...      run the tests named
 *   aem_ktests -l           list the tests and what they need
 *
 * Each test runs in a child of its own, as AEM_TEST_UID unless it is
 * declared .root; the harness itself stays root to check needs, save and
 * restore parameters and write the kernel-log brackets. After every test
 * the harness checks that the test user's registrations went back to 0
 * over all its contexts (aem-user-regs): a context that outlives its
 * process is a leak, and fails the test that made it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "harness.h"

#define AEM_MAX_TESTS	128
#define AEM_DIAG	1024
#define AEM_SAVE_MAX	8

static const struct aem_test *tests[AEM_MAX_TESTS];
static unsigned int ntests;
static char *diag;	/* shared with the test's child */
static char *skipped;	/* likewise: why the test skipped itself */

void aem_test_add(const struct aem_test *t)
{
	if (ntests < AEM_MAX_TESTS)
		tests[ntests++] = t;
	else
		fprintf(stderr, "harness: too many tests, %s dropped\n", t->name);
}

void aem_fail(const char *fmt, ...)
{
	va_list ap;

	if (diag[0])
		return;	/* keep the first reason */
	va_start(ap, fmt);
	vsnprintf(diag, AEM_DIAG, fmt, ap);
	va_end(ap);
	if (!diag[0])
		strcpy(diag, "failed");
}

bool aem_failed(void)
{
	return diag[0];
}

void aem_skip(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(skipped, AEM_DIAG, fmt, ap);
	va_end(ap);
	if (!skipped[0])
		strcpy(skipped, "skipped");
	fflush(stdout);
	_exit(diag[0] ? 1 : 0);
}

void aem_drop_root(void)
{
	if (geteuid())
		return;
	if (setgroups(0, NULL) || setresgid(AEM_TEST_UID, AEM_TEST_UID, AEM_TEST_UID) ||
	    setresuid(AEM_TEST_UID, AEM_TEST_UID, AEM_TEST_UID)) {
		aem_fail("cannot drop to uid %d: %s", AEM_TEST_UID, strerror(errno));
		_exit(1);
	}
	/* A uid change makes /proc/self root's; the test needs its fail-nth. */
	prctl(PR_SET_DUMPABLE, 1);
}

static void log_bracket(const char *what, const char *name)
{
	char line[256];
	int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	snprintf(line, sizeof(line), "aem-test: %s %s\n", what, name);
	if (write(fd, line, strlen(line)) < 0)
		perror("/dev/kmsg");
	close(fd);
}

static const char *missing(unsigned int needs)
{
	if ((needs & AEM_NEED_SOCK) && access("/sys/module/aem_sock", F_OK))
		return "aem_sock not loaded";
	if ((needs & AEM_NEED_FD) && access("/sys/module/aem_fd", F_OK))
		return "aem_fd not loaded";
	if ((needs & AEM_NEED_TIMER) && access("/sys/module/aem_timer", F_OK))
		return "aem_timer not loaded";
	if ((needs & AEM_NEED_PARAMS) &&
	    access("/sys/module/aem/parameters/max_regs", W_OK))
		return "aem.ko parameters not writable (not root?)";
	if ((needs & AEM_NEED_DEBUGFS) && access("/sys/kernel/debug/aem", F_OK))
		return "no debugfs";
	if ((needs & AEM_NEED_FAILNTH) &&
	    (access("/sys/kernel/debug/failslab", F_OK) ||
	     access("/proc/self/fail-nth", F_OK)))
		return "no failslab or fail-nth: a kernel with CONFIG_FAILSLAB (the debug kernel)";
	return NULL;
}

/* The test user's live registrations, read in a child running as that user. */
static long user_regs_as_test_user(void)
{
	int p[2];
	long v = -1;
	pid_t pid;

	if (pipe(p))
		return -1;
	pid = fork();
	if (pid == 0) {
		long r;

		close(p[0]);
		aem_drop_root();
		r = aem_user_regs_settled(0, 10000);
		if (write(p[1], &r, sizeof(r)) != sizeof(r))
			_exit(1);
		_exit(0);
	}
	close(p[1]);
	if (pid > 0 && read(p[0], &v, sizeof(v)) != sizeof(v))
		v = -1;
	close(p[0]);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	return v;
}

static int run_one(const struct aem_test *t, unsigned int no)
{
	char saved[AEM_SAVE_MAX][64];
	const char *skip = missing(t->needs);
	unsigned int i, nsave = 0;
	int st, failed = 0;
	long left;
	pid_t pid;

	if (skip) {
		printf("ok %u %s # SKIP %s\n", no, t->name, skip);
		fflush(stdout);
		return 0;
	}
	for (i = 0; t->save && t->save[i] && i < AEM_SAVE_MAX; i++, nsave++)
		if (aem_read_file(t->save[i], saved[i], sizeof(saved[i])))
			saved[i][0] = 0;
	memset(diag, 0, AEM_DIAG);
	memset(skipped, 0, AEM_DIAG);
	log_bracket("begin", t->name);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		if (!t->root)
			aem_drop_root();
		alarm(t->timeout ? t->timeout : 120);
		t->fn();
		_exit(diag[0] ? 1 : 0);
	}
	if (pid < 0 || waitpid(pid, &st, 0) != pid) {
		snprintf(diag, AEM_DIAG, "fork/wait: %s", strerror(errno));
		failed = 1;
	} else if (WIFSIGNALED(st)) {
		if (!diag[0])
			snprintf(diag, AEM_DIAG, "killed by signal %d%s", WTERMSIG(st),
				 WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
		failed = 1;
	} else if (WEXITSTATUS(st) || diag[0]) {
		if (!diag[0])
			snprintf(diag, AEM_DIAG, "exit status %d", WEXITSTATUS(st));
		failed = 1;
	}
	for (i = 0; i < nsave; i++)
		if (saved[i][0])
			aem_write_file(t->save[i], saved[i]);
	left = user_regs_as_test_user();
	if (!failed && left != 0) {
		snprintf(diag, AEM_DIAG,
			 "uid %d still has %ld registrations after the test's processes ended",
			 AEM_TEST_UID, left);
		failed = 1;
	}
	log_bracket("end", t->name);
	if (failed)
		printf("# %s: %s\nnot ok %u %s\n", t->name, diag, no, t->name);
	else if (skipped[0])
		printf("ok %u %s # SKIP %s\n", no, t->name, skipped);
	else
		printf("ok %u %s\n", no, t->name);
	fflush(stdout);
	return failed;
}

static bool selected(const char *name, int argc, char **argv)
{
	int i;

	if (argc < 2)
		return true;
	for (i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return true;
	return false;
}

int main(int argc, char **argv)
{
	unsigned int i, n = 0, no = 0;
	int failures = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 2 && !strcmp(argv[1], "-l")) {
		for (i = 0; i < ntests; i++)
			printf("%s needs=%#x%s\n", tests[i]->name, tests[i]->needs,
			       tests[i]->root ? " root" : "");
		return 0;
	}
	diag = mmap(NULL, 2 * AEM_DIAG, PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (diag == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	skipped = diag + AEM_DIAG;
	for (i = 0; i < ntests; i++)
		n += selected(tests[i]->name, argc, argv);
	printf("KTAP version 1\n1..%u\n", n);
	if (geteuid())
		printf("# not root: tests that need root are skipped\n");
	for (i = 0; i < ntests; i++) {
		if (!selected(tests[i]->name, argc, argv))
			continue;
		if (tests[i]->root && geteuid()) {
			printf("ok %u %s # SKIP needs root\n", ++no, tests[i]->name);
			continue;
		}
		failures += run_one(tests[i], ++no);
	}
	printf("# %d failed\n", failures);
	return failures ? 1 : 0;
}

/* ---- helpers ---- */

int aem_open(void)
{
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int aem_ioctl(int fd, unsigned long cmd, void *arg)
{
	int r = ioctl(fd, cmd, arg);

	return r < 0 ? -errno : r;
}

int aem_reg_soft(int fd, uint32_t flags)
{
	struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_SOFT, .flags = flags };

	return aem_ioctl(fd, AEM_IOC_REGISTER, &r);
}

int aem_reg_timer(int fd, uint32_t flags, int64_t value_ns, int64_t period_ns)
{
	struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_TIMER, .flags = flags };

	r.arg.timer.value_ns = value_ns;
	r.arg.timer.period_ns = period_ns;
	return aem_ioctl(fd, AEM_IOC_REGISTER, &r);
}

int aem_reg_fd(int fd, int watched, uint32_t events, uint32_t flags)
{
	struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_FD, .flags = flags };

	r.arg.fd.fd = watched;
	r.arg.fd.events = events;
	return aem_ioctl(fd, AEM_IOC_REGISTER, &r);
}

int aem_reg_sock(int fd, uint32_t type, int sock, uint32_t events, uint32_t flags)
{
	struct aem_reg r = { .size = sizeof(r), .type = type, .flags = flags };

	r.arg.sock.fd = sock;
	r.arg.sock.events = events;
	return aem_ioctl(fd, AEM_IOC_REGISTER, &r);
}

int aem_ctl(int fd, int id, unsigned int op, uint64_t arg)
{
	struct aem_ctl c = { .size = sizeof(c), .id = id, .op = op, .arg = arg };

	return aem_ioctl(fd, AEM_IOC_CTL, &c);
}

int aem_raise(int fd, int id, uint64_t count, uint64_t value)
{
	struct aem_raise r = { .size = sizeof(r), .id = id, .count = count,
			       .value = value };

	return aem_ioctl(fd, AEM_IOC_RAISE, &r);
}

int aem_wait(int fd, struct aem_delivery *d, unsigned int max, int64_t timeout_ns)
{
	struct aem_wait w = { .size = sizeof(w), .deliveries = (uintptr_t)d,
			      .max = max, .dsize = sizeof(*d),
			      .timeout_ns = timeout_ns };

	return aem_ioctl(fd, AEM_IOC_WAIT, &w);
}

int aem_stats(int fd, int id, struct aem_reg_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->size = sizeof(*st);
	return aem_ctl(fd, id, AEM_CTL_STATS, (uintptr_t)st);
}

int aem_arena(int fd, uint64_t bytes, void **map)
{
	struct aem_arena_setup as = { .size = sizeof(as), .bytes = bytes };
	int r = aem_ioctl(fd, AEM_IOC_ARENA_SETUP, &as);

	if (r < 0)
		return r;
	*map = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, as.mmap_offset);
	return *map == MAP_FAILED ? -errno : 0;
}

long aem_fdinfo(int fd, const char *field)
{
	char path[64], buf[2048], key[64], *p;
	ssize_t n;
	int f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return -1;
	n = read(f, buf, sizeof(buf) - 1);
	close(f);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	snprintf(key, sizeof(key), "%s:\t", field);
	p = strstr(buf, key);
	return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

/*
 * Registrations of this uid over all its contexts. A context closed by a
 * dying process is released by its last fput and the reap work: poll
 * until the count is @expect, at most @max_ms.
 */
long aem_user_regs_settled(long expect, unsigned int max_ms)
{
	int fd = aem_open();
	unsigned int waited = 0;
	long v = -1;

	if (fd < 0)
		return -1;
	for (;;) {
		v = aem_fdinfo(fd, "aem-user-regs");
		if (v == expect || waited >= max_ms)
			break;
		aem_sleep_ms(10);
		waited += 10;
	}
	close(fd);
	return v;
}

int aem_write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	close(fd);
	return n < 0 ? -errno : 0;
}

int aem_read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
}

uint64_t aem_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

void aem_sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int aem_tcp_listener(uint16_t *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 64) ||
	    getsockname(fd, (struct sockaddr *)&a, &len)) {
		close(fd);
		return -errno;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

int aem_tcp_connect(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		close(fd);
		return -errno;
	}
	return fd;
}
