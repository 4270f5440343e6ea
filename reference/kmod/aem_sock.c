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
 *   ->poll() names one head) and asks for a first check. Everything the
 *   wake function, the read job and the TCP-state probe use is set before
 *   the entry is hooked: a wakeup can come while vfs_poll() still runs.
 *   The read job does nothing before setup() succeeded (@live); a setup
 *   that fails after hooking unhooks, then cancels the job
 *   (/sys/kernel/debug/aem_sock/fail_setup fails it right there).
 * - The wake function runs under the head's lock in any context; it drops
 *   wakeups whose key has none of the bits of interest and queues the
 *   registration for a re-check in the owner's context
 *   (aem_recheck_later()). State changes wake with no key (sock_def_wakeup)
 *   and always pass.
 * - recheck() runs in the owner's context (AEM_IOC_WAIT, poll() of the
 *   context), with ctx->mutex held, and does the job there: accept() and
 *   fd_install() into the owner's fd table (it must be the owner's; the
 *   fd is O_CLOEXEC, as with accept4(SOCK_CLOEXEC)),
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
 * ACCEPT is done in the kernel (kernel_accept()), so it is limited to
 * listeners whose children are safe to hand to user space: TCP
 * (AF_INET/AF_INET6, SOCK_STREAM, IPPROTO_TCP; not MPTCP) and AF_UNIX
 * SOCK_STREAM/SOCK_SEQPACKET; anything else is -EOPNOTSUPP. The child
 * must hold a reference on its network namespace, as the fd will outlive
 * anything of ours. In 6.1 a TCP child is made by sk_clone_lock(), which
 * copies sk_net_refcnt from the listener and then takes the reference
 * (get_net_track()) when it is set: we require it set on the listener
 * (every socket made by socket(2) has it: sk_alloc() with kern == 0). A
 * unix child is made by unix_stream_connect() with unix_create1(net,
 * NULL, 0, type): kern == 0, it holds its reference whatever the
 * listener. An SCTP or TIPC child is made by the accept itself with
 * sk_alloc(..., kern), and kernel_accept() passes kern == true: no
 * reference, a use-after-free of struct net once the namespace goes away.
 *
 * kernel_accept() is not accept(2) for the LSMs: security_socket_accept()
 * (SELinux "accept", AppArmor "accept" permission on the listener) is not
 * called, and it is not exported, nor is any function that calls it
 * (do_accept()). The new struct socket comes from sock_create_lite(),
 * which calls security_socket_create() and security_socket_post_create()
 * with kern == 1 (a kernel socket: SELinux skips the create check and
 * labels the inode kernel_t), then the accept grafts the child
 * (security_sock_graft(): SELinux relabels the inode of an inet or unix
 * socket with the child's sk label, derived from the listener's by
 * inet_csk_clone or unix_stream_connect, as for accept(2); AppArmor
 * keeps the child's sk label or gives it the owner's). The network
 * path (security_inet_conn_request() and the other per-packet hooks),
 * recvmsg/sendmsg on the new fd and every later operation are mediated
 * as usual; only the accept permission check is not. Policy that must
 * deny accept() to a domain denies it AEM_EV_ACCEPT with allowed_types.
 *
 * TCP states come from the inet_sock_set_state tracepoint, which reports
 * every transition with its old and new state (notes §3): the module
 * finds it with for_each_kernel_tracepoint() (its symbol is not exported)
 * and attaches one probe for all SK registrations. The watched sockets
 * are in a resizable hash (rhashtable, keyed by struct sock *, looked up
 * under RCU without a global lock), one node per socket with its watchers
 * on a list (node->lock, irq-safe: the probe runs in softirq too), at
 * most AEM_SK_MAX_WATCH per socket (-ENOSPC): a state change of an
 * unwatched socket costs one short hash lookup, that of a watched one at
 * most AEM_SK_MAX_WATCH ring updates. The probe records the transition in
 * each registration's embedded ring (no allocation; a full ring merges
 * the newest into its last entry) and asks for a re-check, which
 * delivers them one by one, in order. Without the
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
#include <linux/module.h>
#include <linux/net.h>
#include <linux/poll.h>
#include <linux/cred.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include <linux/rhashtable.h>
#include <linux/slab.h>
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
static struct aem_fault_attr aem_sock_fail_setup = AEM_FAULT_ATTR(fail_setup);
/* debugfs: failed setups whose hooked entry was woken meanwhile. */
static atomic_t aem_sock_setup_woken = ATOMIC_INIT(0);
static struct dentry *aem_sock_debugfs;
static struct workqueue_struct *aem_sock_wq;

#define AEM_SK_RING	16
#define AEM_SK_MAX_WATCH 64	/* SK registrations per socket (-ENOSPC) */

/**
 * struct aem_sk_node - a socket watched by SK registrations
 * @hnode:    in aem_sk_table
 * @sk:       the socket, the key
 * @lock:     @watchers and their rings (irq-safe: the probe runs in
 *            softirq); nests inside nothing, ctx->lock nests inside it
 * @watchers: the registrations (struct aem_sock.tp_link)
 * @nwatch:   entries in @watchers (aem_sk_mutex)
 * @rcu:      freed after a grace period: the probe looks up under RCU
 */
struct aem_sk_node {
	struct rhash_head hnode;
	const struct sock *sk;
	spinlock_t lock;		/* see above */
	struct list_head watchers;
	unsigned int nwatch;
	struct rcu_head rcu;
};

static const struct rhashtable_params aem_sk_params = {
	.key_len		= sizeof(const struct sock *),
	.key_offset		= offsetof(struct aem_sk_node, sk),
	.head_offset		= offsetof(struct aem_sk_node, hnode),
	.automatic_shrinking	= true,
};

/* SK registrations by struct sock, for the tracepoint probe. */
static struct rhashtable aem_sk_table;
static DEFINE_MUTEX(aem_sk_mutex);	/* node insertion and removal */
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
 * @live:     READ: setup() succeeded; the job does nothing before
 *            (store-release, load-acquire)
 * @arrivals: wakeups since the last re-check (SOCK, ACCEPT) or since
 *            setup() hooked the entry
 * @read_lock: READ: serialises reading (the job and the owner's re-check)
 * @read_work: READ: the reactive job: reads what arrived, in a kworker
 * @cred:     READ: the registering task's credentials, for the job; set
 *            before the entry is hooked
 * @files:    ACCEPT: the owner's fd table at setup (compared, never used)
 * @acc_fd:   ACCEPT: the fd of the last connection handed out, -1: none
 * @acc_file: ACCEPT: its file (compared, never used)
 * @tp_node:  SK: the watched socket's node in aem_sk_table, NULL: none
 * @tp_link:  SK: on @tp_node's watchers (its lock)
 * @tr:       SK: transitions (old, new) from the tracepoint, a ring
 *            (@tp_node's lock)
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
	bool live;
	atomic_t arrivals;
	struct mutex read_lock;		/* see above */
	struct work_struct read_work;
	const struct cred *cred;
	struct files_struct *files;
	int acc_fd;
	struct file *acc_file;
	struct aem_sk_node *tp_node;
	struct list_head tp_link;
	u8 tr[AEM_SK_RING][2];
	u8 tr_head;
	u8 tr_n;
};

/* inet_sock_set_state: any context, any TCP socket of the system. */
static void aem_sk_probe(void *data, const struct sock *sk, const int old,
			 const int now)
{
	struct aem_sk_node *n;
	struct aem_sock *w;
	unsigned long flags;
	unsigned int i;

	if (!atomic_read(&aem_sk_nwatch))
		return;
	rcu_read_lock();
	n = rhashtable_lookup(&aem_sk_table, &sk, aem_sk_params);
	if (!n)
		goto out;
	spin_lock_irqsave(&n->lock, flags);
	list_for_each_entry(w, &n->watchers, tp_link) {
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
	spin_unlock_irqrestore(&n->lock, flags);
out:
	rcu_read_unlock();
}

/* The oldest recorded transition into @old, @now; false if none. */
static bool aem_sk_pop(struct aem_sock *w, int *old, int *now)
{
	struct aem_sk_node *n = w->tp_node;
	unsigned long flags;
	bool ret = false;

	spin_lock_irqsave(&n->lock, flags);
	if (w->tr_n) {
		*old = w->tr[w->tr_head][0];
		*now = w->tr[w->tr_head][1];
		w->tr_head = (w->tr_head + 1) % AEM_SK_RING;
		w->tr_n--;
		ret = true;
	}
	spin_unlock_irqrestore(&n->lock, flags);
	return ret;
}

/* Add @w to its socket's watchers; -ENOSPC over AEM_SK_MAX_WATCH. */
static int aem_sk_watch(struct aem_sock *w)
{
	const struct sock *sk = w->sock->sk;
	struct aem_sk_node *n;
	unsigned long flags;
	int ret = 0;

	mutex_lock(&aem_sk_mutex);
	n = rhashtable_lookup_fast(&aem_sk_table, &sk, aem_sk_params);
	if (!n) {
		ret = -ENOMEM;
		n = kzalloc(sizeof(*n), GFP_KERNEL_ACCOUNT);
		if (!n)
			goto out;
		n->sk = sk;
		spin_lock_init(&n->lock);
		INIT_LIST_HEAD(&n->watchers);
		ret = rhashtable_insert_fast(&aem_sk_table, &n->hnode,
					     aem_sk_params);
		if (ret) {
			kfree(n);
			goto out;
		}
	} else if (n->nwatch >= AEM_SK_MAX_WATCH) {
		ret = -ENOSPC;
		goto out;
	}
	n->nwatch++;
	spin_lock_irqsave(&n->lock, flags);
	list_add_tail(&w->tp_link, &n->watchers);
	spin_unlock_irqrestore(&n->lock, flags);
	w->tp_node = n;
	atomic_inc(&aem_sk_nwatch);
out:
	mutex_unlock(&aem_sk_mutex);
	return ret;
}

/* After it returns the probe no longer touches @w. */
static void aem_sk_unwatch(struct aem_sock *w)
{
	struct aem_sk_node *n = w->tp_node;
	unsigned long flags;

	mutex_lock(&aem_sk_mutex);
	spin_lock_irqsave(&n->lock, flags);
	list_del(&w->tp_link);
	spin_unlock_irqrestore(&n->lock, flags);
	if (!--n->nwatch) {
		rhashtable_remove_fast(&aem_sk_table, &n->hnode, aem_sk_params);
		kfree_rcu(n, rcu);	/* a probe may still look at it */
	}
	atomic_dec(&aem_sk_nwatch);
	mutex_unlock(&aem_sk_mutex);
	w->tp_node = NULL;
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

/*
 * Listeners ACCEPT serves: those whose children hold a reference on
 * their network namespace (see the top of the file). Not SCTP, TIPC,
 * MPTCP, SMC, vsock...: -EOPNOTSUPP.
 */
static bool aem_sock_accept_ok(struct sock *sk)
{
	if (aem_sock_is_tcp(sk))
		return sk->sk_net_refcnt;	/* copied to the child */
	return sk->sk_family == AF_UNIX &&
	       (sk->sk_type == SOCK_STREAM || sk->sk_type == SOCK_SEQPACKET);
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
		if (!aem_sock_accept_ok(sk))
			return -EOPNOTSUPP;
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
	INIT_LIST_HEAD(&w->tp_link);
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
	/*
	 * All the wake function, the read job and the probe use, before the
	 * entry is hooked: a wakeup may queue the job during vfs_poll().
	 */
	if (w->type == AEM_EV_READ)
		w->cred = get_current_cred();
	if (w->type == AEM_EV_SK && aem_sk_tp) {
		ret = aem_sk_watch(w);
		if (ret)
			goto out_cred;
	}
	init_poll_funcptr(&w->pt, aem_sock_queue_proc);
	w->pt._key = w->mask;
	revents = vfs_poll(w->file, &w->pt);
	ret = w->error;
	if (!ret && !w->head)
		ret = -EPERM;
	/* Fault injection: the window after hooking, while wakeups come. */
	if (!ret && aem_should_fail(&aem_sock_fail_setup))
		ret = -ENOMEM;
	if (ret)
		goto out_unhook;
	aem_reg_set_fd(reg, arg->sock.fd);
	/* Pairs with the acquire in aem_sock_read_fn(). */
	smp_store_release(&w->live, true);
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

out_unhook:
	/*
	 * The core frees @reg when we return: nothing of ours may run on it
	 * after. Unhooked, nothing queues the job again; it did nothing
	 * (not @live), but it may still be running or queued.
	 */
	aem_sock_unhook(w);
	if (w->type == AEM_EV_READ)
		cancel_work_sync(&w->read_work);
	if (w->tp_node)
		aem_sk_unwatch(w);
	if (atomic_read(&w->arrivals))
		atomic_inc(&aem_sock_setup_woken);
out_cred:
	if (w->cred)
		put_cred(w->cred);
out_put:
	mutex_destroy(&w->read_lock);
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

	if (w->tp_node)
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
	/*
	 * Close-on-exec, as accept4(SOCK_CLOEXEC): the fd appears without
	 * the application asking for it, so an exec() must not leak it. A
	 * PROCESS executor forks (the child keeps it) and does not exec.
	 */
	fd = get_unused_fd_flags(O_CLOEXEC);
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

/* Mutants read_drops_chunk, accept_drops_connection: every second one. */
static atomic_t aem_sock_mutant_seq = ATOMIC_INIT(0);

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
	if (AEM_MUTANT(accept_drops_connection) && fd >= 0 &&
	    (atomic_inc_return(&aem_sock_mutant_seq) & 1) == 0) {
		close_fd(fd);	/* accepted, never reported */
		aem_recheck_later(w->reg);
		return;
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
	/* A chunk never needs more than the whole arena: the rest waits. */
	want = min3(want, (size_t)AEM_SOCK_READ_MAX,
		    aem_reg_arena_size(w->reg));
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
	if (!n) {
		w->done = true;
		if (AEM_MUTANT(read_eof_lost))
			return;		/* the end of the stream is never reported */
		aem_activate_data(w->reg, 0, 0, 0);
		return;
	}
	if (AEM_MUTANT(read_drops_chunk) && (atomic_inc_return(&aem_sock_mutant_seq) & 1) == 0) {
		aem_arena_free(w->reg, off);	/* read, never delivered */
		aem_recheck_later(w->reg);
		return;
	}
	/* User space may free it from now on: we no longer touch it. */
	aem_arena_publish(w->reg, off);
	aem_activate_data(w->reg, n, off, 0);
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
	const struct cred *old;

	/* Queued during setup(): its first check reads instead. */
	if (!smp_load_acquire(&w->live))
		return;
	old = override_creds(w->cred);
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
	if (w->tp_node) {
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

	ret = rhashtable_init(&aem_sk_table, &aem_sk_params);
	if (ret)
		return ret;
	ret = -ENOMEM;
	aem_sock_wq = alloc_workqueue("aem_sock", WQ_HIGHPRI, 0);
	if (!aem_sock_wq)
		goto out_table;
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
	aem_fault_debugfs(aem_sock_debugfs, &aem_sock_fail_setup);
	debugfs_create_atomic_t("setup_woken", 0400, aem_sock_debugfs,
				&aem_sock_setup_woken);
	debugfs_create_u32("sk_tracepoint", 0400, aem_sock_debugfs,
			   &aem_sk_tp_on);
	return 0;

out_tp:
	if (aem_sk_tp) {
		tracepoint_probe_unregister(aem_sk_tp, aem_sk_probe, NULL);
		tracepoint_synchronize_unregister();
	}
	destroy_workqueue(aem_sock_wq);
out_table:
	rhashtable_destroy(&aem_sk_table);
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
	/* Empty: every node went with its last registration. */
	rhashtable_destroy(&aem_sk_table);
}

module_init(aem_sock_init);
module_exit(aem_sock_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("AEM socket event families: accept, read, close, TCP state, socket state");
MODULE_VERSION("1.0");
