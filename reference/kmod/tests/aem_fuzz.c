// SPDX-License-Identifier: GPL-2.0
/*
 * aem_fuzz: a structure-aware, seeded fuzzer of /dev/aem ioctl sequences.
 *
 * It builds its calls from <linux/aem.h>: mostly valid registrations of
 * every family (timers, soft events, fds: eventfds, pipes, signalfd,
 * timerfd; the socket families on loopback TCP and AF_UNIX), every evctl
 * op, waits, raises, doorbell signals, the completion ring and the data
 * arena, with targeted corruption: sizes too small, too big or with a
 * non-zero tail, reserved fields, unknown flag bits, structs in read-only
 * memory, straddling an unmapped page, bad pointers, mangled ioctl numbers.
 * Several threads share the contexts; forked children use an inherited
 * context (-EOWNERDEAD), run a small fuzz of their own and exit (or are
 * killed) with live registrations; exec'd images check the inherited fd;
 * the context fd goes over SCM_RIGHTS (to itself, to a child, into a socket
 * it watches); contexts are closed while other threads wait in them.
 *
 * Every result is checked against the contract where the contract is
 * certain (README.md of reference/kmod, uapi/linux/aem.h): a malformed call
 * must fail with the documented errno, never succeed; an id never issued,
 * cleaned or past its final delivery is -ENOENT; deliveries carry the
 * registration's type and user_data, final ones end the id; with one
 * thread the per-registration STATS balance exactly (activations ==
 * delivered counts + pending). A violation is a "finding": it is printed
 * with the seed and the last calls of every thread, and the exit code is 1.
 * The run happens in a child process. At its end every context is closed
 * and every child reaped, and the uid's registration count (aem-user-regs
 * in /proc/self/fdinfo of a fresh context, polled until deferred work
 * settled) must drop back to 0; once more after that process exited (a
 * context passed into a socket it watches keeps its registrations until
 * its owner's mm goes): anything left is a leak (a finding).
 *
 * With --threads 1 a seed always generates the same sequence of calls
 * (each action draws one number from the seeded stream and derives all its
 * choices from it); values the kernel hands out (ids, fds, arena offsets,
 * what a wait returns) are used as they come, so events that depend on
 * timing (timer expirations, the socket read job) may differ between runs.
 *
 * Usage: aem_fuzz [--seed N] [--calls N] [--seconds S] [--threads N]
 *                 [--uid U] [--log FILE] [--ring-file FILE] [--last N]
 *                 [--actions N] [--max-findings N]
 *                 [--skip fork,exec,scm,cycle,close,signal,wait-fault] [-v]
 *        aem_fuzz --replay FILE      (rerun the header line of a --log file)
 *        aem_fuzz --dump-ring FILE   (print the last calls kept in FILE)
 * A finding prints "reproduce: aem_fuzz --seed S --threads 1 --actions N":
 * the same seed, stopped after the action that found it. --help says more.
 * Build: make -C reference/kmod/tests aem_fuzz (static, like aem_test);
 * ci/run-kmod-fuzz runs it in QEMU.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <execinfo.h>
#include <grp.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <linux/aem.h>

#define PG		4096u
#define MAXT		32		/* threads */
#define NCTX		2		/* contexts open at once per process */
#define NSLOT		24		/* resource slots */
#define MAXCHILD	3		/* forked children alive at once */
#define NCLOG		8		/* log rings for children */
#define LOGN		64		/* calls kept per thread */
#define LOGW		240		/* bytes per kept call */
#define NERR		192		/* errno buckets (0: success) */
#define DBUF		(64u * 1024)	/* per-thread deliveries buffer */
#define MAXMAP		16
#define MAXRET		8
#define MAXCH_NR	4096		/* delivered arena chunks remembered */
#define LIVE_CAP	3000		/* registrations per context before cleaning */

/* Poll bits the fd and socket families accept (what epoll reports). */
#define FZ_POLL_BITS	(EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLERR | EPOLLHUP | \
			 EPOLLRDNORM | EPOLLRDBAND | EPOLLWRNORM |	\
			 EPOLLWRBAND | EPOLLMSG | EPOLLRDHUP)
#define SI_KERNEL_CODE	0x80

#ifndef ARRAY_SIZE
#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))
#endif
#define fallthrough	__attribute__((__fallthrough__))

/* ------------------------------------------------------------------ */
/* Options                                                             */

enum {
	SKIP_FORK = 1, SKIP_EXEC = 2, SKIP_SCM = 4, SKIP_CYCLE = 8,
	SKIP_CLOSE = 16, SKIP_SIGNAL = 32, SKIP_WAIT_FAULT = 64,
};

static const char *const skip_names[] = {
	"fork", "exec", "scm", "cycle", "close", "signal", "wait-fault",
};

static struct {
	uint64_t seed;
	long calls;
	double seconds;
	int threads;
	int uid;
	int last;
	unsigned int skip;
	bool verbose;
	const char *log_path;
	const char *ring_path;
} O = { .calls = 100000, .threads = 1, .uid = -1, .last = 32 };

/* ------------------------------------------------------------------ */
/* Random numbers: xoshiro256** per thread, one draw per action.       */

struct rng {
	uint64_t s[4];
};

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void rng_seed(struct rng *r, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix(&seed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t rnd(struct rng *r)
{
	uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return res;
}

/* An action's private stream: every choice of an action comes from here. */
struct draw {
	uint64_t x;
};

static uint64_t P(struct draw *d)
{
	return splitmix(&d->x);
}

static uint64_t U(struct draw *d, uint64_t n)
{
	return n ? P(d) % n : 0;
}

static bool CH(struct draw *d, unsigned int permille)
{
	return P(d) % 1000 < permille;
}

/* ------------------------------------------------------------------ */
/* Shared state: statistics and the call logs (MAP_SHARED, so forked   */
/* children count and log too; a file with --ring-file survives us).   */

enum {
	OP_INFO, OP_REGISTER, OP_CTL, OP_WAIT, OP_RAISE, OP_SET_SIGNAL,
	OP_RING_SETUP, OP_ARENA_SETUP, OP_ARENA_FREE, OP_OTHER, NOPS
};

static const char *const op_names[NOPS] = {
	"INFO", "REGISTER", "CTL", "WAIT", "RAISE", "SET_SIGNAL",
	"RING_SETUP", "ARENA_SETUP", "ARENA_FREE", "OTHER_IOCTL",
};

enum {
	X_MMAP, X_MPROTECT, X_POLL, X_RDWR, X_FDINFO, X_STIM, X_RECYCLE,
	X_CTX_OPEN, X_CTX_CLOSE, X_CTX_DUP, X_RING_CONSUME, X_RING_GARBAGE,
	X_FORK, X_EXEC, X_CHILD_KILL, X_SCM_SELF, X_SCM_INFLIGHT, X_SCM_CHILD,
	X_SCM_CYCLE, X_DOORBELL, X_WAIT_BLOCK, NX
};

static const char *const x_names[NX] = {
	"mmap", "mprotect", "poll", "read/write", "fdinfo", "stimulus",
	"recycle", "ctx-open", "ctx-close", "ctx-dup", "ring-consume",
	"ring-garbage", "fork", "exec", "child-kill", "scm-self",
	"scm-inflight", "scm-child", "scm-cycle", "doorbell-signals",
	"blocking-wait",
};

struct tlog {
	unsigned long n;
	char line[LOGN][LOGW];
};

#define SHARED_MAGIC	0x61656d66757a7a31ull	/* "aemfuzz1" */

struct shared {
	uint64_t magic;
	char hdr[256];
	unsigned long calls[NOPS][NERR];
	unsigned long xcalls[NX];
	unsigned long ioctls;		/* this process's /dev/aem ioctls */
	unsigned long child_ioctls;
	unsigned long findings;
	int nthreads;
	double seconds;
	long leak_live;
	struct tlog log[MAXT + NCLOG];
};

static struct shared *S;

static void add(unsigned long *p, unsigned long v)
{
	__atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* The model                                                           */

struct freg {
	int id;
	uint32_t type, flags, famver;
	uint64_t ud;
	int fd;			/* what LOOKUP must say */
	int owner;		/* thread index: only it cleans or times out */
	int prio;
	bool enabled, dead, may_doom, oneshot, eof, close_seen, sat;
	uint64_t tmo_ms, dead_clock;
	uint64_t raised, last_value;
	uint64_t dcount, dn, derr;	/* delivered: counts, deliveries, errors */
	int kind;		/* what it watches (K_*) */
	uint64_t eof_clock, close_clock;	/* when they were seen */
};

enum { RS_NONE, RS_SET, RS_MAYBE };

struct fctx {
	int fd, gen, users;
	bool closed, rdonly;
	int retired[MAXRET], nretired;
	pthread_mutex_t slock;		/* ring/arena setup and ring consumer */
	int ring_state;
	uint8_t *ring;
	size_t ring_size;
	uint32_t ring_ent, ring_maybe_ent, head;
	bool garbled, ring_rw;
	int arena_state;
	uint8_t *arena;
	size_t arena_size;
	uint32_t block;
	bool arena_unsure;
	void *maps[MAXMAP];
	size_t maplen[MAXMAP];
	int nmaps;
	struct freg **regs;
	int nregs, cap, max_id, unknown;
	long live_upper;
	int nshort;		/* timers of period < 1 ms registered */
	int inflight;		/* REGISTER calls not yet in the model */
	int ro_efault;		/* REGISTERs -EFAULT only for the id's write-back */
	uint64_t chunks[MAXCH_NR];
	int nchunks;
	int signo;
};

enum {
	K_NONE, K_EVENTFD, K_PIPE_R, K_PIPE_W, K_SIGNALFD, K_TIMERFD, K_MEMFD,
	K_DEVNULL, K_EPOLL, K_AEM, K_TCP_L, K_TCP_C, K_TCP_S, K_UNIX_L,
	K_UNIX_C, K_UNIX_P, K_UDP, K_UNIX_DG, K_ACC, NKIND
};

static const char *const kind_names[NKIND] = {
	"none", "eventfd", "pipe_r", "pipe_w", "signalfd", "timerfd", "memfd",
	"devnull", "epoll", "aem", "tcp_listen", "tcp_client", "tcp_server",
	"unix_listen", "unix_client", "unix_pair", "udp", "unix_dgram",
	"accepted",
};

/* Slot layout: kind and peer slot (pairs are made and recycled together). */
static const struct { int kind, peer; } slot_def[NSLOT] = {
	{ K_EVENTFD, -1 }, { K_PIPE_R, 2 }, { K_PIPE_W, 1 }, { K_SIGNALFD, -1 },
	{ K_TIMERFD, -1 }, { K_MEMFD, -1 }, { K_DEVNULL, -1 }, { K_EPOLL, -1 },
	{ K_AEM, -1 }, { K_TCP_L, -1 }, { K_TCP_C, 11 }, { K_TCP_S, 10 },
	{ K_TCP_C, 13 }, { K_TCP_S, 12 }, { K_UNIX_L, -1 }, { K_UNIX_P, 16 },
	{ K_UNIX_P, 15 }, { K_UNIX_P, 18 }, { K_UNIX_P, 17 }, { K_UDP, -1 },
	{ K_UNIX_DG, 21 }, { K_UNIX_DG, 20 }, { K_TCP_C, -1 }, { K_ACC, -1 },
};

#define SLOT_POOL_TCP_CLIENT	22
#define SLOT_POOL_ACC		23
#define SLOT_TCP_L		9
#define SLOT_UNIX_L		14

struct slot {
	int fd, kind, peer;
	pthread_rwlock_t rw;
};

struct child {
	pid_t pid;
	uint64_t deadline;	/* ns: killed then */
	int kind;
	bool killed;
};

static struct {
	pthread_mutex_t lock;
	struct fctx *ctx[NCTX];
	int gen;
	struct slot s[NSLOT];
	uint64_t clock;
	int placeholder;	/* /dev/null: what a closed context's fd becomes */
	int pairl, pairport, tcpl_port;
	char unix_name[64];
	struct child ch[MAXCHILD];
	struct aem_info info;
	pid_t tids[MAXT];
	int nthreads;
	unsigned int uniq;
} W;

static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pair_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static bool in_child;
static int child_no;
static char exe_path[PATH_MAX];
static uint64_t t_start;
static volatile int stop_all;
static volatile sig_atomic_t bad_doorbell_code, doorbell_count;

struct thr {
	int idx;		/* 0..threads-1; children: MAXT + n */
	pid_t tid;
	struct rng rng;
	uint8_t *scr;		/* SCR_PAGES: see SCR_RW() */
	uint8_t *dbuf;		/* DBUF bytes, then a PROT_NONE page */
	timer_t wd;
	bool wd_ok;
	unsigned long seq;
	struct tlog *log;
	char desc[1024];
	int dlen;
	long budget;		/* children: calls left */
	const char *name;
	char namebuf[16];
};

/*
 * A thread's scratch pages for argument structs: region 0 (the ioctl's
 * struct) and region 1 (a struct it points to: LOOKUP, STATS) have two RW
 * pages each, then an unmapped page (straddling, unmapped pointers); the
 * last page is made read-only around a call.
 */
#define SCR_PAGES	7
#define SCR_RW(t, region)	((t)->scr + ((region) ? 3 : 0) * PG)
#define SCR_RO(t)		((t)->scr + 6 * PG)

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void sleep_us(unsigned int us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static const char *en(long ret)
{
	static __thread char b[24];
	const char *n;

	if (ret >= 0)
		return "ok";
	n = strerrorname_np((int)-ret);
	if (n)
		return n;
	snprintf(b, sizeof(b), "E%ld", -ret);
	return b;
}

/* write(2) all of @s: findings are printed without stdio (fork-safe). */
static void out(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(fd, s, n);

		if (w <= 0) {
			if (w < 0 && errno == EINTR)
				continue;
			return;
		}
		s += w;
		n -= w;
	}
}

static void outf(int fd, const char *fmt, ...)
{
	char b[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(b) - 1)
		n = sizeof(b) - 1;
	if (n > 0)
		out(fd, b, n);
}

/* The call being made, for the log: desc(t, fmt...) appends. */
static void dreset(struct thr *t)
{
	t->dlen = 0;
	t->desc[0] = 0;
}

static void desc(struct thr *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->dlen >= (int)sizeof(t->desc) - 1)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->desc + t->dlen, sizeof(t->desc) - t->dlen, fmt, ap);
	va_end(ap);
	if (n > 0)
		t->dlen = t->dlen + n < (int)sizeof(t->desc) ? t->dlen + n :
			  (int)sizeof(t->desc) - 1;
}

/* Keep the finished call (its description and result) in the log. */
static void logcall(struct thr *t, long ret)
{
	char *l;
	unsigned long n = t->log->n;
	int len;

	char res[32];

	l = t->log->line[n % LOGN];
	if (ret > 0)
		snprintf(res, sizeof(res), "%ld", ret);
	else
		snprintf(res, sizeof(res), "%s", ret == LONG_MIN ? "-" : en(ret));
	len = snprintf(l, LOGW, "%lu %s =>%s | %.*s", t->seq, t->name, res,
		       LOGW - 40, t->desc);
	(void)len;
	__atomic_store_n(&t->log->n, n + 1, __ATOMIC_RELEASE);
	if (log_fd >= 0 || O.verbose) {
		char b[LOGW + 2];
		int m = snprintf(b, sizeof(b), "%s\n", l);

		if (log_fd >= 0)
			out(log_fd, b, m);
		if (O.verbose)
			out(1, b, m);
	}
}

/* Text of a finding, written with one write(): children print too. */
struct obuf {
	char b[64 * 1024];
	size_t n;
};

static void bputf(struct obuf *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->n >= sizeof(o->b) - 1)
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->b + o->n, sizeof(o->b) - o->n, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->n = o->n + n < sizeof(o->b) ? o->n + n : sizeof(o->b) - 1;
}

static void dump_log(struct obuf *o, struct tlog *lg, const char *name, int last)
{
	unsigned long n = __atomic_load_n(&lg->n, __ATOMIC_ACQUIRE), i;

	if (!n)
		return;
	bputf(o, "  last %lu calls of %s:\n", n < (unsigned long)last ? n :
	      (unsigned long)last, name);
	for (i = n > (unsigned long)last ? n - last : 0; i < n; i++) {
		if (n - i > LOGN)
			continue;
		bputf(o, "    %.*s\n", LOGW, lg->line[i % LOGN]);
	}
}

/* The logs of this process's threads (a child: its own). */
static void dump_all_logs(struct obuf *o, int last, int only)
{
	char name[16];

	for (int i = 0; i < MAXT + NCLOG; i++) {
		if (only >= 0 && i != only)
			continue;
		if (i < MAXT)
			snprintf(name, sizeof(name), "T%d", i);
		else
			snprintf(name, sizeof(name), "child log %d", i - MAXT);
		dump_log(o, &S->log[i], name, last);
	}
}

static void repro_line(struct obuf *o, unsigned long at)
{
	char skip[128] = "", act[32] = "";
	int n = 0;

	for (unsigned int i = 0; i < ARRAY_SIZE(skip_names); i++)
		if (O.skip & (1u << i))
			n += snprintf(skip + n, sizeof(skip) - n, "%s%s",
				      n ? "," : " --skip ", skip_names[i]);
	if (at)
		snprintf(act, sizeof(act), " --actions %lu", at);
	bputf(o, "  reproduce: aem_fuzz --seed %llu --threads %d --calls %ld%s%s --uid %d\n",
	      (unsigned long long)O.seed, O.threads, O.calls, act, skip, O.uid);
}

/* A contract violation: print it, the seed and the recent calls. */
static void finding(struct thr *t, const char *fmt, ...)
{
	unsigned long n = __atomic_add_fetch(&S->findings, 1, __ATOMIC_RELAXED);
	char b[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	static struct obuf o;

	pthread_mutex_lock(&print_lock);
	o.n = 0;
	bputf(&o, "aem_fuzz: FINDING %lu [%s%s call %lu, seed %llu]: %s\n",
	      n, in_child ? "child " : "", t ? t->name : "-", t ? t->seq : 0,
	      (unsigned long long)O.seed, b);
	if (t)
		bputf(&o, "  call: %s\n", t->desc);
	if (log_fd >= 0)
		outf(log_fd, "# FINDING %lu [%s call %lu]: %s\n", n,
		     t ? t->name : "-", t ? t->seq : 0, b);
	if (n <= 10) {
		dump_all_logs(&o, O.last, in_child && t ? t->idx : -1);
		if (in_child)
			bputf(&o, "  (a forked child: reproduce the parent's run)\n");
		repro_line(&o, O.threads == 1 && t && !in_child ? t->seq : 0);
		if (O.threads > 1)
			bputf(&o, "  (threads: timing matters; --threads 1 is deterministic)\n");
	}
	out(2, o.b, o.n);
	pthread_mutex_unlock(&print_lock);
}

#define FIND(t, ...) finding((t), __VA_ARGS__)

/* ------------------------------------------------------------------ */
/* Expectations: definite violations, and errors that may happen.      */

struct exp {
	uint64_t v[3], m[3];
};

static void viol(struct exp *e, int err)
{
	e->v[err >> 6] |= 1ull << (err & 63);
}

static void maybe(struct exp *e, int err)
{
	e->m[err >> 6] |= 1ull << (err & 63);
}

static bool has_viol(const struct exp *e)
{
	return e->v[0] | e->v[1] | e->v[2];
}

static bool exp_ok(const struct exp *e, long ret)
{
	int err;

	if (ret >= 0)
		return !has_viol(e);
	err = (int)-ret;
	if (err <= 0 || err >= NERR)
		return false;
	return ((e->v[err >> 6] | e->m[err >> 6]) >> (err & 63)) & 1;
}

static void exp_str(const struct exp *e, char *b, size_t n)
{
	size_t l = 0;

	b[0] = 0;
	if (!has_viol(e))
		l += snprintf(b + l, n - l, "ok");
	for (int i = 1; i < NERR && l < n; i++) {
		bool v = (e->v[i >> 6] >> (i & 63)) & 1;
		bool m = (e->m[i >> 6] >> (i & 63)) & 1;

		if (v || m)
			l += snprintf(b + l, n - l, "%s%s%s", l ? "," : "",
				      en(-i), v ? "" : "?");
	}
}

static void stat_call(struct thr *t, int op, long ret)
{
	int idx = ret >= 0 ? 0 : (-ret < NERR ? (int)-ret : NERR - 1);

	add(&S->calls[op][idx], 1);
	if (in_child)
		add(&S->child_ioctls, 1);
	else
		add(&S->ioctls, 1);
	if (t->budget > 0)
		t->budget--;
}

/* Check @ret against @e; false (and a finding) when it violates. */
static bool expect(struct thr *t, const struct exp *e, long ret,
		   const char *what)
{
	char b[256];

	if (exp_ok(e, ret))
		return true;
	exp_str(e, b, sizeof(b));
	FIND(t, "%s returned %s (%ld), the contract allows {%s}", what,
	     en(ret), ret, b);
	return false;
}

/* ------------------------------------------------------------------ */
/* Signals                                                             */

static void sig_empty(int sig)
{
	(void)sig;
}

static void sig_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	doorbell_count++;
	if (si->si_code != SI_KERNEL_CODE)
		bad_doorbell_code = si->si_code ? si->si_code : -1;
}

/* The fuzzer itself crashed: say where (addr2line -e aem_fuzz ADDR...). */
static void sig_crash(int sig, siginfo_t *si, void *uc)
{
	void *bt[32];
	int n = backtrace(bt, 32);
	char b[128];
	int l;

	(void)uc;
	l = snprintf(b, sizeof(b), "aem_fuzz: signal %d at address %p (pid %d); backtrace:\n",
		     sig, si->si_addr, getpid());
	out(2, b, l);
	backtrace_symbols_fd(bt, n, 2);
	signal(sig, SIG_DFL);
	raise(sig);
}

struct ksigaction {
	void (*handler)(int sig, siginfo_t *si, void *uc);
	unsigned long flags;
	void (*restorer)(void);
	uint64_t mask;
};

static void install_signals(void)
{
	struct sigaction sa;
	struct ksigaction ks;
	sigset_t set;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = sig_empty;	/* no SA_RESTART: a blocking wait ends */
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_sigaction = sig_crash;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGABRT, &sa, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = sig_rt;
	sa.sa_flags = SA_SIGINFO;
	for (int s = SIGRTMIN; s <= SIGRTMAX; s++)
		sigaction(s, &sa, NULL);
	/*
	 * The kernel's RT range starts at 32; glibc keeps 32 and 33 for
	 * itself and refuses handlers there. A doorbell may be set to them:
	 * install ours with the restorer glibc gave the others.
	 */
	if (!syscall(SYS_rt_sigaction, SIGRTMIN, NULL, &ks, 8)) {
		ks.handler = sig_rt;
		ks.flags |= SA_SIGINFO;
		ks.mask = 0;
		for (int s = 32; s < SIGRTMIN; s++)
			syscall(SYS_rt_sigaction, s, &ks, NULL, 8);
	}
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);	/* for the signalfd */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void wd_init(struct thr *t)
{
	struct sigevent sev;

	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = SIGALRM;
	sev._sigev_un._tid = gettid();	/* sigev_notify_thread_id */
	t->wd_ok = !timer_create(CLOCK_MONOTONIC, &sev, &t->wd);
}

/* Interrupt this thread after @ms (a blocking wait returns -EINTR). */
static void wd_arm(struct thr *t, unsigned int ms)
{
	struct itimerspec its = { { 0, 0 }, { ms / 1000, (ms % 1000) * 1000000L } };

	if (t->wd_ok)
		timer_settime(t->wd, 0, &its, NULL);
}

static void wd_disarm(struct thr *t)
{
	struct itimerspec its = { { 0, 0 }, { 0, 0 } };

	if (t->wd_ok)
		timer_settime(t->wd, 0, &its, NULL);
}

/* ------------------------------------------------------------------ */
/* Resources: the files the families watch                            */

static void fz_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int tcp_listener(int *port, bool nonblock)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t l = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC |
		       (nonblock ? SOCK_NONBLOCK : 0), 0);
	int one = 1;

	if (s < 0)
		return -1;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 16) ||
	    getsockname(s, (struct sockaddr *)&a, &l)) {
		close(s);
		return -1;
	}
	*port = ntohs(a.sin_port);
	return s;
}

static int tcp_connect(int port, bool nonblock)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC |
		       (nonblock ? SOCK_NONBLOCK : 0), 0);

	if (s < 0)
		return -1;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons(port);
	if (connect(s, (struct sockaddr *)&a, sizeof(a)) &&
	    errno != EINPROGRESS) {
		close(s);
		return -1;
	}
	return s;
}

/* A connected loopback TCP pair through the private listener. */
static int tcp_pair(int *c, int *s)
{
	pthread_mutex_lock(&pair_lock);
	*c = tcp_connect(W.pairport, false);
	*s = *c >= 0 ? accept4(W.pairl, NULL, NULL,
			       SOCK_CLOEXEC | SOCK_NONBLOCK) : -1;
	pthread_mutex_unlock(&pair_lock);
	if (*c < 0 || *s < 0) {
		if (*c >= 0)
			close(*c);
		if (*s >= 0)
			close(*s);
		*c = *s = -1;
		return -1;
	}
	fz_nonblock(*c);
	return 0;
}

static socklen_t unix_addr(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	/* abstract: nothing in the (read-only) file system */
	strncpy(a->sun_path + 1, name, sizeof(a->sun_path) - 2);
	return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
}

static int open_ctx_fd(bool cloexec, bool rdonly)
{
	return open("/dev/aem", (rdonly ? O_RDONLY : O_RDWR) |
		    (cloexec ? O_CLOEXEC : 0));
}

/* Make slot @i (and its peer); the caller holds their write locks. */
static void slot_make(int i)
{
	struct slot *s = &W.s[i];
	int p = s->peer, fds[2], a, b;
	struct sockaddr_un ua;
	sigset_t set;

	switch (s->kind) {
	case K_EVENTFD:
		s->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		break;
	case K_PIPE_R:
	case K_PIPE_W:
		if (pipe2(fds, O_NONBLOCK | O_CLOEXEC)) {
			fds[0] = -1;
			fds[1] = -1;
		}
		W.s[s->kind == K_PIPE_R ? i : p].fd = fds[0];
		W.s[s->kind == K_PIPE_R ? p : i].fd = fds[1];
		break;
	case K_SIGNALFD:
		sigemptyset(&set);
		sigaddset(&set, SIGUSR2);
		s->fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
		break;
	case K_TIMERFD:
		s->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		break;
	case K_MEMFD:
		s->fd = memfd_create("aem_fuzz", MFD_CLOEXEC);
		if (s->fd >= 0 && ftruncate(s->fd, PG)) {
			close(s->fd);
			s->fd = -1;
		}
		break;
	case K_DEVNULL:
		s->fd = open("/dev/null", O_RDWR | O_CLOEXEC);
		break;
	case K_EPOLL:
		s->fd = epoll_create1(EPOLL_CLOEXEC);
		break;
	case K_AEM:
		s->fd = open_ctx_fd(true, false);
		break;
	case K_TCP_L:
		s->fd = tcp_listener(&W.tcpl_port, true);
		break;
	case K_TCP_C:
		if (p < 0) {	/* the pool listener's client */
			s->fd = tcp_connect(W.tcpl_port, true);
			break;
		}
		fallthrough;
	case K_TCP_S:
		if (tcp_pair(&a, &b)) {
			a = -1;
			b = -1;
		}
		W.s[s->kind == K_TCP_C ? i : p].fd = a;
		W.s[s->kind == K_TCP_C ? p : i].fd = b;
		break;
	case K_UNIX_L:
		snprintf(W.unix_name, sizeof(W.unix_name), "aem_fuzz.%d.%u",
			 getpid(), W.uniq++);
		s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s->fd >= 0 &&
		    (bind(s->fd, (struct sockaddr *)&ua, unix_addr(&ua, W.unix_name)) ||
		     listen(s->fd, 16))) {
			close(s->fd);
			s->fd = -1;
		}
		break;
	case K_UNIX_P:
	case K_UNIX_DG:
		if (socketpair(AF_UNIX, (s->kind == K_UNIX_P ? SOCK_STREAM :
					 SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC,
			       0, fds)) {
			fds[0] = -1;
			fds[1] = -1;
		}
		s->fd = fds[0];
		W.s[p].fd = fds[1];
		break;
	case K_UDP: {
		struct sockaddr_in sa = { .sin_family = AF_INET };
		socklen_t l = sizeof(sa);

		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		/* connected to itself: what it sends comes back */
		if (s->fd >= 0 &&
		    (bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)) ||
		     getsockname(s->fd, (struct sockaddr *)&sa, &l) ||
		     connect(s->fd, (struct sockaddr *)&sa, sizeof(sa)))) {
			close(s->fd);
			s->fd = -1;
		}
		break;
	}
	case K_ACC:
		s->fd = -1;	/* filled by the accept stimulus */
		break;
	}
}

static void slot_close(int i)
{
	if (W.s[i].fd >= 0)
		close(W.s[i].fd);
	W.s[i].fd = -1;
}

static void slots_wrlock(int i, int p)
{
	if (p >= 0 && p < i)
		pthread_rwlock_wrlock(&W.s[p].rw);
	pthread_rwlock_wrlock(&W.s[i].rw);
	if (p > i)
		pthread_rwlock_wrlock(&W.s[p].rw);
}

static void slots_unlock(int i, int p)
{
	pthread_rwlock_unlock(&W.s[i].rw);
	if (p >= 0)
		pthread_rwlock_unlock(&W.s[p].rw);
}

static void slot_recycle(int i)
{
	int p = W.s[i].peer;

	slots_wrlock(i, p);
	slot_close(i);
	if (p >= 0)
		slot_close(p);
	slot_make(i);
	slots_unlock(i, p);
}

static void slots_init(void)
{
	for (int i = 0; i < NSLOT; i++) {
		W.s[i].kind = slot_def[i].kind;
		W.s[i].peer = slot_def[i].peer;
		W.s[i].fd = -1;
		pthread_rwlock_init(&W.s[i].rw, NULL);
	}
	for (int i = 0; i < NSLOT; i++)
		if (W.s[i].fd < 0 && (W.s[i].peer < 0 || W.s[i].peer > i ||
				      W.s[W.s[i].peer].fd < 0))
			slot_make(i);
}

static bool kind_is_sock(int k)
{
	return k >= K_TCP_L;
}

static bool kind_is_tcp(int k)
{
	return k == K_TCP_L || k == K_TCP_C || k == K_TCP_S || k == K_ACC;
}

/* ------------------------------------------------------------------ */
/* Contexts                                                            */

static struct fctx *ctx_new(int fd, bool rdonly)
{
	struct fctx *c = calloc(1, sizeof(*c));

	if (!c)
		abort();
	c->fd = fd;
	c->rdonly = rdonly;
	c->gen = ++W.gen;
	c->block = 1;
	pthread_mutex_init(&c->slock, NULL);
	return c;
}

/* Open a context into a free W.ctx slot; W.lock held. */
static struct fctx *ctx_open_locked(struct thr *t, uint64_t r)
{
	bool rdonly = r % 10 == 0, cloexec = (r >> 8) % 8 != 0;
	int fd, i;
	struct fctx *c;

	for (i = 0; i < NCTX && W.ctx[i]; i++)
		;
	if (i == NCTX)
		return NULL;
	fd = open_ctx_fd(cloexec, rdonly);
	add(&S->xcalls[X_CTX_OPEN], 1);
	if (fd < 0) {
		/* EMFILE: our fd table, or max_ctx_per_user */
		if (errno != EMFILE && errno != ENFILE && errno != ENOMEM)
			FIND(t, "open(/dev/aem) failed: %s", en(-errno));
		return NULL;
	}
	c = ctx_new(fd, rdonly);
	W.ctx[i] = c;
	return c;
}

static void ctx_finalize(struct fctx *c)
{
	for (int i = 0; i < c->nmaps; i++)
		munmap(c->maps[i], c->maplen[i]);
	if (c->ring)
		munmap(c->ring, c->ring_size);
	if (c->arena)
		munmap(c->arena, c->arena_size);
	for (int i = 0; i < c->nretired; i++)
		close(c->retired[i]);
	close(c->fd);
	pthread_mutex_destroy(&c->slock);
	for (int i = 0; i < c->nregs; i++)
		free(c->regs[i]);
	free(c->regs);
	free(c);
}

/* Close @c now (other threads may be inside it); W.lock held. */
static void ctx_close_locked(struct fctx *c)
{
	for (int i = 0; i < NCTX; i++)
		if (W.ctx[i] == c)
			W.ctx[i] = NULL;
	c->closed = true;
	/*
	 * dup2() drops the file's reference atomically and keeps the number
	 * busy (a thread about to use it meets /dev/null, not a new file);
	 * the mappings go when the last thread leaves the context.
	 */
	dup2(W.placeholder, c->fd);
	for (int i = 0; i < c->nretired; i++)
		dup2(W.placeholder, c->retired[i]);
}

static struct fctx *ctx_get(struct thr *t, uint64_t r)
{
	struct fctx *c;

	pthread_mutex_lock(&W.lock);
	c = W.ctx[r % NCTX];
	if (!c)
		c = W.ctx[0] ? W.ctx[0] : W.ctx[1];
	if (!c)
		c = ctx_open_locked(t, r >> 16);
	if (c)
		c->users++;
	pthread_mutex_unlock(&W.lock);
	return c;
}

static void ctx_put(struct fctx *c)
{
	pthread_mutex_lock(&W.lock);
	if (!--c->users && c->closed)
		ctx_finalize(c);
	pthread_mutex_unlock(&W.lock);
}

static void ctx_addmap(struct fctx *c, void *p, size_t len)
{
	if (c->nmaps < MAXMAP) {
		c->maps[c->nmaps] = p;
		c->maplen[c->nmaps++] = len;
	} else {
		munmap(p, len);
	}
}

static struct freg *reg_find(struct fctx *c, int id)
{
	int lo = 0, hi = c->nregs - 1;

	/* ids grow (cyclic allocation from 1): binary search */
	while (lo <= hi) {
		int mid = (lo + hi) / 2;

		if (c->regs[mid]->id == id)
			return c->regs[mid];
		if (c->regs[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return NULL;
}

static struct freg *reg_add(struct fctx *c, int id)
{
	struct freg *g;

	if (c->nregs == c->cap) {
		c->cap = c->cap ? 2 * c->cap : 256;
		c->regs = realloc(c->regs, c->cap * sizeof(*c->regs));
		if (!c->regs)
			abort();
	}
	/* keep sorted; ids normally arrive in order */
	int i = c->nregs;

	while (i > 0 && c->regs[i - 1]->id > id)
		i--;
	memmove(&c->regs[i + 1], &c->regs[i], (c->nregs - i) * sizeof(*c->regs));
	c->nregs++;
	/* one allocation each: a pointer stays valid while its context lives */
	g = calloc(1, sizeof(*g));
	if (!g)
		abort();
	c->regs[i] = g;
	g->id = id;
	if (id > c->max_id)
		c->max_id = id;
	return g;
}

static int fdinfo_field(int fd, const char *field, long *val)
{
	char path[64], buf[1024];
	const char *p;
	ssize_t n;
	int f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return -errno;
	n = read(f, buf, sizeof(buf) - 1);
	close(f);
	if (n <= 0)
		return -EIO;
	buf[n] = 0;
	p = strstr(buf, field);
	if (!p)
		return -ENOENT;
	*val = strtol(p + strlen(field), NULL, 10);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Calls: placement of the argument struct and targeted corruption     */

enum { PL_NORMAL, PL_RO, PL_STRADDLE, PL_NULL, PL_KERNEL, PL_UNMAPPED, PL_NONCANON };

static const char *const pl_names[] = {
	"", "@ro", "@straddle", "@null", "@kernel", "@unmapped", "@noncanon",
};

struct call {
	const char *name;
	int op;
	unsigned long cmd;
	void *k;		/* the struct, its first u32 is the size */
	uint32_t ksize, ver0;
	bool inout;		/* the kernel writes it back */
	bool mangle;		/* dir/size bits of the number changed */
	uint32_t usize, m;	/* size given; straddle: bytes mapped */
	int place;
	bool dirty_tail;
	uint8_t *ua;		/* where it went */
	uint32_t room;		/* bytes before the canary */
	int region;		/* 0: outer struct, 1: nested (LOOKUP/STATS) */
};

/* Pick size and placement; struct-level errors go into @e. */
static void frame(struct draw *d, struct call *c, struct exp *e,
		  unsigned int corrupt)
{
	uint32_t us = c->ksize;
	unsigned int r = U(d, 1000);

	c->place = PL_NORMAL;
	c->dirty_tail = false;
	if (c->ver0 < c->ksize && CH(d, 100))
		us = c->ver0 + U(d, c->ksize - c->ver0);	/* older caller */
	if (r < corrupt) {
		switch (U(d, 12)) {
		case 0:
			us = U(d, c->ver0);		/* too small */
			break;
		case 1:
			us = PG + 1 + U(d, 3) * (1 + U(d, 1u << 20));
			if (CH(d, 200))
				us = UINT32_MAX - U(d, 8);
			break;
		case 2:
		case 3:
			us = c->ksize + 1 + U(d, 256);	/* bigger, tail */
			c->dirty_tail = CH(d, 600);
			break;
		case 4:
			c->place = PL_RO;
			break;
		case 5:
			c->place = PL_STRADDLE;
			break;
		case 6:
			c->place = PL_NULL;
			break;
		case 7:
			c->place = PL_KERNEL;
			break;
		case 8:
			c->place = PL_UNMAPPED;
			break;
		case 9:
			c->place = PL_NONCANON;
			break;
		case 10:
			us = c->ksize + 1 + U(d, PG - c->ksize);	/* zero tail: fine */
			break;
		default:
			c->mangle = true;
			break;
		}
	}
	c->usize = us;
	if (c->place == PL_STRADDLE) {
		if (us < 5 || us > PG)
			c->place = PL_NORMAL;
		else
			c->m = 4 + U(d, us - 4);	/* < us bytes mapped */
	}
	switch (c->place) {
	case PL_NULL:
	case PL_KERNEL:
	case PL_UNMAPPED:
	case PL_NONCANON:
		viol(e, EFAULT);
		return;
	default:
		break;
	}
	if (us < c->ver0)
		viol(e, EINVAL);
	else if (us > PG)
		viol(e, E2BIG);
	else if (c->place == PL_STRADDLE)
		viol(e, EFAULT);
	else if (c->dirty_tail)
		viol(e, E2BIG);
}

/* An in/out struct in read-only memory: what succeeds is -EFAULT. */
static void frame_ro(const struct call *c, struct exp *e)
{
	if (c->place == PL_RO && c->inout && !has_viol(e))
		viol(e, EFAULT);
}

static uint8_t *place_struct(struct thr *t, struct call *c, struct draw *d)
{
	uint8_t *base, *p;
	uint32_t copy = c->usize < c->ksize ? c->usize : c->ksize;
	uint32_t room, off;

	switch (c->place) {
	case PL_NULL:
		return NULL;
	case PL_KERNEL:
		return (uint8_t *)0xffffffff81000000ull;
	case PL_NONCANON:
		return (uint8_t *)0x0000900000000000ull + 0x8000000000000000ull;
	case PL_UNMAPPED:
		return SCR_RW(t, c->region) + 2 * PG + U(d, PG - 64);
	case PL_STRADDLE:
		p = SCR_RW(t, c->region) + 2 * PG - c->m;
		memcpy(p, c->k, c->m < copy ? c->m : copy);
		if (c->m > copy)
			memset(p + copy, 0, c->m - copy);
		memcpy(p, &c->usize, 4);
		return p;
	case PL_RO:
		base = SCR_RO(t) + (c->region ? PG / 2 : 0);
		mprotect(SCR_RO(t), PG, PROT_READ | PROT_WRITE);
		memset(base, 0, PG / 2);
		memcpy(base, c->k, copy);
		memcpy(base, &c->usize, 4);
		return base;
	default:
		break;
	}
	/* normal: in the region's two RW pages, zero tail (or dirt), a canary */
	base = SCR_RW(t, c->region);
	/* a size over a page is refused before the rest is read: ksize will do */
	room = c->usize <= PG ? (c->usize < 8 ? 8 : c->usize) : c->ksize;
	off = U(d, (2 * PG - room - 32) / 8) * 8;
	p = base + off;
	memset(p, 0, room);
	memcpy(p, c->k, copy);
	memcpy(p, &c->usize, 4);
	if (c->dirty_tail && c->usize > c->ksize && c->usize <= PG)
		p[c->ksize + U(d, c->usize - c->ksize)] = 1 + U(d, 255);
	if (c->usize <= PG)
		memset(p + room, 0xa5, 16);
	c->room = room;
	return p;
}

/* After the call: copy back what the kernel wrote and check the canary. */
static void after_struct(struct thr *t, struct call *c, long ret)
{
	uint32_t copy = c->usize < c->ksize ? c->usize : c->ksize;
	uint8_t *p = c->ua;

	if (c->place == PL_RO) {
		mprotect(SCR_RO(t), PG, PROT_READ | PROT_WRITE);
		return;
	}
	if (c->place != PL_NORMAL || c->usize > PG)
		return;
	memcpy(c->k, p, copy);
	for (uint32_t i = c->usize; i < c->room + 16; i++)
		if (p[i] != (i < c->room ? 0 : 0xa5)) {
			FIND(t, "%s wrote past the caller's size %u (byte %u = %#x, ret %s)",
			     c->name, c->usize, i, p[i], en(ret));
			break;
		}
	if (c->usize > c->ksize && !c->dirty_tail)
		for (uint32_t i = c->ksize; i < c->usize; i++)
			if (p[i]) {
				FIND(t, "%s wrote into the tail past its struct (byte %u)",
				     c->name, i);
				break;
			}
}

static unsigned long mangle_cmd(struct draw *d, unsigned long cmd)
{
	unsigned long keep = ((unsigned long)_IOC_TYPEMASK << _IOC_TYPESHIFT) |
			     ((unsigned long)_IOC_NRMASK << _IOC_NRSHIFT);

	return (cmd & keep) |
	       ((U(d, 4) << _IOC_DIRSHIFT) & ((unsigned long)_IOC_DIRMASK << _IOC_DIRSHIFT)) |
	       ((U(d, 1u << _IOC_SIZEBITS)) << _IOC_SIZESHIFT);
}

static long sys_ioctl(int fd, unsigned long cmd, void *arg)
{
	long r = ioctl(fd, cmd, arg);

	return r < 0 ? -errno : r;
}

/* Place, describe, call, count, copy back. */
static long run_call(struct thr *t, struct draw *d, int fd, struct call *c)
{
	unsigned long cmd = c->cmd;
	long ret;

	c->ua = place_struct(t, c, d);
	if (c->mangle)
		cmd = mangle_cmd(d, cmd);
	desc(t, " sz=%u%s%s", c->usize, pl_names[c->place],
	     c->dirty_tail ? "+dirt" : "");
	if (c->mangle)
		desc(t, " cmd=%#lx", cmd);
	if (c->place == PL_RO)
		mprotect(SCR_RO(t), PG, PROT_READ);
	ret = sys_ioctl(fd, cmd, c->ua);
	stat_call(t, c->op, ret);
	after_struct(t, c, ret);
	return ret;
}

/* ------------------------------------------------------------------ */
/* Deliveries                                                          */

static bool single(void)
{
	return O.threads == 1 || in_child;
}

/* A chunk of the arena holds only what was sent: 'A'..'Z'. */
static void check_chunk(struct thr *t, int id, const uint8_t *arena,
			uint64_t off, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++) {
		if (arena[off + i] < 'A' || arena[off + i] > 'Z') {
			FIND(t, "read id %d: byte %llu of chunk %#llx is %#x: not sent",
			     id, (unsigned long long)i, (unsigned long long)off,
			     arena[off + i]);
			return;
		}
	}
}

/* Check one delivery and account it; W.lock held. */
static void check_dlv(struct thr *t, struct fctx *c, const struct aem_delivery *d,
		      bool from_ring, uint64_t wstart)
{
	struct freg *g;

	if (d->reserved0 || d->prio > AEM_PRIO_MAX ||
	    (d->flags & ~(AEM_DLV_FINAL | AEM_DLV_BOOST)) || d->id < 0) {
		FIND(t, "malformed delivery: id %d type %u prio %u flags %#x reserved0 %u",
		     d->id, d->type, d->prio, d->flags, d->reserved0);
		return;
	}
	if (d->id == 0) {
		if (d->type != AEM_EV_OVERLOAD || d->error != -EOVERFLOW ||
		    d->prio != AEM_PRIO_MAX || !d->count || d->user_data ||
		    d->flags)
			FIND(t, "overload: type %u error %d prio %u count %llu flags %#x",
			     d->type, d->error, d->prio,
			     (unsigned long long)d->count, d->flags);
		return;
	}
	g = reg_find(c, d->id);
	if (!g) {
		/* another thread's REGISTER may be between kernel and model */
		if (!c->unknown && !c->inflight)
			FIND(t, "%s delivery of id %d, not from REGISTER (max %d; %s%d%s)",
			     from_ring ? "ring" : "wait", d->id, c->max_id,
			     "REGISTER calls of this context that only failed to store the id, -EFAULT: ",
			     c->ro_efault, ", and aem.h says then no registration is left");
		return;
	}
	if (d->type != g->type || d->user_data != g->ud) {
		FIND(t, "id %d: delivery type %u user_data %#llx, registered %u %#llx",
		     d->id, d->type, (unsigned long long)d->user_data, g->type,
		     (unsigned long long)g->ud);
		return;
	}
	if (!from_ring && g->dead && g->dead_clock < wstart)
		FIND(t, "delivery for id %d after it was cleaned or had its final delivery",
		     d->id);
	if (d->error) {
		if (d->error != -ETIMEDOUT || !(d->flags & AEM_DLV_FINAL))
			FIND(t, "id %d: error %d flags %#x (only a final -ETIMEDOUT exists)",
			     d->id, d->error, d->flags);
		else if (!g->may_doom)
			FIND(t, "id %d: -ETIMEDOUT without AEM_CTL_SET_TIMEOUT", d->id);
	} else {
		if (!d->count)
			FIND(t, "id %d: delivery with count 0", d->id);
		if (g->oneshot != !!(d->flags & AEM_DLV_FINAL))
			FIND(t, "id %d: %s registration, delivery flags %#x",
			     d->id, g->oneshot ? "one-shot" : "persistent", d->flags);
		switch (g->type) {
		case AEM_EV_TIMER:
			if (!(g->flags & AEM_PER_OCCURRENCE) && d->value != d->count)
				FIND(t, "timer id %d: value %llu != count %llu (expirations)",
				     d->id, (unsigned long long)d->value,
				     (unsigned long long)d->count);
			fallthrough;
		case AEM_EV_SOFT:
			if (d->data[0] || d->data[1])
				FIND(t, "id %d: family data %#llx %#llx on a %s delivery",
				     d->id, (unsigned long long)d->data[0],
				     (unsigned long long)d->data[1],
				     g->type == AEM_EV_SOFT ? "soft" : "timer");
			if (g->type == AEM_EV_SOFT && !from_ring && single() &&
			    !g->sat && d->value != g->last_value)
				FIND(t, "soft id %d: value %#llx, last raised %#llx",
				     d->id, (unsigned long long)d->value,
				     (unsigned long long)g->last_value);
			break;
		case AEM_EV_FD:
		case AEM_EV_SOCK:
			if (!d->value || (d->value & ~(uint64_t)FZ_POLL_BITS) ||
			    d->data[0] || d->data[1])
				FIND(t, "id %d (%s): value %#llx data %#llx %#llx",
				     d->id, g->type == AEM_EV_FD ? "fd" : "sock",
				     (unsigned long long)d->value,
				     (unsigned long long)d->data[0],
				     (unsigned long long)d->data[1]);
			break;
		case AEM_EV_ACCEPT:
			if ((int64_t)d->data[1] < 0) {
				if (d->value || d->data[0])
					FIND(t, "accept id %d: error %lld with value %llu",
					     d->id, (long long)d->data[1],
					     (unsigned long long)d->value);
				break;
			}
			if (d->data[0] || d->data[1] || d->value > INT_MAX) {
				FIND(t, "accept id %d: value %llu data %#llx %#llx",
				     d->id, (unsigned long long)d->value,
				     (unsigned long long)d->data[0],
				     (unsigned long long)d->data[1]);
				break;
			}
			if (c->closed)
				break;
			{
				struct stat st;
				int fd = (int)d->value;

				if (fstat(fd, &st) || !S_ISSOCK(st.st_mode)) {
					FIND(t, "accept id %d: fd %d is not a socket", d->id, fd);
				} else {
					/* installed like accept4(SOCK_CLOEXEC) */
					if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC))
						FIND(t, "accept id %d: fd %d without FD_CLOEXEC",
						     d->id, fd);
					close(fd);	/* ours now */
				}
			}
			break;
		case AEM_EV_READ:
			if ((int64_t)d->data[1] < 0) {
				if (d->value || d->data[0])
					FIND(t, "read id %d: error %lld with value %llu",
					     d->id, (long long)d->data[1],
					     (unsigned long long)d->value);
				break;
			}
			if (d->data[1] || d->value > 256 * 1024) {
				FIND(t, "read id %d: value %llu data[1] %#llx",
				     d->id, (unsigned long long)d->value,
				     (unsigned long long)d->data[1]);
				break;
			}
			/*
			 * Popped after the end of file was seen: a ring entry
			 * or another thread's pop may be older than it.
			 */
			if (g->eof && !from_ring && g->eof_clock < wstart)
				FIND(t, "read %d (%s, %#x): %llu bytes at %#llx after EOF",
				     d->id, kind_names[g->kind], g->flags,
				     (unsigned long long)d->value,
				     (unsigned long long)d->data[0]);
			if (!d->value) {
				if (!g->eof)
					g->eof_clock = ++W.clock;
				g->eof = true;
				break;
			}
			if (c->arena_state == RS_SET &&
			    (d->data[0] % c->block ||
			     d->data[0] + d->value > c->arena_size)) {
				FIND(t, "read id %d: chunk %#llx+%llu not in the arena (%zu, %u)",
				     d->id, (unsigned long long)d->data[0],
				     (unsigned long long)d->value, c->arena_size, c->block);
				break;
			}
			if (c->arena_state == RS_SET && c->arena)
				check_chunk(t, d->id, c->arena, d->data[0], d->value);
			if (c->nchunks < MAXCH_NR)
				c->chunks[c->nchunks++] = d->data[0];
			break;
		case AEM_EV_CLOSE:
			if (!d->value || (d->value & ~(uint64_t)(EPOLLRDHUP | EPOLLHUP)) ||
			    d->data[0] || d->data[1])
				FIND(t, "close id %d: value %#llx", d->id,
				     (unsigned long long)d->value);
			if (g->close_seen && !from_ring && g->close_clock < wstart)
				FIND(t, "close id %d: a second close delivery", d->id);
			if (!g->close_seen)
				g->close_clock = ++W.clock;
			g->close_seen = true;
			break;
		case AEM_EV_SK:
			if (d->value < 1 || d->value > 12 ||
			    !((AEM_SK_STATES >> d->value) & 1) || d->data[0] > 12 ||
			    d->data[1])
				FIND(t, "sk id %d: state %llu old %llu data[1] %#llx",
				     d->id, (unsigned long long)d->value,
				     (unsigned long long)d->data[0],
				     (unsigned long long)d->data[1]);
			break;
		}
	}
	if (d->count > UINT64_MAX - g->dcount)
		g->dcount = UINT64_MAX;
	else
		g->dcount += d->count;
	g->dn++;
	g->derr += !!d->error;
	if (d->flags & AEM_DLV_FINAL) {
		g->dead = true;
		g->dead_clock = ++W.clock;
	}
}

/* Consume the ring (c->slock held by the caller, W.lock not held). */
static void ring_consume(struct thr *t, struct fctx *c, struct draw *d)
{
	struct aem_ring_hdr *h = (struct aem_ring_hdr *)c->ring;
	struct aem_delivery *e = (struct aem_delivery *)(c->ring + 256);
	uint32_t tail, head, n;

	if (!c->ring || c->ring_state != RS_SET)
		return;
	add(&S->xcalls[X_RING_CONSUME], 1);
	tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
	head = c->garbled ? tail : c->head;
	n = tail - head;
	desc(t, " ring head=%u tail=%u", head, tail);
	if (!c->garbled && n > c->ring_ent) {
		FIND(t, "ring: tail %u ran %u entries past head %u (ring of %u)",
		     tail, n, head, c->ring_ent);
		c->garbled = true;
	}
	if (!c->garbled) {
		pthread_mutex_lock(&W.lock);
		for (uint32_t i = head; i != tail; i++)
			check_dlv(t, c, &e[i & (c->ring_ent - 1)], true, 0);
		pthread_mutex_unlock(&W.lock);
	}
	if (c->ring_rw) {
		if (CH(d, 30)) {
			/* hostile consumer: garbage in the header */
			uint32_t *w = (uint32_t *)h;
			unsigned int which = U(d, 4);
			uint32_t v = (uint32_t)P(d);

			if (which == 0)
				h->head = v;
			else if (which == 1)
				h->tail = v;
			else if (which == 2)
				h->doorbell = v;
			else
				w[U(d, 64)] = v;
			c->garbled = true;
			desc(t, " garbage[%u]=%#x", which, v);
			add(&S->xcalls[X_RING_GARBAGE], 1);
		} else {
			__atomic_store_n(&h->head, tail, __ATOMIC_RELEASE);
			c->head = tail;
			if (CH(d, 500))
				__atomic_store_n(&h->doorbell, 0, __ATOMIC_SEQ_CST);
		}
	}
}

/* ------------------------------------------------------------------ */
/* Actions                                                             */

static const uint32_t types_w[] = {
	AEM_EV_TIMER, AEM_EV_TIMER, AEM_EV_TIMER, AEM_EV_SOFT, AEM_EV_SOFT,
	AEM_EV_SOFT, AEM_EV_FD, AEM_EV_FD, AEM_EV_FD, AEM_EV_ACCEPT,
	AEM_EV_READ, AEM_EV_READ, AEM_EV_CLOSE, AEM_EV_SK, AEM_EV_SOCK,
	AEM_EV_SOCK,
};

static int slot_for_type(struct draw *d, uint32_t type)
{
	static const int sockslots[] = { 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
					 19, 20, 21, 22, 23 };
	static const int fdslots[] = { 0, 1, 2, 3, 4, 10, 11, 15, 16, 19, 20,
				       0, 1, 3, 5, 6, 7, 8 };

	if (type >= AEM_EV_ACCEPT && type <= AEM_EV_SOCK && CH(d, 850)) {
		if (type == AEM_EV_ACCEPT && CH(d, 600))
			return CH(d, 500) ? SLOT_TCP_L : SLOT_UNIX_L;
		if (type == AEM_EV_SK && CH(d, 600))
			return 9 + 1 + U(d, 4);
		return sockslots[U(d, ARRAY_SIZE(sockslots))];
	}
	if (CH(d, 900))
		return fdslots[U(d, ARRAY_SIZE(fdslots))];
	return U(d, NSLOT);
}

static uint32_t rand_events(struct draw *d, uint32_t valid)
{
	uint32_t e;

	do
		e = (uint32_t)P(d) & valid;
	while (!e);
	if (CH(d, 500))
		e &= EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLHUP;
	return e ? e : EPOLLIN;
}

static const uint32_t bad_family_flags[] = {
	AEM_ABSTIME, AEM_REALTIME, AEM_EDGE, AEM_LEVEL,
};

static void act_register(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	struct aem_reg r;
	struct call cl = { .name = "REGISTER", .op = OP_REGISTER,
			   .cmd = AEM_IOC_REGISTER, .k = &r, .ksize = sizeof(r),
			   .ver0 = AEM_REG_SIZE_VER0, .inout = true };
	struct exp e = { 0 };
	int slot = -1, kind = K_NONE, wfd = -1, prio = AEM_PRIO_DEFAULT;
	bool self = false, locked = false, sem_ok = false, have_slock = false;
	bool core_bad;
	int arena_known;
	char what[64] = "";
	uint32_t type, exec;
	uint64_t nshort;
	long ret;

	if (!c)
		return;
	memset(&r, 0, sizeof(r));
	type = types_w[U(d, ARRAY_SIZE(types_w))];
	if (CH(d, 25))
		type = CH(d, 300) ? 0 : AEM_EV_MAX + 1 +
		       U(d, CH(d, 500) ? 8 : UINT32_MAX - AEM_EV_MAX - 1);
	r.type = type;
	exec = U(d, 3);
	if (CH(d, 15))
		exec = AEM_EXEC_MASK;
	r.flags = exec;
	if (CH(d, 150))
		r.flags |= AEM_ONESHOT;
	if (CH(d, 40))
		r.flags |= AEM_INHERIT;
	if (CH(d, 100))
		r.flags |= AEM_DISABLED;
	if (CH(d, 150))
		r.flags |= AEM_PER_OCCURRENCE;
	if (CH(d, 600)) {
		prio = U(d, AEM_PRIO_LEVELS);
		r.flags |= AEM_PRIO(prio);
	}
	if (type == AEM_EV_TIMER) {
		if (CH(d, 200))
			r.flags |= AEM_ABSTIME;
		if (CH(d, 150))
			r.flags |= AEM_REALTIME;
	}
	if (type == AEM_EV_FD || type == AEM_EV_SOCK) {
		if (CH(d, 300))
			r.flags |= AEM_EDGE;
		else if (CH(d, 250))
			r.flags |= AEM_LEVEL;
	}
	r.user_data = P(d);
	r.user_data = (r.user_data & ~0xffull) | (t->idx & 0xff);
	/* targeted corruption of the struct's fields */
	if (CH(d, 25))
		r.flags |= 1u << (10 + U(d, 5));	/* unknown bits 10..14 */
	if (CH(d, 15))
		r.flags |= 1u << (24 + U(d, 8));	/* unknown bits 24..31 */
	if (CH(d, 15))
		r.flags |= AEM_EDGE | AEM_LEVEL;
	if (CH(d, 15))
		r.flags = (r.flags & ~AEM_PRIO_GIVEN) | ((1 + U(d, 255)) << AEM_PRIO_SHIFT);
	if (CH(d, 15))
		r.flags |= AEM_PRIO_GIVEN | ((64 + U(d, 192)) << AEM_PRIO_SHIFT);
	if (CH(d, 20))
		r.flags |= bad_family_flags[U(d, 4)];
	if (CH(d, 20))
		r.reserved0 = 1 + U(d, UINT32_MAX);
	if (CH(d, 15))
		r.id = (int)P(d) | 1;
	if (CH(d, 60))
		r.family_version = CH(d, 500) ? W.info.family_version[type & 15] :
				   CH(d, 500) ? 1 + U(d, 3) : (uint32_t)P(d);

	pthread_mutex_lock(&W.lock);
	arena_known = c->arena_state;
	nshort = c->nshort;
	pthread_mutex_unlock(&W.lock);

	/* family arguments */
	switch (type) {
	case AEM_EV_TIMER: {
		int64_t v, p = 0;
		uint64_t minp = W.info.min_timer_period_ns;

		v = CH(d, 200) ? 0 : CH(d, 100) ? INT64_MAX - U(d, 1000) :
		    (int64_t)(50000 + U(d, 20000000));
		if (CH(d, 500)) {
			if (nshort < 2 && CH(d, 100))
				p = minp + U(d, 100000);
			else
				p = 1000000 + U(d, 100000000);
			if (CH(d, 30))
				p = minp > 1 ? 1 + U(d, minp - 1) : 0;	/* below */
			if (CH(d, 20))
				p = INT64_MAX - U(d, 1000);
		}
		if (r.flags & AEM_ABSTIME) {
			int64_t now = now_ns(r.flags & AEM_REALTIME ?
					     CLOCK_REALTIME : CLOCK_MONOTONIC);

			v = CH(d, 300) ? now - U(d, 1000000000) : v > INT64_MAX / 2 ? v : now + v;
		}
		if (CH(d, 25))
			v = -1 - (int64_t)U(d, INT64_MAX);
		if (CH(d, 25))
			p = -1 - (int64_t)U(d, 1000000);
		r.arg.timer.value_ns = v;
		r.arg.timer.period_ns = p;
		snprintf(what, sizeof(what), "v=%lld p=%lld", (long long)v, (long long)p);
		break;
	}
	case AEM_EV_SOFT:
		snprintf(what, sizeof(what), "soft");
		break;
	default:
		if (type < AEM_EV_ACCEPT || type > AEM_EV_MAX) {
			r.arg.raw[U(d, 6)] = CH(d, 500) ? P(d) : 0;
			snprintf(what, sizeof(what), "raw");
			break;
		}
		slot = slot_for_type(d, type);
		self = CH(d, 20);
		if (type == AEM_EV_FD) {
			r.arg.fd.events = rand_events(d, FZ_POLL_BITS);
			if (CH(d, 25))
				r.arg.fd.events = 0;
			if (CH(d, 25))
				r.arg.fd.events |= 1u << (U(d, 2) ? 28 + U(d, 4) : 14 + U(d, 12));
		} else if (type == AEM_EV_SOCK) {
			r.arg.sock.events = CH(d, 300) ? 0 : rand_events(d, FZ_POLL_BITS);
			if (CH(d, 25))
				r.arg.sock.events |= 1u << (U(d, 2) ? 28 + U(d, 4) : 14 + U(d, 12));
		} else if (type == AEM_EV_SK) {
			r.arg.sock.events = CH(d, 400) ? 0 : (uint32_t)P(d) & AEM_SK_STATES;
			if (CH(d, 30))
				r.arg.sock.events |= 1u << (U(d, 2) ? 0 : 13 + U(d, 19));
		} else if (CH(d, 25)) {
			r.arg.sock.events = 1 + U(d, UINT32_MAX);
		}
		break;
	}
	if (CH(d, 20))	/* bytes the family does not use */
		((uint8_t *)&r.arg)[type == AEM_EV_TIMER ? 16 + U(d, 32) :
				    type == AEM_EV_SOFT ? U(d, 48) : 8 + U(d, 40)] = 1 + U(d, 255);
	if (!self && slot >= 0 && CH(d, 20))
		slot = -2;	/* a bad fd */

	/* -------- what the contract says -------- */
	frame(d, &cl, &e, 60);
	if (!has_viol(&e)) {
		uint32_t f = r.flags, fam_newest;
		bool dirty_union;
		int fv;

		if (r.reserved0 || (f & ~AEM_FLAGS_VALID) ||
		    (f & AEM_EXEC_MASK) == AEM_EXEC_MASK ||
		    ((f & AEM_EDGE) && (f & AEM_LEVEL)) || !type ||
		    type > AEM_EV_MAX || r.id)
			viol(&e, EINVAL);
		if ((f & AEM_PRIO_GIVEN) ? ((f & AEM_PRIO_FIELD) >> AEM_PRIO_SHIFT) > AEM_PRIO_MAX :
		    (f & AEM_PRIO_FIELD) != 0)
			viol(&e, EINVAL);
		if (type && type <= AEM_EV_MAX && !has_viol(&e)) {
			if (!(W.info.allowed_types & (1u << type)) ||
			    !(W.info.allowed_exec & (1u << (f & AEM_EXEC_MASK))))
				viol(&e, EPERM);
			fam_newest = W.info.family_version[type];
			fv = r.family_version;
			if (!fam_newest || (fv && fv > (int)fam_newest) || r.family_version > 64)
				viol(&e, EOPNOTSUPP);
			else if (fv && fv != (int)fam_newest)
				maybe(&e, EOPNOTSUPP);
		}
		if (!has_viol(&e)) {
			dirty_union = false;
			for (size_t i = (type == AEM_EV_SOFT ? 0 : type == AEM_EV_TIMER ? 16 : 8);
			     i < sizeof(r.arg); i++)
				if (((uint8_t *)&r.arg)[i])
					dirty_union = true;
			if (dirty_union)
				viol(&e, EINVAL);
		}
	}
	/*
	 * The id is stored after these checks and before the family's
	 * setup and the limits: a struct that cannot take it back is -EFAULT
	 * whatever the family would have said, and no registration exists.
	 */
	core_bad = has_viol(&e);
	switch (core_bad ? 0 : type) {
	case AEM_EV_TIMER:
		if (r.flags & (AEM_EDGE | AEM_LEVEL))
			viol(&e, EINVAL);
		if (r.arg.timer.value_ns < 0 || r.arg.timer.period_ns < 0)
			viol(&e, EINVAL);
		if (r.arg.timer.period_ns > 0 &&
		    (uint64_t)r.arg.timer.period_ns < W.info.min_timer_period_ns)
			viol(&e, EINVAL);
		break;
	case AEM_EV_SOFT:
		if (r.flags & (AEM_EDGE | AEM_LEVEL | AEM_ABSTIME | AEM_REALTIME))
			viol(&e, EINVAL);
		break;
	default:
		break;	/* after the fd is known */
	}
	/* the watched fd: take the slot's lock across the call */
	if (slot >= 0 || self) {
		if (self) {
			wfd = -1;	/* set below, from the context */
			kind = K_AEM;
		} else {
			pthread_rwlock_rdlock(&W.s[slot].rw);
			locked = true;
			wfd = W.s[slot].fd;
			kind = wfd >= 0 ? W.s[slot].kind : K_NONE;
		}
	} else if (slot == -2) {
		static const int bad[] = { -1, 1 << 20, INT_MAX, -7 };

		wfd = bad[U(d, 4)];
		kind = K_NONE;
	}
	if (type == AEM_EV_READ) {
		/* no ARENA_SETUP between the expectation and the call */
		pthread_mutex_lock(&c->slock);
		have_slock = true;
	}
	pthread_mutex_lock(&W.lock);
	if (self)
		wfd = c->fd;
	arena_known = c->arena_state;
	if (type == AEM_EV_FD || (type >= AEM_EV_ACCEPT && type <= AEM_EV_SOCK)) {
		if (type == AEM_EV_FD)
			r.arg.fd.fd = wfd;
		else
			r.arg.sock.fd = wfd;
	}
	if (!has_viol(&e) && type == AEM_EV_FD) {
		uint32_t f = r.flags, ev = r.arg.fd.events;

		if (f & (AEM_ABSTIME | AEM_REALTIME))
			viol(&e, EINVAL);
		if (!ev || (ev & ~(uint32_t)FZ_POLL_BITS))
			viol(&e, EINVAL);
		if (!has_viol(&e)) {
			if (kind == K_NONE)
				viol(&e, EBADF);
			else if (kind == K_MEMFD || kind == K_DEVNULL)
				viol(&e, EPERM);
			else if (kind == K_EPOLL || kind == K_AEM)
				viol(&e, EINVAL);
		}
	} else if (!has_viol(&e) && type >= AEM_EV_ACCEPT && type <= AEM_EV_SOCK) {
		uint32_t f = r.flags, ev = r.arg.sock.events;

		if (kind == K_NONE) {
			viol(&e, EBADF);
		} else if (!kind_is_sock(kind)) {
			viol(&e, ENOTSOCK);
		} else {
			if (f & (AEM_ABSTIME | AEM_REALTIME))
				viol(&e, EINVAL);
			if (type != AEM_EV_SOCK && (f & (AEM_EDGE | AEM_LEVEL)))
				viol(&e, EINVAL);
			switch (type) {
			case AEM_EV_ACCEPT:
				/* only TCP and AF_UNIX stream listeners */
				if (ev)
					viol(&e, EINVAL);
				if (kind == K_UDP || kind == K_UNIX_DG)
					viol(&e, EOPNOTSUPP);
				else if (kind != K_TCP_L && kind != K_UNIX_L)
					viol(&e, EINVAL);
				break;
			case AEM_EV_READ:
				if (ev)
					viol(&e, EINVAL);
				if (arena_known == RS_NONE)
					viol(&e, ENXIO);
				else if (arena_known == RS_MAYBE)
					maybe(&e, ENXIO);
				break;
			case AEM_EV_CLOSE:
				if (ev)
					viol(&e, EINVAL);
				break;
			case AEM_EV_SK:
				if (!kind_is_tcp(kind))
					viol(&e, EOPNOTSUPP);
				else if (ev & ~AEM_SK_STATES)
					viol(&e, EINVAL);
				maybe(&e, ENOSPC);	/* 64 per socket, all contexts */
				break;
			case AEM_EV_SOCK:
				if (ev & ~(uint32_t)FZ_POLL_BITS)
					viol(&e, EINVAL);
				break;
			}
		}
	}
	if (c->live_upper >= W.info.max_regs)
		maybe(&e, EMFILE);
	if (W.info.max_regs_per_user < 200000)
		maybe(&e, EDQUOT);
	maybe(&e, ENOMEM);
	sem_ok = !has_viol(&e);
	if (cl.place == PL_RO && cl.inout && !core_bad) {
		memset(&e, 0, sizeof(e));
		viol(&e, EFAULT);
	}
	c->inflight++;
	pthread_mutex_unlock(&W.lock);

	dreset(t);
	desc(t, "REGISTER ctx%d type=%u fl=%#x ver=%u rsv=%u id=%d ud=%#llx %s",
	     c->gen, r.type, r.flags, r.family_version, r.reserved0, r.id,
	     (unsigned long long)r.user_data, what);
	if (slot != -1 || self)
		desc(t, " fd=%d(%s%s) ev=%#x", wfd, self ? "self" : slot >= 0 ?
		     kind_names[kind] : "bad", "", r.arg.fd.events);
	ret = run_call(t, d, c->fd, &cl);
	if (locked)
		pthread_rwlock_unlock(&W.s[slot].rw);

	pthread_mutex_lock(&W.lock);
	c->inflight--;
	if (have_slock)
		pthread_mutex_unlock(&c->slock);
	if (!c->closed) {
		expect(t, &e, ret, "REGISTER");
		if (ret > 0 && cl.place == PL_NORMAL && r.id != ret)
			FIND(t, "REGISTER returned %ld but wrote id %d", ret, r.id);
		if (ret > 0 && (ret <= 0 || reg_find(c, (int)ret)))
			FIND(t, "REGISTER returned id %ld, which is already live or was used", ret);
		if (ret > 0 && !reg_find(c, (int)ret)) {
			struct freg *g = reg_add(c, (int)ret);

			g->type = type;
			g->flags = r.flags;
			g->famver = r.family_version ? r.family_version :
				    W.info.family_version[type];
			g->ud = r.user_data;
			g->fd = (type == AEM_EV_TIMER || type == AEM_EV_SOFT) ? -1 : wfd;
			g->owner = t->idx;
			g->prio = (r.flags & AEM_PRIO_GIVEN) ? prio : AEM_PRIO_DEFAULT;
			g->enabled = !(r.flags & AEM_DISABLED);
			g->kind = kind;
			g->oneshot = r.flags & AEM_ONESHOT;
			g->may_doom = g->oneshot;
			c->live_upper++;
			if (type == AEM_EV_TIMER && r.arg.timer.period_ns &&
			    r.arg.timer.period_ns < 1000000)
				c->nshort++;
		}
		/*
		 * An id that cannot be written back is -EFAULT and no
		 * registration is left (uapi/linux/aem.h).
		 */
		if (ret == -EFAULT && cl.place == PL_RO && sem_ok)
			c->ro_efault++;
	}
	pthread_mutex_unlock(&W.lock);
	logcall(t, ret);
	ctx_put(c);
}

/* An id to use: from this context's history, or one that cannot exist. */
enum { ID_LIVE, ID_MAYBE, ID_DEAD };

static int pick_id(struct thr *t, struct draw *d, struct fctx *c,
		   struct freg **gp, int *state, bool own_only)
{
	unsigned int r = U(d, 1000);
	struct freg *g = NULL;
	int id;

	*gp = NULL;
	if (r < 850 && c->nregs) {
		/* own registrations first; any from the history otherwise */
		int n = c->nregs, start = U(d, n);

		for (int i = 0; i < n; i++) {
			struct freg *x = c->regs[(start + i) % n];

			if (x->owner == t->idx || (!own_only && r >= 750)) {
				g = x;
				break;
			}
		}
	}
	if (g) {
		*gp = g;
		if (g->dead)
			*state = ID_DEAD;
		else if (g->owner == t->idx && !g->may_doom)
			*state = ID_LIVE;
		else
			*state = ID_MAYBE;
		return g->id;
	}
	*state = ID_DEAD;
	if (r < 950)
		id = c->max_id + 100000 + (int)U(d, 1000000);
	else if (r < 975)
		id = INT_MAX - (int)U(d, 3);
	else
		id = -(int)U(d, 3);	/* 0, -1, -2 */
	return id;
}

static void check_lookup(struct thr *t, struct freg *g,
			 const struct aem_reg_info *in, uint32_t usize)
{
	struct aem_reg_info i;

	memset(&i, 0, sizeof(i));
	memcpy(&i, in, usize < sizeof(i) ? usize : sizeof(i));
	if (i.id != g->id || i.type != g->type || i.user_data != g->ud ||
	    i.fd != g->fd || i.family_version != g->famver || i.prio > AEM_PRIO_MAX ||
	    i.enabled > 1 ||
	    i.flags != ((g->flags & ~AEM_PRIO_FIELD) | AEM_PRIO_GIVEN |
			(i.prio << AEM_PRIO_SHIFT))) {
		char got[160];

		snprintf(got, sizeof(got),
			 "id %d type %u ud %#llx fd %d ver %u prio %u enabled %u flags %#x",
			 i.id, i.type, (unsigned long long)i.user_data, i.fd,
			 i.family_version, i.prio, i.enabled, i.flags);
		FIND(t, "LOOKUP id %d: %s; registered type %u ud %#llx fd %d ver %u flags %#x",
		     g->id, got, g->type, (unsigned long long)g->ud, g->fd,
		     g->famver, g->flags);
		return;
	}
	if (g->owner == t->idx && i.timeout_ms != g->tmo_ms)
		FIND(t, "LOOKUP id %d: timeout_ms %llu, set %llu", g->id,
		     (unsigned long long)i.timeout_ms, (unsigned long long)g->tmo_ms);
	if (single() && (i.prio != (uint32_t)g->prio || i.enabled != g->enabled))
		FIND(t, "LOOKUP id %d: prio %u enabled %u, the model says %d %d",
		     g->id, i.prio, i.enabled, g->prio, g->enabled);
}

/*
 * STATS; the exact balance needs one thread and a ring that did not move.
 * Entries in the ring that head has not passed are pending, not delivered.
 */
static void check_stats(struct thr *t, struct fctx *c, struct freg *g,
			const struct aem_reg_stats *st, bool ring_stable)
{
	uint64_t sum;

	char b[160];

	snprintf(b, sizeof(b),
		 "activations %llu deliveries %llu merged %llu errors %llu pending %llu",
		 (unsigned long long)st->activations,
		 (unsigned long long)st->deliveries,
		 (unsigned long long)st->merged, (unsigned long long)st->errors,
		 (unsigned long long)st->pending);
	/* each occurrence is delivered or merged, once */
	if (st->pending > st->activations ||
	    st->merged + st->deliveries > st->activations + st->errors ||
	    st->errors > st->deliveries || st->errors > 1) {
		FIND(t, "STATS id %d: %s", g->id, b);
		return;
	}
	if (g->type == AEM_EV_SOFT && single() && !g->sat &&
	    st->activations != g->raised)
		FIND(t, "STATS soft id %d: activations %llu, raised %llu",
		     g->id, (unsigned long long)st->activations,
		     (unsigned long long)g->raised);
	if (!single() || !ring_stable || c->garbled || g->sat ||
	    st->activations >= (1ull << 62))
		return;
	sum = g->dcount + st->pending;
	if (st->activations != sum || st->deliveries != g->dn || st->errors != g->derr)
		FIND(t, "STATS id %d (type %u): %s; consumed: %llu, %llu, %llu",
		     g->id, g->type, b, (unsigned long long)g->dcount,
		     (unsigned long long)g->dn, (unsigned long long)g->derr);
}

static const uint32_t ctl_ops_w[] = {
	AEM_CTL_ENABLE, AEM_CTL_ENABLE, AEM_CTL_DISABLE, AEM_CTL_DISABLE,
	AEM_CTL_FILTER, AEM_CTL_FILTER, AEM_CTL_LOOKUP, AEM_CTL_LOOKUP,
	AEM_CTL_LOOKUP, AEM_CTL_SET_TIMEOUT, AEM_CTL_SET_PRIO,
	AEM_CTL_SET_PRIO, AEM_CTL_CLEAN, AEM_CTL_CLEAN, AEM_CTL_STATS,
	AEM_CTL_STATS, AEM_CTL_STATS,
};

static void act_ctl(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	struct aem_ctl k;
	union {
		struct aem_reg_info info;
		struct aem_reg_stats st;
		uint8_t raw[PG];
	} in;
	struct call cl = { .name = "CTL", .op = OP_CTL, .cmd = AEM_IOC_CTL,
			   .k = &k, .ksize = sizeof(k), .ver0 = AEM_CTL_SIZE_VER0 };
	struct call ci = { .op = OP_CTL, .k = &in, .inout = true, .region = 1 };
	struct exp e = { 0 }, ei = { 0 };
	struct freg *g = NULL;
	int state, id;
	bool nested = false, ring_stable = false, have_slock = false;
	uint32_t op, tail0 = 0;
	long ret;

	if (!c)
		return;
	memset(&k, 0, sizeof(k));
	memset(&in, 0, sizeof(in));
	op = ctl_ops_w[U(d, ARRAY_SIZE(ctl_ops_w))];
	if (CH(d, 25))
		op = CH(d, 300) ? 0 : AEM_CTL_MAX + 1 +
		     U(d, CH(d, 500) ? 8 : UINT32_MAX - AEM_CTL_MAX - 1);
	pthread_mutex_lock(&W.lock);
	if (c->live_upper > LIVE_CAP && CH(d, 700))
		op = AEM_CTL_CLEAN;
	id = pick_id(t, d, c, &g, &state, op == AEM_CTL_CLEAN ||
		     op == AEM_CTL_SET_TIMEOUT);
	pthread_mutex_unlock(&W.lock);
	k.id = id;
	k.op = op;
	if (CH(d, 20))
		k.reserved0 = 1 + U(d, UINT32_MAX);
	switch (op) {
	case AEM_CTL_FILTER:
		if (g && g->type == AEM_EV_SK)
			k.arg = (uint32_t)P(d) & AEM_SK_STATES;
		else
			k.arg = rand_events(d, FZ_POLL_BITS);
		if (CH(d, 100))
			k.arg = CH(d, 500) ? 0 : P(d);
		break;
	case AEM_CTL_SET_TIMEOUT:
		k.arg = CH(d, 200) ? 0 : CH(d, 500) ? 1 + U(d, 2000) :
			1000000 + U(d, 1ull << 40);
		if (CH(d, 60))
			k.arg = (uint64_t)INT_MAX * 1000 + 1 + U(d, 1ull << 50);
		if (CH(d, 20))
			k.arg = (uint64_t)INT_MAX * 1000;
		break;
	case AEM_CTL_SET_PRIO:
		k.arg = U(d, AEM_PRIO_LEVELS);
		if (CH(d, 60))
			k.arg = CH(d, 500) ? 64 + U(d, 200) : P(d) | (1ull << 63);
		break;
	case AEM_CTL_LOOKUP:
	case AEM_CTL_STATS:
		nested = true;
		break;
	default:
		if (CH(d, 40))
			k.arg = 1 + U(d, UINT64_MAX - 1);
		break;
	}
	if (nested) {
		ci.name = op == AEM_CTL_LOOKUP ? "LOOKUP" : "STATS";
		ci.ksize = op == AEM_CTL_LOOKUP ? sizeof(in.info) : sizeof(in.st);
		ci.ver0 = op == AEM_CTL_LOOKUP ? AEM_REG_INFO_SIZE_VER0 :
			  AEM_REG_STATS_SIZE_VER0;
		/* out fields may hold garbage on the way in */
		if (CH(d, 100))
			for (size_t i = 4; i < ci.ksize; i++)
				in.raw[i] = (uint8_t)P(d);
		if (op == AEM_CTL_STATS)
			in.st.reserved0 = CH(d, 30) ? 1 + U(d, UINT32_MAX) : 0;
		frame(d, &ci, &ei, 100);
		if (!has_viol(&ei) && op == AEM_CTL_STATS && in.st.reserved0)
			viol(&ei, EINVAL);
		frame_ro(&ci, &ei);
	}

	frame(d, &cl, &e, 60);
	pthread_mutex_lock(&W.lock);
	if (!has_viol(&e)) {
		if (!op || op > AEM_CTL_MAX || k.reserved0) {
			viol(&e, EINVAL);
		} else if (state == ID_DEAD) {
			viol(&e, ENOENT);
		} else {
			if (state == ID_MAYBE)
				maybe(&e, ENOENT);
			switch (op) {
			case AEM_CTL_ENABLE:
			case AEM_CTL_DISABLE:
			case AEM_CTL_CLEAN:
				if (k.arg)
					viol(&e, EINVAL);
				break;
			case AEM_CTL_FILTER:
				switch (g->type) {
				case AEM_EV_FD:
				case AEM_EV_SOCK:
					if (!k.arg || (k.arg & ~(uint64_t)FZ_POLL_BITS))
						viol(&e, EINVAL);
					break;
				case AEM_EV_SK:
					if (!k.arg || (k.arg & ~(uint64_t)AEM_SK_STATES))
						viol(&e, EINVAL);
					break;
				default:
					viol(&e, EOPNOTSUPP);
				}
				break;
			case AEM_CTL_SET_TIMEOUT:
				if (k.arg > (uint64_t)INT_MAX * 1000)
					viol(&e, EINVAL);
				maybe(&e, ENOMEM);
				break;
			case AEM_CTL_SET_PRIO:
				if (k.arg > AEM_PRIO_MAX)
					viol(&e, EINVAL);
				break;
			case AEM_CTL_STATS:
			case AEM_CTL_LOOKUP:
				for (int i = 0; i < 3; i++) {
					e.v[i] |= ei.v[i];
					e.m[i] |= ei.m[i];
				}
				break;
			}
		}
	}
	pthread_mutex_unlock(&W.lock);

	dreset(t);
	desc(t, "CTL ctx%d id=%d op=%u rsv=%u arg=%#llx", c->gen, k.id, k.op,
	     k.reserved0, (unsigned long long)k.arg);
	if (nested) {
		ci.ua = place_struct(t, &ci, d);
		k.arg = (uint64_t)(uintptr_t)ci.ua;
		desc(t, " %s sz=%u%s%s", ci.name, ci.usize, pl_names[ci.place],
		     ci.dirty_tail ? "+dirt" : "");
		if (ci.place == PL_RO)
			mprotect(SCR_RO(t), PG, PROT_READ);
	}
	if (op == AEM_CTL_SET_TIMEOUT && k.arg && g) {
		/*
		 * Before the call: its timer may fire and another thread may
		 * take the -ETIMEDOUT before this one is back to record it.
		 */
		pthread_mutex_lock(&W.lock);
		g->may_doom = true;
		pthread_mutex_unlock(&W.lock);
	}
	if (op == AEM_CTL_STATS && single() && g) {
		pthread_mutex_lock(&c->slock);
		have_slock = true;
		if (c->ring_state == RS_SET && c->ring)
			tail0 = __atomic_load_n(&((struct aem_ring_hdr *)c->ring)->tail,
						__ATOMIC_ACQUIRE);
	}
	ret = run_call(t, d, c->fd, &cl);
	if (nested) {
		if (ci.place == PL_RO)
			mprotect(SCR_RO(t), PG, PROT_READ | PROT_WRITE);
		else
			after_struct(t, &ci, ret);
	}
	if (have_slock) {
		if (c->ring_state == RS_NONE) {
			ring_stable = true;
		} else if (c->ring_state == RS_SET && c->ring && !c->garbled) {
			struct aem_ring_hdr *h = (struct aem_ring_hdr *)c->ring;
			uint32_t tail1 = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);

			ring_stable = tail1 == tail0 && tail1 - c->head <= c->ring_ent;
		}
		pthread_mutex_unlock(&c->slock);
	}
	pthread_mutex_lock(&W.lock);
	if (!c->closed && expect(t, &e, ret, "CTL") && ret == 0 && g) {
		switch (op) {
		case AEM_CTL_CLEAN:
			if (!g->dead) {
				g->dead = true;
				g->dead_clock = ++W.clock;
				c->live_upper--;
			}
			break;
		case AEM_CTL_ENABLE:
		case AEM_CTL_DISABLE:
			g->enabled = op == AEM_CTL_ENABLE;
			break;
		case AEM_CTL_SET_PRIO:
			g->prio = (int)k.arg;
			break;
		case AEM_CTL_SET_TIMEOUT:
			g->tmo_ms = k.arg;
			if (k.arg)
				g->may_doom = true;
			break;
		case AEM_CTL_LOOKUP:
			if (ci.place == PL_NORMAL)
				check_lookup(t, g, &in.info, ci.usize);
			break;
		case AEM_CTL_STATS:
			if (ci.place == PL_NORMAL)
				check_stats(t, c, g, &in.st, ring_stable);
			break;
		}
	}
	pthread_mutex_unlock(&W.lock);
	logcall(t, ret);
	ctx_put(c);
}

/* Delivery @i of a WAIT, at @p (stride @dsize); W.lock held. */
static void check_wait_entry(struct thr *t, struct fctx *c, const uint8_t *p,
			     long i, uint32_t dsize, unsigned int *soft_prio,
			     uint64_t wstart)
{
	struct aem_delivery dl;

	memcpy(&dl, p, sizeof(dl));
	for (uint32_t j = sizeof(dl); j < dsize; j++) {
		if (p[j]) {
			FIND(t, "WAIT: delivery %ld: byte %u past it not cleared (%#x)",
			     i, j, p[j]);
			break;
		}
	}
	/*
	 * Soft events are activated only by RAISE, which waits for the
	 * ctx->mutex this WAIT holds: they all were pending when it started,
	 * so they come highest priority first (other families can be
	 * activated between two of its batches).
	 */
	if (dl.type == AEM_EV_SOFT && dl.id > 0 && !dl.error) {
		if (dl.prio > *soft_prio)
			FIND(t, "WAIT: soft delivery %ld (id %d prio %u) after prio %u",
			     i, dl.id, dl.prio, *soft_prio);
		*soft_prio = dl.prio;
	}
	check_dlv(t, c, &dl, false, wstart);
}

static void act_wait(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	struct aem_wait w;
	struct call cl = { .name = "WAIT", .op = OP_WAIT, .cmd = AEM_IOC_WAIT,
			   .k = &w, .ksize = sizeof(w), .ver0 = AEM_WAIT_SIZE_VER0 };
	struct exp e = { 0 };
	unsigned int where, fit = 0, wd = 0, soft_prio = AEM_PRIO_MAX;
	bool refill_lock = false;
	uint8_t *buf = NULL;
	uint64_t wstart, t0, t1;
	long ret;

	if (!c)
		return;
	memset(&w, 0, sizeof(w));
	if (CH(d, 70))
		w.flags = AEM_WAIT_REFILL;
	if (CH(d, 25))
		w.flags |= 1u << (1 + U(d, 31));
	w.max = CH(d, 900) ? 1 + U(d, 64) : 1 + U(d, 1024);
	if (CH(d, 40))
		w.max = CH(d, 500) ? 0 : 1025 + U(d, UINT32_MAX - 1025);
	w.dsize = CH(d, 850) ? sizeof(struct aem_delivery) :
		  sizeof(struct aem_delivery) + 8 * U(d, 56);
	if (CH(d, 40))
		w.dsize = CH(d, 300) ? U(d, 64) : CH(d, 500) ? 65 + U(d, 200) :
			  PG + 8 * (1 + U(d, 100));
	w.timeout_ns = CH(d, 800) ? 0 : CH(d, 600) ? 100000 + U(d, 3000000) :
		       CH(d, 500) ? -1 - (int64_t)U(d, 100) :
		       CH(d, 500) ? INT64_MAX : (int64_t)U(d, INT64_MAX);
	where = U(d, 1000);
	if (O.skip & SKIP_WAIT_FAULT)
		where = 0;	/* known bug: a faulting copy is not undone exactly */
	if (where < 880) {
		buf = t->dbuf;
		fit = DBUF / (w.dsize ? w.dsize : 1);
		if ((O.skip & SKIP_WAIT_FAULT) && w.max > fit && w.max <= 1024)
			w.max = fit ? fit : 1;
	} else if (where < 920) {
		fit = U(d, 4);
		buf = t->dbuf + DBUF - (size_t)fit * (w.dsize ? w.dsize : 64) -
		      U(d, 64);
	} else if (where < 950) {
		buf = SCR_RO(t);	/* read-only while we call */
	} else if (where < 965) {
		buf = NULL;
	} else if (where < 980) {
		buf = (uint8_t *)0xffff888000000000ull;
	} else {
		buf = SCR_RW(t, 0) + 2 * PG;	/* unmapped */
	}
	w.deliveries = (uint64_t)(uintptr_t)buf;

	frame(d, &cl, &e, 60);
	if (w.flags & AEM_WAIT_REFILL) {
		/* no RING_SETUP between the expectation and the call */
		pthread_mutex_lock(&c->slock);
		refill_lock = true;
	}
	pthread_mutex_lock(&W.lock);
	if (!has_viol(&e)) {
		if (w.flags & ~AEM_WAIT_REFILL) {
			viol(&e, EINVAL);
		} else if (w.flags & AEM_WAIT_REFILL) {
			if (c->ring_state == RS_NONE)
				viol(&e, EINVAL);
			else if (c->ring_state == RS_MAYBE)
				maybe(&e, EINVAL);
		} else {
			if (!w.max || w.max > 1024 || w.dsize > PG ||
			    w.dsize < sizeof(struct aem_delivery) || (w.dsize & 7))
				viol(&e, EINVAL);
			maybe(&e, ENOMEM);
			if (w.timeout_ns)
				maybe(&e, EINTR);
			if (where >= 880 || w.max > fit)
				maybe(&e, EFAULT);
		}
	}
	wstart = ++W.clock;
	pthread_mutex_unlock(&W.lock);

	if (buf == t->dbuf && !has_viol(&e)) {
		size_t n = (size_t)(w.max < 16 ? w.max : 16) * w.dsize;

		memset(buf, 0xcc, n < DBUF ? n : DBUF);
	}
	if (where >= 880 && where < 950 && buf == SCR_RO(t))
		mprotect(SCR_RO(t), PG, PROT_READ);
	dreset(t);
	desc(t, "WAIT ctx%d fl=%#x max=%u dsize=%u tmo=%lld buf=%s", c->gen,
	     w.flags, w.max, w.dsize, (long long)w.timeout_ns,
	     where < 880 ? "ok" : where < 920 ? "guard" : where < 950 ? "ro" :
	     where < 965 ? "null" : where < 980 ? "kernel" : "unmapped");
	if (!(w.flags & AEM_WAIT_REFILL) && (w.timeout_ns < 0 || w.timeout_ns > 5000000)) {
		wd = 20 + U(d, 60);
		wd_arm(t, wd);
		add(&S->xcalls[X_WAIT_BLOCK], 1);
	}
	t0 = now_ns(CLOCK_MONOTONIC);
	ret = run_call(t, d, c->fd, &cl);
	t1 = now_ns(CLOCK_MONOTONIC);
	if (refill_lock)
		pthread_mutex_unlock(&c->slock);
	if (wd)
		wd_disarm(t);
	if (buf == SCR_RO(t))
		mprotect(SCR_RO(t), PG, PROT_READ | PROT_WRITE);
	pthread_mutex_lock(&W.lock);
	if (!c->closed && expect(t, &e, ret, "WAIT") && ret >= 0 &&
	    !(w.flags & AEM_WAIT_REFILL)) {
		if (ret > w.max)
			FIND(t, "WAIT returned %ld deliveries, max %u", ret, w.max);
		if (!ret && w.timeout_ns > 0 && t1 - t0 + 10000 < (uint64_t)w.timeout_ns)
			FIND(t, "WAIT returned 0 after %llu ns, timeout %lld ns",
			     (unsigned long long)(t1 - t0), (long long)w.timeout_ns);
		if (ret > 0 && (buf == t->dbuf || where < 920))
			for (long i = 0; i < ret && i < w.max; i++)
				check_wait_entry(t, c, buf + (size_t)i * w.dsize, i,
						 w.dsize, &soft_prio, wstart);
	}
	pthread_mutex_unlock(&W.lock);
	logcall(t, ret);
	ctx_put(c);
}

static void act_raise(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	struct aem_raise r;
	struct call cl = { .name = "RAISE", .op = OP_RAISE, .cmd = AEM_IOC_RAISE,
			   .k = &r, .ksize = sizeof(r), .ver0 = AEM_RAISE_SIZE_VER0 };
	struct exp e = { 0 };
	struct freg *g;
	int state;
	long ret;

	if (!c)
		return;
	memset(&r, 0, sizeof(r));
	pthread_mutex_lock(&W.lock);
	r.id = pick_id(t, d, c, &g, &state, false);
	pthread_mutex_unlock(&W.lock);
	r.count = CH(d, 900) ? 1 + U(d, 10) : CH(d, 500) ? UINT64_MAX - U(d, 2) :
		  1ull << 63;
	if (CH(d, 30))
		r.count = 0;
	r.value = P(d);
	if (CH(d, 20))
		r.flags = 1 + U(d, UINT32_MAX);
	if (CH(d, 20))
		r.reserved0 = 1 + U(d, UINT32_MAX);
	frame(d, &cl, &e, 60);
	pthread_mutex_lock(&W.lock);
	if (!has_viol(&e)) {
		if (r.flags || r.reserved0 || !r.count) {
			viol(&e, EINVAL);
		} else if (state == ID_DEAD) {
			viol(&e, ENOENT);
		} else {
			if (state == ID_MAYBE)
				maybe(&e, ENOENT);
			if (g->type != AEM_EV_SOFT)
				viol(&e, EOPNOTSUPP);
		}
	}
	pthread_mutex_unlock(&W.lock);
	dreset(t);
	desc(t, "RAISE ctx%d id=%d count=%llu value=%#llx fl=%#x rsv=%u", c->gen,
	     r.id, (unsigned long long)r.count, (unsigned long long)r.value,
	     r.flags, r.reserved0);
	ret = run_call(t, d, c->fd, &cl);
	pthread_mutex_lock(&W.lock);
	if (!c->closed && expect(t, &e, ret, "RAISE") && ret == 0 && g) {
		if (r.count > UINT64_MAX - g->raised || r.count >= (1ull << 62))
			g->sat = true;
		else
			g->raised += r.count;
		g->last_value = r.value;
	}
	pthread_mutex_unlock(&W.lock);
	logcall(t, ret);
	ctx_put(c);
}

static void act_signal(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	struct aem_signal s;
	struct call cl = { .name = "SET_SIGNAL", .op = OP_SET_SIGNAL,
			   .cmd = AEM_IOC_SET_SIGNAL, .k = &s, .ksize = sizeof(s),
			   .ver0 = AEM_SIGNAL_SIZE_VER0 };
	struct exp e = { 0 };
	unsigned int tk;
	long ret;

	if (!c)
		return;
	memset(&s, 0, sizeof(s));
	s.signo = CH(d, 400) ? 0 : CH(d, 950) ? SIGRTMIN + (int)U(d, SIGRTMAX - SIGRTMIN + 1) :
		  32 + (int)U(d, 2);
	if (CH(d, 60))
		s.signo = CH(d, 500) ? 1 + (int)U(d, 31) : 65 + (int)U(d, 1000);
	if (O.skip & SKIP_SIGNAL)
		s.signo = 0;
	tk = U(d, 1000);
	if (tk < 600)
		s.tid = 0;
	else if (tk < 750)
		s.tid = t->tid;
	else if (tk < 850)
		s.tid = W.tids[U(d, W.nthreads)];
	else if (tk < 950)
		s.tid = CH(d, 500) ? 1 : INT_MAX - (int)U(d, 10);
	else
		s.tid = -1 - (int)U(d, 100);
	if (CH(d, 20))
		s.flags = 1 + U(d, UINT32_MAX);
	frame(d, &cl, &e, 60);
	if (!has_viol(&e)) {
		if (s.flags || s.tid < 0 || (s.signo && (s.signo < 32 || s.signo > 64))) {
			viol(&e, EINVAL);
		} else if (s.signo && s.tid) {
			if (tk >= 850)
				viol(&e, ESRCH);
			else if (tk >= 750)
				maybe(&e, ESRCH);
		}
	}
	dreset(t);
	desc(t, "SET_SIGNAL ctx%d signo=%d tid=%d fl=%#x", c->gen, s.signo,
	     s.tid, s.flags);
	ret = run_call(t, d, c->fd, &cl);
	pthread_mutex_lock(&W.lock);
	if (!c->closed && expect(t, &e, ret, "SET_SIGNAL") && ret == 0)
		c->signo = s.signo;
	pthread_mutex_unlock(&W.lock);
	logcall(t, ret);
	ctx_put(c);
}

static size_t ring_bytes(uint32_t entries)
{
	return (256 + (size_t)entries * sizeof(struct aem_delivery) + PG - 1) & ~(size_t)(PG - 1);
}

/*
 * True when another thread closed @c meanwhile: its fd numbers then hold
 * the read-only /dev/null placeholder, where a shared writable mapping
 * fails with EACCES and any mapping with ENODEV. Not a finding.
 */
static bool ctx_closed_now(struct fctx *c)
{
	bool closed;

	pthread_mutex_lock(&W.lock);
	closed = c->closed;
	pthread_mutex_unlock(&W.lock);
	return closed;
}

/* Map the ring of @c (c->slock held); false if mmap failed. */
static bool ring_map(struct thr *t, struct fctx *c, uint32_t entries, size_t size)
{
	int prot = c->rdonly ? PROT_READ : PROT_READ | PROT_WRITE;
	void *p = mmap(NULL, size, prot, MAP_SHARED, c->fd, 0);
	struct aem_ring_hdr *h;

	add(&S->xcalls[X_MMAP], 1);
	if (p == MAP_FAILED) {
		/*
		 * A context opened O_RDONLY: the VFS clears VM_SHARED of a
		 * shared mapping of a read-only file and aem_mmap() wants it.
		 */
		if (errno != ENOMEM && errno != EAGAIN && !(c->rdonly && errno == EINVAL) &&
		    !ctx_closed_now(c))
			FIND(t, "mmap of the ring (%zu bytes) failed: %s", size, en(-errno));
		pthread_mutex_lock(&W.lock);
		c->ring_state = RS_SET;	/* there, but we cannot see it */
		c->ring_ent = entries;
		c->ring_size = size;
		pthread_mutex_unlock(&W.lock);
		return false;
	}
	h = p;
	if (h->entries != entries || h->mask != entries - 1)
		FIND(t, "ring header: entries %u mask %u, set up with %u",
		     h->entries, h->mask, entries);
	pthread_mutex_lock(&W.lock);
	c->ring = p;
	c->ring_size = size;
	c->ring_ent = entries;
	c->ring_state = RS_SET;
	c->ring_rw = !c->rdonly;
	c->head = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
	if (c->head)
		c->garbled = true;
	pthread_mutex_unlock(&W.lock);
	return true;
}

static void act_ring(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	struct aem_ring_setup rs;
	struct call cl = { .name = "RING_SETUP", .op = OP_RING_SETUP,
			   .cmd = AEM_IOC_RING_SETUP, .k = &rs, .ksize = sizeof(rs),
			   .ver0 = AEM_RING_SETUP_SIZE_VER0, .inout = true };
	struct exp e = { 0 };
	bool sem_ok = false;
	long ret;

	if (!c)
		return;
	pthread_mutex_lock(&c->slock);
	dreset(t);
	if (c->ring_state == RS_SET && CH(d, 850)) {
		struct aem_ring_hdr *h = (struct aem_ring_hdr *)c->ring;

		desc(t, "RING consume ctx%d", c->gen);
		ring_consume(t, c, d);
		if (h && __atomic_load_n(&h->backlog, __ATOMIC_ACQUIRE) && CH(d, 700)) {
			struct aem_wait w = { .size = sizeof(w), .flags = AEM_WAIT_REFILL };

			ret = sys_ioctl(c->fd, AEM_IOC_WAIT, &w);
			stat_call(t, OP_WAIT, ret);
			desc(t, " REFILL=%s/%ld", en(ret), ret);
			if (ret < 0 && !c->closed) {
				struct exp x = { 0 };

				expect(t, &x, ret, "WAIT(REFILL)");
			}
			ring_consume(t, c, d);
		}
		pthread_mutex_unlock(&c->slock);
		logcall(t, LONG_MIN);
		ctx_put(c);
		return;
	}
	memset(&rs, 0, sizeof(rs));
	rs.entries = 1u << (1 + U(d, 12));
	if (CH(d, 100))
		rs.entries = CH(d, 300) ? U(d, 2) : CH(d, 300) ? 8192 :
			     CH(d, 500) ? 3 + 2 * U(d, 2000) : (uint32_t)P(d);
	if (CH(d, 20))
		rs.flags = 1 + U(d, UINT32_MAX);
	if (CH(d, 20))
		rs.entries_off = 1 + U(d, UINT32_MAX);
	if (CH(d, 20))
		rs.mmap_size = 1 + U(d, UINT64_MAX - 1);
	frame(d, &cl, &e, 60);
	if (!has_viol(&e)) {
		if (rs.flags || rs.entries_off || rs.mmap_size || rs.entries < 2 ||
		    rs.entries > 4096 || (rs.entries & (rs.entries - 1)))
			viol(&e, EINVAL);
		else if (c->ring_state == RS_SET)
			viol(&e, EBUSY);
		else if (c->ring_state == RS_MAYBE)
			maybe(&e, EBUSY);
		maybe(&e, ENOMEM);
		sem_ok = !has_viol(&e);
		frame_ro(&cl, &e);
	}
	desc(t, "RING_SETUP ctx%d entries=%u fl=%#x off=%u msz=%llu", c->gen,
	     rs.entries, rs.flags, rs.entries_off, (unsigned long long)rs.mmap_size);
	ret = run_call(t, d, c->fd, &cl);
	if (!c->closed && expect(t, &e, ret, "RING_SETUP")) {
		if (ret == 0 && cl.place == PL_NORMAL) {
			if (rs.entries_off < sizeof(struct aem_ring_hdr) ||
			    rs.entries_off + (uint64_t)rs.entries * 64 > rs.mmap_size ||
			    rs.mmap_size % PG)
				FIND(t, "RING_SETUP: entries_off %u mmap_size %llu for %u entries",
				     rs.entries_off, (unsigned long long)rs.mmap_size,
				     rs.entries);
			else
				ring_map(t, c, rs.entries, rs.mmap_size);
		} else if (ret == -EFAULT && cl.place == PL_RO && sem_ok &&
			   c->ring_state == RS_NONE) {
			c->ring_state = RS_MAYBE;
			c->ring_maybe_ent = rs.entries;
		} else if (ret == -EBUSY && c->ring_state == RS_MAYBE) {
			ring_map(t, c, c->ring_maybe_ent, ring_bytes(c->ring_maybe_ent));
		}
	}
	pthread_mutex_unlock(&c->slock);
	logcall(t, ret);
	ctx_put(c);
}

static void act_arena(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	struct aem_arena_setup as;
	struct aem_arena_free af;
	struct call cs = { .name = "ARENA_SETUP", .op = OP_ARENA_SETUP,
			   .cmd = AEM_IOC_ARENA_SETUP, .k = &as, .ksize = sizeof(as),
			   .ver0 = AEM_ARENA_SETUP_SIZE_VER0, .inout = true };
	struct call cf = { .name = "ARENA_FREE", .op = OP_ARENA_FREE,
			   .cmd = AEM_IOC_ARENA_FREE, .k = &af, .ksize = sizeof(af),
			   .ver0 = AEM_ARENA_FREE_SIZE_VER0 };
	struct exp e = { 0 };
	uint64_t maxb = W.info.max_arena_bytes;
	bool sem_ok = false;
	int kind;
	long ret;

	if (!c)
		return;
	pthread_mutex_lock(&c->slock);
	dreset(t);
	if (c->arena_state == RS_NONE || CH(d, 150)) {
		memset(&as, 0, sizeof(as));
		as.bytes = (1 + U(d, in_child ? 16 : 256)) * (uint64_t)PG;
		if (CH(d, 20))	/* the largest: 64 MiB by default */
			as.bytes = in_child ? 64 * PG : maxb;
		if (CH(d, 60))
			as.bytes = CH(d, 300) ? 0 : CH(d, 300) ? maxb + PG :
				   CH(d, 500) ? 1 + U(d, 1u << 20) * 2 : AEM_ARENA_OFFSET + PG;
		if (CH(d, 15))
			as.flags = 1 + U(d, UINT32_MAX);
		if (CH(d, 15))
			as.reserved0 = 1 + U(d, UINT32_MAX);
		if (CH(d, 15))
			as.mmap_offset = 1 + U(d, UINT64_MAX - 1);
		if (CH(d, 15))
			as.block = 1 + U(d, UINT32_MAX);
		frame(d, &cs, &e, 60);
		if (!has_viol(&e)) {
			if (as.flags || as.reserved0 || as.mmap_offset || as.block ||
			    !as.bytes || as.bytes % PG || as.bytes > maxb ||
			    as.bytes > AEM_ARENA_OFFSET)
				viol(&e, EINVAL);
			else if (c->arena_state == RS_SET)
				viol(&e, EBUSY);
			else if (c->arena_state == RS_MAYBE)
				maybe(&e, EBUSY);
			maybe(&e, ENOMEM);
			sem_ok = !has_viol(&e);
			frame_ro(&cs, &e);
		}
		desc(t, "ARENA_SETUP ctx%d bytes=%llu fl=%#x rsv=%u off=%#llx blk=%u",
		     c->gen, (unsigned long long)as.bytes, as.flags, as.reserved0,
		     (unsigned long long)as.mmap_offset, as.block);
		ret = run_call(t, d, c->fd, &cs);
		if (!c->closed && expect(t, &e, ret, "ARENA_SETUP")) {
			if (ret == 0 && cs.place == PL_NORMAL) {
				void *p;

				if (as.mmap_offset != AEM_ARENA_OFFSET || !as.block ||
				    (as.block & (as.block - 1)) || PG % as.block)
					FIND(t, "ARENA_SETUP: mmap_offset %#llx block %u",
					     (unsigned long long)as.mmap_offset, as.block);
				p = mmap(NULL, as.bytes, PROT_READ, MAP_SHARED, c->fd,
					 AEM_ARENA_OFFSET);
				add(&S->xcalls[X_MMAP], 1);
				if (p == MAP_FAILED && errno != ENOMEM &&
				    !(c->rdonly && errno == EINVAL) && !ctx_closed_now(c))
					FIND(t, "mmap of the arena (%llu bytes) failed: %s",
					     (unsigned long long)as.bytes, en(-errno));
				pthread_mutex_lock(&W.lock);
				c->arena_state = RS_SET;
				c->arena_size = as.bytes;
				c->block = as.block ? as.block : 1024;
				if (p != MAP_FAILED)
					c->arena = p;	/* unmapped at finalize */
				pthread_mutex_unlock(&W.lock);
			} else if (ret == -EFAULT && cs.place == PL_RO && sem_ok &&
				   c->arena_state == RS_NONE) {
				c->arena_state = RS_MAYBE;
			} else if (ret == -EBUSY && c->arena_state == RS_MAYBE) {
				/* it exists; its size is unknown: no content checks */
			}
		}
		pthread_mutex_unlock(&c->slock);
		logcall(t, ret);
		ctx_put(c);
		return;
	}
	pthread_mutex_unlock(&c->slock);
	memset(&af, 0, sizeof(af));
	kind = U(d, 1000) < 550 ? 0 : 1;
	pthread_mutex_lock(&W.lock);
	if (kind == 0 && c->nchunks) {
		int i = U(d, c->nchunks);

		af.offset = c->chunks[i];
		c->chunks[i] = c->chunks[--c->nchunks];
	} else {
		kind = 1;
		af.offset = CH(d, 600) ? U(d, 64) * 1024 :
			    CH(d, 500) ? U(d, c->arena_size ? c->arena_size : PG) :
			    P(d);
	}
	if (CH(d, 20))
		af.flags = 1 + U(d, UINT32_MAX);
	frame(d, &cf, &e, 60);
	if (!has_viol(&e)) {
		if (af.flags)
			viol(&e, EINVAL);
		else if (c->arena_state == RS_NONE)
			viol(&e, ENXIO);
		else if (c->arena_state == RS_MAYBE)
			maybe(&e, ENXIO), maybe(&e, EINVAL);
		else if (af.offset >= c->arena_size || af.offset % c->block)
			viol(&e, EINVAL);
		else if (kind == 1 || c->arena_unsure || !single())
			maybe(&e, EINVAL);
	}
	pthread_mutex_unlock(&W.lock);
	desc(t, "ARENA_FREE ctx%d off=%#llx (%s) fl=%#x", c->gen,
	     (unsigned long long)af.offset, kind ? "random" : "delivered", af.flags);
	ret = run_call(t, d, c->fd, &cf);
	pthread_mutex_lock(&W.lock);
	if (!c->closed && expect(t, &e, ret, "ARENA_FREE") && ret == 0 && kind == 1)
		c->arena_unsure = true;	/* freed a chunk we did not know of */
	pthread_mutex_unlock(&W.lock);
	logcall(t, ret);
	ctx_put(c);
}

static void act_info(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	struct aem_info in;
	struct call cl = { .name = "INFO", .op = OP_INFO, .cmd = AEM_IOC_INFO,
			   .k = &in, .ksize = sizeof(in), .ver0 = AEM_INFO_SIZE_VER0,
			   .inout = true };
	struct exp e = { 0 };
	long ret;

	if (!c)
		return;
	memset(&in, 0, sizeof(in));
	if (CH(d, 300))
		for (size_t i = 4; i < sizeof(in); i++)
			((uint8_t *)&in)[i] = (uint8_t)P(d);
	frame(d, &cl, &e, 100);
	frame_ro(&cl, &e);
	dreset(t);
	desc(t, "INFO ctx%d", c->gen);
	ret = run_call(t, d, c->fd, &cl);
	pthread_mutex_lock(&W.lock);
	if (!c->closed && expect(t, &e, ret, "INFO") && ret == 0 &&
	    cl.place == PL_NORMAL) {
		bool bad = in.api_version != AEM_API_VERSION ||
			   in.prio_levels != AEM_PRIO_LEVELS ||
			   in.delivery_size != sizeof(struct aem_delivery) ||
			   (in.types & ~0x1feu) || in.family_version[0];

		for (int i = 1; i < 16; i++)
			if (!!in.family_version[i] != !!(i < 32 && ((in.types >> i) & 1)))
				bad = true;
		if (bad)
			FIND(t, "INFO: api %u levels %u delivery_size %u types %#x fv0 %u",
			     in.api_version, in.prio_levels, in.delivery_size,
			     in.types, in.family_version[0]);
	}
	pthread_mutex_unlock(&W.lock);
	logcall(t, ret);
	ctx_put(c);
}

static void act_badioc(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	unsigned long cmd;
	bool certain = true;
	long ret;
	void *arg = t->scr + U(d, PG);

	if (!c)
		return;
	switch (U(d, 5)) {
	case 0:
		do
			cmd = _IOC(U(d, 4), U(d, 256), U(d, 256), U(d, 1u << 14));
		while (_IOC_TYPE(cmd) == AEM_IOC_MAGIC);
		break;
	case 1:
		cmd = _IOC(U(d, 4), AEM_IOC_MAGIC, 9 + U(d, 247), U(d, 1u << 14));
		break;
	case 2:
		cmd = FIONREAD;
		break;
	case 3:
		cmd = CH(d, 500) ? FIOCLEX : FIONBIO;
		if (cmd == FIONBIO)
			memset(arg, 0, sizeof(int));
		certain = false;
		break;
	default:
		cmd = U(d, 2) ? 0 : P(d);
		certain = _IOC_TYPE(cmd) != AEM_IOC_MAGIC;
		if (_IOC_TYPE(cmd) == AEM_IOC_MAGIC)
			return ctx_put(c);
		break;
	}
	if (CH(d, 300))
		arg = CH(d, 500) ? NULL : (void *)P(d);
	dreset(t);
	desc(t, "IOCTL ctx%d cmd=%#lx arg=%p", c->gen, cmd, arg);
	ret = sys_ioctl(c->fd, cmd, arg);
	stat_call(t, OP_OTHER, ret);
	pthread_mutex_lock(&W.lock);
	if (!c->closed && certain && ret != -ENOTTY)
		FIND(t, "ioctl %#lx (type %#x nr %u) on a context returned %s, not ENOTTY",
		     cmd, _IOC_TYPE(cmd), _IOC_NR(cmd), en(ret));
	pthread_mutex_unlock(&W.lock);
	logcall(t, ret);
	ctx_put(c);
}

static const char pattern[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

static void fill_pattern(uint8_t *b, size_t n, uint64_t r)
{
	for (size_t i = 0; i < n; i++)
		b[i] = pattern[(r + i) % 26];
}

static const int stim_slot[] = { 0, 0, 2, 1, -1, 3, 4 };
static const char *const stim_name[] = {
	"write", "read", "write", "read", "", "read", "arm",
};

static void act_stim(struct thr *t, struct draw *d)
{
	static __thread uint8_t buf[16384];
	static const int conn[] = { 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23 };
	int k = U(d, 17), i, fd;
	long ret = 0;
	uint64_t v;

	add(&S->xcalls[X_STIM], 1);
	dreset(t);
	switch (k) {
	case 0: case 1: case 2: case 3: case 5: case 6:
		i = stim_slot[k];
		pthread_rwlock_rdlock(&W.s[i].rw);
		fd = W.s[i].fd;
		if (k == 0) {
			v = 1 + U(d, 1000);
			ret = write(fd, &v, 8);
		} else if (k == 2) {
			size_t n = 1 + U(d, 4096);

			fill_pattern(buf, n, P(d));
			ret = write(fd, buf, n);
		} else if (k == 6) {
			struct itimerspec its = { { 0, 0 }, { 0, 1000000 + U(d, 4000000) } };

			ret = timerfd_settime(fd, 0, &its, NULL);
		} else {
			ret = read(fd, buf, k == 3 ? sizeof(buf) : 128);
		}
		desc(t, "STIM %s slot%d fd=%d", stim_name[k], i, fd);
		pthread_rwlock_unlock(&W.s[i].rw);
		break;
	case 4:
		ret = kill(getpid(), SIGUSR2);
		desc(t, "STIM kill SIGUSR2");
		break;
	case 7: case 8: case 9: case 10: {
		size_t n = 1 + U(d, k == 7 ? 16384 : 2048);

		i = conn[U(d, ARRAY_SIZE(conn))];
		pthread_rwlock_rdlock(&W.s[i].rw);
		fd = W.s[i].fd;
		fill_pattern(buf, n, P(d));
		ret = send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		desc(t, "STIM send slot%d fd=%d n=%zu", i, fd, n);
		pthread_rwlock_unlock(&W.s[i].rw);
		break;
	}
	case 11:
		i = conn[U(d, ARRAY_SIZE(conn))];
		pthread_rwlock_rdlock(&W.s[i].rw);
		ret = recv(W.s[i].fd, buf, sizeof(buf), MSG_DONTWAIT);
		desc(t, "STIM recv slot%d", i);
		pthread_rwlock_unlock(&W.s[i].rw);
		break;
	case 12:
		i = conn[U(d, ARRAY_SIZE(conn))];
		pthread_rwlock_rdlock(&W.s[i].rw);
		ret = shutdown(W.s[i].fd, U(d, 3));
		desc(t, "STIM shutdown slot%d", i);
		pthread_rwlock_unlock(&W.s[i].rw);
		break;
	case 13:
		i = conn[U(d, ARRAY_SIZE(conn))];
		pthread_rwlock_wrlock(&W.s[i].rw);
		if (W.s[i].fd >= 0 && kind_is_tcp(W.s[i].kind) && CH(d, 500)) {
			struct linger lg = { 1, 0 };	/* reset, not FIN */

			setsockopt(W.s[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		}
		slot_close(i);
		desc(t, "STIM close slot%d", i);
		pthread_rwlock_unlock(&W.s[i].rw);
		break;
	case 14: {
		/* a new client of a pool listener, into slot 22 */
		struct sockaddr_un ua;
		bool unix_ = CH(d, 500);

		pthread_rwlock_wrlock(&W.s[SLOT_POOL_TCP_CLIENT].rw);
		slot_close(SLOT_POOL_TCP_CLIENT);
		if (unix_) {
			fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			if (fd >= 0 && connect(fd, (struct sockaddr *)&ua,
					       unix_addr(&ua, W.unix_name))) {
				ret = -errno;
				close(fd);
				fd = -1;
			}
		} else {
			fd = tcp_connect(W.tcpl_port, true);
		}
		W.s[SLOT_POOL_TCP_CLIENT].fd = fd;
		W.s[SLOT_POOL_TCP_CLIENT].kind = unix_ ? K_UNIX_P : K_TCP_C;
		desc(t, "STIM connect %s fd=%d", unix_ ? "unix" : "tcp", fd);
		pthread_rwlock_unlock(&W.s[SLOT_POOL_TCP_CLIENT].rw);
		break;
	}
	case 15: {
		int l = CH(d, 500) ? SLOT_TCP_L : SLOT_UNIX_L;

		if (l < SLOT_POOL_ACC)
			pthread_rwlock_rdlock(&W.s[l].rw);
		pthread_rwlock_wrlock(&W.s[SLOT_POOL_ACC].rw);
		fd = accept4(W.s[l].fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		ret = fd < 0 ? -errno : 0;
		if (fd >= 0) {
			slot_close(SLOT_POOL_ACC);
			W.s[SLOT_POOL_ACC].fd = fd;
			W.s[SLOT_POOL_ACC].kind = l == SLOT_TCP_L ? K_TCP_S : K_UNIX_P;
		}
		desc(t, "STIM accept slot%d fd=%d", l, fd);
		pthread_rwlock_unlock(&W.s[SLOT_POOL_ACC].rw);
		pthread_rwlock_unlock(&W.s[l].rw);
		break;
	}
	default:
		i = U(d, NSLOT);
		if (i == SLOT_POOL_ACC || i == SLOT_POOL_TCP_CLIENT)
			i = U(d, 8);
		add(&S->xcalls[X_RECYCLE], 1);
		slot_recycle(i);
		desc(t, "STIM recycle slot%d (%s) fd=%d", i, kind_names[W.s[i].kind],
		     W.s[i].fd);
		break;
	}
	logcall(t, ret < 0 ? -errno : 0);
}

static void act_poll(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	unsigned int k = U(d, 6);
	long ret = 0;
	char b[8];

	if (!c)
		return;
	dreset(t);
	if (k == 0 || k == 1) {
		struct pollfd p = { .fd = c->fd, .events = POLLIN | POLLOUT };

		add(&S->xcalls[X_POLL], 1);
		ret = poll(&p, 1, k ? 1 : 0);
		desc(t, "POLL ctx%d => %#x", c->gen, p.revents);
		pthread_mutex_lock(&W.lock);
		if (!c->closed && (ret < 0 ? errno != EINTR :
				   (p.revents & ~(POLLIN | POLLRDNORM))))
			FIND(t, "poll of a context: ret %ld revents %#x", ret, p.revents);
		pthread_mutex_unlock(&W.lock);
	} else if (k == 2) {
		struct epoll_event ev = { .events = EPOLLIN | (CH(d, 500) ? EPOLLET : 0) };
		int ep;

		add(&S->xcalls[X_POLL], 1);
		pthread_rwlock_rdlock(&W.s[7].rw);
		ep = W.s[7].fd;
		ret = epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
		if (!ret || errno == EEXIST)
			ret = epoll_wait(ep, &ev, 1, 0);
		if (CH(d, 500))
			epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
		pthread_rwlock_unlock(&W.s[7].rw);
		desc(t, "EPOLL ctx%d", c->gen);
	} else if (k == 3) {
		fd_set rf;
		struct timeval tv = { 0, 0 };

		add(&S->xcalls[X_POLL], 1);
		if (c->fd < FD_SETSIZE) {
			FD_ZERO(&rf);
			FD_SET(c->fd, &rf);
			ret = select(c->fd + 1, &rf, NULL, NULL, &tv);
		}
		desc(t, "SELECT ctx%d", c->gen);
	} else if (k == 4) {
		add(&S->xcalls[X_RDWR], 1);
		ret = CH(d, 500) ? read(c->fd, b, sizeof(b)) : write(c->fd, b, sizeof(b));
		desc(t, "READ/WRITE ctx%d", c->gen);
		pthread_mutex_lock(&W.lock);
		if (!c->closed &&
		    (ret >= 0 || (errno != EINVAL && !(errno == EBADF && c->rdonly))))
			FIND(t, "read/write of a context returned %ld (%s), not EINVAL",
			     ret, ret < 0 ? en(-errno) : "ok");
		pthread_mutex_unlock(&W.lock);
	} else {
		long tg = -1, regs = -1, uregs = -1;
		int r1, r2, r3;

		add(&S->xcalls[X_FDINFO], 1);
		r1 = fdinfo_field(c->fd, "aem-tgid:\t", &tg);
		r2 = fdinfo_field(c->fd, "aem-regs:\t", &regs);
		r3 = fdinfo_field(c->fd, "aem-user-regs:\t", &uregs);
		desc(t, "FDINFO ctx%d tgid=%ld regs=%ld user=%ld", c->gen, tg, regs, uregs);
		pthread_mutex_lock(&W.lock);
		if (!c->closed && (r1 || r2 || r3 || tg != getpid() || regs < 0 ||
				   uregs < regs))
			FIND(t, "fdinfo: tgid %ld (pid %d) regs %ld user-regs %ld (%d %d %d)",
			     tg, getpid(), regs, uregs, r1, r2, r3);
		else if (!c->closed && single() && regs > c->live_upper + c->unknown)
			FIND(t, "fdinfo: %ld registrations, at most %ld live", regs,
			     c->live_upper + c->unknown);
		pthread_mutex_unlock(&W.lock);
		ret = 0;
	}
	logcall(t, ret < 0 ? -errno : ret);
	ctx_put(c);
}

/* mmap of the context with the wrong arguments, and mprotect. */
static void act_mmap(struct thr *t, struct draw *d)
{
	struct fctx *c = ctx_get(t, P(d));
	unsigned int k = U(d, 10);
	int prot = PROT_READ, flags = MAP_SHARED, want;
	size_t len = PG;
	off_t off = 0;
	void *p;
	bool must_fail = true;

	if (!c)
		return;
	pthread_mutex_lock(&c->slock);
	dreset(t);
	add(&S->xcalls[X_MMAP], 1);
	want = EINVAL;
	if (k < 5) {	/* the ring */
		if (c->ring_state != RS_SET) {
			want = c->ring_state == RS_NONE ? ENODEV : 0;
			len = PG;
		} else {
			len = c->ring_size;
		}
		switch (k) {
		case 0:
			must_fail = c->ring_state != RS_NONE;
			if (c->ring_state == RS_SET) {
				must_fail = false;
				len = PG * (1 + U(d, c->ring_size / PG));
			}
			break;
		case 1:
			len = (c->ring_state == RS_SET ? c->ring_size : PG) + PG * (1 + U(d, 4));
			break;
		case 2:
			flags = MAP_PRIVATE;
			break;
		case 3:
			prot |= PROT_EXEC;
			break;
		default:
			off = PG * (1 + U(d, 100));
			break;
		}
		if (c->ring_state == RS_NONE)
			want = ENODEV, must_fail = true;
		if (k == 4 && c->ring_state != RS_MAYBE)
			want = c->ring_state == RS_NONE ? 0 : EINVAL;
	} else {	/* the arena */
		off = AEM_ARENA_OFFSET;
		len = c->arena_state == RS_SET ? c->arena_size : PG;
		switch (k) {
		case 5:
			must_fail = false;
			if (c->arena_state == RS_SET)
				len = PG * (1 + U(d, c->arena_size / PG));
			break;
		case 6:
			len += PG * (1 + U(d, 4));
			break;
		case 7:
			prot |= PROT_WRITE;
			break;
		case 8:
			flags = MAP_PRIVATE;
			break;
		default:
			must_fail = false;	/* then mprotect it writable */
			break;
		}
		if (c->arena_state == RS_NONE)
			want = ENODEV, must_fail = true;
		if (c->arena_state == RS_MAYBE)
			want = 0, must_fail = false;
		if (c->rdonly && (prot & PROT_WRITE))
			want = EACCES;
	}
	p = mmap(NULL, len, prot, flags, c->fd, off);
	desc(t, "MMAP ctx%d kind=%u len=%zu prot=%#x flags=%#x off=%#llx => %s",
	     c->gen, k, len, prot, flags, (unsigned long long)off,
	     p == MAP_FAILED ? en(-errno) : "ok");
	pthread_mutex_lock(&W.lock);
	if (!c->closed) {
		if (p == MAP_FAILED && !must_fail && errno != ENOMEM && !c->rdonly &&
		    !(c->arena_state == RS_MAYBE || c->ring_state == RS_MAYBE))
			FIND(t, "mmap of the context (kind %u) failed: %s", k, en(-errno));
		if (must_fail && want && (p != MAP_FAILED ? true : errno != want) &&
		    !(p == MAP_FAILED && errno == EACCES && c->rdonly))
			FIND(t, "mmap (kind %u, %zu B, prot %#x, flags %#x, off %#llx): %s, not %s",
			     k, len, prot, flags, (unsigned long long)off,
			     p == MAP_FAILED ? en(-errno) : "a mapping", en(-want));
	}
	if (p != MAP_FAILED && k == 9 && c->arena_state == RS_SET) {
		add(&S->xcalls[X_MPROTECT], 1);
		if (!mprotect(p, len, PROT_READ | PROT_WRITE) && !c->closed)
			FIND(t, "the arena mapping could be made writable");
	}
	if (p != MAP_FAILED) {
		if (CH(d, 500))
			ctx_addmap(c, p, len);
		else
			munmap(p, len);
	}
	pthread_mutex_unlock(&W.lock);
	pthread_mutex_unlock(&c->slock);
	logcall(t, LONG_MIN);
	ctx_put(c);
}

static void act_ctxlife(struct thr *t, struct draw *d)
{
	unsigned int k = U(d, 3);
	struct fctx *c = ctx_get(t, P(d));
	int nfd;

	if (!c)
		return;
	dreset(t);
	if (k == 0) {
		pthread_mutex_lock(&W.lock);
		ctx_open_locked(t, P(d));
		pthread_mutex_unlock(&W.lock);
		desc(t, "CTX open");
	} else if (k == 1) {
		nfd = U(d, 3) == 0 ? dup(c->fd) :
		      fcntl(c->fd, F_DUPFD_CLOEXEC, (int)(3 + U(d, 200)));
		add(&S->xcalls[X_CTX_DUP], 1);
		pthread_mutex_lock(&W.lock);
		if (nfd >= 0 && !c->closed && c->nretired < MAXRET) {
			c->retired[c->nretired++] = c->fd;
			c->fd = nfd;
			desc(t, "CTX dup ctx%d -> fd %d", c->gen, nfd);
			/* nobody else is in it: the old numbers can go */
			if (c->users == 1) {
				for (int i = 0; i < c->nretired; i++)
					close(c->retired[i]);
				c->nretired = 0;
			}
		} else if (nfd >= 0) {
			close(nfd);
		}
		pthread_mutex_unlock(&W.lock);
	} else if (!(O.skip & SKIP_CLOSE)) {
		add(&S->xcalls[X_CTX_CLOSE], 1);
		pthread_mutex_lock(&W.lock);
		desc(t, "CTX close ctx%d (users %d, %d regs)", c->gen, c->users,
		     c->nregs);
		if (!c->closed)
			ctx_close_locked(c);
		pthread_mutex_unlock(&W.lock);
	}
	logcall(t, LONG_MIN);
	ctx_put(c);
}

/* ------------------------------------------------------------------ */
/* Other processes: fork, exec, SCM_RIGHTS                             */

static void reinit_after_fork(void)
{
	pthread_mutex_init(&W.lock, NULL);
	pthread_mutex_init(&print_lock, NULL);
	pthread_mutex_init(&pair_lock, NULL);
	for (int i = 0; i < NSLOT; i++)
		pthread_rwlock_init(&W.s[i].rw, NULL);
	in_child = true;
	log_fd = -1;
}

/* Every ioctl of the inherited context must be -EOWNERDEAD. */
static int check_not_owner(struct thr *t, int fd, const char *who)
{
	struct aem_info info = { .size = sizeof(info) };
	struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_SOFT };
	struct aem_wait w = { .size = sizeof(w), .max = 1, .dsize = 64 };
	struct aem_ctl c = { .size = sizeof(c), .id = 1, .op = AEM_CTL_CLEAN };
	struct aem_raise rr = { .size = sizeof(rr), .id = 1, .count = 1 };
	struct aem_signal s = { .size = sizeof(s), .signo = 40 };
	struct aem_ring_setup rs = { .size = sizeof(rs), .entries = 4 };
	struct aem_arena_setup as = { .size = sizeof(as), .bytes = PG };
	struct aem_arena_free af = { .size = sizeof(af) };
	struct aem_delivery dl;
	struct {
		unsigned long cmd;
		void *arg;
	} calls[] = {
		{ AEM_IOC_INFO, &info }, { AEM_IOC_REGISTER, &r },
		{ AEM_IOC_WAIT, &w }, { AEM_IOC_CTL, &c }, { AEM_IOC_RAISE, &rr },
		{ AEM_IOC_SET_SIGNAL, &s }, { AEM_IOC_RING_SETUP, &rs },
		{ AEM_IOC_ARENA_SETUP, &as }, { AEM_IOC_ARENA_FREE, &af },
		{ _IOC(_IOC_READ, AEM_IOC_MAGIC, 0x7f, 8), &info },
		{ AEM_IOC_WAIT, NULL },
	};
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int bad = 0;
	void *m;

	w.deliveries = (uint64_t)(uintptr_t)&dl;
	for (unsigned int i = 0; i < ARRAY_SIZE(calls); i++) {
		long ret = sys_ioctl(fd, calls[i].cmd, calls[i].arg);

		if (t)
			stat_call(t, _IOC_NR(calls[i].cmd) < OP_OTHER ?
				  (int)_IOC_NR(calls[i].cmd) : OP_OTHER, ret);
		if (ret != -EOWNERDEAD) {
			if (t)
				FIND(t, "%s: ioctl %#lx of another mm: %s, not EOWNERDEAD",
				     who, calls[i].cmd, en(ret));
			else
				outf(2, "aem_fuzz: FINDING (%s): ioctl %#lx: %s, not EOWNERDEAD\n",
				     who, calls[i].cmd, en(ret));
			bad++;
		}
	}
	m = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0);
	if (m != MAP_FAILED || errno != EOWNERDEAD) {
		if (t)
			FIND(t, "%s: mmap of a context of another process gave %s",
			     who, m == MAP_FAILED ? en(-errno) : "a mapping");
		else
			outf(2, "aem_fuzz: FINDING (%s): mmap gave %s, not EOWNERDEAD\n",
			     who, m == MAP_FAILED ? en(-errno) : "a mapping");
		bad++;
	}
	if (poll(&p, 1, 0) != 1 || !(p.revents & POLLERR)) {
		if (t)
			FIND(t, "%s: poll of a context of another process: revents %#x",
			     who, p.revents);
		else
			outf(2, "aem_fuzz: FINDING (%s): poll revents %#x, not POLLERR\n",
			     who, p.revents);
		bad++;
	}
	return bad;
}

static void thr_init(struct thr *t);
static void one_action(struct thr *t);

static void child_exec(int fd, const char *mode)
{
	char fds[16];
	char *const argv[] = { (char *)"aem_fuzz", (char *)"--exec-check", fds,
			       (char *)mode, NULL };

	snprintf(fds, sizeof(fds), "%d", fd);
	execv(exe_path, argv);
	_exit(4);
}

static int waiter_fd = -1;

static void *waiter(void *arg)
{
	static struct aem_delivery dl;
	struct aem_wait w = { .size = sizeof(w), .max = 1, .dsize = sizeof(dl),
			      .timeout_ns = -1 };

	(void)arg;
	w.deliveries = (uint64_t)(uintptr_t)&dl;
	ioctl(waiter_fd, AEM_IOC_WAIT, &w);
	return NULL;
}

/* A forked child's fuzz run of its own. */
static void child_fresh(uint64_t seed, int mode, int no)
{
	static struct thr ct;
	pthread_t th;

	memset(W.ctx, 0, sizeof(W.ctx));	/* the parent's stay open, unused */
	memset(W.ch, 0, sizeof(W.ch));
	ct.idx = MAXT + no % NCLOG;
	snprintf(ct.namebuf, sizeof(ct.namebuf), "C%d", no);
	ct.name = ct.namebuf;
	thr_init(&ct);
	rng_seed(&ct.rng, seed);
	ct.budget = 40 + seed % 300;
	W.nthreads = 1;
	W.tids[0] = ct.tid;
	while (ct.budget > 0 && !stop_all)
		one_action(&ct);
	if (mode == 2 && W.ctx[0]) {
		/* exit while another thread waits in the context */
		waiter_fd = W.ctx[0]->fd;
		if (!pthread_create(&th, NULL, waiter, NULL))
			sleep_us(20000);
	}
	if (mode == 1)
		sleep_us(10000000);	/* the parent kills us first */
	_exit(0);
}

static int child_slot(void)
{
	for (int i = 0; i < MAXCHILD; i++)
		if (!W.ch[i].pid)
			return i;
	return -1;
}

/* Fork with a consistent resource table (no slot being recycled). */
static pid_t fork_child(void)
{
	pid_t pid;

	for (int i = 0; i < NSLOT; i++)
		pthread_rwlock_rdlock(&W.s[i].rw);
	pthread_mutex_lock(&W.lock);
	pid = fork();
	if (pid == 0) {
		reinit_after_fork();
		return 0;
	}
	pthread_mutex_unlock(&W.lock);
	for (int i = 0; i < NSLOT; i++)
		pthread_rwlock_unlock(&W.s[i].rw);
	add(&S->xcalls[X_FORK], 1);
	return pid;
}

static void child_add(pid_t pid, int kind, unsigned int ms)
{
	int i;

	pthread_mutex_lock(&W.lock);
	i = child_slot();
	if (i >= 0) {
		W.ch[i].pid = pid;
		W.ch[i].kind = kind;
		W.ch[i].killed = false;
		W.ch[i].deadline = now_ns(CLOCK_MONOTONIC) + ms * 1000000ull;
	}
	pthread_mutex_unlock(&W.lock);
	if (i < 0) {	/* cannot happen: checked before forking */
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
}

enum {
	CK_INHERIT, CK_FRESH, CK_FRESH_KILLED, CK_FRESH_WAITER, CK_EXEC_INHERIT,
	CK_EXEC_OWN, CK_SCM, NCK
};

static const char *const ck_names[NCK] = {
	"inherit", "fresh", "fresh-killed", "fresh-waiter", "exec-inherit",
	"exec-own", "scm",
};

static void reap_children(struct thr *t, bool all)
{
	uint64_t now = now_ns(CLOCK_MONOTONIC);

	for (int i = 0; i < MAXCHILD; i++) {
		struct child *ch = &W.ch[i];
		int st;
		pid_t r;

		if (!ch->pid)
			continue;
		if ((all || now > ch->deadline) && !ch->killed) {
			kill(ch->pid, SIGKILL);
			ch->killed = true;
			add(&S->xcalls[X_CHILD_KILL], 1);
		}
		r = waitpid(ch->pid, &st, all ? 0 : WNOHANG);
		if (r != ch->pid)
			continue;
		if (WIFEXITED(st) && WEXITSTATUS(st) == 3 &&
		    (ch->kind == CK_EXEC_INHERIT || ch->kind == CK_EXEC_OWN))
			FIND(t, "exec'd child (%s) found a violation (see its output above)",
			     ck_names[ch->kind]);
		else if (WIFEXITED(st) && WEXITSTATUS(st) == 4)
			FIND(t, "child (%s) could not exec %s", ck_names[ch->kind], exe_path);
		else if (WIFSIGNALED(st) && !(ch->killed && WTERMSIG(st) == SIGKILL) &&
			 !(ch->kind == CK_EXEC_OWN && WTERMSIG(st) == SIGRTMIN + 1))
			/*
			 * exec-own: the doorbell set before exec() still rings
			 * and the new image has no handler (a context outlives
			 * exec() without O_CLOEXEC, like F_SETOWN): expected.
			 */
			FIND(t, "child (%s, pid %d) died of signal %d",
			     ck_names[ch->kind], ch->pid, WTERMSIG(st));
		ch->pid = 0;
	}
}

static void act_proc(struct thr *t, struct draw *d)
{
	unsigned int kind = U(d, 6);
	struct fctx *c = ctx_get(t, P(d));
	uint64_t seed = P(d);
	bool handshake = CH(d, 400);
	int gofd[2] = { -1, -1 }, cfd, no;
	unsigned int ms = 200 + U(d, 2000);
	pid_t pid;
	void *arena;
	size_t asz;

	if (!c)
		return;
	if ((kind == CK_EXEC_INHERIT || kind == CK_EXEC_OWN) && (O.skip & SKIP_EXEC))
		kind = CK_FRESH;
	pthread_mutex_lock(&W.lock);
	/* our own reference: another thread may close the context */
	cfd = c->closed ? -1 : fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
	if (child_slot() < 0 || cfd < 0) {
		pthread_mutex_unlock(&W.lock);
		if (cfd >= 0)
			close(cfd);
		ctx_put(c);
		return;
	}
	arena = c->arena;
	asz = c->arena_size;
	no = ++child_no;
	pthread_mutex_unlock(&W.lock);
	if (kind == CK_FRESH_KILLED)
		ms = 20 + U(d, 300);
	if (kind == CK_INHERIT && handshake && pipe2(gofd, O_CLOEXEC))
		handshake = false;
	dreset(t);
	desc(t, "FORK %s child C%d%s", ck_names[kind], no,
	     kind == CK_INHERIT && handshake ? " (parent closes first)" : "");
	pid = fork_child();
	if (pid == 0) {
		struct thr ct = { .idx = MAXT + no % NCLOG, .budget = 1 << 30 };
		int bad = 0;

		snprintf(ct.namebuf, sizeof(ct.namebuf), "C%d", no);
		ct.name = ct.namebuf;
		ct.log = &S->log[ct.idx];
		ct.tid = gettid();
		switch (kind) {
		case CK_INHERIT:
			if (handshake) {
				struct pollfd p = { .fd = gofd[0], .events = POLLIN };
				char b;

				close(gofd[1]);
				while (poll(&p, 1, 3000) < 0 && errno == EINTR)
					;
				if (read(gofd[0], &b, 1) < 0)
					b = 0;
			}
			bad = check_not_owner(&ct, cfd, "inherited fd");
			if (arena) {
				volatile uint8_t sum = 0;

				for (size_t i = 0; i < asz; i += PG)
					sum += ((uint8_t *)arena)[i];
			}
			_exit(bad ? 3 : 0);
		case CK_EXEC_INHERIT:
			child_exec(dup(cfd), "inherit");
			break;
		case CK_EXEC_OWN: {
			int fd = open_ctx_fd(false, false);
			struct aem_reg r = { .size = sizeof(r), .type = AEM_EV_TIMER };
			struct aem_ring_setup rs = { .size = sizeof(rs), .entries = 8 };
			struct aem_arena_setup as = { .size = sizeof(as), .bytes = 4 * PG };
			struct aem_signal s = { .size = sizeof(s), .signo = SIGRTMIN + 1 };

			if (fd < 0)
				_exit(0);
			r.arg.timer.period_ns = 1000000;
			ioctl(fd, AEM_IOC_REGISTER, &r);
			memset(&r, 0, sizeof(r));
			r.size = sizeof(r);
			r.type = AEM_EV_SOFT;
			ioctl(fd, AEM_IOC_REGISTER, &r);
			ioctl(fd, AEM_IOC_RING_SETUP, &rs);
			if (rs.mmap_size)
				mmap(NULL, rs.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			ioctl(fd, AEM_IOC_ARENA_SETUP, &as);
			ioctl(fd, AEM_IOC_SET_SIGNAL, &s);
			child_exec(fd, "own");
			break;
		}
		default:
			child_fresh(seed, kind == CK_FRESH_KILLED ? 1 :
				    kind == CK_FRESH_WAITER ? 2 : 0, no);
		}
		_exit(0);
	}
	if (kind == CK_INHERIT && handshake) {
		close(gofd[0]);
		close(cfd);	/* the child's copy is the last but the model's */
		cfd = -1;
		if (pid > 0) {
			pthread_mutex_lock(&W.lock);
			if (!c->closed && !(O.skip & SKIP_CLOSE)) {
				ctx_close_locked(c);
				add(&S->xcalls[X_CTX_CLOSE], 1);
			}
			pthread_mutex_unlock(&W.lock);
		}
		if (write(gofd[1], "g", 1) < 0)
			add(&S->xcalls[X_FORK], 0);
		close(gofd[1]);
	}
	close(cfd);
	if (pid > 0)
		child_add(pid, kind, kind == CK_FRESH_KILLED ? ms : 20000);
	logcall(t, pid < 0 ? -errno : 0);
	ctx_put(c);
}

/* The exec'd image: the inherited context must refuse us. */
static int exec_check(int argc, char **argv)
{
	int fd = argc > 2 ? atoi(argv[2]) : -1;
	int bad = check_not_owner(NULL, fd, argc > 3 ? argv[3] : "exec");

	close(fd);
	return bad ? 3 : 0;
}

static int send_fd(int sock, int fd, bool with_self)
{
	char b = 'S';
	struct iovec iov = { &b, 1 };
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = CMSG_SPACE((with_self ? 2 : 1) * sizeof(int)) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	int fds[2] = { fd, sock };

	memset(u.buf, 0, sizeof(u.buf));
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN((with_self ? 2 : 1) * sizeof(int));
	memcpy(CMSG_DATA(cm), fds, (with_self ? 2 : 1) * sizeof(int));
	return sendmsg(sock, &m, MSG_NOSIGNAL) == 1 ? 0 : -errno;
}

static int recv_fd(int sock)
{
	char b;
	struct iovec iov = { &b, 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *cm;
	int fd = -1;
	ssize_t n;

	do
		n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	cm = CMSG_FIRSTHDR(&m);
	if (cm && cm->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

static void act_scm(struct thr *t, struct draw *d)
{
	unsigned int kind = U(d, 4);
	struct fctx *c = ctx_get(t, P(d));
	struct timeval tv = { 3, 0 };
	int sp[2], nfd, cfd, no;
	long ret = 0;
	pid_t pid;

	if (!c)
		return;
	/* the cycles stay until we exit: a few hundred at most */
	if (kind == 3 && ((O.skip & SKIP_CYCLE) || S->xcalls[X_SCM_CYCLE] >= 256))
		kind = 1;
	if (kind == 2 && ((O.skip & SKIP_FORK) || in_child))
		kind = 0;
	dreset(t);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp)) {
		ctx_put(c);
		return;
	}
	pthread_mutex_lock(&W.lock);
	cfd = c->closed ? -1 : fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
	if (kind == 2 && child_slot() < 0)
		kind = 0;
	no = kind == 2 ? ++child_no : 0;
	pthread_mutex_unlock(&W.lock);
	if (cfd < 0) {
		close(sp[0]);
		close(sp[1]);
		ctx_put(c);
		return;
	}
	switch (kind) {
	case 0: {	/* to ourselves: the same context under another number */
		struct aem_info info = { .size = sizeof(info) };

		add(&S->xcalls[X_SCM_SELF], 1);
		ret = send_fd(sp[0], cfd, false);
		nfd = ret ? -1 : recv_fd(sp[1]);
		desc(t, "SCM self ctx%d -> fd %d", c->gen, nfd);
		if (nfd >= 0) {
			ret = sys_ioctl(nfd, AEM_IOC_INFO, &info);
			stat_call(t, OP_INFO, ret);
			pthread_mutex_lock(&W.lock);
			if (!c->closed && ret)
				FIND(t, "INFO through an SCM_RIGHTS copy of our own context: %s",
				     en(ret));
			pthread_mutex_unlock(&W.lock);
			close(nfd);
		}
		break;
	}
	case 1:		/* in flight when both ends close; or a unix GC cycle */
		add(&S->xcalls[X_SCM_INFLIGHT], 1);
		ret = send_fd(sp[0], cfd, CH(d, 500));
		desc(t, "SCM in-flight ctx%d", c->gen);
		break;
	case 2:		/* to a child, which must not use it, and back */
		add(&S->xcalls[X_SCM_CHILD], 1);
		desc(t, "SCM child C%d ctx%d", no, c->gen);
		pid = fork_child();
		if (pid == 0) {
			struct thr ct = { .idx = MAXT + no % NCLOG };
			int got, bad = 0;

			snprintf(ct.namebuf, sizeof(ct.namebuf), "C%d", no);
			ct.name = ct.namebuf;
			ct.log = &S->log[ct.idx];
			close(sp[0]);
			setsockopt(sp[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
			got = recv_fd(sp[1]);
			if (got >= 0) {
				bad = check_not_owner(&ct, got, "SCM_RIGHTS copy");
				send_fd(sp[1], got, false);
			}
			_exit(bad ? 3 : 0);
		}
		if (pid > 0) {
			child_add(pid, CK_SCM, 20000);
			setsockopt(sp[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
			ret = send_fd(sp[0], cfd, false);
			nfd = ret ? -1 : recv_fd(sp[0]);
			if (nfd >= 0) {
				struct aem_info info = { .size = sizeof(info) };

				ret = sys_ioctl(nfd, AEM_IOC_INFO, &info);
				stat_call(t, OP_INFO, ret);
				pthread_mutex_lock(&W.lock);
				if (!c->closed && ret)
					FIND(t, "INFO through the copy a child sent back: %s",
					     en(ret));
				pthread_mutex_unlock(&W.lock);
				close(nfd);
			}
		}
		break;
	default: {	/* a context into a socket it watches */
		/*
		 * A context of its own (small: each stays until this process
		 * exits, when its owner's mm goes), with a watch on sp[0], a
		 * timer and a soft event; its fd then lands in sp[0]'s queue
		 * and every fd is closed: a cycle the unix GC does not see.
		 */
		struct aem_reg r = { .size = sizeof(r) };
		struct aem_arena_setup as = { .size = sizeof(as), .bytes = PG };
		uint32_t types[] = { AEM_EV_SOCK, AEM_EV_CLOSE, AEM_EV_FD };
		int nc = open_ctx_fd(true, false);

		add(&S->xcalls[X_SCM_CYCLE], 1);
		r.type = types[U(d, 3)];
		r.arg.sock.fd = sp[0];
		r.arg.sock.events = r.type == AEM_EV_CLOSE ? 0 : EPOLLIN;
		r.user_data = P(d);
		ret = nc < 0 ? -errno : sys_ioctl(nc, AEM_IOC_REGISTER, &r);
		if (nc >= 0)
			stat_call(t, OP_REGISTER, ret);
		desc(t, "SCM cycle fd=%d type=%u reg=%ld", nc, r.type, ret);
		if (ret <= 0 && ret != -ENOMEM && ret != -EMFILE)
			FIND(t, "REGISTER type %u on a unix socket: %s", r.type, en(ret));
		if (ret > 0) {
			memset(&r, 0, sizeof(r));
			r.size = sizeof(r);
			r.type = AEM_EV_TIMER;
			r.arg.timer.value_ns = 1000000000;
			r.arg.timer.period_ns = 1000000000;
			stat_call(t, OP_REGISTER, sys_ioctl(nc, AEM_IOC_REGISTER, &r));
			r.type = AEM_EV_SOFT;
			memset(&r.arg, 0, sizeof(r.arg));
			stat_call(t, OP_REGISTER, sys_ioctl(nc, AEM_IOC_REGISTER, &r));
			if (CH(d, 300)) {
				ret = sys_ioctl(nc, AEM_IOC_ARENA_SETUP, &as);
				stat_call(t, OP_ARENA_SETUP, ret);
			}
			ret = send_fd(sp[1], nc, false);	/* lands in sp[0] */
		}
		if (nc >= 0)
			close(nc);
		break;
	}
	}
	close(sp[0]);
	close(sp[1]);
	if (cfd >= 0)
		close(cfd);
	logcall(t, ret);
	ctx_put(c);
}

/* ------------------------------------------------------------------ */
/* The loop                                                            */

enum {
	A_REGISTER, A_CTL, A_WAIT, A_RAISE, A_SIGNAL, A_RING, A_ARENA, A_INFO,
	A_BADIOC, A_STIM, A_POLL, A_MMAP, A_CTXLIFE, A_PROC, A_SCM, NA
};

static const unsigned int act_w[NA] = {	/* per mille */
	[A_REGISTER] = 220, [A_CTL] = 220, [A_WAIT] = 140, [A_RAISE] = 90,
	[A_SIGNAL] = 20, [A_RING] = 50, [A_ARENA] = 40, [A_INFO] = 20,
	[A_BADIOC] = 20, [A_STIM] = 114, [A_POLL] = 20, [A_MMAP] = 20,
	[A_CTXLIFE] = 8, [A_PROC] = 4, [A_SCM] = 4,
};

static void one_action(struct thr *t)
{
	unsigned int a = rnd(&t->rng) % 1000, k;
	struct draw d = { rnd(&t->rng) };

	for (k = 0; k < NA && a >= act_w[k]; k++)
		a -= act_w[k];
	t->seq++;
	if (in_child && (k == A_CTXLIFE || k == A_PROC || k == A_SCM))
		k = A_WAIT;
	if ((k == A_PROC && (O.skip & SKIP_FORK)) || (k == A_SCM && (O.skip & SKIP_SCM)))
		k = A_POLL;
	switch (k) {
	case A_REGISTER:
		act_register(t, &d);
		break;
	case A_CTL:
		act_ctl(t, &d);
		break;
	case A_WAIT:
		act_wait(t, &d);
		break;
	case A_RAISE:
		act_raise(t, &d);
		break;
	case A_SIGNAL:
		act_signal(t, &d);
		break;
	case A_RING:
		act_ring(t, &d);
		break;
	case A_ARENA:
		act_arena(t, &d);
		break;
	case A_INFO:
		act_info(t, &d);
		break;
	case A_BADIOC:
		act_badioc(t, &d);
		break;
	case A_STIM:
		act_stim(t, &d);
		break;
	case A_POLL:
		act_poll(t, &d);
		break;
	case A_MMAP:
		act_mmap(t, &d);
		break;
	case A_CTXLIFE:
		act_ctxlife(t, &d);
		break;
	case A_PROC:
		act_proc(t, &d);
		break;
	default:
		act_scm(t, &d);
		break;
	}
	if (bad_doorbell_code) {
		FIND(t, "an RT signal arrived with si_code %d, not SI_KERNEL",
		     (int)bad_doorbell_code);
		bad_doorbell_code = 0;
	}
}

static long max_actions;	/* --actions: per thread, for reproduction */
static bool uid_given;
static long max_findings = 50;

static void thr_init(struct thr *t)
{
	t->scr = mmap(NULL, SCR_PAGES * PG, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	t->dbuf = mmap(NULL, DBUF + PG, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t->scr == MAP_FAILED || t->dbuf == MAP_FAILED)
		abort();
	mprotect(SCR_RW(t, 0) + 2 * PG, PG, PROT_NONE);
	mprotect(SCR_RW(t, 1) + 2 * PG, PG, PROT_NONE);
	mprotect(t->dbuf + DBUF, PG, PROT_NONE);
	t->tid = gettid();
	t->log = &S->log[t->idx];
	t->log->n = 0;
	wd_init(t);
}

static void *thr_main(void *arg)
{
	struct thr *t = arg;

	thr_init(t);
	W.tids[t->idx] = t->tid;
	while (!stop_all) {
		if (__atomic_load_n(&S->ioctls, __ATOMIC_RELAXED) >= (unsigned long)O.calls)
			break;
		if (max_actions && t->seq >= (unsigned long)max_actions)
			break;
		if (O.seconds > 0 &&
		    now_ns(CLOCK_MONOTONIC) - t_start > O.seconds * 1e9)
			break;
		if (S->findings >= (unsigned long)max_findings)
			break;
		one_action(t);
		if (t->idx == 0) {
			pthread_mutex_lock(&W.lock);
			reap_children(t, false);
			pthread_mutex_unlock(&W.lock);
		}
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Setup, the leak check, the summary                                 */

static void help_exit(int code)
{
	fprintf(code ? stderr : stdout,
		"usage: aem_fuzz [--seed N] [--calls N] [--seconds S] [--threads N]\n"
		"                [--uid U] [--log FILE] [--ring-file FILE] [--last N]\n"
		"                [--actions N] [--max-findings N]\n"
		"                [--skip fork,exec,scm,cycle,close,signal,wait-fault] [-v]\n"
		"       aem_fuzz --replay LOGFILE     rerun the run a --log file recorded\n"
		"       aem_fuzz --dump-ring FILE     print the calls a --ring-file kept\n"
		"  --calls N      /dev/aem ioctls of this process (default 100000)\n"
		"  --seconds S    stop after S seconds (default: no time bound)\n"
		"  --threads N    threads sharing the contexts (default 1: deterministic)\n"
		"  --uid U        run as uid/gid U after setup (root: default 1000; -1: stay)\n"
		"  --actions N    stop each thread after N actions (a finding's 'call' number)\n"
		"  --log FILE     every call, with its arguments and result\n"
		"  --ring-file F  keep the last calls of each thread in F (survives a crash)\n"
		"  --last N       calls of each thread printed with a finding (default 32)\n"
		"  --max-findings N  stop after N findings (default 50)\n"
		"  --skip LIST    leave out: forked children, exec, SCM_RIGHTS, contexts passed\n"
		"                 into sockets they watch, closing contexts, doorbell signals,\n"
		"                 waits into memory that faults\n"
		"Exit: 0 clean, 1 finding(s), 2 usage or setup error.\n");
	exit(code);
}

static unsigned int parse_skip(const char *s)
{
	unsigned int m = 0;
	char buf[256], *tok, *save;

	snprintf(buf, sizeof(buf), "%s", s);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		unsigned int i;

		for (i = 0; i < ARRAY_SIZE(skip_names); i++)
			if (!strcmp(tok, skip_names[i]))
				break;
		if (i == ARRAY_SIZE(skip_names)) {
			fprintf(stderr, "aem_fuzz: unknown --skip item '%s'\n", tok);
			exit(2);
		}
		m |= 1u << i;
	}
	return m;
}

static void skip_str(char *b, size_t n)
{
	size_t l = 0;

	b[0] = 0;
	for (unsigned int i = 0; i < ARRAY_SIZE(skip_names); i++)
		if (O.skip & (1u << i))
			l += snprintf(b + l, n - l, "%s%s", l ? "," : "", skip_names[i]);
}

static int dump_ring(const char *path)
{
	int fd = open(path, O_RDONLY);
	struct shared *s;

	if (fd < 0) {
		perror(path);
		return 2;
	}
	s = mmap(NULL, sizeof(*s), PROT_READ, MAP_SHARED, fd, 0);
	if (s == MAP_FAILED || s->magic != SHARED_MAGIC) {
		fprintf(stderr, "aem_fuzz: %s is not a --ring-file\n", path);
		return 2;
	}
	S = s;
	static struct obuf o;

	printf("%s\n", s->hdr);
	fflush(stdout);
	dump_all_logs(&o, LOGN, -1);
	out(1, o.b, o.n);
	return 0;
}

/* --replay: take the options from the header line of a --log file. */
static void replay(const char *path)
{
	char line[512], *p;
	FILE *f = fopen(path, "r");

	if (!f || !fgets(line, sizeof(line), f) || strncmp(line, "# aem_fuzz ", 11)) {
		fprintf(stderr, "aem_fuzz: %s: no '# aem_fuzz' header line\n", path);
		exit(2);
	}
	fclose(f);
	line[strcspn(line, "\n")] = 0;
	for (p = strtok(line + 11, " "); p; p = strtok(NULL, " ")) {
		if (!strncmp(p, "seed=", 5))
			O.seed = strtoull(p + 5, NULL, 0);
		else if (!strncmp(p, "threads=", 8))
			O.threads = atoi(p + 8);
		else if (!strncmp(p, "calls=", 6))
			O.calls = atol(p + 6);
		else if (!strncmp(p, "actions=", 8))
			max_actions = atol(p + 8);
		else if (!strncmp(p, "seconds=", 8))
			O.seconds = atof(p + 8);
		else if (!strncmp(p, "uid=", 4))
			O.uid = atoi(p + 4), uid_given = true;
		else if (!strncmp(p, "skip=", 5) && p[5])
			O.skip = parse_skip(p + 5);
	}
	O.verbose = true;
}

static int leak_check(struct thr *t, int uid, const char *when)
{
	uint64_t until = now_ns(CLOCK_MONOTONIC) + 30ull * 1000000000;
	long regs = -1, own = -1;
	int fd = open_ctx_fd(true, false), r = -1;

	if (fd < 0) {
		FIND(t, "open(/dev/aem) for the leak check: %s", en(-errno));
		return -1;
	}
	/* deferred work (reaping, delayed fput, unix GC) settles: poll it */
	while (now_ns(CLOCK_MONOTONIC) < until) {
		r = fdinfo_field(fd, "aem-user-regs:\t", &regs);
		if (r || !regs)
			break;
		sleep_us(20000);
	}
	fdinfo_field(fd, "aem-regs:\t", &own);
	close(fd);
	if (r)
		FIND(t, "leak check: cannot read aem-user-regs from fdinfo: %s", en(r));
	else if (regs || own)
		FIND(t, "leak: %ld registrations of uid %d %s, all closed and reaped (fresh: %ld)",
		     regs, uid, when, own);
	return r ? -1 : (int)regs;
}

static void summary(double secs, long leak)
{
	unsigned long total = 0, sum[NOPS];
	char line[8192];
	size_t l = 0;

	for (int o = 0; o < NOPS; o++) {
		sum[o] = 0;
		for (int e = 0; e < NERR; e++)
			sum[o] += S->calls[o][e];
		total += sum[o];
	}
	l += snprintf(line + l, sizeof(line) - l,
		      "aem_fuzz: seed=%llu threads=%d calls=%lu (main %lu, children %lu)",
		      (unsigned long long)O.seed, O.threads, total, S->ioctls,
		      S->child_ioctls);
	l += snprintf(line + l, sizeof(line) - l,
		      " seconds=%.1f calls/s=%.0f findings=%lu leak=%ld |", secs,
		      secs > 0 ? S->ioctls / secs : 0.0, S->findings, leak);
	for (int o = 0; o < NOPS; o++) {
		if (!sum[o])
			continue;
		l += snprintf(line + l, sizeof(line) - l, " %s %lu (", op_names[o], sum[o]);
		for (int e = 0, first = 1; e < NERR; e++) {
			if (!S->calls[o][e])
				continue;
			l += snprintf(line + l, sizeof(line) - l, "%s%s %lu",
				      first ? "" : " ", e ? en(-e) : "ok", S->calls[o][e]);
			first = 0;
		}
		l += snprintf(line + l, sizeof(line) - l, ");");
	}
	l += snprintf(line + l, sizeof(line) - l, " other:");
	for (int x = 0; x < NX; x++)
		if (S->xcalls[x])
			l += snprintf(line + l, sizeof(line) - l, " %s %lu", x_names[x],
				      S->xcalls[x]);
	printf("%s\n", line);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static struct thr threads[MAXT];
	pthread_t th[MAXT];
	bool seed_given = false;
	int fd, i, st = 0;
	pid_t runner;
	long leak;
	double secs;
	char skip[128];

	if (argc >= 2 && !strcmp(argv[1], "--exec-check"))
		return exec_check(argc, argv);
	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

#define NEEDV() do { if (!v) help_exit(2); i++; } while (0)
		if (!strcmp(a, "--seed")) {
			NEEDV();
			O.seed = strtoull(v, NULL, 0);
			seed_given = true;
		} else if (!strcmp(a, "--calls")) {
			NEEDV();
			O.calls = atol(v);
		} else if (!strcmp(a, "--seconds")) {
			NEEDV();
			O.seconds = atof(v);
		} else if (!strcmp(a, "--threads")) {
			NEEDV();
			O.threads = atoi(v);
		} else if (!strcmp(a, "--uid")) {
			NEEDV();
			O.uid = atoi(v);
			uid_given = true;
		} else if (!strcmp(a, "--log")) {
			NEEDV();
			O.log_path = v;
		} else if (!strcmp(a, "--ring-file")) {
			NEEDV();
			O.ring_path = v;
		} else if (!strcmp(a, "--last")) {
			NEEDV();
			O.last = atoi(v);
		} else if (!strcmp(a, "--actions")) {
			NEEDV();
			max_actions = atol(v);
		} else if (!strcmp(a, "--max-findings")) {
			NEEDV();
			max_findings = atol(v);
		} else if (!strcmp(a, "--skip")) {
			NEEDV();
			O.skip |= parse_skip(v);
		} else if (!strcmp(a, "--replay")) {
			NEEDV();
			replay(v);
			seed_given = true;
		} else if (!strcmp(a, "--dump-ring")) {
			NEEDV();
			return dump_ring(v);
		} else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
			O.verbose = true;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			help_exit(0);
		} else {
			help_exit(2);
		}
	}
	if (O.threads < 1 || O.threads > MAXT || O.calls < 0 || O.last < 1)
		help_exit(2);
	if (O.last > LOGN)
		O.last = LOGN;
	if (!seed_given)
		O.seed = now_ns(CLOCK_REALTIME) ^ ((uint64_t)getpid() << 40);
	/* as root: uid 1000 unless told (--uid -1 stays root) */
	if (!uid_given && geteuid() == 0)
		O.uid = 1000;
	if (readlink("/proc/self/exe", exe_path, sizeof(exe_path) - 1) < 0)
		snprintf(exe_path, sizeof(exe_path), "%s", argv[0]);

	if (O.ring_path) {
		int rf = open(O.ring_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

		if (rf < 0 || ftruncate(rf, sizeof(*S))) {
			perror(O.ring_path);
			return 2;
		}
		S = mmap(NULL, sizeof(*S), PROT_READ | PROT_WRITE, MAP_SHARED, rf, 0);
		close(rf);
	} else {
		S = mmap(NULL, sizeof(*S), PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	}
	if (S == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	S->magic = SHARED_MAGIC;
	S->nthreads = O.threads;
	skip_str(skip, sizeof(skip));
	snprintf(S->hdr, sizeof(S->hdr),
		 "# aem_fuzz seed=%llu threads=%d calls=%ld actions=%ld seconds=%g uid=%d skip=%s",
		 (unsigned long long)O.seed, O.threads, O.calls, max_actions,
		 O.seconds, O.uid, skip);
	if (O.log_path) {
		log_fd = open(O.log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND |
			      O_CLOEXEC, 0644);
		if (log_fd < 0) {
			perror(O.log_path);
			return 2;
		}
		outf(log_fd, "%s\n", S->hdr);
	}
	install_signals();
	{
		struct rlimit rl;

		if (!getrlimit(RLIMIT_NOFILE, &rl)) {
			if (geteuid() == 0 && rl.rlim_max < 4096)
				rl.rlim_max = 4096;
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	if (O.uid >= 0 && (uid_t)O.uid != geteuid()) {
		if (geteuid() != 0) {
			fprintf(stderr, "aem_fuzz: --uid %d needs root\n", O.uid);
			return 2;
		}
		if (setgroups(0, NULL) || setresgid(O.uid, O.uid, O.uid) ||
		    setresuid(O.uid, O.uid, O.uid)) {
			perror("aem_fuzz: dropping privileges");
			return 2;
		}
		/* keep /proc/self/fdinfo readable after the change of uid */
		prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
	}

	pthread_mutex_init(&W.lock, NULL);
	W.placeholder = open("/dev/null", O_RDONLY | O_CLOEXEC);
	W.pairl = tcp_listener(&W.pairport, false);
	fd = open_ctx_fd(true, false);
	if (fd < 0 || W.pairl < 0 || W.placeholder < 0) {
		fprintf(stderr, "aem_fuzz: setup: /dev/aem: %s (listener %d)\n",
			strerror(errno), W.pairl);
		return 2;
	}
	W.info.size = sizeof(W.info);
	if (ioctl(fd, AEM_IOC_INFO, &W.info)) {
		perror("aem_fuzz: AEM_IOC_INFO");
		return 2;
	}
	close(fd);
	slots_init();
	W.nthreads = O.threads;
	printf("%s\n", S->hdr);
	printf("aem_fuzz: seed %llu (uid %d, families %#x, min period %llu ns, limits %u %u)\n",
	       (unsigned long long)O.seed, (int)geteuid(), W.info.types,
	       (unsigned long long)W.info.min_timer_period_ns, W.info.max_regs,
	       W.info.max_pending);
	fflush(stdout);

	/*
	 * The run happens in a child (the runner): the uid's count is then
	 * checked once more after it exited, since a context may keep
	 * registrations until its owner's mm goes (one passed into a socket
	 * it watches, for instance).
	 */
	t_start = now_ns(CLOCK_MONOTONIC);
	runner = fork();
	if (runner < 0) {
		perror("aem_fuzz: fork");
		return 2;
	}
	if (runner == 0) {
		for (i = 0; i < O.threads; i++) {
			threads[i].idx = i;
			snprintf(threads[i].namebuf, sizeof(threads[i].namebuf), "T%d", i);
			threads[i].name = threads[i].namebuf;
			rng_seed(&threads[i].rng, O.seed ^ (0x9e3779b97f4a7c15ull * (i + 1)));
			threads[i].budget = -1;
		}
		W.ctx[0] = ctx_new(open_ctx_fd(true, false), false);
		if (O.threads == 1) {
			thr_main(&threads[0]);
		} else {
			for (i = 0; i < O.threads; i++)
				pthread_create(&th[i], NULL, thr_main, &threads[i]);
			for (i = 0; i < O.threads; i++)
				pthread_join(th[i], NULL);
		}
		S->seconds = (now_ns(CLOCK_MONOTONIC) - t_start) / 1e9;

		/* everything goes: contexts, resources, children */
		pthread_mutex_lock(&W.lock);
		for (i = 0; i < NCTX; i++) {
			struct fctx *c = W.ctx[i];

			if (c) {
				ctx_close_locked(c);
				if (!c->users)
					ctx_finalize(c);
			}
		}
		for (i = 0; i < NSLOT; i++)
			slot_close(i);
		reap_children(&threads[0], true);
		pthread_mutex_unlock(&W.lock);
		close(W.pairl);
		/*
		 * Contexts passed into sockets they watch keep their
		 * registrations while we live (README: the owner's exit ends
		 * them): then only the check after exit counts.
		 */
		S->leak_live = S->xcalls[X_SCM_CYCLE] ? 0 :
			       leak_check(&threads[0], (int)geteuid(), "while the process lives");
		if (log_fd >= 0)
			outf(log_fd, "# end of run: %lu findings\n", S->findings);
		_exit(0);
	}
	close(W.pairl);
	for (i = 0; i < NSLOT; i++)
		slot_close(i);
	while (waitpid(runner, &st, 0) < 0 && errno == EINTR)
		;
	secs = S->seconds ? S->seconds : (now_ns(CLOCK_MONOTONIC) - t_start) / 1e9;
	memset(&threads[0], 0, sizeof(threads[0]));
	threads[0].name = "main";
	threads[0].log = &S->log[0];
	if (WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st)))
		FIND(NULL, "the fuzzing process %s %d",
		     WIFSIGNALED(st) ? "died of signal" : "exited with",
		     WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	leak = leak_check(&threads[0], (int)geteuid(), "after the process exited");
	summary(secs, leak < 0 || S->leak_live < 0 ? -1 : leak + S->leak_live);
	if (log_fd >= 0)
		outf(log_fd, "# end: %lu findings\n", S->findings);
	return S->findings ? 1 : 0;
}
