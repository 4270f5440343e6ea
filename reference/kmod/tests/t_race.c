// SPDX-License-Identifier: GPL-2.0
/*
 * Races of teardown against use, in the style of LTP's fuzzy sync: two
 * threads are released together by a barrier at every iteration, one of
 * them after a spin that grows and shrinks, so the windows of the two
 * paths slide over each other. A race that goes wrong shows as a splat
 * (the boot is --strict), a wrong errno, or a registration left behind
 * (the harness checks uid 1000's count after each test).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define RACE_ITERS	3000

struct race {
	pthread_barrier_t go;
	int fd;
	volatile int id;
	volatile int stop;
	int bad;		/* an unexpected errno, for the report */
	int iters;
	int (*b_op)(struct race *r);
};

/* Spin a varying while: slides one side's window over the other's. */
static void race_delay(int i)
{
	volatile int k, n = (i * 37) % 2000;

	for (k = 0; k < n; k++)
		;
}

static void *race_b(void *arg)
{
	struct race *r = arg;
	int i, e;

	for (i = 0; i < r->iters; i++) {
		pthread_barrier_wait(&r->go);
		race_delay(i);
		e = r->b_op(r);
		if (e && !r->bad)
			r->bad = e;
		pthread_barrier_wait(&r->go);
	}
	return NULL;
}

static int op_raise(struct race *r)
{
	int e = aem_raise(r->fd, r->id, 1, 1);

	return e == 0 || e == -ENOENT ? 0 : e;
}

static int op_wait(struct race *r)
{
	struct aem_delivery d[4];
	int e = aem_wait(r->fd, d, 4, 0);

	return e >= 0 ? 0 : e;
}

static int op_stats(struct race *r)
{
	struct aem_reg_stats s;
	int e = aem_stats(r->fd, r->id, &s);

	return e == 0 || e == -ENOENT ? 0 : e;
}

/* Side A cleans the registration side B is using. */
static void clean_against(int (*b_op)(struct race *r), uint32_t flags)
{
	struct race r = { .iters = RACE_ITERS, .b_op = b_op };
	pthread_t th;
	int i, e = 0;

	r.fd = aem_open();
	CHECK(r.fd >= 0, "open");
	pthread_barrier_init(&r.go, NULL, 2);
	CHECK(pthread_create(&th, NULL, race_b, &r) == 0, "thread");
	for (i = 0; i < r.iters; i++) {
		r.id = aem_reg_soft(r.fd, flags);
		if (r.id > 0)
			aem_raise(r.fd, r.id, 2, 0);
		pthread_barrier_wait(&r.go);
		race_delay(r.iters - i);
		e = r.id > 0 ? aem_ctl(r.fd, r.id, AEM_CTL_CLEAN, 0) : r.id;
		pthread_barrier_wait(&r.go);
		/* CLEAN may lose to a one-shot's final delivery: -ENOENT. */
		if (e && e != -ENOENT)
			break;
	}
	pthread_join(th, NULL);
	close(r.fd);
	CHECK(i == r.iters, "iteration %d: register/clean: %d", i, e);
	CHECK(!r.bad, "the other side got %d (%s)", r.bad, strerror(-r.bad));
}

AEM_TEST(race_clean_vs_raise)
{
	clean_against(op_raise, 0);
}

AEM_TEST(race_clean_vs_wait_oneshot)
{
	clean_against(op_wait, AEM_ONESHOT);
}

AEM_TEST(race_clean_vs_stats)
{
	clean_against(op_stats, AEM_PER_OCCURRENCE);
}

/* ---- close and exit against WAIT and RAISE ---- */

static void *waiter(void *arg)
{
	struct aem_delivery d[8];
	int fd = *(int *)arg;

	for (;;)
		if (aem_wait(fd, d, 8, 1000000) == -EBADF)
			return NULL;
}

static void *raiser(void *arg)
{
	int fd = *(int *)arg, id = aem_reg_soft(fd, 0);

	for (;;)
		if (aem_raise(fd, id, 1, 0) == -EBADF)
			return NULL;
}

/*
 * A process whose threads wait and raise on a context with timers and
 * soft events is killed at a sliding moment, 200 times; close() of the
 * context from one thread while the others are inside WAIT and RAISE,
 * 200 times. Nothing may be left behind.
 */
AEM_TEST(race_exit_and_close_vs_wait_raise, .needs = AEM_NEED_TIMER, .timeout = 300)
{
	int i, st;

	for (i = 0; i < 400; i++) {
		pid_t pid = fork();

		if (pid == 0) {
			int fd = aem_open(), k;
			pthread_t a, b;

			for (k = 0; k < 20; k++)
				aem_reg_timer(fd, 0, 100000, 200000);
			pthread_create(&a, NULL, waiter, &fd);
			pthread_create(&b, NULL, raiser, &fd);
			race_delay(i * 50);
			if (i & 1)
				_exit(0);	/* exit with both threads inside */
			close(fd);	/* close under them: they see EBADF */
			pthread_join(a, NULL);
			pthread_join(b, NULL);
			_exit(0);
		}
		CHECK(pid > 0, "fork");
		if (i % 4 == 2)
			kill(pid, SIGKILL);
		CHECK(waitpid(pid, &st, 0) == pid, "wait");
		CHECK(WIFEXITED(st) || WIFSIGNALED(st), "status %#x", st);
	}
}

/* ---- fork against registration ---- */

/*
 * One thread registers and cleans while another forks; each child uses
 * the inherited context (EOWNERDEAD) and exits. The parent's registrations
 * stay its own; nothing leaks.
 */
AEM_TEST(race_fork_vs_register)
{
	struct race r = { .iters = 300 };
	int i, st, bad = 0;

	r.fd = aem_open();
	CHECK(r.fd >= 0, "open");
	for (i = 0; i < r.iters; i++) {
		int id = aem_reg_soft(r.fd, 0);
		pid_t pid = fork();

		if (pid == 0)
			_exit(aem_raise(r.fd, id, 1, 0) == -EOWNERDEAD ? 0 : 1);
		CHECK(pid > 0, "fork");
		if (aem_ctl(r.fd, id, AEM_CTL_CLEAN, 0))
			bad++;
		waitpid(pid, &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			bad++;
	}
	close(r.fd);
	CHECK(!bad, "%d children used the parent's context, or cleans failed", bad);
}

/* ---- unloading while registrations live ---- */

/*
 * With a live registration, the family module and aem.ko are pinned:
 * delete_module() must refuse (EBUSY or EWOULDBLOCK), never unload a
 * module whose code a registration still uses.
 */
AEM_TEST(rmmod_refused_while_live, .needs = AEM_NEED_TIMER, .root = 1)
{
	int fd = aem_open(), id, e1, e2;

	CHECK(fd >= 0, "open");
	id = aem_reg_timer(fd, 0, 1000000000, 1000000000);
	CHECK(id > 0, "timer: %d", id);
	e1 = syscall(SYS_delete_module, "aem_timer", O_NONBLOCK) ? errno : 0;
	e2 = syscall(SYS_delete_module, "aem", O_NONBLOCK) ? errno : 0;
	close(fd);
	CHECK(e1 == EBUSY || e1 == EWOULDBLOCK, "rmmod aem_timer with a live timer: %s",
	      e1 ? strerror(e1) : "unloaded");
	CHECK(e2 == EBUSY || e2 == EWOULDBLOCK, "rmmod aem with a context open: %s",
	      e2 ? strerror(e2) : "unloaded");
}
