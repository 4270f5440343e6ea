// SPDX-License-Identifier: GPL-2.0
/*
 * aem_test: exercises the /dev/aem ioctls directly and prints KTAP.
 * Needs aem.ko, aem_timer.ko and aem_soft.ko loaded; the overload and
 * fault-injection tests also need /sys/module/aem/parameters and debugfs
 * (they are skipped without). Build static so it runs in an initramfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/un.h>

#include <linux/aem.h>
#include <linux/capability.h>

#define NTESTS 45
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static int test_no;
static int failures;
static int dev_fd = -1;
static char diag[512];

static void fail(const char *fmt, ...)
{
	va_list ap;

	if (diag[0])
		return;	/* keep the first reason */
	va_start(ap, fmt);
	vsnprintf(diag, sizeof(diag), fmt, ap);
	va_end(ap);
}

#define CHECK(cond, ...) do { if (!(cond)) { fail(__VA_ARGS__); return; } } while (0)

static void report(const char *name, const char *skip)
{
	test_no++;
	if (skip) {
		printf("ok %d %s # SKIP %s\n", test_no, name, skip);
	} else if (diag[0]) {
		printf("# %s: %s\n", name, diag);
		printf("not ok %d %s\n", test_no, name);
		failures++;
	} else {
		printf("ok %d %s\n", test_no, name);
	}
	fflush(stdout);
	diag[0] = 0;
}

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* ---- thin ioctl wrappers: return value or -errno ---- */

static int xioctl(int fd, unsigned long cmd, void *arg)
{
	int r = ioctl(fd, cmd, arg);

	return r < 0 ? -errno : r;
}

static int reg_raw(int fd, uint32_t type, uint32_t flags, int64_t v, int64_t p)
{
	struct aem_reg r = { .size = sizeof(r), .type = type, .flags = flags,
			     .user_data = 0xfeed };

	if (type == AEM_EV_TIMER) {
		r.arg.timer.value_ns = v;
		r.arg.timer.period_ns = p;
	}
	return xioctl(fd, AEM_IOC_REGISTER, &r);
}

static int reg_soft(int fd, uint32_t flags)
{
	return reg_raw(fd, AEM_EV_SOFT, flags, 0, 0);
}

static int reg_fd(int fd, int watched, uint32_t events, uint32_t flags)
{
	struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_FD,
			     .flags = flags };

	r.arg.fd.fd = watched;
	r.arg.fd.events = events;
	return xioctl(fd, AEM_IOC_REGISTER, &r);
}

static int ctl(int fd, int id, unsigned int op, uint64_t arg)
{
	struct aem_ctl c = { .size = sizeof(c), .id = id, .op = op, .arg = arg };

	return xioctl(fd, AEM_IOC_CTL, &c);
}

static int raise_ev(int fd, int id, uint64_t count, uint64_t value)
{
	struct aem_raise r = { .size = sizeof(r), .id = id, .count = count,
			       .value = value };

	return xioctl(fd, AEM_IOC_RAISE, &r);
}

static int wait_ev(int fd, struct aem_delivery *d, unsigned int max,
		   int64_t timeout_ns)
{
	struct aem_wait w = { .size = sizeof(w), .deliveries = (uintptr_t)d,
			      .max = max, .dsize = sizeof(*d),
			      .timeout_ns = timeout_ns };

	return xioctl(fd, AEM_IOC_WAIT, &w);
}

static int stats(int fd, int id, struct aem_reg_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->size = sizeof(*st);
	return ctl(fd, id, AEM_CTL_STATS, (uintptr_t)st);
}

static int lookup(int fd, int id, struct aem_reg_info *info)
{
	memset(info, 0, sizeof(*info));
	info->size = sizeof(*info);
	return ctl(fd, id, AEM_CTL_LOOKUP, (uintptr_t)info);
}

/* Pop everything pending now; returns the number of deliveries. */
static int drain(int fd, struct aem_delivery *d, unsigned int max)
{
	int n, total = 0;

	while ((unsigned int)total < max &&
	       (n = wait_ev(fd, d + total, max - total, 0)) > 0)
		total += n;
	return total;
}

static int write_param(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	close(fd);
	return n < 0 ? -errno : 0;
}

static int read_param(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
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

/* ---- tests ---- */

static void t_info(void)
{
	struct aem_info info = { .size = sizeof(info) };
	int r = xioctl(dev_fd, AEM_IOC_INFO, &info);

	CHECK(r == 0, "INFO %d", r);
	CHECK(info.api_version == AEM_API_VERSION, "api %u", info.api_version);
	CHECK(info.types & (1u << AEM_EV_TIMER), "no timer family");
	CHECK(info.types & (1u << AEM_EV_SOFT), "no soft family");
	CHECK(info.prio_levels == AEM_PRIO_LEVELS, "levels");
	CHECK(info.delivery_size == sizeof(struct aem_delivery), "dsize");
	CHECK(info.family_version[AEM_EV_SOFT] >= 1, "soft version");
}

static void t_register_clean(void)
{
	struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_SOFT,
			     .flags = AEM_PRIO(7) };
	struct aem_reg_info info;
	int id = xioctl(dev_fd, AEM_IOC_REGISTER, &r);

	CHECK(id > 0, "register %d", id);
	CHECK(r.id == id, "id out %d != %d", r.id, id);
	CHECK(lookup(dev_fd, id, &info) == 0, "lookup");
	CHECK(info.id == id && info.type == AEM_EV_SOFT && info.prio == 7 &&
	      info.enabled == 1 && info.fd == -1, "lookup fields");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == -ENOENT, "clean twice");
	CHECK(lookup(dev_fd, id, &info) == -ENOENT, "lookup after clean");
	CHECK(raise_ev(dev_fd, id, 1, 0) == -ENOENT, "raise after clean");
}

static int cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

static void t_id_unique(void)
{
	enum { N = 2000 };
	static int ids[N + N / 2];
	int i, fd = open("/dev/aem", O_RDWR | O_CLOEXEC);

	CHECK(fd >= 0, "open");
	for (i = 0; i < N; i++) {
		ids[i] = reg_soft(fd, 0);
		CHECK(ids[i] > 0, "register %d: %d", i, ids[i]);
	}
	/* Clean every other one, register more: no id of a live one. */
	for (i = 0; i < N; i += 2)
		CHECK(ctl(fd, ids[i], AEM_CTL_CLEAN, 0) == 0, "clean");
	for (i = 0; i < N / 2; i++)
		ids[i * 2] = reg_soft(fd, 0);
	for (i = N; i < N + N / 2; i++)
		ids[i] = reg_soft(fd, 0);
	qsort(ids, N + N / 2, sizeof(int), cmp_int);
	for (i = 0; i < N + N / 2; i++) {
		CHECK(ids[i] > 0, "bad id %d", ids[i]);
		CHECK(!i || ids[i] != ids[i - 1], "duplicate id %d", ids[i]);
	}
	close(fd);
}

static void t_invalid(void)
{
	struct aem_reg r;
	struct aem_ctl c;
	struct aem_delivery d[2];
	struct aem_wait w;
	char big[8192];
	int id, tid;

#define REG0() (memset(&r, 0, sizeof(r)), r.size = sizeof(r), r.type = AEM_EV_SOFT)
	REG0(); r.size = 8;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "small size");
	REG0(); r.size = 65536;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -E2BIG, "huge size");
	memset(big, 0, sizeof(big));
	REG0(); memcpy(big, &r, sizeof(r));
	((struct aem_reg *)big)->size = sizeof(r) + 16;
	id = xioctl(dev_fd, AEM_IOC_REGISTER, big);
	CHECK(id > 0, "bigger zero tail");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	((struct aem_reg *)big)->id = 0;
	big[sizeof(r) + 3] = 1;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, big) == -E2BIG, "nonzero tail");
	REG0(); r.reserved0 = 1;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "reserved0");
	REG0(); r.flags = 0x40000000u;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "unknown flag");
	REG0(); r.flags = AEM_EXEC_MASK;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "exec 3");
	REG0(); r.flags = AEM_PRIO(64);
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "prio 64");
	REG0(); r.flags = AEM_PRIO(-1);
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "prio -1");
	REG0(); r.flags = 5u << AEM_PRIO_SHIFT;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "prio w/o given");
	REG0(); r.flags = AEM_EDGE | AEM_LEVEL;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "edge+level");
	REG0(); r.type = 0;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "type 0");
	REG0(); r.type = 99;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "type 99");
	REG0(); r.type = AEM_EV_ACCEPT; r.family_version = 2;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EOPNOTSUPP, "no family");
	REG0(); r.family_version = 999;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EOPNOTSUPP, "version");
	REG0(); r.arg.raw[0] = 1;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "soft arg");
	REG0(); r.id = 5;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "id in");
	REG0(); r.type = AEM_EV_TIMER; r.arg.timer.value_ns = -1;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "timer < 0");
	REG0(); r.type = AEM_EV_TIMER; r.arg.timer.value_ns = 1000000;
	r.arg.timer.period_ns = 10;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "period < min");
	REG0(); r.type = AEM_EV_TIMER; r.arg.timer.value_ns = 1000000;
	r.arg.raw[2] = 1;
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, &r) == -EINVAL, "timer tail");
	CHECK(xioctl(dev_fd, AEM_IOC_REGISTER, NULL) == -EFAULT, "NULL");

	id = reg_soft(dev_fd, 0);
	CHECK(id > 0, "register");
	CHECK(ctl(dev_fd, 0, AEM_CTL_ENABLE, 0) == -ENOENT, "id 0");
	CHECK(ctl(dev_fd, -3, AEM_CTL_ENABLE, 0) == -ENOENT, "id -3");
	CHECK(ctl(dev_fd, 0x7ffffff0, AEM_CTL_ENABLE, 0) == -ENOENT, "id big");
	CHECK(ctl(dev_fd, id, 0, 0) == -EINVAL, "op 0");
	CHECK(ctl(dev_fd, id, 99, 0) == -EINVAL, "op 99");
	CHECK(ctl(dev_fd, id, AEM_CTL_ENABLE, 1) == -EINVAL, "enable arg");
	CHECK(ctl(dev_fd, id, AEM_CTL_SET_PRIO, 64) == -EINVAL, "set prio 64");
	CHECK(ctl(dev_fd, id, AEM_CTL_FILTER, 1) == -EOPNOTSUPP, "filter");
	CHECK(ctl(dev_fd, id, AEM_CTL_LOOKUP, 16) == -EFAULT, "lookup ptr");
	memset(&c, 0, sizeof(c));
	c.size = sizeof(c); c.id = id; c.op = AEM_CTL_ENABLE; c.reserved0 = 1;
	CHECK(xioctl(dev_fd, AEM_IOC_CTL, &c) == -EINVAL, "ctl reserved");
	c.reserved0 = 0; c.size = 4;
	CHECK(xioctl(dev_fd, AEM_IOC_CTL, &c) == -EINVAL, "ctl size");
	CHECK(raise_ev(dev_fd, id, 0, 0) == -EINVAL, "raise 0");
	tid = reg_raw(dev_fd, AEM_EV_TIMER, 0, 1000000000, 0);
	CHECK(tid > 0, "timer");
	CHECK(raise_ev(dev_fd, tid, 1, 0) == -EOPNOTSUPP, "raise timer");
	CHECK(wait_ev(dev_fd, d, 0, 0) == -EINVAL, "wait max 0");
	memset(&w, 0, sizeof(w));
	w.size = sizeof(w); w.deliveries = (uintptr_t)d; w.max = 1; w.dsize = 8;
	CHECK(xioctl(dev_fd, AEM_IOC_WAIT, &w) == -EINVAL, "wait dsize");
	w.dsize = sizeof(d[0]); w.flags = 0x80;
	CHECK(xioctl(dev_fd, AEM_IOC_WAIT, &w) == -EINVAL, "wait flags");
	w.flags = AEM_WAIT_REFILL;
	CHECK(xioctl(dev_fd, AEM_IOC_WAIT, &w) == -EINVAL, "refill w/o ring");
	CHECK(xioctl(dev_fd, _IO(AEM_IOC_MAGIC, 0x7f), NULL) == -ENOTTY,
	      "unknown ioctl");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	CHECK(ctl(dev_fd, tid, AEM_CTL_CLEAN, 0) == 0, "clean timer");
#undef REG0
}

struct raiser {
	int fd, id, n;
	int errors;
};

static int raisers_done;

static void *raiser_fn(void *p)
{
	struct raiser *r = p;
	int i;

	for (i = 0; i < r->n; i++)
		if (raise_ev(r->fd, r->id, 1, i) != 0)
			r->errors++;
	__atomic_add_fetch(&raisers_done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void t_soft_threads(void)
{
	enum { T = 4, N = 5000 };
	struct raiser rs[T];
	pthread_t th[T];
	struct aem_delivery d[64];
	struct aem_reg_stats st;
	uint64_t got = 0;
	int i, n, id = reg_soft(dev_fd, 0);

	CHECK(id > 0, "register");
	raisers_done = 0;
	for (i = 0; i < T; i++) {
		rs[i] = (struct raiser){ dev_fd, id, N, 0 };
		pthread_create(&th[i], NULL, raiser_fn, &rs[i]);
	}
	/* Consume while they raise. */
	while (got < (uint64_t)T * N) {
		int done = __atomic_load_n(&raisers_done, __ATOMIC_SEQ_CST) == T;

		n = wait_ev(dev_fd, d, 64, 20000000);
		if (n < 0)
			break;
		for (i = 0; i < n; i++)
			got += d[i].id == id ? d[i].count : 0;
		if (!n && done)
			break;
	}
	for (i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	for (i = 0; i < T; i++)
		CHECK(!rs[i].errors, "raise errors");
	n = drain(dev_fd, d, 64);
	for (i = 0; i < n; i++)
		got += d[i].count;
	CHECK(stats(dev_fd, id, &st) == 0, "stats");
	CHECK(got == (uint64_t)T * N, "got %llu of %d", (unsigned long long)got, T * N);
	CHECK(st.activations == (uint64_t)T * N && st.pending == 0,
	      "stats act %llu pend %llu", (unsigned long long)st.activations,
	      (unsigned long long)st.pending);
	CHECK(st.merged + st.deliveries == st.activations, "merged+deliveries");
	CHECK(raise_ev(dev_fd, id, 1000000, 42) == 0, "raise many");
	CHECK(wait_ev(dev_fd, d, 4, 0) == 1 && d[0].count == 1000000 &&
	      d[0].value == 42 && d[0].user_data == 0xfeed, "big count/value");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
}

static void t_timer_periodic(void)
{
	const int64_t period = 20000000;	/* 20 ms */
	struct aem_delivery d[16];
	struct aem_reg_stats st;
	uint64_t t0, t1, got = 0, expect;
	int i, n, id;

	t0 = now_ns(CLOCK_MONOTONIC);
	id = reg_raw(dev_fd, AEM_EV_TIMER, 0, period, period);
	CHECK(id > 0, "register %d", id);
	sleep_ms(230);		/* sleep through ~11 periods, consume nothing */
	n = drain(dev_fd, d, 16);
	t1 = now_ns(CLOCK_MONOTONIC);
	CHECK(n == 1, "one merged delivery expected, got %d", n);
	got = d[0].count;
	CHECK(d[0].value == d[0].count, "value %llu", (unsigned long long)d[0].value);
	expect = (t1 - t0) / period;
	CHECK(got >= 8 && got <= expect + 1, "expirations %llu, elapsed %llu periods",
	      (unsigned long long)got, (unsigned long long)expect);
	sleep_ms(110);
	/* The invariant is exact: activations = delivered + pending. */
	n = drain(dev_fd, d, 16);
	for (i = 0; i < n; i++)
		got += d[i].count;
	CHECK(stats(dev_fd, id, &st) == 0, "stats");
	CHECK(st.activations == got + st.pending,
	      "activations %llu != delivered %llu + pending %llu",
	      (unsigned long long)st.activations, (unsigned long long)got,
	      (unsigned long long)st.pending);
	expect = (now_ns(CLOCK_MONOTONIC) - t0) / period;
	CHECK(st.activations <= expect + 1 && st.activations + 3 >= expect,
	      "activations %llu vs elapsed %llu",
	      (unsigned long long)st.activations, (unsigned long long)expect);
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
}

static void t_timer_oneshot_abs(void)
{
	struct aem_delivery d[4];
	uint64_t t0 = now_ns(CLOCK_REALTIME);
	int n, id, id2;

	id = reg_raw(dev_fd, AEM_EV_TIMER, AEM_ABSTIME | AEM_REALTIME,
		     (int64_t)t0 + 30000000, 0);
	CHECK(id > 0, "register %d", id);
	/* Absolute in the past, periodic: overruns counted at once. */
	id2 = reg_raw(dev_fd, AEM_EV_TIMER, AEM_ABSTIME,
		      (int64_t)now_ns(CLOCK_MONOTONIC) - 1000000000, 100000000);
	CHECK(id2 > 0, "register past %d", id2);
	n = wait_ev(dev_fd, d, 1, 1000000000);
	CHECK(n == 1, "wait %d", n);
	CHECK(d[0].id == id2 && d[0].count >= 10 && d[0].count <= 12,
	      "past periodic count %llu (id %d)", (unsigned long long)d[0].count, d[0].id);
	CHECK(ctl(dev_fd, id2, AEM_CTL_CLEAN, 0) == 0, "clean past");
	for (;;) {
		n = wait_ev(dev_fd, d, 1, 2000000000);
		CHECK(n == 1, "oneshot never came");
		if (d[0].id == id)
			break;
		CHECK(d[0].id == id2, "foreign id");
	}
	CHECK(d[0].count == 1, "oneshot count %llu", (unsigned long long)d[0].count);
	CHECK(now_ns(CLOCK_REALTIME) >= t0 + 30000000, "fired early");
	CHECK(wait_ev(dev_fd, d, 4, 80000000) == 0, "fired twice");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
}

static void t_priority_order(void)
{
	static const int prio[] = { 5, 60, 32, 60, 0, 63, 32, 1 };
	enum { N = ARRAY_SIZE(prio) };
	int ids[N], i, j, n, pos[N];
	struct aem_delivery d[N + 2];

	for (i = 0; i < N; i++) {
		ids[i] = reg_soft(dev_fd, AEM_PRIO(prio[i]));
		CHECK(ids[i] > 0, "register");
	}
	for (i = 0; i < N; i++)
		CHECK(raise_ev(dev_fd, ids[i], 1, i) == 0, "raise");
	n = 0;
	for (i = 0; i < N; i++)	/* one at a time: strict order per pop */
		n += wait_ev(dev_fd, d + n, 1, 0);
	CHECK(n == N, "got %d", n);
	for (i = 0; i < N; i++) {
		for (j = 0; j < N && ids[j] != d[i].id; j++)
			;
		CHECK(j < N, "unknown id");
		pos[i] = j;
		CHECK((int)d[i].prio == prio[j], "prio field");
		CHECK(!i || prio[pos[i - 1]] > prio[j] ||
		      (prio[pos[i - 1]] == prio[j] && pos[i - 1] < j),
		      "order: %d after %d", prio[j], prio[pos[i - 1]]);
	}
	/* SET_PRIO moves a pending one. */
	CHECK(raise_ev(dev_fd, ids[4], 1, 0) == 0 &&
	      raise_ev(dev_fd, ids[5], 1, 0) == 0, "raise");
	CHECK(ctl(dev_fd, ids[4], AEM_CTL_SET_PRIO, AEM_PRIO_MAX) == 0, "setprio");
	CHECK(wait_ev(dev_fd, d, 2, 0) == 2 && d[0].id == ids[5] &&
	      d[1].id == ids[4] && d[1].prio == AEM_PRIO_MAX, "after set prio");
	for (i = 0; i < N; i++)
		ctl(dev_fd, ids[i], AEM_CTL_CLEAN, 0);
}

static void t_disable_enable(void)
{
	struct aem_delivery d[4];
	struct aem_reg_info info;
	int id = reg_soft(dev_fd, AEM_DISABLED);

	CHECK(id > 0, "register");
	CHECK(lookup(dev_fd, id, &info) == 0 && info.enabled == 0, "disabled");
	CHECK(raise_ev(dev_fd, id, 2, 7) == 0, "raise");
	CHECK(wait_ev(dev_fd, d, 4, 10000000) == 0, "delivered while disabled");
	CHECK(ctl(dev_fd, id, AEM_CTL_ENABLE, 0) == 0, "enable");
	CHECK(raise_ev(dev_fd, id, 1, 8) == 0, "raise");
	CHECK(ctl(dev_fd, id, AEM_CTL_DISABLE, 0) == 0, "disable");
	CHECK(lookup(dev_fd, id, &info) == 0 && info.pending == 3 && !info.enabled,
	      "pending %llu", (unsigned long long)info.pending);
	CHECK(wait_ev(dev_fd, d, 4, 0) == 0, "delivered while disabled 2");
	CHECK(ctl(dev_fd, id, AEM_CTL_ENABLE, 0) == 0, "enable");
	CHECK(wait_ev(dev_fd, d, 4, 0) == 1 && d[0].count == 3 && d[0].value == 8,
	      "held occurrences");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
}

static void t_per_occurrence_oneshot(void)
{
	struct aem_delivery d[8];
	int a = reg_soft(dev_fd, AEM_PER_OCCURRENCE);
	int b = reg_soft(dev_fd, AEM_ONESHOT);
	int n;

	CHECK(a > 0 && b > 0, "register");
	CHECK(raise_ev(dev_fd, a, 3, 1) == 0 && raise_ev(dev_fd, b, 2, 1) == 0,
	      "raise");
	n = drain(dev_fd, d, 8);
	CHECK(n == 4, "n %d", n);
	/* FIFO at one level: a, b, a, a (a re-queued behind b). */
	CHECK(d[0].id == a && d[0].count == 1 && d[1].id == b &&
	      d[1].count == 2 && (d[1].flags & AEM_DLV_FINAL) &&
	      d[2].id == a && d[3].id == a && d[3].count == 1, "sequence");
	CHECK(ctl(dev_fd, b, AEM_CTL_LOOKUP, 0) == -ENOENT, "oneshot gone");
	CHECK(raise_ev(dev_fd, b, 1, 0) == -ENOENT, "oneshot raise");
	CHECK(ctl(dev_fd, a, AEM_CTL_CLEAN, 0) == 0, "clean");
}

static void t_timeout(void)
{
	struct aem_delivery d[4];
	uint64_t t0 = now_ns(CLOCK_MONOTONIC);
	int id = reg_soft(dev_fd, 0), keep = reg_soft(dev_fd, 0), n;

	CHECK(id > 0 && keep > 0, "register");
	CHECK(ctl(dev_fd, id, AEM_CTL_SET_TIMEOUT, 50) == 0, "set timeout");
	CHECK(ctl(dev_fd, keep, AEM_CTL_SET_TIMEOUT, 100) == 0, "set timeout");
	/* Keep one alive by activating it every 40 ms. */
	for (n = 0; n < 5; n++) {
		sleep_ms(40);
		raise_ev(dev_fd, keep, 1, 0);
	}
	n = drain(dev_fd, d, 4);
	CHECK(n == 2, "deliveries %d", n);
	if (d[0].id != id)
		d[0] = d[1];
	CHECK(d[0].id == id && d[0].error == -ETIMEDOUT &&
	      (d[0].flags & AEM_DLV_FINAL), "timeout delivery id %d err %d",
	      d[0].id, d[0].error);
	CHECK(now_ns(CLOCK_MONOTONIC) - t0 >= 50000000, "early");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == -ENOENT, "timed-out id alive");
	CHECK(ctl(dev_fd, keep, AEM_CTL_SET_TIMEOUT, 0) == 0, "keep alive");
	CHECK(ctl(dev_fd, keep, AEM_CTL_CLEAN, 0) == 0, "clean");
}

static const char *pmax = "/sys/module/aem/parameters/max_pending";

static void t_overload(void)
{
	enum { N = 10, LIM = 4 };
	struct aem_delivery d[N + 4];
	struct aem_reg_stats st;
	char old[32];
	int ids[N], i, n, seen = 0;

	if (read_param(pmax, old, sizeof(old)) || write_param(pmax, "4")) {
		fail("cannot set %s", pmax);
		return;
	}
	for (i = 0; i < N; i++) {
		ids[i] = reg_soft(dev_fd, 0);
		if (ids[i] < 0)
			break;
		raise_ev(dev_fd, ids[i], i + 1, 0);
	}
	n = drain(dev_fd, d, N + 4);
	write_param(pmax, old);
	CHECK(i == N, "register");
	CHECK(n == N + 1, "deliveries %d", n);
	CHECK(d[0].id == 0 && d[0].type == AEM_EV_OVERLOAD &&
	      d[0].error == -EOVERFLOW && d[0].count == N - LIM,
	      "overload first: id %d err %d count %llu", d[0].id, d[0].error,
	      (unsigned long long)d[0].count);
	for (i = 1; i <= N; i++) {
		CHECK(d[i].id == ids[i - 1] && d[i].count == (uint64_t)i,
		      "delivery %d id %d count %llu", i, d[i].id,
		      (unsigned long long)d[i].count);
		seen++;
	}
	CHECK(stats(dev_fd, ids[N - 1], &st) == 0 && st.overflows == 1,
	      "overflow stat");
	for (i = 0; i < N; i++)
		ctl(dev_fd, ids[i], AEM_CTL_CLEAN, 0);
	CHECK(seen == N, "seen");
}

static void t_poll(void)
{
	struct pollfd p = { .fd = dev_fd, .events = POLLIN };
	struct aem_delivery d[2];
	int id = reg_soft(dev_fd, 0);

	CHECK(id > 0, "register");
	CHECK(poll(&p, 1, 0) == 0, "readable while empty");
	CHECK(raise_ev(dev_fd, id, 1, 0) == 0, "raise");
	CHECK(poll(&p, 1, 1000) == 1 && (p.revents & POLLIN), "not readable");
	CHECK(wait_ev(dev_fd, d, 2, 0) == 1, "wait");
	CHECK(poll(&p, 1, 0) == 0, "readable after drain");
	ctl(dev_fd, id, AEM_CTL_CLEAN, 0);
}

struct poller {
	int fd;
	int ready;
};

static void *poller_fn(void *arg)
{
	struct poller *pl = arg;
	struct pollfd p = { .fd = pl->fd, .events = POLLIN };

	pl->ready = poll(&p, 1, 3000);
	return NULL;
}

static void t_wait_blocking(void)
{
	struct aem_delivery d[2];
	struct poller pl = { dev_fd, -1 };
	pthread_t th;
	uint64_t t0;
	int n, id = reg_soft(dev_fd, 0);

	/* A thread blocked in poll() wakes on an activation. */
	CHECK(id > 0, "register");
	pthread_create(&th, NULL, poller_fn, &pl);
	sleep_ms(30);
	CHECK(raise_ev(dev_fd, id, 1, 0) == 0, "raise");
	pthread_join(th, NULL);
	CHECK(pl.ready == 1, "poll in a thread woke with %d", pl.ready);
	CHECK(wait_ev(dev_fd, d, 2, 0) == 1, "wait");
	ctl(dev_fd, id, AEM_CTL_CLEAN, 0);
	id = reg_raw(dev_fd, AEM_EV_TIMER, 0, 60000000, 0);
	CHECK(id > 0, "register");
	t0 = now_ns(CLOCK_MONOTONIC);
	n = wait_ev(dev_fd, d, 2, 10000000);
	CHECK(n == 0, "10ms wait got %d", n);
	CHECK(now_ns(CLOCK_MONOTONIC) - t0 >= 10000000, "returned early");
	n = wait_ev(dev_fd, d, 2, -1);	/* until the timer fires */
	CHECK(n == 1 && d[0].id == id, "blocking wait %d", n);
	CHECK(now_ns(CLOCK_MONOTONIC) - t0 >= 60000000, "timer early");
	ctl(dev_fd, id, AEM_CTL_CLEAN, 0);
}

static void on_usr1(int sig)
{
	(void)sig;
}

static void *kicker_fn(void *arg)
{
	sleep_ms(50);
	pthread_kill(*(pthread_t *)arg, SIGUSR1);
	return NULL;
}

static void t_wait_eintr(void)
{
	struct sigaction sa = { .sa_handler = on_usr1 };	/* no SA_RESTART */
	struct aem_delivery d[1];
	pthread_t self = pthread_self(), th;
	int n;

	sigaction(SIGUSR1, &sa, NULL);
	pthread_create(&th, NULL, kicker_fn, &self);
	n = wait_ev(dev_fd, d, 1, 5000000000ll);
	pthread_join(th, NULL);
	CHECK(n == -EINTR, "wait returned %d", n);
}

static volatile sig_atomic_t sig_count, sig_events;
static int sig_fd;

static void on_doorbell(int sig, siginfo_t *si, void *uc)
{
	struct aem_delivery d[16];
	int i, n;

	(void)sig; (void)uc;
	sig_count++;
	if (si->si_code != SI_KERNEL)
		sig_count += 1000;
	while ((n = wait_ev(sig_fd, d, 16, 0)) > 0)
		for (i = 0; i < n; i++)
			sig_events += d[i].count;
}

static void t_signal_doorbell(void)
{
	int signo = SIGRTMIN + 2, i, id, fd;
	struct sigaction sa = { .sa_sigaction = on_doorbell,
				.sa_flags = SA_SIGINFO | SA_RESTART };
	struct aem_signal sg = { .size = sizeof(sg), .signo = signo };
	struct timespec ts = { 0, 0 };
	sigset_t set;
	siginfo_t si;

	fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "open");
	sig_fd = fd;
	id = reg_soft(fd, 0);
	CHECK(id > 0, "register");
	sg.signo = 3;
	CHECK(xioctl(fd, AEM_IOC_SET_SIGNAL, &sg) == -EINVAL, "non-RT signo");
	sg.signo = signo; sg.tid = 1;
	CHECK(xioctl(fd, AEM_IOC_SET_SIGNAL, &sg) == -ESRCH, "foreign tid");
	sg.tid = 0;
	/* Blocked signal: three raises queue exactly one signal. */
	sigemptyset(&set);
	sigaddset(&set, signo);
	sigprocmask(SIG_BLOCK, &set, NULL);
	CHECK(xioctl(fd, AEM_IOC_SET_SIGNAL, &sg) == 0, "set signal");
	for (i = 0; i < 3; i++)
		raise_ev(fd, id, 1, 0);
	sleep_ms(10);
	CHECK(sigtimedwait(&set, &si, &ts) == signo, "no signal");
	CHECK(si.si_code == SI_KERNEL, "si_code %d", si.si_code);
	CHECK(sigtimedwait(&set, &si, &ts) < 0, "second signal queued");
	/* Still pending: the doorbell stays rung until drained. */
	raise_ev(fd, id, 1, 0);
	sleep_ms(10);
	CHECK(sigtimedwait(&set, &si, &ts) < 0, "signal without re-arm");
	{
		struct aem_delivery d[4];

		CHECK(drain(fd, d, 4) == 1 && d[0].count == 4, "drain");
	}
	/* Handler drains; every occurrence arrives. */
	sigaction(signo, &sa, NULL);
	sig_count = 0;
	sig_events = 0;
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	for (i = 0; i < 200; i++) {
		raise_ev(fd, id, 1, 0);
		if (i % 50 == 0)
			sleep_ms(5);
	}
	for (i = 0; i < 100 && sig_events < 200; i++)
		sleep_ms(5);
	CHECK(sig_events == 200, "events via handler %d", (int)sig_events);
	CHECK(sig_count >= 1 && sig_count <= 201, "signals %d", (int)sig_count);
	sg.signo = 0;
	CHECK(xioctl(fd, AEM_IOC_SET_SIGNAL, &sg) == 0, "signal off");
	close(fd);
	signal(signo, SIG_DFL);
}

static void t_foreign_process(void)
{
	struct aem_delivery d[1];
	int id = reg_soft(dev_fd, 0), st;
	pid_t pid;

	CHECK(id > 0, "register");
	pid = fork();
	if (pid == 0) {
		int r1 = raise_ev(dev_fd, id, 1, 0);
		int r2 = wait_ev(dev_fd, d, 1, 0);
		struct pollfd p = { .fd = dev_fd, .events = POLLIN };

		poll(&p, 1, 0);
		_exit(r1 == -EOWNERDEAD && r2 == -EOWNERDEAD &&
		      (p.revents & POLLERR) ? 0 : 1);
	}
	CHECK(pid > 0, "fork");
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child could use the context");
	CHECK(raise_ev(dev_fd, id, 1, 0) == 0 && wait_ev(dev_fd, d, 1, 0) == 1,
	      "parent lost access");
	ctl(dev_fd, id, AEM_CTL_CLEAN, 0);
}

static void t_ring(void)
{
	struct aem_ring_setup rs = { .size = sizeof(rs), .entries = 8 };
	struct aem_wait w = { .size = sizeof(w), .flags = AEM_WAIT_REFILL,
			      .max = 1, .dsize = sizeof(struct aem_delivery) };
	struct aem_ring_hdr *hdr;
	struct aem_delivery *e;
	int fd, ids[12], i, n;
	uint32_t head, tail;
	void *m;

	fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "open");
	rs.entries = 6;
	CHECK(xioctl(fd, AEM_IOC_RING_SETUP, &rs) == -EINVAL, "not pow2");
	rs.entries = 8;
	CHECK(xioctl(fd, AEM_IOC_RING_SETUP, &rs) == 0, "setup");
	CHECK(xioctl(fd, AEM_IOC_RING_SETUP, &rs) == -EINVAL, "out fields in");
	rs.entries_off = 0; rs.mmap_size = 0;
	CHECK(xioctl(fd, AEM_IOC_RING_SETUP, &rs) == -EBUSY, "second ring");
	rs.entries_off = 256;	/* restore the values read back */
	CHECK(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) ==
	      MAP_FAILED, "MAP_PRIVATE accepted");
	m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(m != MAP_FAILED, "mmap %d", errno);
	hdr = m;
	e = (struct aem_delivery *)((char *)m + rs.entries_off);
	CHECK(hdr->entries == 8 && hdr->mask == 7, "hdr");
	/*
	 * 12 registrations at priority i * 5, raised in that order: each
	 * activation refills the ring at once, so the ring gets the first
	 * 8 and the other 4 wait in the kernel queue, in priority order.
	 */
	for (i = 0; i < 12; i++) {
		ids[i] = reg_soft(fd, AEM_PRIO(i * 5));
		CHECK(ids[i] > 0, "register");
	}
	for (i = 0; i < 12; i++)
		CHECK(raise_ev(fd, ids[i], 1, 0) == 0, "raise");
	tail = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
	head = hdr->head;
	CHECK(tail - head == 8, "ring has %u", tail - head);
	CHECK(hdr->backlog == 1, "backlog flag");
	for (i = 0; i < 8; i++)
		CHECK(e[(head + i) & 7].id == ids[i], "ring[%d] id %d", i,
		      e[(head + i) & 7].id);
	__atomic_store_n(&hdr->head, head + 8, __ATOMIC_RELEASE);
	n = xioctl(fd, AEM_IOC_WAIT, &w);
	CHECK(n == 4, "refill moved %d", n);
	tail = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
	head = hdr->head;
	CHECK(tail - head == 4 && hdr->backlog == 0, "after refill");
	/* Strict order within one refill: 55, 50, 45, 40. */
	for (i = 0; i < 4; i++)
		CHECK(e[(head + i) & 7].id == ids[11 - i], "refill order");
	__atomic_store_n(&hdr->head, head + 4, __ATOMIC_RELEASE);
	/* Activation fills an empty ring directly. */
	CHECK(raise_ev(fd, ids[3], 5, 9) == 0, "raise");
	tail = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
	CHECK(tail - hdr->head == 1 && e[hdr->head & 7].count == 5 &&
	      e[hdr->head & 7].value == 9, "direct fill");
	munmap(m, 4096);
	close(fd);
}

/*
 * Ring pages are charged to RLIMIT_MEMLOCK without CAP_IPC_LOCK: in a
 * child that drops the capability with a limit of two pages, a ring
 * bigger than that is refused, two one-page rings fit, a third does not,
 * and closing a context returns its charge. Exit code: 0 or the step.
 */
static int ring_memlock_child(void)
{
	struct rlimit rl = { 2 * 4096, 2 * 4096 };
	struct aem_ring_setup big = { .size = sizeof(big), .entries = 4096 };
	struct aem_ring_setup rs = { .size = sizeof(rs), .entries = 16 };
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2];
	int a, b, c;

	if (syscall(SYS_capget, &hdr, data))
		return 10;
	data[0].effective &= ~(1u << CAP_IPC_LOCK);
	data[0].permitted &= ~(1u << CAP_IPC_LOCK);
	if (syscall(SYS_capset, &hdr, data) || setrlimit(RLIMIT_MEMLOCK, &rl))
		return 11;
	a = open("/dev/aem", O_RDWR | O_CLOEXEC);
	b = open("/dev/aem", O_RDWR | O_CLOEXEC);
	c = open("/dev/aem", O_RDWR | O_CLOEXEC);
	if (a < 0 || b < 0 || c < 0)
		return 12;
	if (xioctl(a, AEM_IOC_RING_SETUP, &big) != -ENOMEM)
		return 13;
	if (xioctl(a, AEM_IOC_RING_SETUP, &rs))
		return 14;
	rs.entries_off = 0; rs.mmap_size = 0;
	if (xioctl(b, AEM_IOC_RING_SETUP, &rs))
		return 15;
	rs.entries_off = 0; rs.mmap_size = 0;
	if (xioctl(c, AEM_IOC_RING_SETUP, &rs) != -ENOMEM)
		return 16;
	close(a);	/* the last reference: its charge goes back */
	if (xioctl(c, AEM_IOC_RING_SETUP, &rs))
		return 17;
	close(b);
	close(c);
	return 0;
}

static void t_ring_memlock(void)
{
	int st = -1;
	pid_t pid = fork();

	if (pid == 0)
		_exit(ring_memlock_child());
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "ring over RLIMIT_MEMLOCK: failed at step %d",
	      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* The ring's doorbell word: one signal per 0 -> 1, re-armed by user space. */
static void t_ring_doorbell(void)
{
	struct aem_ring_setup rs = { .size = sizeof(rs), .entries = 4 };
	struct aem_signal sg = { .size = sizeof(sg), .signo = SIGRTMIN + 3 };
	struct timespec ts = { 0, 0 };
	struct aem_ring_hdr *hdr;
	sigset_t set;
	siginfo_t si;
	int fd, id;
	void *m;

	sigemptyset(&set);
	sigaddset(&set, sg.signo);
	sigprocmask(SIG_BLOCK, &set, NULL);
	fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "open");
	CHECK(xioctl(fd, AEM_IOC_RING_SETUP, &rs) == 0, "setup");
	m = mmap(NULL, rs.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(m != MAP_FAILED, "mmap");
	hdr = m;
	CHECK(xioctl(fd, AEM_IOC_SET_SIGNAL, &sg) == 0, "set signal");
	id = reg_soft(fd, 0);
	CHECK(id > 0, "register");
	CHECK(raise_ev(fd, id, 1, 0) == 0, "raise");
	sleep_ms(10);
	CHECK(__atomic_load_n(&hdr->doorbell, __ATOMIC_SEQ_CST) == 1, "doorbell word");
	CHECK(sigtimedwait(&set, &si, &ts) == sg.signo, "no signal");
	CHECK(raise_ev(fd, id, 1, 0) == 0, "raise 2");
	sleep_ms(10);
	CHECK(sigtimedwait(&set, &si, &ts) < 0, "signal while doorbell rung");
	/* Consumer: doorbell = 0, then drain the ring. */
	__atomic_store_n(&hdr->doorbell, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&hdr->head, __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE),
			 __ATOMIC_RELEASE);
	CHECK(raise_ev(fd, id, 1, 0) == 0, "raise 3");
	sleep_ms(10);
	CHECK(sigtimedwait(&set, &si, &ts) == sg.signo, "no signal after re-arm");
	munmap(m, rs.mmap_size);
	close(fd);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
}

static int tid_signalled, tid_of_waiter;

static void *tid_waiter(void *arg)
{
	sigset_t *set = arg;
	struct timespec ts = { 2, 0 };
	siginfo_t si;

	__atomic_store_n(&tid_of_waiter, syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	tid_signalled = sigtimedwait(set, &si, &ts);
	return NULL;
}

/* The doorbell is thread-directed: it reaches the thread named by tid. */
static void t_signal_tid(void)
{
	struct aem_signal sg = { .size = sizeof(sg), .signo = SIGRTMIN + 4 };
	struct timespec ts = { 0, 0 };
	struct aem_delivery d[2];
	pthread_t th;
	sigset_t set;
	siginfo_t si;
	int id;

	sigemptyset(&set);
	sigaddset(&set, sg.signo);
	sigprocmask(SIG_BLOCK, &set, NULL);
	tid_signalled = 0;
	sg.tid = -1;
	CHECK(xioctl(dev_fd, AEM_IOC_SET_SIGNAL, &sg) == -EINVAL, "tid -1");
	sg.tid = syscall(SYS_gettid) + 100000;
	CHECK(xioctl(dev_fd, AEM_IOC_SET_SIGNAL, &sg) == -ESRCH, "no such tid");
	pthread_create(&th, NULL, tid_waiter, &set);
	sleep_ms(10);
	sg.tid = __atomic_load_n(&tid_of_waiter, __ATOMIC_SEQ_CST);
	CHECK(xioctl(dev_fd, AEM_IOC_SET_SIGNAL, &sg) == 0, "set tid");
	id = reg_soft(dev_fd, 0);
	CHECK(id > 0 && raise_ev(dev_fd, id, 1, 0) == 0, "raise");
	pthread_join(th, NULL);
	CHECK(tid_signalled == sg.signo, "thread got %d", tid_signalled);
	CHECK(sigtimedwait(&set, &si, &ts) < 0, "main thread got it too");
	sg.signo = 0;
	sg.tid = 0;
	CHECK(xioctl(dev_fd, AEM_IOC_SET_SIGNAL, &sg) == 0, "off");
	drain(dev_fd, d, 2);
	ctl(dev_fd, id, AEM_CTL_CLEAN, 0);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
}

static void t_efault_keeps(void)
{
	struct aem_delivery d[2];
	int id = reg_soft(dev_fd, 0);
	struct aem_wait w = { .size = sizeof(w), .deliveries = 16, .max = 1,
			      .dsize = sizeof(d[0]) };

	CHECK(id > 0, "register");
	CHECK(raise_ev(dev_fd, id, 3, 5) == 0, "raise");
	CHECK(xioctl(dev_fd, AEM_IOC_WAIT, &w) == -EFAULT, "bad buffer");
	CHECK(wait_ev(dev_fd, d, 2, 0) == 1 && d[0].id == id &&
	      d[0].count == 3 && d[0].value == 5, "delivery lost on EFAULT");
	ctl(dev_fd, id, AEM_CTL_CLEAN, 0);
}

static const char *fi = "/sys/kernel/debug/aem/fail_reg_alloc";

static void t_fault_injection(void)
{
	char path[128];
	int a, b;

	snprintf(path, sizeof(path), "%s/times", fi);
	if (write_param(path, "1")) {
		fail("no %s", path);
		return;
	}
	snprintf(path, sizeof(path), "%s/probability", fi);
	write_param(path, "100");
	a = reg_soft(dev_fd, 0);
	b = reg_soft(dev_fd, 0);
	write_param(path, "0");
	CHECK(a == -ENOMEM, "injected failure gave %d", a);
	CHECK(b > 0, "second registration %d", b);
	ctl(dev_fd, b, AEM_CTL_CLEAN, 0);
}

static void t_limits(void)
{
	const char *mr = "/sys/module/aem/parameters/max_regs";
	const char *at = "/sys/module/aem/parameters/allowed_types";
	const char *ae = "/sys/module/aem/parameters/allowed_exec";
	char old[32], old2[32], old3[32];
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC), i, r = 0, e1, e2, e3;

	CHECK(fd >= 0, "open");
	CHECK(read_param(mr, old, sizeof(old)) == 0 &&
	      read_param(at, old2, sizeof(old2)) == 0 &&
	      read_param(ae, old3, sizeof(old3)) == 0, "params");
	write_param(mr, "5");
	for (i = 0; i < 6; i++)
		r = reg_soft(fd, 0);
	write_param(mr, old);
	CHECK(r == -EMFILE, "6th registration %d", r);
	write_param(at, "64");	/* timers only */
	e1 = reg_soft(fd, 0);
	write_param(at, old2);
	write_param(ae, "1");	/* AEM_EXEC_SAME only */
	e2 = reg_soft(fd, AEM_EXEC_THREAD);
	e3 = reg_soft(fd, AEM_EXEC_SAME);
	write_param(ae, old3);
	close(fd);
	CHECK(e1 == -EPERM, "type not allowed gave %d", e1);
	CHECK(e2 == -EPERM, "exec not allowed gave %d", e2);
	CHECK(e3 > 0, "exec allowed gave %d", e3);
}

static void t_boost(void)
{
	const char *bp = "/sys/module/aem/parameters/boost_prio";
	const char *bc = "/sys/module/aem/parameters/boost_ceiling";
	struct aem_delivery d[2];
	int hi, lo, n0, n1, n2, n3, n4;
	uint32_t f3, f4;

	CHECK(write_param(bp, "50") == 0 && write_param(bc, "-5") == 0,
	      "params");
	hi = reg_soft(dev_fd, AEM_PRIO(60));
	lo = reg_soft(dev_fd, AEM_PRIO(10));
	/*
	 * A change caused by an ioctl is applied before the ioctl returns,
	 * so each value is read without waiting.
	 */
	n0 = getpriority(PRIO_PROCESS, 0);
	raise_ev(dev_fd, lo, 1, 0);
	n1 = getpriority(PRIO_PROCESS, 0);
	raise_ev(dev_fd, hi, 1, 0);
	n2 = getpriority(PRIO_PROCESS, 0);
	wait_ev(dev_fd, d, 1, 0);	/* takes the urgent one only */
	f3 = d[0].flags;
	n3 = getpriority(PRIO_PROCESS, 0);	/* its handler would run now */
	wait_ev(dev_fd, d, 1, 0);	/* back: takes the low one */
	f4 = d[0].flags;
	n4 = getpriority(PRIO_PROCESS, 0);
	write_param(bp, "0");
	write_param(bc, "0");
	drain(dev_fd, d, 2);
	ctl(dev_fd, hi, AEM_CTL_CLEAN, 0);
	ctl(dev_fd, lo, AEM_CTL_CLEAN, 0);
	CHECK(hi > 0 && lo > 0, "register");
	CHECK(n0 == 0 && n1 == 0, "boosted by a low priority: %d %d", n0, n1);
	CHECK(n2 == -5, "not boosted while urgent pending: nice %d", n2);
	CHECK(n3 == -5, "not boosted while its handler runs: nice %d", n3);
	CHECK(n4 == 0, "not restored after the handler: nice %d", n4);
	CHECK(f3 == AEM_DLV_BOOST && f4 == 0, "delivery flags: urgent %#x, low %#x", f3, f4);
}

/*
 * The boost goes to the thread that popped the last urgent delivery (the
 * one that runs such handlers: a library's worker thread), not to the
 * opener. A second thread pops one and stays; the next urgent raise
 * boosts that thread and leaves the opener as it was.
 */
struct popper {
	int fd;
	int tid;
	int popped;
	int ready[2], done[2];
};

static void *popper_fn(void *arg)
{
	struct popper *pp = arg;
	struct aem_delivery d[1];
	char c = 0;

	pp->tid = syscall(SYS_gettid);
	pp->popped = wait_ev(pp->fd, d, 1, 0);
	wait_ev(pp->fd, d, 1, 0);	/* back from its handler: ends the hold */
	if (write(pp->ready[1], &c, 1) != 1 || read(pp->done[0], &c, 1) != 1)
		pp->popped = -1;
	return NULL;
}

static void t_boost_popper(void)
{
	const char *bp = "/sys/module/aem/parameters/boost_prio";
	const char *bc = "/sys/module/aem/parameters/boost_ceiling";
	struct popper pp = { .tid = -1, .popped = -1 };
	struct aem_delivery d[1];
	int hi, mine = 99, its = 99, base;
	pthread_t th;
	char c = 0;

	CHECK(pipe(pp.ready) == 0 && pipe(pp.done) == 0, "pipes");
	CHECK(write_param(bp, "50") == 0 && write_param(bc, "-5") == 0,
	      "params");
	base = getpriority(PRIO_PROCESS, 0);
	pp.fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	hi = reg_soft(pp.fd, AEM_PRIO(60));
	raise_ev(pp.fd, hi, 1, 0);	/* nobody popped yet: the opener */
	pthread_create(&th, NULL, popper_fn, &pp);
	if (read(pp.ready[0], &c, 1) == 1) {
		raise_ev(pp.fd, hi, 1, 0);
		mine = getpriority(PRIO_PROCESS, 0);
		its = getpriority(PRIO_PROCESS, pp.tid);
		drain(pp.fd, d, 1);
	}
	if (write(pp.done[1], &c, 1) != 1)
		pp.popped = -1;
	pthread_join(th, NULL);
	close(pp.fd);
	write_param(bp, "0");
	write_param(bc, "0");
	close(pp.ready[0]);
	close(pp.ready[1]);
	close(pp.done[0]);
	close(pp.done[1]);
	CHECK(hi > 0 && pp.popped == 1, "register %d, popped %d", hi,
	      pp.popped);
	CHECK(its == -5, "the thread that popped was not boosted: nice %d",
	      its);
	CHECK(mine == base, "the opener was boosted instead: nice %d", mine);
}

/*
 * The boost never goes around RLIMIT_NICE: an unprivileged process whose
 * rlimit allows nice -2 gets -2, not the admin's ceiling of -5. Runs in a
 * child that gives up root; its exit code is the result.
 */
static int boost_rlimit_child(void)
{
	struct rlimit rl = { 22, 22 };	/* nice down to 20 - 22 = -2 */
	struct aem_delivery d[1];
	int fd, hi, n;

	if (setrlimit(RLIMIT_NICE, &rl) || setgid(65534) || setuid(65534))
		return 10;
	fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return 11;
	hi = reg_soft(fd, AEM_PRIO(60));
	if (hi <= 0 || raise_ev(fd, hi, 1, 0))
		return 12;
	/* Applied before the raise returned. */
	n = getpriority(PRIO_PROCESS, 0);
	wait_ev(fd, d, 1, 0);
	close(fd);
	return n == -2 ? 0 : 20 + (n + 20);
}

static void t_boost_rlimit(void)
{
	const char *bp = "/sys/module/aem/parameters/boost_prio";
	const char *bc = "/sys/module/aem/parameters/boost_ceiling";
	int st = -1;
	pid_t pid;

	CHECK(write_param(bp, "50") == 0 && write_param(bc, "-5") == 0,
	      "params");
	pid = fork();
	if (pid == 0)
		_exit(boost_rlimit_child());
	waitpid(pid, &st, 0);
	write_param(bp, "0");
	write_param(bc, "0");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
	      "unprivileged boost: status %d (20+k: nice k-20; 10-12: setup)",
	      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/*
 * upcall_syscalls: with only getppid() allowed, the doorbell of a raise is
 * held through other system calls and taken on the return from getppid();
 * lifting the restriction sends a held doorbell at once.
 */
static volatile sig_atomic_t upcalls;

static void on_upcall(int sig)
{
	(void)sig;
	upcalls++;
}

static void t_upcall_syscalls(void)
{
	const char *pu = "/sys/module/aem/parameters/upcall_syscalls";
	struct aem_signal sg = { .size = sizeof(sg), .signo = SIGRTMIN + 5 };
	struct sigaction sa = { .sa_handler = on_upcall };
	struct aem_delivery d[2];
	char num[16], got[64];
	int fd, id, i, before, held, after, lifted;

	snprintf(num, sizeof(num), "%d", SYS_getppid);
	CHECK(write_param(pu, num) == 0, "set %s", pu);
	CHECK(read_param(pu, got, sizeof(got)) == 0 && atoi(got) == SYS_getppid,
	      "read back '%s'", got);
	sigaction(SIGRTMIN + 5, &sa, NULL);
	upcalls = 0;
	fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	id = fd >= 0 ? reg_soft(fd, 0) : -1;
	if (id <= 0 || xioctl(fd, AEM_IOC_SET_SIGNAL, &sg)) {
		write_param(pu, "all");
		CHECK(0, "setup");
	}
	raise_ev(fd, id, 1, 0);
	for (i = 0; i < 100; i++)
		syscall(SYS_getpid);
	before = upcalls;
	syscall(SYS_getppid);
	held = upcalls;
	/* Drained: the doorbell re-arms; the next one is held again. */
	drain(fd, d, 2);
	raise_ev(fd, id, 1, 0);
	after = upcalls;
	write_param(pu, "all");	/* sends it on the way back */
	lifted = upcalls;
	drain(fd, d, 2);
	close(fd);
	signal(SIGRTMIN + 5, SIG_DFL);
	CHECK(before == 0, "upcall after a disallowed call: %d", before);
	CHECK(held == 1, "no upcall on return from getppid: %d", held);
	CHECK(after == 1 && lifted == 2, "lifting: %d %d", after, lifted);
}

/*
 * POLLFREE: watch a signalfd whose sighand is shared with a
 * CLONE_SIGHAND child, exec (which gives us a fresh sighand, the old one
 * lives on in the child), then reap the child: the old sighand is freed
 * and its signalfd wait queue sends POLLFREE to our hook. The kernel log
 * must stay clean (wake_up_pollfree() WARNs if a hook stays queued).
 */
static int sleeper_fn(void *arg)
{
	struct timespec ts = { 0, 200000000 };

	(void)arg;
	nanosleep(&ts, NULL);
	syscall(SYS_exit, 0);
	return 0;
}

static int pollfree_exec(int fd)
{
	struct aem_delivery d[1];
	int st;

	if (waitpid(-1, &st, __WALL) < 0)	/* frees the old sighand */
		return 2;
	sleep_ms(20);
	/* exec changed the mm: the context is no longer ours. */
	return wait_ev(fd, d, 1, 0) == -EOWNERDEAD ? 0 : 3;
}

static long pollfree_count(void)
{
	char buf[32];

	if (read_param("/sys/kernel/debug/aem_fd/pollfree", buf, sizeof(buf)))
		return -1;
	return atol(buf);
}

static void t_pollfree(void)
{
	long before = pollfree_count();
	pid_t pid = fork();
	int st;

	if (pid == 0) {
		size_t stack_size = 65536;
		char *stack = malloc(stack_size);
		int fd = open("/dev/aem", O_RDWR);	/* kept across exec */
		char fds[16];
		sigset_t set;
		int sfd;

		sigemptyset(&set);
		sigaddset(&set, SIGUSR2);
		sigprocmask(SIG_BLOCK, &set, NULL);
		sfd = signalfd(-1, &set, SFD_CLOEXEC);
		if (fd < 0 || sfd < 0 || reg_fd(fd, sfd, POLLIN, 0) <= 0)
			_exit(4);
		if (!stack || clone(sleeper_fn, stack + stack_size,
				    CLONE_VM | CLONE_SIGHAND, NULL) < 0)
			_exit(5);
		snprintf(fds, sizeof(fds), "%d", fd);
		execl("/proc/self/exe", "aem_test", "pollfree-exec", fds, NULL);
		_exit(6);
	}
	CHECK(pid > 0, "fork");
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %x", st);
	/*
	 * The sighand's users all share the context's mm, so the owner's
	 * exit teardown (aem_core.c) normally unhooks the watch before the
	 * sighand is freed: POLLFREE is then never seen. Either way the
	 * registration must be gone safely.
	 */
	CHECK(before < 0 || pollfree_count() == before ||
	      pollfree_count() == before + 1,
	      "POLLFREE count %ld -> %ld", before, pollfree_count());
}

/* Control, activation, pops and teardown racing each other. */
enum { CHAOS_IDS = 64 };
static int chaos_fd, chaos_stop, chaos_pipe[2];
static int chaos_ids[CHAOS_IDS];
static int chaos_bad;

static unsigned int chaos_rand(unsigned int *seed)
{
	*seed = *seed * 1103515245u + 12345u;
	return *seed >> 8;
}

static void chaos_expect(int r, const char *what)
{
	if (r < 0 && r != -ENOENT && r != -EOPNOTSUPP) {
		if (!__atomic_fetch_add(&chaos_bad, 1, __ATOMIC_SEQ_CST))
			printf("# chaos %s: %d\n", what, r);
	}
}

static void *chaos_fn(void *arg)
{
	unsigned int seed = (unsigned int)(uintptr_t)arg * 7919u + 1;
	long role = (long)(uintptr_t)arg;
	struct aem_delivery d[8];
	struct aem_reg_stats st;
	int i, id, r;

	while (!__atomic_load_n(&chaos_stop, __ATOMIC_SEQ_CST)) {
		i = chaos_rand(&seed) % CHAOS_IDS;
		id = __atomic_load_n(&chaos_ids[i], __ATOMIC_SEQ_CST);
		switch (role) {
		case 0:	/* register / clean */
			if (id > 0)
				chaos_expect(ctl(chaos_fd, id, AEM_CTL_CLEAN, 0), "clean");
			switch (chaos_rand(&seed) % 4) {
			case 0:
				id = reg_raw(chaos_fd, AEM_EV_TIMER,
					     AEM_PRIO(i % 64), 200000, 200000);
				break;
			case 1:
				id = reg_fd(chaos_fd, chaos_pipe[i & 1],
					    i & 1 ? POLLOUT : POLLIN,
					    i & 2 ? AEM_EDGE : 0);
				break;
			default:
				id = reg_soft(chaos_fd, AEM_PRIO(i % 64) |
					      (i & 4 ? AEM_PER_OCCURRENCE : 0) |
					      (i & 8 ? AEM_ONESHOT : 0));
			}
			chaos_expect(id, "register");
			__atomic_store_n(&chaos_ids[i], id, __ATOMIC_SEQ_CST);
			break;
		case 1:	/* raise */
			r = raise_ev(chaos_fd, id, 1 + i, i);
			chaos_expect(r, "raise");
			break;
		case 2:	/* pop */
			chaos_expect(wait_ev(chaos_fd, d, 8, 1000000), "wait");
			break;
		default:	/* control */
			switch (chaos_rand(&seed) % 6) {
			case 0:
				r = ctl(chaos_fd, id, AEM_CTL_SET_PRIO, i % 64);
				break;
			case 1:
				r = ctl(chaos_fd, id, AEM_CTL_DISABLE, 0);
				break;
			case 2:
				r = ctl(chaos_fd, id, AEM_CTL_ENABLE, 0);
				break;
			case 3:
				r = ctl(chaos_fd, id, AEM_CTL_SET_TIMEOUT, i % 3);
				break;
			case 4:
				r = stats(chaos_fd, id, &st);
				break;
			default:
				r = 0;
				if (write(chaos_pipe[1], "c", 1) < 0 ||
				    read(chaos_pipe[0], d, 1) < 0)
					r = -errno;
			}
			chaos_expect(r, "ctl");
		}
	}
	return NULL;
}

static void t_chaos(void)
{
	pthread_t th[6];
	long i;

	chaos_fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	CHECK(chaos_fd >= 0 && pipe(chaos_pipe) == 0, "open");
	fcntl(chaos_pipe[0], F_SETFL, O_NONBLOCK);
	fcntl(chaos_pipe[1], F_SETFL, O_NONBLOCK);
	chaos_stop = 0;
	for (i = 0; i < 6; i++)
		pthread_create(&th[i], NULL, chaos_fn, (void *)(i < 4 ? i : 3));
	sleep_ms(1500);
	__atomic_store_n(&chaos_stop, 1, __ATOMIC_SEQ_CST);
	for (i = 0; i < 6; i++)
		pthread_join(th[i], NULL);
	close(chaos_fd);	/* with whatever is live and pending */
	close(chaos_pipe[0]);
	close(chaos_pipe[1]);
	CHECK(!chaos_bad, "%d unexpected errors", chaos_bad);
}

static int fdinfo_field(int fd, const char *field)
{
	char path[64], buf[1024], *p;
	ssize_t n;
	int f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = open(path, O_RDONLY);
	if (f < 0)
		return -1;
	n = read(f, buf, sizeof(buf) - 1);
	close(f);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	p = strstr(buf, field);
	return p ? atoi(p + strlen(field)) : -1;
}

static int fdinfo_regs(int fd)
{
	return fdinfo_field(fd, "aem-regs:\t");
}

/* Live registrations of this uid over all its contexts (fdinfo). */
static int user_regs(void)
{
	return fdinfo_field(dev_fd, "aem-user-regs:\t");
}

/* Per-user limit over contexts, and the fdinfo summary. */
static void t_user_limit_fdinfo(void)
{
	const char *pu = "/sys/module/aem/parameters/max_regs_per_user";
	int a = open("/dev/aem", O_RDWR | O_CLOEXEC);
	int b = open("/dev/aem", O_RDWR | O_CLOEXEC);
	char old[32], path[64], buf[1024];
	int i, ra = 0, rb = 0, r;
	ssize_t n;

	CHECK(a >= 0 && b >= 0, "open");
	CHECK(read_param(pu, old, sizeof(old)) == 0, "param");
	/* dev_fd, of the same user, is the only other context open. */
	r = fdinfo_regs(dev_fd);
	CHECK(r >= 0, "fdinfo of dev_fd");
	snprintf(buf, sizeof(buf), "%d", r + 8);
	write_param(pu, buf);
	for (i = 0; i < 5; i++)
		ra += reg_soft(a, 0) > 0;
	for (i = 0; i < 3; i++)
		rb += reg_soft(b, 0) > 0;
	r = reg_soft(b, 0);
	write_param(pu, old);
	CHECK(ra == 5 && rb == 3, "under the limit %d %d", ra, rb);
	CHECK(r == -EDQUOT, "over the per-user limit: %d", r);
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", a);
	r = open(path, O_RDONLY);
	CHECK(r >= 0, "fdinfo");
	n = read(r, buf, sizeof(buf) - 1);
	close(r);
	CHECK(n > 0, "fdinfo read");
	buf[n] = 0;
	CHECK(strstr(buf, "aem-regs:\t5\n") && strstr(buf, "aem-pending:\t0\n"),
	      "fdinfo: %s", buf);
	close(a);
	close(b);
}

static void t_close_many(void)
{
	enum { NS = 6000, NT = 1000 };
	int fd, i, r;

	for (int round = 0; round < 2; round++) {
		fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
		CHECK(fd >= 0, "open");
		for (i = 0; i < NS; i++) {
			r = reg_soft(fd, AEM_PRIO(i % 64) | (i & 1 ? AEM_PER_OCCURRENCE : 0));
			CHECK(r > 0, "soft %d: %d", i, r);
			if (i % 3 == 0)
				raise_ev(fd, r, 2, 0);
			if (i % 500 == 0)
				ctl(fd, r, AEM_CTL_SET_TIMEOUT, 1);
		}
		for (i = 0; i < NT; i++) {
			r = reg_raw(fd, AEM_EV_TIMER, 0, 1000000 + i * 10000, 50000000);
			CHECK(r > 0, "timer %d: %d", i, r);
		}
		{
			int p[2];

			CHECK(pipe(p) == 0, "pipe");
			for (i = 0; i < 500; i++)
				CHECK(reg_fd(fd, p[i & 1], i & 1 ? POLLOUT : POLLIN,
					     i & 2 ? AEM_EDGE : 0) > 0, "fd reg");
			CHECK(write(p[1], "z", 1) == 1, "write");
			close(p[0]);
			close(p[1]);
		}
		sleep_ms(30);	/* timers fire, timeouts expire, nothing consumed */
		close(fd);
	}
}

/*
 * SIGKILL of a process with thousands of live registrations (timers
 * firing, soft events pending): every registration is released, counted
 * back to the baseline of this uid (bounded wait: the last fput runs in
 * the dying task, the reaping in a work item).
 */
static void t_exit_with_live(void)
{
	int before = user_regs(), after = -1, i, st;
	pid_t pid;

	CHECK(before >= 0, "fdinfo aem-user-regs");
	pid = fork();
	if (pid == 0) {
		int fd = open("/dev/aem", O_RDWR | O_CLOEXEC);

		setpgid(0, 0);
		for (i = 0; i < 500; i++)
			reg_raw(fd, AEM_EV_TIMER, 0, 1000000, 1000000);
		for (i = 0; i < 3000; i++)
			raise_ev(fd, reg_soft(fd, 0), 1, 0);
		if (fork() == 0)
			for (;;)
				pause();	/* killed below with the group */
		kill(0, SIGKILL);
		for (;;)
			pause();
	}
	CHECK(pid > 0, "fork");
	waitpid(pid, &st, 0);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %x", st);
	for (i = 0; i < 500; i++) {	/* up to 5 s */
		after = user_regs();
		if (after == before)
			break;
		sleep_ms(10);
	}
	CHECK(after == before, "%d registrations of this uid before, %d after the kill",
	      before, after);
}

static void t_fd_level(void)
{
	struct pollfd pa = { .fd = dev_fd, .events = POLLIN };
	struct aem_delivery d[4];
	struct aem_reg_info info;
	int p[2], id, n;
	char c;

	CHECK(pipe(p) == 0, "pipe");
	id = reg_fd(dev_fd, p[0], POLLIN, 0);
	CHECK(id > 0, "register %d", id);
	CHECK(lookup(dev_fd, id, &info) == 0 && info.fd == p[0] &&
	      info.type == AEM_EV_FD, "lookup fd %d", info.fd);
	CHECK(wait_ev(dev_fd, d, 4, 0) == 0, "ready while empty");
	CHECK(write(p[1], "ab", 2) == 2, "write");
	n = wait_ev(dev_fd, d, 4, 1000000000);
	CHECK(n == 1 && d[0].id == id && (d[0].value & POLLIN), "first %d", n);
	/* Level: still readable, so delivered again (after a re-check). */
	CHECK(wait_ev(dev_fd, d, 4, 0) == 1 && (d[0].value & POLLIN), "level");
	CHECK(poll(&pa, 1, 0) == 1, "aem fd not readable while level-ready");
	CHECK(wait_ev(dev_fd, d, 4, 0) == 1, "level 3");
	CHECK(read(p[0], &c, 1) == 1, "read");
	CHECK(wait_ev(dev_fd, d, 4, 0) == 1, "one byte left");
	CHECK(read(p[0], &c, 1) == 1, "read");
	CHECK(wait_ev(dev_fd, d, 4, 0) == 0, "delivered after drained");
	CHECK(poll(&pa, 1, 0) == 0, "aem fd readable after drained");
	/* Closing the watched fd does not end the watch; clean does. */
	close(p[0]);
	CHECK(write(p[1], "x", 1) == 1, "write to kept pipe");
	CHECK(wait_ev(dev_fd, d, 4, 1000000000) == 1 && d[0].id == id,
	      "watch ended on close");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	close(p[1]);
}

static void t_fd_edge(void)
{
	struct aem_delivery d[4];
	int p[2], id, i;

	CHECK(pipe(p) == 0, "pipe");
	id = reg_fd(dev_fd, p[0], POLLIN, AEM_EDGE);
	CHECK(id > 0, "register %d", id);
	CHECK(write(p[1], "a", 1) == 1, "write");
	CHECK(wait_ev(dev_fd, d, 4, 1000000000) == 1 && d[0].count == 1,
	      "first arrival");
	CHECK(wait_ev(dev_fd, d, 4, 20000000) == 0, "edge fired without arrival");
	for (i = 0; i < 3; i++)
		CHECK(write(p[1], "b", 1) == 1, "write");
	CHECK(wait_ev(dev_fd, d, 4, 1000000000) == 1 && d[0].count == 3 &&
	      (d[0].value & POLLIN), "3 arrivals: count %llu",
	      (unsigned long long)d[0].count);
	/* Peer close: EPOLLHUP is always reported. */
	close(p[1]);
	CHECK(wait_ev(dev_fd, d, 4, 1000000000) == 1 && (d[0].value & POLLHUP),
	      "hup value %llx", (unsigned long long)d[0].value);
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	close(p[0]);
}

static void t_fd_kinds(void)
{
	struct aem_delivery d[4];
	int p[2], sv[2], efd, ep, fd, id, id2, id3, n;
	uint64_t one = 1;

	CHECK(pipe(p) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0,
	      "pipe/socketpair");
	fd = open("/proc/self/status", O_RDONLY);
	CHECK(reg_fd(dev_fd, fd, POLLIN, 0) == -EPERM, "regular file");
	close(fd);
	CHECK(reg_fd(dev_fd, 999, POLLIN, 0) == -EBADF, "bad fd");
	CHECK(reg_fd(dev_fd, dev_fd, POLLIN, 0) == -EINVAL, "aem fd");
	ep = epoll_create1(EPOLL_CLOEXEC);
	CHECK(reg_fd(dev_fd, ep, POLLIN, 0) == -EINVAL, "epoll fd");
	close(ep);
	CHECK(reg_fd(dev_fd, p[0], 0, 0) == -EINVAL, "no events");
	CHECK(reg_fd(dev_fd, p[0], 0x80000000u, 0) == -EINVAL, "bad events");
	CHECK(reg_fd(dev_fd, p[0], POLLIN, AEM_ABSTIME) == -EINVAL, "timer flag");
	/* Write end: writable at once. */
	id = reg_fd(dev_fd, p[1], POLLOUT, AEM_EDGE);
	CHECK(id > 0, "register");
	CHECK(wait_ev(dev_fd, d, 4, 0) == 1 && d[0].id == id &&
	      (d[0].value & POLLOUT), "writable");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	/* eventfd */
	efd = eventfd(0, EFD_CLOEXEC);
	id = reg_fd(dev_fd, efd, POLLIN, AEM_EDGE);
	CHECK(id > 0, "register eventfd");
	CHECK(write(efd, &one, 8) == 8, "eventfd write");
	CHECK(wait_ev(dev_fd, d, 4, 1000000000) == 1 && d[0].id == id, "eventfd");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	close(efd);
	/* Socket: filter POLLPRI -> POLLIN with data already there. */
	id2 = reg_fd(dev_fd, sv[0], POLLPRI, 0);
	CHECK(id2 > 0, "register socket");
	CHECK(write(sv[1], "x", 1) == 1, "send");
	CHECK(wait_ev(dev_fd, d, 4, 20000000) == 0, "filtered out");
	CHECK(ctl(dev_fd, id2, AEM_CTL_FILTER, POLLIN) == 0, "filter");
	CHECK(ctl(dev_fd, id2, AEM_CTL_FILTER, 0) == -EINVAL, "filter 0");
	n = wait_ev(dev_fd, d, 4, 0);
	CHECK(n == 1 && (d[0].value & POLLIN), "after filter %d", n);
	/* Two registrations on one socket both see the peer's close. */
	id3 = reg_fd(dev_fd, sv[0], POLLRDHUP, AEM_EDGE);
	CHECK(id3 > 0, "register 2");
	close(sv[1]);
	n = drain(dev_fd, d, 4);
	CHECK(n >= 2, "close seen by %d", n);
	CHECK(ctl(dev_fd, id2, AEM_CTL_CLEAN, 0) == 0 &&
	      ctl(dev_fd, id3, AEM_CTL_CLEAN, 0) == 0, "clean");
	close(sv[0]);
	close(p[0]);
	close(p[1]);
}

static void t_fd_signalfd(void)
{
	struct aem_delivery d[4];
	struct signalfd_siginfo ssi;
	sigset_t set;
	int sfd, id;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	CHECK(sfd >= 0, "signalfd");
	id = reg_fd(dev_fd, sfd, POLLIN, 0);
	CHECK(id > 0, "register %d", id);
	CHECK(wait_ev(dev_fd, d, 4, 0) == 0, "ready early");
	kill(getpid(), SIGUSR2);
	CHECK(wait_ev(dev_fd, d, 4, 1000000000) == 1 && d[0].id == id,
	      "signalfd delivery");
	CHECK(read(sfd, &ssi, sizeof(ssi)) == sizeof(ssi), "read");
	CHECK(wait_ev(dev_fd, d, 4, 0) == 0, "level after read");
	CHECK(ctl(dev_fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	close(sfd);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
}

static void t_family_versions(void)
{
	struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_SOFT };
	struct aem_delivery d[4];
	struct aem_reg_info info;
	int a, b;

	a = xioctl(dev_fd, AEM_IOC_REGISTER, &r);
	r.id = 0;
	r.family_version = 1;
	b = xioctl(dev_fd, AEM_IOC_REGISTER, &r);
	CHECK(a > 0 && b > 0, "register %d %d", a, b);
	CHECK(lookup(dev_fd, a, &info) == 0 && info.family_version == 2,
	      "default version %u", info.family_version);
	CHECK(lookup(dev_fd, b, &info) == 0 && info.family_version == 1,
	      "explicit version %u", info.family_version);
	CHECK(raise_ev(dev_fd, a, 1, 0) == 0 && raise_ev(dev_fd, b, 1, 0) == 0,
	      "raise");
	CHECK(drain(dev_fd, d, 4) == 2, "deliveries");
	ctl(dev_fd, a, AEM_CTL_CLEAN, 0);
	ctl(dev_fd, b, AEM_CTL_CLEAN, 0);
}

/* "aem_test hold SECONDS VERSION": keep a soft registration of VERSION. */
static int hold(int secs, int version)
{
	struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_SOFT,
			     .family_version = version };
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC);

	if (fd < 0 || xioctl(fd, AEM_IOC_REGISTER, &r) <= 0)
		return 1;
	printf("# holding a version %d registration\n", version);
	fflush(stdout);
	sleep(secs);
	return 0;
}

/* ---- socket families (aem_sock.ko) ---- */

static int reg_sock(int fd, uint32_t type, int sock, uint32_t events,
		    uint32_t flags)
{
	struct aem_reg r = { .size = sizeof(r), .type = type, .flags = flags,
			     .user_data = type };

	r.arg.sock.fd = sock;
	r.arg.sock.events = events;
	return xioctl(fd, AEM_IOC_REGISTER, &r);
}

static int tcp_listener(uint16_t *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(l, 64) || getsockname(l, (struct sockaddr *)&a, &len))
		return -1;
	*port = ntohs(a.sin_port);
	return l;
}

static int tcp_connect(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a))) {
		if (c >= 0)
			close(c);
		return -1;
	}
	return c;
}

/* A connected TCP pair: *srv accepted here, *cli the peer. */
static int tcp_pair(int *srv, int *cli)
{
	uint16_t port;
	int l = tcp_listener(&port);

	*srv = *cli = -1;
	if (l < 0)
		return -1;
	*cli = tcp_connect(port);
	if (*cli >= 0)
		*srv = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	close(l);
	return *srv >= 0 && *cli >= 0 ? 0 : -1;
}

static uint16_t port_of(int fd, int peer)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	if (peer ? getpeername(fd, (struct sockaddr *)&a, &len) :
		   getsockname(fd, (struct sockaddr *)&a, &len))
		return 0;
	return ntohs(a.sin_port);
}

static int arena_setup(int fd, uint64_t bytes, void **map)
{
	struct aem_arena_setup as = { .size = sizeof(as), .bytes = bytes };
	int r = xioctl(fd, AEM_IOC_ARENA_SETUP, &as);

	if (r)
		return r;
	if (as.mmap_offset != AEM_ARENA_OFFSET || as.block == 0)
		return -EPROTO;
	*map = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, as.mmap_offset);
	return *map == MAP_FAILED ? -errno : 0;
}

static int arena_free(int fd, uint64_t off)
{
	struct aem_arena_free af = { .size = sizeof(af), .offset = off };

	return xioctl(fd, AEM_IOC_ARENA_FREE, &af);
}

static int sock_loaded(void)
{
	struct aem_info info = { .size = sizeof(info) };

	return xioctl(dev_fd, AEM_IOC_INFO, &info) == 0 &&
	       (info.types & (1u << AEM_EV_READ)) &&
	       info.max_arena_bytes >= 65536;
}

static void t_sock_accept(void)
{
	struct aem_delivery d[4];
	struct aem_reg_stats st;
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	int l, c[3], c3, id, i, n;
	struct pollfd pd = { .fd = fd, .events = POLLIN };
	struct pollfd pc = { .events = POLLIN };
	struct aem_reg_info info;
	uint16_t port;

	CHECK(fd >= 0, "open");
	l = tcp_listener(&port);
	CHECK(l >= 0, "listener");
	id = reg_sock(fd, AEM_EV_ACCEPT, l, 0, 0);
	CHECK(id > 0, "register %d", id);
	CHECK(wait_ev(fd, d, 4, 0) == 0, "nothing before a connection");
	for (i = 0; i < 3; i++) {
		c[i] = tcp_connect(port);
		CHECK(c[i] >= 0, "connect");
	}
	/*
	 * One delivery per connection, each with its own fd, in the
	 * listener's accept-queue order: the order in which the handshakes
	 * completed, which under load need not be the order connect()
	 * returned in. Each client is matched by its port, once.
	 */
	for (i = 0; i < 3; i++) {
		int k, match = -1;

		n = wait_ev(fd, d, 1, 2000000000);
		CHECK(n == 1 && d[0].id == id && d[0].type == AEM_EV_ACCEPT &&
		      d[0].count == 1 && d[0].data[1] == 0,
		      "delivery %d: n %d count %llu err %lld", i, n,
		      (unsigned long long)d[0].count, (long long)d[0].data[1]);
		CHECK(fcntl((int)d[0].value, F_GETFD) == FD_CLOEXEC,
		      "accepted fd %llu not installed with CLOEXEC",
		      (unsigned long long)d[0].value);
		for (k = 0; k < 3; k++)
			if (c[k] >= 0 && port_of((int)d[0].value, 1) == port_of(c[k], 0))
				match = k;
		CHECK(match >= 0, "connection %d: peer port %u is no client's, or one seen twice",
		      i, port_of((int)d[0].value, 1));
		CHECK(write(c[match], "x", 1) == 1, "write");
		CHECK(read((int)d[0].value, &n, 1) == 1, "read accepted");
		close((int)d[0].value);
		close(c[match]);
		c[match] = -1;	/* matched: a second delivery for it fails */
	}
	CHECK(wait_ev(fd, d, 4, 20000000) == 0, "no more deliveries");
	CHECK(stats(fd, id, &st) == 0 && st.activations == 3 &&
	      st.deliveries == 3 && st.merged == 0, "stats %llu %llu",
	      (unsigned long long)st.activations,
	      (unsigned long long)st.deliveries);
	/* A pending connection when the registration is cleaned. */
	c[0] = tcp_connect(port);
	CHECK(ctl(fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	n = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	CHECK(n >= 0, "the connection stays on the listener");
	close(n);
	/* Accepted in the kernel, never delivered, then cleaned: closed. */
	id = reg_sock(fd, AEM_EV_ACCEPT, l, 0, 0);
	CHECK(id > 0, "register %d", id);
	c3 = tcp_connect(port);
	CHECK(c3 >= 0, "connect");
	pc.fd = c3;
	CHECK(poll(&pd, 1, 2000) == 1, "context readable");
	CHECK(lookup(fd, id, &info) == 0 && info.pending == 1,
	      "pending %llu", (unsigned long long)info.pending);
	CHECK(ctl(fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	CHECK(poll(&pc, 1, 2000) == 1 && read(c3, &n, 1) == 0,
	      "undelivered connection not closed");
	close(c3);
	for (i = 0; i < 3; i++)
		close(c[i]);
	close(l);
	close(fd);
}

static void t_sock_read_arena(void)
{
	struct aem_delivery d[4];
	struct aem_arena_setup as = { .size = sizeof(as), .bytes = 4095 };
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC), srv, cli, id, n, i;
	char msg[3000], *map = NULL;
	uint64_t off;

	CHECK(fd >= 0, "open");
	CHECK(tcp_pair(&srv, &cli) == 0, "tcp pair");
	CHECK(reg_sock(fd, AEM_EV_READ, srv, 0, 0) == -ENXIO,
	      "read without an arena");
	CHECK(xioctl(fd, AEM_IOC_ARENA_SETUP, &as) == -EINVAL, "bytes not a page multiple");
	as.bytes = 1ull << 40;
	CHECK(xioctl(fd, AEM_IOC_ARENA_SETUP, &as) == -EINVAL, "too big");
	as.bytes = 65536;
	as.reserved0 = 1;
	CHECK(xioctl(fd, AEM_IOC_ARENA_SETUP, &as) == -EINVAL, "reserved");
	as.reserved0 = 0;
	as.flags = 1;
	CHECK(xioctl(fd, AEM_IOC_ARENA_SETUP, &as) == -EINVAL, "flags");
	CHECK(arena_free(fd, 0) == -ENXIO, "free without an arena");
	CHECK(arena_setup(fd, 65536, (void **)&map) == 0, "arena setup");
	CHECK(arena_setup(fd, 65536, (void **)&map) == -EBUSY, "second arena");
	CHECK(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		   AEM_ARENA_OFFSET) == MAP_FAILED, "writable mapping");
	CHECK(reg_sock(fd, AEM_EV_READ, srv, 1, 0) == -EINVAL, "events");
	CHECK(reg_sock(fd, AEM_EV_READ, srv, 0, AEM_EDGE) == -EINVAL, "edge");
	id = reg_sock(fd, AEM_EV_READ, srv, 0, 0);
	CHECK(id > 0, "register %d", id);
	CHECK(wait_ev(fd, d, 4, 0) == 0, "nothing before data");
	for (i = 0; i < (int)sizeof(msg); i++)
		msg[i] = 'a' + i % 26;
	CHECK(write(cli, msg, sizeof(msg)) == sizeof(msg), "write");
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].id == id && d[0].data[1] == 0 && d[0].value &&
	      d[0].value <= sizeof(msg), "data: n %d len %llu err %lld", n,
	      (unsigned long long)d[0].value, (long long)d[0].data[1]);
	off = d[0].data[0];
	CHECK(off + d[0].value <= 65536 &&
	      !memcmp(map + off, msg, d[0].value), "bytes in the arena");
	n = d[0].value;
	/* The rest, if it came in pieces. */
	while (n < (int)sizeof(msg)) {
		CHECK(arena_free(fd, off) == 0, "free");
		CHECK(wait_ev(fd, d, 4, 2000000000) == 1 && d[0].value,
		      "more data");
		off = d[0].data[0];
		CHECK(!memcmp(map + off, msg + n, d[0].value), "bytes");
		n += d[0].value;
	}
	CHECK(arena_free(fd, off) == 0, "free");
	CHECK(arena_free(fd, off) == -EINVAL, "double free");
	CHECK(arena_free(fd, 1) == -EINVAL, "unaligned free");
	CHECK(arena_free(fd, 1ull << 20) == -EINVAL, "free out of range");
	/* End of file: once, len 0. */
	close(cli);
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].value == 0 && d[0].data[1] == 0, "eof: n %d", n);
	CHECK(wait_ev(fd, d, 4, 20000000) == 0, "eof once");
	CHECK(ctl(fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	munmap(map, 65536);
	close(srv);
	close(fd);
}

/*
 * A full arena: -ENOMEM in data[1], once; the data waits in the socket
 * and comes when a chunk is given back. A reset: -ECONNRESET, then EOF.
 */
static void t_sock_read_enomem_reset(void)
{
	struct aem_delivery d[4];
	struct linger lg = { 1, 0 };
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC), srv, cli, id, n;
	char buf[3000], *map = NULL;
	uint64_t off;

	CHECK(fd >= 0, "open");
	CHECK(tcp_pair(&srv, &cli) == 0, "tcp pair");
	CHECK(arena_setup(fd, 4096, (void **)&map) == 0, "arena setup");
	id = reg_sock(fd, AEM_EV_READ, srv, 0, 0);
	CHECK(id > 0, "register %d", id);
	memset(buf, 'q', sizeof(buf));
	CHECK(write(cli, buf, sizeof(buf)) == sizeof(buf), "write");
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].value == sizeof(buf), "first chunk: n %d len %llu",
	      n, (unsigned long long)d[0].value);
	off = d[0].data[0];
	CHECK(write(cli, buf, sizeof(buf)) == sizeof(buf), "write");
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].data[1] == (uint64_t)-ENOMEM && !d[0].value,
	      "enomem: n %d err %lld", n, (long long)d[0].data[1]);
	CHECK(wait_ev(fd, d, 4, 20000000) == 0, "enomem once");
	CHECK(arena_free(fd, off) == 0, "free");
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].value == sizeof(buf) && !d[0].data[1],
	      "after free: n %d len %llu", n, (unsigned long long)d[0].value);
	CHECK(arena_free(fd, d[0].data[0]) == 0, "free");
	/* Unread data at the client: its close sends a reset. */
	CHECK(write(srv, "unread", 6) == 6, "write");
	CHECK(setsockopt(cli, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0,
	      "linger");
	close(cli);
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].data[1] == (uint64_t)-ECONNRESET,
	      "reset: n %d err %lld", n, (long long)d[0].data[1]);
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].value == 0 && !d[0].data[1], "eof after reset");
	CHECK(wait_ev(fd, d, 4, 20000000) == 0, "eof once");
	close(srv);
	/* Never connected: -ENOTCONN once, then end of file, then quiet. */
	srv = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	id = reg_sock(fd, AEM_EV_READ, srv, 0, 0);
	CHECK(id > 0, "register %d", id);
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].data[1] == (uint64_t)-ENOTCONN,
	      "not connected: n %d err %lld", n, (long long)d[0].data[1]);
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].value == 0 && !d[0].data[1], "eof after error");
	CHECK(wait_ev(fd, d, 4, 20000000) == 0, "quiet after eof");
	close(srv);
	close(fd);
}

static void t_sock_close_sk_sock(void)
{
	struct aem_delivery d[8];
	struct aem_reg_info info;
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC), srv, cli, u[2], p[2];
	int idc, ids, idk, n, i, closes = 0, sks = 0;
	uint16_t port;
	int l = tcp_listener(&port);

	CHECK(fd >= 0 && l >= 0, "open");
	CHECK(tcp_pair(&srv, &cli) == 0, "tcp pair");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, u) == 0, "unix");
	CHECK(pipe(p) == 0, "pipe");
	/* Refusals. */
	CHECK(reg_sock(fd, AEM_EV_CLOSE, p[0], 0, 0) == -ENOTSOCK, "pipe");
	CHECK(reg_sock(fd, AEM_EV_CLOSE, 1 << 20, 0, 0) == -EBADF, "bad fd");
	CHECK(reg_sock(fd, AEM_EV_SK, u[0], 0, 0) == -EOPNOTSUPP, "sk on unix");
	CHECK(reg_sock(fd, AEM_EV_SK, srv, 1, 0) == -EINVAL, "sk state 0");
	CHECK(reg_sock(fd, AEM_EV_SK, srv, 1 << 20, 0) == -EINVAL, "sk mask");
	CHECK(reg_sock(fd, AEM_EV_ACCEPT, srv, 0, 0) == -EINVAL,
	      "accept on a connection");
	CHECK(reg_sock(fd, AEM_EV_ACCEPT, l, 0, AEM_ABSTIME) == -EINVAL,
	      "abstime");
	CHECK(reg_sock(fd, AEM_EV_CLOSE, srv, POLLIN, 0) == -EINVAL, "events");
	CHECK(reg_sock(fd, AEM_EV_SOCK, srv, 1u << 30, 0) == -EINVAL, "sock bits");
	{
		struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_CLOSE };

		r.arg.sock.fd = srv;
		r.arg.raw[1] = 1;
		CHECK(xioctl(fd, AEM_IOC_REGISTER, &r) == -EINVAL,
		      "unused argument bytes");
	}
	idc = reg_sock(fd, AEM_EV_CLOSE, srv, 0, 0);
	idk = reg_sock(fd, AEM_EV_SK, srv, 0, 0);
	ids = reg_sock(fd, AEM_EV_SOCK, srv, 0, AEM_EDGE);
	CHECK(idc > 0 && idk > 0 && ids > 0, "register %d %d %d", idc, idk, ids);
	CHECK(lookup(fd, idk, &info) == 0 && info.fd == srv &&
	      info.type == AEM_EV_SK, "lookup");
	CHECK(ctl(fd, idk, AEM_CTL_FILTER, 0) == -EINVAL, "sk filter 0");
	CHECK(ctl(fd, idc, AEM_CTL_FILTER, 1) == -EOPNOTSUPP, "close filter");
	/* Writable at once: SOCK reports EPOLLOUT; nothing else yet. */
	n = drain(fd, d, 8);
	CHECK(n == 1 && d[0].id == ids && (d[0].value & POLLOUT),
	      "initial: n %d id %d", n, d[0].id);
	CHECK(ctl(fd, ids, AEM_CTL_FILTER, POLLIN | POLLRDHUP) == 0, "filter");
	close(cli);
	for (i = 0; i < 40 && (closes < 1 || sks < 1); i++) {
		n = wait_ev(fd, d, 8, 100000000);
		for (int j = 0; j < n; j++) {
			if (d[j].id == idc) {
				closes++;
				CHECK(d[j].value & POLLRDHUP, "close bits %llx",
				      (unsigned long long)d[j].value);
			}
			if (d[j].id == idk) {
				sks++;
				CHECK(d[j].data[0] == TCP_ESTABLISHED &&
				      d[j].value == TCP_CLOSE_WAIT,
				      "transition %llu -> %llu",
				      (unsigned long long)d[j].data[0],
				      (unsigned long long)d[j].value);
			}
			if (d[j].id == ids)
				CHECK(d[j].value & (POLLIN | POLLRDHUP),
				      "sock bits %llx",
				      (unsigned long long)d[j].value);
		}
	}
	CHECK(closes == 1 && sks == 1, "close %d sk %d", closes, sks);
	/* Our side closes: LAST_ACK, then CLOSE; only CLOSE asked for. */
	CHECK(ctl(fd, idk, AEM_CTL_FILTER, 1u << TCP_CLOSE) == 0, "sk filter");
	CHECK(shutdown(srv, SHUT_WR) == 0, "shutdown");
	for (i = 0, sks = 0; i < 40 && !sks; i++) {
		n = wait_ev(fd, d, 8, 100000000);
		for (int j = 0; j < n; j++) {
			if (d[j].id == idc)
				closes++;
			if (d[j].id == idk) {
				sks++;
				CHECK(d[j].value == TCP_CLOSE, "new state %llu",
				      (unsigned long long)d[j].value);
			}
		}
	}
	CHECK(sks == 1 && closes == 1, "sk %d close %d", sks, closes);
	/* Unix stream sockets: close and sock work there too. */
	CHECK(reg_sock(fd, AEM_EV_CLOSE, u[0], 0, 0) > 0, "close on unix");
	close(u[1]);
	n = wait_ev(fd, d, 8, 2000000000);
	CHECK(n >= 1, "unix close");
	close(u[0]);
	close(srv);
	close(l);
	close(p[0]);
	close(p[1]);
	close(fd);	/* with live registrations */
}

/* Fault injection on the accept and read paths; exit with live ones. */
static void t_sock_faults_exit(void)
{
	const char *fa = "/sys/kernel/debug/aem_sock/fail_accept/";
	const char *fr = "/sys/kernel/debug/aem_sock/fail_read/";
	struct aem_delivery d[4];
	char path[128], *map;
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC), l, c, srv, cli, ida, idr;
	uint16_t port;
	pid_t pid;
	int st, n;

	CHECK(fd >= 0, "open");
	l = tcp_listener(&port);
	CHECK(l >= 0 && tcp_pair(&srv, &cli) == 0, "sockets");
	CHECK(arena_setup(fd, 65536, (void **)&map) == 0, "arena");
	ida = reg_sock(fd, AEM_EV_ACCEPT, l, 0, 0);
	idr = reg_sock(fd, AEM_EV_READ, srv, 0, 0);
	CHECK(ida > 0 && idr > 0, "register");
	snprintf(path, sizeof(path), "%stimes", fa);
	CHECK(write_param(path, "1") == 0, "times");
	snprintf(path, sizeof(path), "%sprobability", fa);
	CHECK(write_param(path, "100") == 0, "probability");
	c = tcp_connect(port);
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].id == ida && d[0].data[1] == (uint64_t)-ENOMEM,
	      "injected accept failure: n %d err %lld", n,
	      (long long)d[0].data[1]);
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].id == ida && !d[0].data[1] && (int)d[0].value >= 0,
	      "accepted after the failure");
	close((int)d[0].value);
	write_param(path, "0");
	snprintf(path, sizeof(path), "%stimes", fr);
	CHECK(write_param(path, "1") == 0, "times");
	snprintf(path, sizeof(path), "%sprobability", fr);
	CHECK(write_param(path, "100") == 0, "probability");
	CHECK(write(cli, "abc", 3) == 3, "write");
	n = wait_ev(fd, d, 4, 2000000000);
	CHECK(n == 1 && d[0].id == idr && d[0].data[1] == (uint64_t)-ENOMEM,
	      "injected read failure");
	write_param(path, "0");
	close(fd);
	close(c);
	close(cli);
	close(srv);
	close(l);
	/* A process killed with socket registrations and a pending accept. */
	pid = fork();
	if (pid == 0) {
		int f = open("/dev/aem", O_RDWR | O_CLOEXEC), s2, c2;
		uint16_t p2;
		int l2 = tcp_listener(&p2);
		void *m;

		if (f < 0 || l2 < 0 || tcp_pair(&s2, &c2) ||
		    arena_setup(f, 65536, &m))
			_exit(1);
		reg_sock(f, AEM_EV_ACCEPT, l2, 0, 0);
		reg_sock(f, AEM_EV_READ, s2, 0, 0);
		reg_sock(f, AEM_EV_CLOSE, s2, 0, 0);
		reg_sock(f, AEM_EV_SK, s2, 0, 0);
		reg_sock(f, AEM_EV_SOCK, s2, 0, 0);
		tcp_connect(p2);
		if (write(c2, "pending", 7) != 7)
			_exit(1);
		kill(getpid(), SIGKILL);
		for (;;)
			pause();
	}
	CHECK(pid > 0, "fork");
	waitpid(pid, &st, 0);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %x", st);
}

/* With the inet_sock_set_state tracepoint: every transition, in order. */
static void t_sock_sk_exact(void)
{
	struct aem_delivery d[8];
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = open("/dev/aem", O_RDWR | O_CLOEXEC), srv, cli, c2, l;
	int ids, idc, n, got = 0, i;
	int want_srv[2][2] = { { TCP_CLOSE_WAIT, TCP_LAST_ACK },
			       { TCP_LAST_ACK, TCP_CLOSE } };
	int want_cli[2][2] = { { TCP_CLOSE, TCP_SYN_SENT },
			       { TCP_SYN_SENT, TCP_ESTABLISHED } };
	uint64_t seen[2][2];
	uint16_t port;

	CHECK(fd >= 0, "open");
	CHECK(tcp_pair(&srv, &cli) == 0, "tcp pair");
	ids = reg_sock(fd, AEM_EV_SK, srv, 0, 0);
	CHECK(ids > 0, "register %d", ids);
	close(cli);
	n = wait_ev(fd, d, 8, 2000000000);
	CHECK(n == 1 && d[0].data[0] == TCP_ESTABLISHED &&
	      d[0].value == TCP_CLOSE_WAIT, "close_wait: n %d", n);
	/* Two transitions before we look: both reported, in order. */
	CHECK(shutdown(srv, SHUT_WR) == 0, "shutdown");
	for (i = 0; i < 1000000; i++) {
		struct tcp_info ti;
		socklen_t len = sizeof(ti);

		CHECK(getsockopt(srv, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0,
		      "tcp_info");
		if (ti.tcpi_state == TCP_CLOSE)
			break;
		sched_yield();
	}
	while (got < 2 && (n = wait_ev(fd, d, 1, 1000000000)) == 1) {
		seen[got][0] = d[0].data[0];
		seen[got][1] = d[0].value;
		got++;
	}
	CHECK(got == 2, "transitions after shutdown: %d", got);
	for (i = 0; i < 2; i++)
		CHECK(seen[i][0] == (uint64_t)want_srv[i][0] &&
		      seen[i][1] == (uint64_t)want_srv[i][1],
		      "transition %d: %llu -> %llu", i,
		      (unsigned long long)seen[i][0],
		      (unsigned long long)seen[i][1]);
	CHECK(wait_ev(fd, d, 8, 20000000) == 0, "nothing more");
	close(srv);
	/* A connecting socket: CLOSE -> SYN_SENT -> ESTABLISHED. */
	l = tcp_listener(&port);
	c2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(l >= 0 && c2 >= 0, "sockets");
	idc = reg_sock(fd, AEM_EV_SK, c2, 0, 0);
	CHECK(idc > 0, "register %d", idc);
	a.sin_port = htons(port);
	CHECK(connect(c2, (struct sockaddr *)&a, sizeof(a)) == 0, "connect");
	for (i = 0; i < 2; i++) {
		n = wait_ev(fd, d, 1, 2000000000);
		CHECK(n == 1 && d[0].id == idc &&
		      d[0].data[0] == (uint64_t)want_cli[i][0] &&
		      d[0].value == (uint64_t)want_cli[i][1],
		      "connect transition %d: n %d %llu -> %llu", i, n,
		      (unsigned long long)d[0].data[0],
		      (unsigned long long)d[0].value);
	}
	close(c2);
	close(l);
	close(fd);
}

int main(int argc, char **argv)
{
	struct aem_info info = { .size = sizeof(info) };
	char tp[16];

	if (argc == 3 && !strcmp(argv[1], "pollfree-exec"))
		return pollfree_exec(atoi(argv[2]));
	if (argc == 4 && !strcmp(argv[1], "hold"))
		return hold(atoi(argv[2]), atoi(argv[3]));
	printf("KTAP version 1\n1..%d\n", NTESTS);
	fflush(stdout);
	dev_fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	if (dev_fd < 0) {
		printf("# open /dev/aem: %s\n", strerror(errno));
		for (int i = 1; i <= NTESTS; i++)
			printf("not ok %d no_device\n", i);
		return 1;
	}
	t_info(); report("info", NULL);
	xioctl(dev_fd, AEM_IOC_INFO, &info);
	if (info.family_version[AEM_EV_SOFT] < 2) {
		report("family_versions", "aem_soft_v2 not loaded");
	} else {
		t_family_versions(); report("family_versions", NULL);
	}
	t_register_clean(); report("register_clean", NULL);
	t_id_unique(); report("id_unique", NULL);
	t_invalid(); report("invalid_input_errno", NULL);
	t_soft_threads(); report("soft_threads_exact_count", NULL);
	t_timer_periodic(); report("timer_periodic_exact", NULL);
	t_timer_oneshot_abs(); report("timer_oneshot_abs_realtime", NULL);
	t_priority_order(); report("priority_order", NULL);
	t_disable_enable(); report("disable_enable", NULL);
	t_per_occurrence_oneshot(); report("per_occurrence_oneshot", NULL);
	t_timeout(); report("timeout_error_delivery", NULL);
	if (access(pmax, W_OK)) {
		report("overload_notification", "no module parameters");
	} else {
		t_overload(); report("overload_notification", NULL);
	}
	t_poll(); report("poll_readable", NULL);
	t_wait_blocking(); report("wait_blocking_timeout", NULL);
	t_wait_eintr(); report("wait_interruptible", NULL);
	t_signal_doorbell(); report("signal_doorbell", NULL);
	t_foreign_process(); report("foreign_process_eownerdead", NULL);
	t_ring(); report("ring_mmap_refill", NULL);
	t_ring_doorbell(); report("ring_doorbell", NULL);
	t_ring_memlock(); report("ring_rlimit_memlock", NULL);
	t_signal_tid(); report("signal_thread_directed", NULL);
	t_efault_keeps(); report("efault_keeps_delivery", NULL);
	if (access(fi, F_OK)) {
		report("fault_injection", "no debugfs");
	} else {
		t_fault_injection(); report("fault_injection", NULL);
	}
	if (access(pmax, W_OK)) {
		report("limits", "no module parameters");
	} else {
		t_limits(); report("limits", NULL);
	}
	t_fd_level(); report("fd_level", NULL);
	t_fd_edge(); report("fd_edge", NULL);
	t_fd_kinds(); report("fd_kinds_refusals_filter", NULL);
	t_fd_signalfd(); report("fd_signalfd_owner_repoll", NULL);
	if (access(pmax, W_OK)) {
		report("priority_boost", "no module parameters");
		report("priority_boost_follows_popper", "no module parameters");
		report("priority_boost_rlimit", "no module parameters");
	} else {
		t_boost(); report("priority_boost", NULL);
		t_boost_popper(); report("priority_boost_follows_popper", NULL);
		t_boost_rlimit(); report("priority_boost_rlimit", NULL);
	}
	if (access("/sys/module/aem/parameters/upcall_syscalls", W_OK)) {
		report("upcall_syscalls", "no module parameters");
	} else {
		t_upcall_syscalls(); report("upcall_syscalls", NULL);
	}
	t_pollfree(); report("fd_pollfree_signalfd", NULL);
	t_chaos(); report("concurrent_chaos", NULL);
	if (access(pmax, W_OK)) {
		report("per_user_limit_fdinfo", "no module parameters");
	} else {
		t_user_limit_fdinfo(); report("per_user_limit_fdinfo", NULL);
	}
	t_close_many(); report("close_with_thousands_live", NULL);
	t_exit_with_live(); report("sigkill_with_live", NULL);
	if (!sock_loaded()) {
		report("sock_accept", "aem_sock not loaded");
		report("sock_read_arena", "aem_sock not loaded");
		report("sock_read_enomem_reset", "aem_sock not loaded");
		report("sock_close_sk_sock", "aem_sock not loaded");
		report("sock_faults_exit", "aem_sock not loaded");
		report("sock_sk_exact_transitions", "aem_sock not loaded");
	} else {
		t_sock_accept(); report("sock_accept", NULL);
		t_sock_read_arena(); report("sock_read_arena", NULL);
		t_sock_read_enomem_reset(); report("sock_read_enomem_reset", NULL);
		t_sock_close_sk_sock(); report("sock_close_sk_sock", NULL);
		if (access("/sys/kernel/debug/aem_sock/fail_accept", F_OK)) {
			report("sock_faults_exit", "no debugfs");
		} else {
			t_sock_faults_exit(); report("sock_faults_exit", NULL);
		}
		if (read_param("/sys/kernel/debug/aem_sock/sk_tracepoint",
			       tp, sizeof(tp)) || tp[0] != '1') {
			report("sock_sk_exact_transitions", "no tracepoint");
		} else {
			t_sock_sk_exact(); report("sock_sk_exact_transitions", NULL);
		}
	}
	close(dev_fd);
	dev_fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
	test_no++;
	if (dev_fd >= 0 && reg_soft(dev_fd, 0) == 1)
		printf("ok %d reopen_fresh_context\n", test_no);
	else
		printf("not ok %d reopen_fresh_context\n", test_no), failures++;
	close(dev_fd);
	printf("# %d failed\n", failures);
	return failures ? 1 : 0;
}
