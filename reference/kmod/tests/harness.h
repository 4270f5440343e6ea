/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A small KTAP harness for the AEM kernel tests, in the spirit of LTP's
 * struct tst_test and kselftest's harness: a test declares its name and
 * what it needs once, the harness numbers the tests, skips with a reason,
 * runs each one in a child process of its own (a crash, a hang or a
 * change of uid stays there) and prints KTAP.
 *
 *   AEM_TEST(read_setup_race, .needs = AEM_NEED_SOCK, .timeout = 60)
 *   {
 *           int fd = aem_open();
 *           ...
 *           CHECK(r == 0, "register: %d", r);
 *   }
 *
 * Unless it says .root = 1, a test runs as uid/gid AEM_TEST_UID (1000):
 * /dev/aem is 0666, so that is what any local user can do. A root test
 * may set things up and then call aem_drop_root() itself. Each test is
 * bracketed in the kernel log ("aem-test: begin/end NAME") so a splat is
 * attributed to the test it happened in.
 */
#ifndef AEM_HARNESS_H
#define AEM_HARNESS_H

#include <stdbool.h>
#include <stdint.h>

#include <linux/aem.h>

#ifndef __printf
#define __printf(a, b) __attribute__((format(printf, a, b)))
#endif

#define AEM_TEST_UID	1000

#ifndef ARRAY_SIZE
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#endif

/* What a test needs; missing: it is skipped with the reason. */
#define AEM_NEED_SOCK		0x1	/* aem_sock.ko loaded */
#define AEM_NEED_PARAMS		0x2	/* aem.ko's parameters writable (root) */
#define AEM_NEED_DEBUGFS	0x4	/* /sys/kernel/debug/aem exists */
#define AEM_NEED_FD		0x8	/* aem_fd.ko loaded */
#define AEM_NEED_TIMER		0x10	/* aem_timer.ko loaded */
#define AEM_NEED_FAILNTH	0x20	/* failslab and fail-nth (the debug kernel) */

struct aem_test {
	const char *name;
	void (*fn)(void);
	unsigned int needs;
	bool root;		/* start as root (else as AEM_TEST_UID) */
	unsigned int timeout;	/* seconds, default 120 */
	const char *const *save; /* parameter files restored afterwards */
};

void aem_test_add(const struct aem_test *t);

#define AEM_TEST(fname, ...)						\
	static void fname(void);					\
	static const struct aem_test aem_test_##fname = {		\
		.name = #fname, .fn = fname, __VA_ARGS__		\
	};								\
	__attribute__((constructor)) static void aem_add_##fname(void)	\
	{								\
		aem_test_add(&aem_test_##fname);			\
	}								\
	static void fname(void)

/* Record the first failure of the running test (printf format). */
void aem_fail(const char *fmt, ...) __printf(1, 2);
bool aem_failed(void);
/*
 * End the running test as skipped, with the reason (what it could not
 * check, and why): a prerequisite found missing only at run time. A test
 * that failed a CHECK before still fails.
 */
void aem_skip(const char *fmt, ...) __printf(1, 2) __attribute__((noreturn));

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		aem_fail(__VA_ARGS__);					\
		return;							\
	}								\
} while (0)

/* Drop to AEM_TEST_UID (a root test, after its set-up). */
void aem_drop_root(void);

/* ---- helpers: return the value, or -errno ---- */
int aem_open(void);
int aem_ioctl(int fd, unsigned long cmd, void *arg);
int aem_reg_soft(int fd, uint32_t flags);
int aem_reg_timer(int fd, uint32_t flags, int64_t value_ns, int64_t period_ns);
int aem_reg_fd(int fd, int watched, uint32_t events, uint32_t flags);
int aem_reg_sock(int fd, uint32_t type, int sock, uint32_t events,
		 uint32_t flags);
int aem_ctl(int fd, int id, unsigned int op, uint64_t arg);
int aem_raise(int fd, int id, uint64_t count, uint64_t value);
int aem_wait(int fd, struct aem_delivery *d, unsigned int max,
	     int64_t timeout_ns);
int aem_stats(int fd, int id, struct aem_reg_stats *st);
int aem_arena(int fd, uint64_t bytes, void **map);
/* A field of /proc/self/fdinfo/FD, e.g. "aem-user-regs"; -1 if absent. */
long aem_fdinfo(int fd, const char *field);
/* Live registrations of this uid, waiting (bounded) for deferred work. */
long aem_user_regs_settled(long expect, unsigned int max_ms);
int aem_write_file(const char *path, const char *val);
int aem_read_file(const char *path, char *buf, size_t len);
uint64_t aem_now_ns(void);
void aem_sleep_ms(unsigned int ms);
/* A TCP listener on 127.0.0.1 (port out), a connected pair. */
int aem_tcp_listener(uint16_t *port);
int aem_tcp_connect(uint16_t port);

#endif /* AEM_HARNESS_H */
