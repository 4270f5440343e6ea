// SPDX-License-Identifier: GPL-2.0
/*
 * AEM socket events: AEM_EV_ACCEPT, AEM_EV_READ, AEM_EV_CLOSE, AEM_EV_SK
 * (TCP state transitions) and AEM_EV_SOCK (poll-mask state), five families
 * in one module. The event data is complete when user space sees it:
 * the accepted connection is an fd of the owner, the bytes read are in
 * the context's data arena.
 *
 * Mechanism (see notes/kernel-module.md, §2 and §3): wait-queue hooking
 * only, like aem_fd.c. No socket callback is replaced, so accepted
 * children inherit nothing of ours, other users of sk_data_ready (kTLS,
 * sockmap) are not disturbed, and unloading needs no callback restore.
 *
 * - setup() takes a reference on the socket's file, hooks a wait entry
 *   embedded in the registration into the socket's wait queue (its
 *   ->poll() names one head) and asks for a first check.
 * - The wake function runs under the head's lock in any context; it drops
 *   wakeups whose key has none of the bits of interest and queues the
 *   registration for a re-check in the owner's context
 *   (aem_recheck_later()). State changes wake with no key (sock_def_wakeup)
 *   and always pass.
 * - recheck() runs in the owner's context (AEM_IOC_WAIT, poll() of the
 *   context), with ctx->mutex held, and does the job there: accept() and
 *   fd_install() into the owner's fd table (it must be the owner's),
 *   recvmsg() into the arena, the TCP state. For READ the wake function
 *   also queues a reactive job (an embedded work item, on a WQ_HIGHPRI
 *   workqueue, with the registering task's credentials) that reads what
 *   arrived at once, so the next chunk is in the arena while the handler
 *   of the previous one still runs (the arena is kernel memory: no need
 *   for the owner's mm). It is also run after each delivery (these
 *   families are level triggered), so ACCEPT, READ and SK make exactly one
 *   delivery per accepted connection, chunk or transition: they only work
 *   while the registration has nothing pending (aem_reg_idle()), which
 *   also gives back-pressure: the socket keeps what user space has not
 *   taken yet.
 * - Errors met on the way (-ECONNRESET, -EMFILE, -ENOMEM for the arena)
 *   are delivered in aem_delivery.data[1]; they are not final. After
 *   -ENOMEM a reader waits for a chunk to be freed (aem_arena_alloc()'s
 *   waiters) before it tries again, and reports -ENOMEM once per shortage.
 *   Any other read error ends the stream: end of file follows it. An
 *   accept out of fds (-EMFILE, -ENFILE) is tried again at the next
 *   incoming connection, not after every delivery.
 *
 * Activation never allocates; the allocations (the accepted socket, its
 * file and fd, arena chunks) happen in recheck(), in process context, and
 * have fault-injection sites: /sys/kernel/debug/aem_sock/fail_*.
 *
 * Like the fd family, a registration holds a reference on the file:
 * close() of the application's fd does not end the watch and does not
 * close the connection while it is registered; clean the registration
 * (the library does when it sees the close) or close the context.
 * AEM_EV_CLOSE reports the connection's end: the peer's close or reset,
 * or the owner's shutdown().
 *
 * TCP states come from the inet_sock_set_state tracepoint, which reports
 * every transition with its old and new state (notes §3): the module
 * finds it with for_each_kernel_tracepoint() (its symbol is not exported)
 * and attaches one probe for all SK registrations, which are in a hash by
 * struct sock (aem_sk_lock, irq-safe: the probe runs in softirq too). The
 * probe records the transition in the registration's embedded ring (no
 * allocation; a full ring merges the newest into its last entry) and asks
 * for a re-check, which delivers them one by one, in order. Without the
 * tracepoint (a kernel built without it) the state is sampled on each
 * wakeup of the socket's wait queue instead: every transition of a
 * connection's life wakes it, but two in a row before the owner runs are
 * reported as one (old, new) pair. /sys/kernel/debug/aem_sock/sk_tracepoint
 * says which one runs.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/debugfs.h>
#include <linux/fdtable.h>
#include <linux/file.h>
#include <linux/hashtable.h>
#include <linux/module.h>
#include <linux/net.h>
#include <linux/poll.h>
#include <linux/cred.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include <linux/spinlock.h>
#include <linux/tracepoint.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <net/af_unix.h>
#include <net/sock.h>
#include <net/tcp.h>
#include <net/tcp_states.h>

#include "aem_family.h"
#include "aem_fault.h"

#define AEM_SOCK_VERSION	1
#define AEM_SOCK_READ_MAX	(256 * 1024)	/* one chunk at most */
#define AEM_SOCK_READ_DEFAULT	4096		/* when the queue size is unknown */

#define AEM_SOCK_EVENTS	(EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLERR |	\
			 EPOLLHUP | EPOLLRDNORM | EPOLLRDBAND |		\
			 EPOLLWRNORM | EPOLLWRBAND | EPOLLMSG | EPOLLRDHUP)
#define AEM_SOCK_ALWAYS	(EPOLLERR | EPOLLHUP)
#define AEM_SOCK_CLOSED	(EPOLLRDHUP | EPOLLHUP)

static struct aem_fault_attr aem_sock_fail_accept = AEM_FAULT_ATTR(fail_accept);
static struct aem_fault_attr aem_sock_fail_read = AEM_FAULT_ATTR(fail_read);
static struct dentry *aem_sock_debugfs;
static struct workqueue_struct *aem_sock_wq;

#define AEM_SK_RING	16

/* SK registrations by struct sock, for the tracepoint probe. */
static DEFINE_SPINLOCK(aem_sk_lock);
static DEFINE_HASHTABLE(aem_sk_hash, 6);
static atomic_t aem_sk_nwatch = ATOMIC_INIT(0);
static struct tracepoint *aem_sk_tp;
static u32 aem_sk_tp_on;	/* debugfs: the tracepoint serves SK */

/**
 * struct aem_sock - family state of a socket registration
 * @reg:      the registration
 * @type:     AEM_EV_*
 * @file:     the socket's file (referenced)
 * @sock:     its socket
 * @pt:       our poll table (queue proc aem_sock_queue_proc)
 * @wait:     our entry in @head
 * @head:     the hooked head, NULL once unhooked (POLLFREE: written last by
 *            the wake function, with release semantics)
 * @error:    the queue proc saw a second head (setup only)
 * @mask:     poll bits that wake us (READ_ONCE: read by the wake function)
 * @states:   SK: TCP states of interest (bit per state)
 * @tcp_state: SK: the state last seen
 * @done:     READ: end of file delivered; CLOSE: the close delivered
 * @nomem:    READ: -ENOMEM reported, waiting for arena room
 * @eof_next: READ: an error ended the stream: end of file comes next
 * @backoff:  ACCEPT: out of fds, retry on the next wakeup only
 * @arrivals: SOCK: wakeups since the last re-check
 * @read_lock: READ: serialises reading (the job and the owner's re-check)
 * @read_work: READ: the reactive job: reads what arrived, in a kworker
 * @cred:     READ: the registering task's credentials, for the job
 * @files:    ACCEPT: the owner's fd table at setup (compared, never used)
 * @acc_fd:   ACCEPT: the fd of the last connection handed out, -1: none
 * @acc_file: ACCEPT: its file (compared, never used)
 * @tp_node:  SK: in aem_sk_hash (aem_sk_lock)
 * @tp_sk:    SK: the sock, the hash key
 * @tr:       SK: transitions (old, new) from the tracepoint, a ring
 *            (aem_sk_lock)
 * @tr_head:  SK: first entry of @tr
 * @tr_n:     SK: entries in @tr
 */
struct aem_sock {
	struct aem_event *reg;
	u32 type;
	struct file *file;
	struct socket *sock;
	poll_table pt;
	wait_queue_entry_t wait;
	wait_queue_head_t *head;
	int error;
	__poll_t mask;
	u32 states;
	int tcp_state;
	bool done;
	bool nomem;
	bool eof_next;
	bool backoff;
	atomic_t arrivals;
	struct mutex read_lock;		/* see above */
	struct work_struct read_work;
	const struct cred *cred;
	struct files_struct *files;
	int acc_fd;
	struct file *acc_file;
	struct hlist_node tp_node;
	struct sock *tp_sk;
	u8 tr[AEM_SK_RING][2];
	u8 tr_head;
	u8 tr_n;
};

/* inet_sock_set_state: any context, any TCP socket of the system. */
static void aem_sk_probe(void *data, const struct sock *sk, const int old,
			 const int now)
{
	struct aem_sock *w;
	unsigned long flags;
	unsigned int i;

	if (!atomic_read(&aem_sk_nwatch))
		return;
	spin_lock_irqsave(&aem_sk_lock, flags);
	hash_for_each_possible(aem_sk_hash, w, tp_node, (unsigned long)sk) {
		if (w->tp_sk != sk)
			continue;
		if (w->tr_n == AEM_SK_RING) {
			/* Full: the newest state ends the last transition. */
			i = (w->tr_head + w->tr_n - 1) % AEM_SK_RING;
		} else {
			i = (w->tr_head + w->tr_n++) % AEM_SK_RING;
			w->tr[i][0] = old;
		}
		w->tr[i][1] = now;
		aem_recheck_later(w->reg);
	}
	spin_unlock_irqrestore(&aem_sk_lock, flags);
}

/* The oldest recorded transition into @old, @now; false if none. */
static bool aem_sk_pop(struct aem_sock *w, int *old, int *now)
{
	unsigned long flags;
	bool ret = false;

	spin_lock_irqsave(&aem_sk_lock, flags);
	if (w->tr_n) {
		*old = w->tr[w->tr_head][0];
		*now = w->tr[w->tr_head][1];
		w->tr_head = (w->tr_head + 1) % AEM_SK_RING;
		w->tr_n--;
		ret = true;
	}
	spin_unlock_irqrestore(&aem_sk_lock, flags);
	return ret;
}

static void aem_sk_watch(struct aem_sock *w)
{
	unsigned long flags;

	w->tp_sk = w->sock->sk;
	spin_lock_irqsave(&aem_sk_lock, flags);
	hash_add(aem_sk_hash, &w->tp_node, (unsigned long)w->tp_sk);
	atomic_inc(&aem_sk_nwatch);
	spin_unlock_irqrestore(&aem_sk_lock, flags);
}

/* After it returns the probe no longer touches @w. */
static void aem_sk_unwatch(struct aem_sock *w)
{
	unsigned long flags;

	spin_lock_irqsave(&aem_sk_lock, flags);
	hash_del(&w->tp_node);
	atomic_dec(&aem_sk_nwatch);
	spin_unlock_irqrestore(&aem_sk_lock, flags);
}

static int aem_sock_wake(struct wait_queue_entry *wait, unsigned int mode,
			 int sync, void *key)
{
	struct aem_sock *w = container_of(wait, struct aem_sock, wait);
	__poll_t events = key_to_poll(key);

	if (unlikely(events & POLLFREE)) {
		/* Not seen on sockets; handled as aem_fd.c does. */
		aem_recheck_later(w->reg);
		list_del_init(&wait->entry);
		/* Last access; pairs with the acquire in aem_sock_unhook(). */
		smp_store_release(&w->head, NULL);
		return 0;
	}
	if (events && !(events & READ_ONCE(w->mask)))
		return 0;
	atomic_inc(&w->arrivals);
	if (w->type == AEM_EV_READ)
		queue_work(aem_sock_wq, &w->read_work);	/* no allocation */
	else
		aem_recheck_later(w->reg);
	return 0;
}

static void aem_sock_queue_proc(struct file *file, wait_queue_head_t *head,
				poll_table *pt)
{
	struct aem_sock *w = container_of(pt, struct aem_sock, pt);

	if (w->head == head)
		return;
	if (w->head) {
		w->error = -EINVAL;	/* sockets have one head */
		return;
	}
	w->head = head;
	init_waitqueue_func_entry(&w->wait, aem_sock_wake);
	add_wait_queue(head, &w->wait);
}

static void aem_sock_unhook(struct aem_sock *w)
{
	wait_queue_head_t *head;

	rcu_read_lock();
	/* Pairs with the store-release in aem_sock_wake(). */
	head = smp_load_acquire(&w->head);
	if (head)
		remove_wait_queue(head, &w->wait);
	rcu_read_unlock();
}

static bool aem_sock_is_tcp(struct sock *sk)
{
	return (sk->sk_family == AF_INET || sk->sk_family == AF_INET6) &&
	       sk->sk_type == SOCK_STREAM && sk->sk_protocol == IPPROTO_TCP;
}

static int aem_sock_check_arg(struct aem_sock *w, u32 flags, u32 events)
{
	struct sock *sk = w->sock->sk;

	if (flags & (AEM_ABSTIME | AEM_REALTIME))
		return -EINVAL;
	if (w->type != AEM_EV_SOCK && (flags & (AEM_EDGE | AEM_LEVEL)))
		return -EINVAL;
	switch (w->type) {
	case AEM_EV_ACCEPT:
		if (events)
			return -EINVAL;
		/* A listening stream socket (TCP or unix). */
		if (READ_ONCE(sk->sk_state) != TCP_LISTEN ||
		    !w->sock->ops->accept)
			return -EINVAL;
		w->mask = EPOLLIN | EPOLLRDNORM | AEM_SOCK_ALWAYS;
		break;
	case AEM_EV_READ:
		if (events)
			return -EINVAL;
		if (!aem_reg_has_arena(w->reg))
			return -ENXIO;
		w->mask = EPOLLIN | EPOLLRDNORM | EPOLLRDHUP | AEM_SOCK_ALWAYS;
		break;
	case AEM_EV_CLOSE:
		if (events)
			return -EINVAL;
		w->mask = EPOLLIN | EPOLLRDNORM | AEM_SOCK_CLOSED |
			  AEM_SOCK_ALWAYS;
		break;
	case AEM_EV_SK:
		if (!aem_sock_is_tcp(sk))
			return -EOPNOTSUPP;
		if (events & ~AEM_SK_STATES)
			return -EINVAL;
		w->states = events ? events : AEM_SK_STATES;
		w->tcp_state = READ_ONCE(sk->sk_state);
		w->mask = (__force __poll_t)~0u;	/* any wakeup */
		break;
	case AEM_EV_SOCK:
		if (events & ~(__force u32)AEM_SOCK_EVENTS)
			return -EINVAL;
		w->mask = (events ? (__force __poll_t)events :
			   (__force __poll_t)AEM_SOCK_DEFAULT) |
			  AEM_SOCK_ALWAYS;
		break;
	}
	return 0;
}

static void aem_sock_read_fn(struct work_struct *work);

static int aem_sock_setup(struct aem_event *reg, const union aem_reg_arg *arg)
{
	struct aem_sock *w = aem_reg_priv(reg);
	__poll_t revents;
	int ret;

	w->reg = reg;
	w->type = aem_reg_type(reg);
	w->files = current->files;
	w->acc_fd = -1;
	mutex_init(&w->read_lock);
	INIT_WORK(&w->read_work, aem_sock_read_fn);
	w->file = fget(arg->sock.fd);
	if (!w->file)
		return -EBADF;
	ret = -ENOTSOCK;
	w->sock = sock_from_file(w->file);
	if (!w->sock || !w->sock->sk)
		goto out_put;
	ret = aem_sock_check_arg(w, aem_reg_flags(reg), arg->sock.events);
	if (ret)
		goto out_put;
	init_poll_funcptr(&w->pt, aem_sock_queue_proc);
	w->pt._key = w->mask;
	revents = vfs_poll(w->file, &w->pt);
	if (w->error || !w->head) {
		ret = w->error ? w->error : -EPERM;
		aem_sock_unhook(w);
		goto out_put;
	}
	aem_reg_set_fd(reg, arg->sock.fd);
	if (w->type == AEM_EV_READ)
		w->cred = get_current_cred();
	if (w->type == AEM_EV_SK && aem_sk_tp)
		aem_sk_watch(w);
	if (w->type == AEM_EV_SOCK) {
		revents &= READ_ONCE(w->mask);
		if (revents)
			aem_activate(reg, 1, (__force u64)revents,
				     AEM_VALUE_OR);
	} else {
		/* The first check (a pending connection, data, a close). */
		aem_recheck_later(reg);
	}
	return 0;

out_put:
	fput(w->file);
	return ret;
}

/*
 * Teardown of an ACCEPT registration whose last connection was never
 * delivered: nobody will learn its fd, so close it, if this is the
 * owner's fd table (CLEAN, or close() of the context) and the fd is still
 * the file we installed. At exit the table goes away by itself.
 */
static void aem_sock_drop_accepted(struct aem_sock *w)
{
	struct file *f;

	if (w->acc_fd < 0 || current->files != w->files ||
	    aem_reg_idle(w->reg))
		return;
	f = fget(w->acc_fd);
	if (f == w->acc_file)
		close_fd(w->acc_fd);
	if (f)
		fput(f);
}

static void aem_sock_teardown(struct aem_event *reg)
{
	struct aem_sock *w = aem_reg_priv(reg);

	if (w->tp_sk)
		aem_sk_unwatch(w);
	aem_sock_unhook(w);
	if (w->type == AEM_EV_READ) {
		/* Unhooked: nothing queues it again. */
		cancel_work_sync(&w->read_work);
		put_cred(w->cred);
	}
	mutex_destroy(&w->read_lock);
	fput(w->file);
	if (w->type == AEM_EV_ACCEPT)
		aem_sock_drop_accepted(w);
}

/* accept() a connection and install it in the owner's fd table. */
static int aem_sock_accept_fd(struct aem_sock *w)
{
	struct socket *newsock;
	struct file *newfile;
	int fd, ret;

	if (aem_should_fail(&aem_sock_fail_accept))
		return -ENOMEM;
	fd = get_unused_fd_flags(0);
	if (fd < 0)
		return fd;
	ret = kernel_accept(w->sock, &newsock, O_NONBLOCK);
	if (ret)
		goto out_fd;
	/* On failure sock_alloc_file() releases @newsock. */
	newfile = sock_alloc_file(newsock, 0, NULL);
	if (IS_ERR(newfile)) {
		ret = PTR_ERR(newfile);
		goto out_fd;
	}
	fd_install(fd, newfile);
	w->acc_fd = fd;
	w->acc_file = newfile;
	return fd;

out_fd:
	put_unused_fd(fd);
	return ret;
}

static void aem_sock_recheck_accept(struct aem_sock *w)
{
	int fd;

	if (!aem_reg_idle(w->reg))
		return;		/* one connection per delivery */
	w->acc_fd = -1;		/* the last one was delivered */
	/* Out of fds: not again at every delivery, at the next arrival. */
	if (w->backoff && !atomic_xchg(&w->arrivals, 0))
		return;
	w->backoff = false;
	if (!(vfs_poll(w->file, NULL) & EPOLLIN))
		return;
	fd = aem_sock_accept_fd(w);
	if (fd == -EAGAIN || fd == -ECONNABORTED) {
		/* Gone meanwhile; try again if another one waits. */
		if (fd == -ECONNABORTED)
			aem_recheck_later(w->reg);
		return;
	}
	if (fd == -EMFILE || fd == -ENFILE) {
		atomic_set(&w->arrivals, 0);
		w->backoff = true;
	}
	if (fd < 0)
		aem_activate_data(w->reg, 0, 0, (u64)(s64)fd);
	else
		aem_activate_data(w->reg, fd, 0, 0);
}

/* Bytes waiting in the receive queue, as FIONREAD says; 0: unknown. */
static size_t aem_sock_inq(struct socket *sock)
{
	struct sock *sk = sock->sk;
	int n = 0;

	if (aem_sock_is_tcp(sk)) {
		lock_sock(sk);
		n = tcp_inq(sk);
		release_sock(sk);
	} else if (sk->sk_family == AF_UNIX) {
		n = unix_inq_len(sk);
	}
	return n > 0 ? n : 0;
}

/* Read one chunk into the arena and deliver it; w->read_lock held. */
static void aem_sock_read_one(struct aem_sock *w)
{
	struct kvec kv;
	struct msghdr msg = { .msg_flags = MSG_DONTWAIT };
	size_t want;
	void *buf;
	u64 off;
	int n;

	if (w->done || !aem_reg_idle(w->reg))
		return;		/* one chunk per delivery */
	if (w->eof_next) {
		w->done = true;
		aem_activate_data(w->reg, 0, 0, 0);
		return;
	}
	want = aem_sock_inq(w->sock);
	if (!want)
		want = AEM_SOCK_READ_DEFAULT;	/* or end of file, or error */
	want = min_t(size_t, want, AEM_SOCK_READ_MAX);
	buf = ERR_PTR(-ENOMEM);
	if (!aem_should_fail(&aem_sock_fail_read))
		buf = aem_arena_alloc(w->reg, want, &off, true);
	if (IS_ERR(buf)) {
		/* Once per shortage; a freed chunk re-checks us. */
		if (!w->nomem)
			aem_activate_data(w->reg, 0, 0,
					  (u64)(s64)PTR_ERR(buf));
		w->nomem = true;
		return;
	}
	w->nomem = false;
	kv.iov_base = buf;
	kv.iov_len = want;
	n = kernel_recvmsg(w->sock, &msg, &kv, 1, want, MSG_DONTWAIT);
	if (n <= 0)
		aem_arena_free(w->reg, off);
	if (n == -EAGAIN || n == -EINTR)
		return;
	if (n < 0) {
		/* -ECONNRESET, -ENOTCONN...: reported, end of file follows. */
		w->eof_next = true;
		aem_activate_data(w->reg, 0, 0, (u64)(s64)n);
		return;
	}
	if (!n)
		w->done = true;
	aem_activate_data(w->reg, n, n ? off : 0, 0);
}

/* In the owner's context: after each delivery, and when room came back. */
static void aem_sock_recheck_read(struct aem_sock *w)
{
	mutex_lock(&w->read_lock);
	aem_sock_read_one(w);
	mutex_unlock(&w->read_lock);
}

/*
 * The reactive job: data arrived, read it now, while the owner may still
 * be running the handler of the previous chunk. The socket's LSM checks
 * see the registering task's credentials, as with io_uring's workers.
 */
static void aem_sock_read_fn(struct work_struct *work)
{
	struct aem_sock *w = container_of(work, struct aem_sock, read_work);
	const struct cred *old = override_creds(w->cred);

	mutex_lock(&w->read_lock);
	aem_sock_read_one(w);
	mutex_unlock(&w->read_lock);
	revert_creds(old);
}

static void aem_sock_recheck_close(struct aem_sock *w)
{
	__poll_t revents;

	if (w->done)
		return;
	revents = vfs_poll(w->file, NULL) & AEM_SOCK_CLOSED;
	if (!revents)
		return;
	w->done = true;
	aem_activate(w->reg, 1, (__force u64)revents, AEM_VALUE_OR);
}

static void aem_sock_recheck_sk(struct aem_sock *w)
{
	int old, now;

	if (!aem_reg_idle(w->reg))
		return;		/* one transition per delivery */
	if (w->tp_sk) {
		/* Exact transitions, in order; skip those filtered out. */
		while (aem_sk_pop(w, &old, &now)) {
			w->tcp_state = now;
			if (READ_ONCE(w->states) & BIT(now)) {
				aem_activate_data(w->reg, now, old, 0);
				return;
			}
		}
		return;
	}
	now = READ_ONCE(w->sock->sk->sk_state);
	old = w->tcp_state;
	if (now == old)
		return;
	w->tcp_state = now;
	if (READ_ONCE(w->states) & BIT(now))
		aem_activate_data(w->reg, now, old, 0);
}

static void aem_sock_recheck_sock(struct aem_sock *w)
{
	int n = atomic_xchg(&w->arrivals, 0);
	__poll_t revents;

	revents = vfs_poll(w->file, NULL) & READ_ONCE(w->mask);
	if (revents)
		aem_activate(w->reg, max(n, 1), (__force u64)revents,
			     AEM_VALUE_OR);
}

static void aem_sock_recheck(struct aem_event *reg)
{
	struct aem_sock *w = aem_reg_priv(reg);

	switch (w->type) {
	case AEM_EV_ACCEPT:
		aem_sock_recheck_accept(w);
		break;
	case AEM_EV_READ:
		aem_sock_recheck_read(w);
		break;
	case AEM_EV_CLOSE:
		aem_sock_recheck_close(w);
		break;
	case AEM_EV_SK:
		aem_sock_recheck_sk(w);
		break;
	case AEM_EV_SOCK:
		aem_sock_recheck_sock(w);
		break;
	}
}

static int aem_sock_filter(struct aem_event *reg, u64 events)
{
	struct aem_sock *w = aem_reg_priv(reg);

	switch (w->type) {
	case AEM_EV_SK:
		if (!events || (events & ~(u64)AEM_SK_STATES))
			return -EINVAL;
		WRITE_ONCE(w->states, events);
		return 0;
	case AEM_EV_SOCK:
		if (!events || (events & ~(u64)(__force u32)AEM_SOCK_EVENTS))
			return -EINVAL;
		WRITE_ONCE(w->mask, (__force __poll_t)events | AEM_SOCK_ALWAYS);
		/* Newly interesting bits may be set already. */
		aem_sock_recheck_sock(w);
		return 0;
	}
	return -EOPNOTSUPP;
}

#define AEM_SOCK_FAMILY(t, n) {						\
	.type		= (t),						\
	.version	= AEM_SOCK_VERSION,				\
	.name		= (n),						\
	.owner		= THIS_MODULE,					\
	.priv_size	= sizeof(struct aem_sock),			\
	.arg_size	= sizeof(struct aem_sock_arg),			\
	.setup		= aem_sock_setup,				\
	.teardown	= aem_sock_teardown,				\
	.filter		= aem_sock_filter,				\
	.recheck	= aem_sock_recheck,				\
}

static struct aem_family aem_sock_families[] = {
	AEM_SOCK_FAMILY(AEM_EV_ACCEPT, "accept"),
	AEM_SOCK_FAMILY(AEM_EV_READ, "read"),
	AEM_SOCK_FAMILY(AEM_EV_CLOSE, "close"),
	AEM_SOCK_FAMILY(AEM_EV_SK, "sk"),
	AEM_SOCK_FAMILY(AEM_EV_SOCK, "sock"),
};

static void aem_sock_unregister(int n)
{
	while (n--)
		aem_unregister_family(&aem_sock_families[n]);
}

static void aem_sk_find_tp(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "inet_sock_set_state"))
		aem_sk_tp = tp;
}

static int __init aem_sock_init(void)
{
	int i, ret;

	aem_sock_wq = alloc_workqueue("aem_sock", WQ_HIGHPRI, 0);
	if (!aem_sock_wq)
		return -ENOMEM;
	for_each_kernel_tracepoint(aem_sk_find_tp, NULL);
	if (aem_sk_tp && tracepoint_probe_register(aem_sk_tp, aem_sk_probe,
						   NULL)) {
		pr_warn("inet_sock_set_state: cannot attach, sampling TCP states\n");
		aem_sk_tp = NULL;
	}
	aem_sk_tp_on = !!aem_sk_tp;

	for (i = 0; i < ARRAY_SIZE(aem_sock_families); i++) {
		ret = aem_register_family(&aem_sock_families[i]);
		if (ret) {
			aem_sock_unregister(i);
			goto out_tp;
		}
	}
	aem_sock_debugfs = debugfs_create_dir("aem_sock", NULL);
	aem_fault_debugfs(aem_sock_debugfs, &aem_sock_fail_accept);
	aem_fault_debugfs(aem_sock_debugfs, &aem_sock_fail_read);
	debugfs_create_u32("sk_tracepoint", 0400, aem_sock_debugfs,
			   &aem_sk_tp_on);
	return 0;

out_tp:
	if (aem_sk_tp) {
		tracepoint_probe_unregister(aem_sk_tp, aem_sk_probe, NULL);
		tracepoint_synchronize_unregister();
	}
	destroy_workqueue(aem_sock_wq);
	return ret;
}

static void __exit aem_sock_exit(void)
{
	debugfs_remove(aem_sock_debugfs);
	aem_sock_unregister(ARRAY_SIZE(aem_sock_families));
	/* No registration is left: the probe only checks the counter. */
	if (aem_sk_tp) {
		tracepoint_probe_unregister(aem_sk_tp, aem_sk_probe, NULL);
		tracepoint_synchronize_unregister();
	}
	destroy_workqueue(aem_sock_wq);
}

module_init(aem_sock_init);
module_exit(aem_sock_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("AEM socket event families: accept, read, close, TCP state, socket state");
MODULE_VERSION("1.0");
