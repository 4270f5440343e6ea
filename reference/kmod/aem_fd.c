// SPDX-License-Identifier: GPL-2.0
/*
 * AEM fd readiness (AEM_EV_FD): any pollable file, edge or level
 * triggered, without a thread and without allocating on activation.
 *
 * The pattern is epoll's (fs/eventpoll.c: ep_ptable_queue_proc,
 * ep_poll_callback) and io_uring's (io_uring/poll.c: __io_queue_proc,
 * io_poll_wake):
 *
 * - setup() runs vfs_poll() with our own poll_table; its queue proc hooks
 *   a wait_queue_entry with our wake function into each wait-queue head
 *   the file's ->poll() names (at most two, as io_uring allows: one read
 *   and one write head; a duplicate head is ignored). The entries are
 *   embedded in the registration: nothing is allocated later.
 * - The wake function runs under the wait-queue head's lock in whatever
 *   context the waker is in and never sleeps. It drops wakeups whose key
 *   has none of the bits of interest, counts the others as arrivals and
 *   queues the registration for a re-check in the owner's context. A key
 *   is only a hint (a unix socket wakes readers with EPOLLIN | EPOLLPRI
 *   for plain data, and some wakers pass no key at all), so, like epoll
 *   (ep_send_events) and io_uring (io_poll_check_events), the re-check
 *   polls the file again and activates the registration with the real
 *   revents and the arrivals counted meanwhile; nothing is reported for
 *   a file that turned out not to be ready.
 * - Level triggered (the default, AEM_LEVEL): after each delivery the
 *   core asks for a re-check in the owner's context (AEM_IOC_WAIT,
 *   poll()), which re-polls with a NULL table and activates again while
 *   the file is ready, like epoll's level-triggered ready list.
 *   Edge triggered (AEM_EDGE): one activation per wakeup, i.e. per new
 *   arrival; the occurrence count says how many.
 * - POLLFREE (signalfd, binder: the head is about to be freed after an
 *   RCU grace period): post EPOLLHUP first, then unlink the entry, and
 *   store-release NULL into its head pointer as the very last access;
 *   teardown loads it with acquire under rcu_read_lock() and unhooks only
 *   if it is still set.
 *
 * Re-polling happens only in the owner's context, never in a kworker:
 * signalfd's ->poll() waits on current's sighand.
 *
 * A wakeup may reach a hooked entry while vfs_poll() is still running
 * (and queue the registration for a re-check); if setup() then fails (a
 * third head), it unhooks what it hooked and the core unlinks the
 * registration before freeing it. /sys/kernel/debug/aem_fd/fail_setup
 * fails setup() right after hooking, so tests can open that window at
 * will; .../setup_woken counts failed setups that were woken meanwhile.
 *
 * The registration holds a reference on the file (there is no hook in
 * __fput() for modules), so closing the fd does not end the watch: clean
 * the registration (the library wraps close()).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/dcache.h>
#include <linux/debugfs.h>
#include <linux/file.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/rcupdate.h>
#include <linux/wait.h>

#include "aem_family.h"
#include "aem_fault.h"

#define AEM_FD_VERSION		1
#define AEM_FD_MAX_HEADS	2

#define AEM_FD_EVENTS	(EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLERR |	\
			 EPOLLHUP | EPOLLRDNORM | EPOLLRDBAND |		\
			 EPOLLWRNORM | EPOLLWRBAND | EPOLLMSG | EPOLLRDHUP)
/* Reported whether asked for or not, as poll(2) does. */
#define AEM_FD_ALWAYS	(EPOLLERR | EPOLLHUP)

struct aem_fd;

/*
 * Diagnostics in /sys/kernel/debug/aem_fd/: POLLFREE wakeups seen, failed
 * setups woken after hooking; fault injection: fail_setup.
 */
static atomic_t aem_fd_pollfree = ATOMIC_INIT(0);
static atomic_t aem_fd_setup_woken = ATOMIC_INIT(0);
static struct aem_fault_attr aem_fd_fail_setup = AEM_FAULT_ATTR(fail_setup);
static struct dentry *aem_fd_debugfs;

/**
 * struct aem_fd_hook - one hooked wait-queue head
 * @wait: our entry in @head, with aem_fd_wake() as its function
 * @head: the head, or NULL once unhooked (POLLFREE: written last by the
 *        wake function, with release semantics)
 * @w:    the watch it belongs to
 */
struct aem_fd_hook {
	wait_queue_entry_t wait;
	wait_queue_head_t *head;
	struct aem_fd *w;
};

/**
 * struct aem_fd - family state of an fd registration
 * @reg:    the registration
 * @file:   the watched file (referenced)
 * @pt:     our poll table (queue proc aem_fd_queue_proc)
 * @mask:   poll bits of interest, AEM_FD_ALWAYS included; read by the
 *          wake function without a lock (READ_ONCE), changed by filter
 * @nhooks: hooks in use (setup only)
 * @error:  the queue proc saw a third head (setup only)
 * @arrivals: wakeups since the last re-check (the edge count)
 * @hook:   the hooks
 */
struct aem_fd {
	struct aem_event *reg;
	struct file *file;
	poll_table pt;
	__poll_t mask;
	int nhooks;
	int error;
	atomic_t arrivals;
	struct aem_fd_hook hook[AEM_FD_MAX_HEADS];
};

static int aem_fd_wake(struct wait_queue_entry *wait, unsigned int mode,
		       int sync, void *key)
{
	struct aem_fd_hook *hook = container_of(wait, struct aem_fd_hook, wait);
	struct aem_fd *w = hook->w;
	__poll_t events = key_to_poll(key);
	__poll_t mask = READ_ONCE(w->mask);

	if (unlikely(events & POLLFREE)) {
		/* Tell user space, then let go of the head: see above. */
		atomic_inc(&aem_fd_pollfree);
		aem_activate(w->reg, 1, (__force u64)(EPOLLHUP & mask),
			     AEM_VALUE_OR);
		list_del_init(&wait->entry);
		/* Last access; pairs with the acquire in aem_fd_unhook(). */
		smp_store_release(&hook->head, NULL);
		return 0;
	}
	if (events && !(events & mask))
		return 0;
	atomic_inc(&w->arrivals);
	aem_recheck_later(w->reg);
	return 0;
}

static void aem_fd_queue_proc(struct file *file, wait_queue_head_t *head,
			      poll_table *pt)
{
	struct aem_fd *w = container_of(pt, struct aem_fd, pt);
	struct aem_fd_hook *hook;
	int i;

	for (i = 0; i < w->nhooks; i++)
		if (w->hook[i].head == head)
			return;
	if (w->nhooks == AEM_FD_MAX_HEADS) {
		w->error = -EINVAL;
		return;
	}
	hook = &w->hook[w->nhooks++];
	hook->w = w;
	hook->head = head;
	init_waitqueue_func_entry(&hook->wait, aem_fd_wake);
	add_wait_queue(head, &hook->wait);
}

static void aem_fd_unhook(struct aem_fd *w)
{
	wait_queue_head_t *head;
	int i;

	for (i = 0; i < w->nhooks; i++) {
		rcu_read_lock();
		/* Pairs with the store-release in aem_fd_wake(). */
		head = smp_load_acquire(&w->hook[i].head);
		if (head)
			remove_wait_queue(head, &w->hook[i].wait);
		rcu_read_unlock();
	}
}

/* Files we do not watch: AEM contexts, and pollers of pollers. */
static bool aem_fd_refused(struct file *file)
{
	const char *name = file->f_path.dentry->d_name.name;

	if (aem_file_is_ctx(file))
		return true;
	/* Their ->poll() takes their own locks and could recurse into us. */
	return !strcmp(name, "[eventpoll]") || !strcmp(name, "[io_uring]");
}

static int aem_fd_setup(struct aem_event *reg, const union aem_reg_arg *arg)
{
	struct aem_fd *w = aem_reg_priv(reg);
	u32 flags = aem_reg_flags(reg);
	__poll_t revents;
	int ret;

	if (flags & (AEM_ABSTIME | AEM_REALTIME))
		return -EINVAL;
	if (!arg->fd.events ||
	    (arg->fd.events & ~(__force u32)AEM_FD_EVENTS))
		return -EINVAL;
	w->file = fget(arg->fd.fd);
	if (!w->file)
		return -EBADF;
	ret = -EPERM;
	if (!file_can_poll(w->file))
		goto out_put;
	ret = -EINVAL;
	if (aem_fd_refused(w->file))
		goto out_put;
	w->reg = reg;
	w->mask = (__force __poll_t)arg->fd.events | AEM_FD_ALWAYS;
	init_poll_funcptr(&w->pt, aem_fd_queue_proc);
	w->pt._key = w->mask;
	revents = vfs_poll(w->file, &w->pt);
	/* Three heads, or a ->poll() that waits on nothing. */
	ret = w->error;
	if (!ret && !w->nhooks)
		ret = -EPERM;
	/* Fault injection: the window after hooking, while wakeups come. */
	if (!ret && aem_should_fail(&aem_fd_fail_setup))
		ret = -ENOMEM;
	if (ret) {
		aem_fd_unhook(w);
		if (atomic_read(&w->arrivals))
			atomic_inc(&aem_fd_setup_woken);
		goto out_put;
	}
	aem_reg_set_fd(reg, arg->fd.fd);
	/* Ready already: that is the first arrival, edge or level. */
	revents &= w->mask;
	if (revents)
		aem_activate(reg, 1, (__force u64)revents, AEM_VALUE_OR);
	return 0;

out_put:
	fput(w->file);
	return ret;
}

static void aem_fd_teardown(struct aem_event *reg)
{
	struct aem_fd *w = aem_reg_priv(reg);

	aem_fd_unhook(w);
	fput(w->file);
}

static void aem_fd_recheck(struct aem_event *reg)
{
	struct aem_fd *w = aem_reg_priv(reg);
	int n = atomic_xchg(&w->arrivals, 0);
	__poll_t revents;

	revents = vfs_poll(w->file, NULL) & READ_ONCE(w->mask);
	if (revents)
		aem_activate(reg, max(n, 1), (__force u64)revents,
			     AEM_VALUE_OR);
}

static int aem_fd_filter(struct aem_event *reg, u64 events)
{
	struct aem_fd *w = aem_reg_priv(reg);

	if (!events || (events & ~(u64)(__force u32)AEM_FD_EVENTS))
		return -EINVAL;
	WRITE_ONCE(w->mask, (__force __poll_t)events | AEM_FD_ALWAYS);
	/* Newly interesting bits may be set already. */
	aem_fd_recheck(reg);
	return 0;
}

static struct aem_family aem_fd_family = {
	.type		= AEM_EV_FD,
	.version	= AEM_FD_VERSION,
	.name		= "fd",
	.owner		= THIS_MODULE,
	.priv_size	= sizeof(struct aem_fd),
	.arg_size	= sizeof(struct aem_fd_arg),
	.setup		= aem_fd_setup,
	.teardown	= aem_fd_teardown,
	.filter		= aem_fd_filter,
	.recheck	= aem_fd_recheck,
};

static int __init aem_fd_init(void)
{
	int ret = aem_register_family(&aem_fd_family);

	if (ret)
		return ret;
	aem_fd_debugfs = debugfs_create_dir("aem_fd", NULL);
	debugfs_create_atomic_t("pollfree", 0400, aem_fd_debugfs,
				&aem_fd_pollfree);
	debugfs_create_atomic_t("setup_woken", 0400, aem_fd_debugfs,
				&aem_fd_setup_woken);
	aem_fault_debugfs(aem_fd_debugfs, &aem_fd_fail_setup);
	return 0;
}

static void __exit aem_fd_exit(void)
{
	debugfs_remove(aem_fd_debugfs);
	aem_unregister_family(&aem_fd_family);
}

module_init(aem_fd_init);
module_exit(aem_fd_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("AEM fd readiness event family");
MODULE_VERSION("1.0");
