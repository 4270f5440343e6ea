// SPDX-License-Identifier: GPL-2.0
/*
 * Fault sweeps: every allocation on the register and ioctl paths fails in
 * turn, and each failure must give an error return (or an error
 * notification), no splat (the boot is --strict) and no leak (the harness
 * checks uid 1000's registrations after the test; kmemleak runs after the
 * suite on the debug kernel).
 *
 * Two kinds:
 * - the modules' own sites (/sys/kernel/debug/aem{,_fd,_sock}/fail_*),
 *   present on any kernel;
 * - the kernel's fault injection from outside the module, one call at a
 *   time: /proc/thread-self/fail-nth with failslab and fail_page_alloc
 *   (CONFIG_FAULT_INJECTION, FAILSLAB, FAIL_PAGE_ALLOC: the debug kernel).
 *   Writing N there fails the Nth fault-injection point this thread meets;
 *   the sweep raises N until an operation meets fewer than N points.
 * Each prints its table as KTAP diagnostics: operation, points met, the
 * errnos seen.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

/* One operation: a fresh context, set-up, then the one call swept. */
struct fault_op {
	const char *name;
	int (*prepare)(int fd, int *aux);	/* not swept */
	int (*call)(int fd, int aux);		/* swept: 0/id or -errno */
};

static int prep_none(int fd, int *aux)
{
	(void)fd;
	*aux = -1;
	return 0;
}

static int prep_soft(int fd, int *aux)
{
	*aux = aem_reg_soft(fd, 0);
	return *aux > 0 ? 0 : *aux;
}

static int prep_eventfd(int fd, int *aux)
{
	(void)fd;
	*aux = eventfd(1, EFD_CLOEXEC);
	return *aux >= 0 ? 0 : -errno;
}

/* What prep_socketpair() made besides @aux: unmapped and closed by unprep(). */
static void *prep_map;
static int prep_peer = -1;

static int prep_socketpair(int fd, int *aux)
{
	int sv[2];
	int r = aem_arena(fd, 1 << 16, &prep_map);

	if (r) {
		prep_map = NULL;
		return r;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	prep_peer = sv[1];
	if (write(sv[1], "hello", 5) != 5)
		return -errno;
	*aux = sv[0];
	return 0;
}

static int prep_unixpair(int fd, int *aux)
{
	int sv[2];

	(void)fd;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	prep_peer = sv[1];
	*aux = sv[0];
	return 0;
}

static int prep_listener(int fd, int *aux)
{
	uint16_t port;

	(void)fd;
	*aux = aem_tcp_listener(&port);
	return *aux >= 0 ? 0 : *aux;
}

/* A ring, and a delivery in it: REFILL has a ring to fill. */
static int prep_ring(int fd, int *aux)
{
	struct aem_ring_setup rs = { .size = sizeof(rs), .entries = 64 };
	int r = aem_ioctl(fd, AEM_IOC_RING_SETUP, &rs), id;

	*aux = -1;
	if (r)
		return r;
	id = aem_reg_soft(fd, 0);
	return id > 0 ? aem_raise(fd, id, 1, 0) : id;
}

/*
 * Close what one round made: @aux, the context, and an arena mapping (it
 * holds the context: the registrations would outlive the close).
 */
static void unprep(int fd, int aux)
{
	if (aux > 2)
		close(aux);
	if (prep_peer >= 0)
		close(prep_peer);
	prep_peer = -1;
	if (prep_map)
		munmap(prep_map, 1 << 16);
	prep_map = NULL;
	close(fd);
}

static int call_soft(int fd, int aux)
{
	(void)aux;
	return aem_reg_soft(fd, 0);
}

static int call_timer(int fd, int aux)
{
	(void)aux;
	return aem_reg_timer(fd, 0, 1000000, 1000000);
}

static int call_fd(int fd, int aux)
{
	return aem_reg_fd(fd, aux, 0x1, 0);
}

static int call_read(int fd, int aux)
{
	return aem_reg_sock(fd, AEM_EV_READ, aux, 0, 0);
}

static int call_accept(int fd, int aux)
{
	return aem_reg_sock(fd, AEM_EV_ACCEPT, aux, 0, 0);
}

static int call_sk(int fd, int aux)
{
	return aem_reg_sock(fd, AEM_EV_SK, aux, 0, 0);
}

static int call_sock(int fd, int aux)
{
	return aem_reg_sock(fd, AEM_EV_SOCK, aux, 0, 0);
}

static int call_close(int fd, int aux)
{
	return aem_reg_sock(fd, AEM_EV_CLOSE, aux, 0, 0);
}

static int call_raise(int fd, int aux)
{
	return aem_raise(fd, aux, 1, 0);
}

static int call_refill(int fd, int aux)
{
	struct aem_wait w = { .size = sizeof(w), .flags = AEM_WAIT_REFILL };

	(void)aux;
	return aem_ioctl(fd, AEM_IOC_WAIT, &w);
}

static int call_timeout(int fd, int aux)
{
	return aem_ctl(fd, aux, AEM_CTL_SET_TIMEOUT, 1000);
}

static int call_wait(int fd, int aux)
{
	struct aem_delivery d[4];

	aem_raise(fd, aux, 1, 0);
	return aem_wait(fd, d, 4, 0);
}

static int call_ring(int fd, int aux)
{
	struct aem_ring_setup rs = { .size = sizeof(rs), .entries = 64 };

	(void)aux;
	return aem_ioctl(fd, AEM_IOC_RING_SETUP, &rs);
}

static int call_arena(int fd, int aux)
{
	/* 16 pages: one fault point each, all within the sweep's 200 */
	struct aem_arena_setup as = { .size = sizeof(as), .bytes = 1 << 16 };

	(void)aux;
	return aem_ioctl(fd, AEM_IOC_ARENA_SETUP, &as);
}

static int call_signal(int fd, int aux)
{
	struct aem_signal sg = { .size = sizeof(sg), .signo = 40 };

	(void)aux;
	return aem_ioctl(fd, AEM_IOC_SET_SIGNAL, &sg);
}

static int call_stats(int fd, int aux)
{
	struct aem_reg_stats s;

	return aem_stats(fd, aux, &s);
}

static const struct fault_op fault_ops[] = {
	{ "register_soft", prep_none, call_soft },
	{ "register_timer", prep_none, call_timer },
	{ "register_fd", prep_eventfd, call_fd },
	{ "register_read", prep_socketpair, call_read },
	{ "register_accept", prep_listener, call_accept },
	{ "register_sk", prep_listener, call_sk },
	{ "register_sock", prep_unixpair, call_sock },
	{ "register_close", prep_unixpair, call_close },
	{ "raise", prep_soft, call_raise },
	{ "wait_refill", prep_ring, call_refill },
	{ "ctl_set_timeout", prep_soft, call_timeout },
	{ "wait", prep_soft, call_wait },
	{ "ring_setup", prep_none, call_ring },
	{ "arena_setup", prep_none, call_arena },
	{ "set_signal", prep_none, call_signal },
	{ "ctl_stats", prep_soft, call_stats },
};

#define NOPS	ARRAY_SIZE(fault_ops)

/*
 * /proc/thread-self/fail-nth, opened once: an open() between the call and
 * the read would itself meet the fault points the call left over (its
 * allocations), and a failure injected there looked like one the call met.
 */
static int nth_fd = -1;

static int write_nth(unsigned int n)
{
	char buf[16];
	int len = snprintf(buf, sizeof(buf), "%u", n);

	return pwrite(nth_fd, buf, len, 0) == len ? 0 : -errno;
}

/*
 * The fault points the call left over: 0 when it met the Nth. The read's
 * own copy to user space is a fault point too (fail_usercopy): with one
 * left over, that copy fails with EFAULT, which thus means 1.
 */
static long read_nth(void)
{
	char buf[16];
	ssize_t n = pread(nth_fd, buf, sizeof(buf) - 1, 0);

	if (n < 0)
		return errno == EFAULT ? 1 : -1;
	buf[n] = 0;
	return strtol(buf, NULL, 10);
}

/* Nothing left armed: a write meets a point too, so until a read says 0. */
static void clear_nth(void)
{
	int i;

	for (i = 0; i < 4 && read_nth(); i++)
		write_nth(0);
}

/*
 * Does the context still work? A soft event registers, raises and is
 * delivered: to this WAIT, or, when the operation set up a ring (an
 * injected failure the kernel tolerated), into the ring (STATS counts it).
 */
static bool still_works(int fd)
{
	struct aem_delivery d[16];
	struct aem_reg_stats st;
	int id = aem_reg_soft(fd, 0), n, i;
	bool ok = false;

	if (id <= 0 || aem_raise(fd, id, 1, 0))
		return false;
	n = aem_wait(fd, d, 16, 0);	/* what the operation left, and ours */
	for (i = 0; i < n; i++)
		ok |= d[i].id == id;
	/*
	 * With a ring the raise went into it, and WAIT found nothing: an
	 * entry not consumed yet is pending, not delivered (aem.h).
	 */
	if (!ok && aem_stats(fd, id, &st) == 0)
		ok = st.activations == 1 && st.deliveries + st.pending == 1;
	return !aem_ctl(fd, id, AEM_CTL_CLEAN, 0) && ok;
}

static const char *const failslab_knobs[] = {
	"/sys/kernel/debug/failslab/ignore-gfp-wait",
	"/sys/kernel/debug/failslab/probability",
	"/sys/kernel/debug/failslab/verbose",
	"/sys/kernel/debug/fail_page_alloc/ignore-gfp-wait",
	"/sys/kernel/debug/fail_page_alloc/min-order",
	"/sys/kernel/debug/fail_page_alloc/probability",
	"/sys/kernel/debug/fail_page_alloc/verbose",
	NULL
};

/*
 * fail-nth over every operation: failslab, fail_page_alloc and (where the
 * kernel has it) fail_usercopy fail the Nth fault point of this thread, for
 * N = 1, 2, ... until the operation makes fewer than N. GFP_KERNEL
 * allocations are included (ignore-gfp-wait N), order 0 pages too
 * (min-order 0). An injected failure must give an error (ENOMEM; EFAULT
 * for a copy from or to user space) or a success with a context that still
 * works, and leave no registration behind.
 */
AEM_TEST(fault_sweep_fail_nth, .needs = AEM_NEED_FAILNTH | AEM_NEED_SOCK, .root = 1,
	 .timeout = 600, .save = failslab_knobs)
{
	unsigned int i, n, points, failed, total = 0;
	char errs[256];
	int fd, aux, r;
	long left;

	CHECK(!aem_write_file(failslab_knobs[0], "N") &&
	      !aem_write_file(failslab_knobs[3], "N") &&
	      !aem_write_file(failslab_knobs[4], "0") &&
	      !aem_write_file(failslab_knobs[2], "0") &&
	      !aem_write_file(failslab_knobs[6], "0"), "failslab knobs");
	/* fail-nth alone decides; no random failures on top. */
	aem_write_file(failslab_knobs[1], "0");
	aem_write_file(failslab_knobs[5], "0");
	aem_drop_root();
	/* set_signal's doorbell would kill us at the next delivery */
	signal(40, SIG_IGN);
	nth_fd = open("/proc/thread-self/fail-nth", O_RDWR | O_CLOEXEC);
	CHECK(nth_fd >= 0, "open fail-nth: %s", strerror(errno));
	printf("# %-16s %6s %6s %6s  %s\n", "operation", "points", "failed", "leaked",
	       "errnos seen");
	for (i = 0; i < NOPS; i++) {
		errs[0] = 0;
		points = 0;
		failed = 0;
		for (n = 1; n < 200; n++) {
			fd = aem_open();
			CHECK(fd >= 0, "open: %d", fd);
			r = fault_ops[i].prepare(fd, &aux);
			CHECK(r == 0, "%s: set-up: %d", fault_ops[i].name, r);
			CHECK(write_nth(n) == 0, "fail-nth: %s", strerror(errno));
			r = fault_ops[i].call(fd, aux);
			left = read_nth();
			clear_nth();
			if (left > 0) {	/* fewer than n points: done */
				CHECK(r >= 0, "%s: %d without an injected failure",
				      fault_ops[i].name, r);
				unprep(fd, aux);
				break;
			}
			CHECK(n < 199, "%s: more than 200 fault points", fault_ops[i].name);
			points = n;
			if (r < 0) {
				char e[16];

				failed++;
				snprintf(e, sizeof(e), "%d ", -r);
				if (!strstr(errs, e) && strlen(errs) + strlen(e) < sizeof(errs))
					strcat(errs, e);
			}
			CHECK(still_works(fd), "%s: the context is broken after failure %u",
			      fault_ops[i].name, n);
			unprep(fd, aux);
		}
		total += points;
		/* registrations of this uid left behind by the operation */
		left = aem_user_regs_settled(0, 10000);
		printf("# %-16s %6u %6u %6ld  %s\n", fault_ops[i].name, points, failed,
		       left, errs[0] ? errs : "-");
		CHECK(left == 0, "%s: %ld registrations left after its sweep",
		      fault_ops[i].name, left);
	}
	printf("# fault points met: %u\n", total);
}

/* The modules' own fault sites: each gives its errno and leaks nothing. */
struct own_site {
	const char *knob;
	const char *op;
	int want;
};

static const struct own_site own_sites[] = {
	{ "/sys/kernel/debug/aem/fail_reg_alloc", "register_soft", -ENOMEM },
	{ "/sys/kernel/debug/aem/fail_ring_alloc", "ring_setup", -ENOMEM },
	{ "/sys/kernel/debug/aem/fail_wait_alloc", "wait", -ENOMEM },
	{ "/sys/kernel/debug/aem/fail_arena_setup", "arena_setup", -ENOMEM },
};

AEM_TEST(fault_sites_own, .root = 1, .needs = AEM_NEED_DEBUGFS)
{
	char path[128];
	unsigned int i, k;
	int fd, aux, r;

	printf("# %-40s %-14s %s\n", "site", "operation", "result");
	for (i = 0; i < ARRAY_SIZE(own_sites); i++) {
		const struct fault_op *op = NULL;

		for (k = 0; k < NOPS; k++)
			if (!strcmp(fault_ops[k].name, own_sites[i].op))
				op = &fault_ops[k];
		CHECK(op, "no operation %s", own_sites[i].op);
		fd = aem_open();
		CHECK(fd >= 0, "open");
		r = op->prepare(fd, &aux);
		CHECK(r == 0, "%s: set-up: %d", op->name, r);
		snprintf(path, sizeof(path), "%s/times", own_sites[i].knob);
		CHECK(aem_write_file(path, "1") == 0, "%s", path);
		snprintf(path, sizeof(path), "%s/probability", own_sites[i].knob);
		CHECK(aem_write_file(path, "100") == 0, "%s", path);
		r = op->call(fd, aux);
		aem_write_file(path, "0");
		printf("# %-40s %-14s %d\n", own_sites[i].knob, op->name, r);
		CHECK(r == own_sites[i].want, "%s: %d, want %d", own_sites[i].knob, r,
		      own_sites[i].want);
		CHECK(still_works(fd), "%s: the context is broken", own_sites[i].knob);
		close(fd);
	}
}
