// SPDX-License-Identifier: GPL-2.0
/*
 * AEM core: the kick (ctx->kick: wake the waiters, ring the doorbell
 * signal) and the system-call policy of handler upcalls.
 *
 * LOCKING: the kick is an irq_work: it runs in hardirq context with no
 * lock of ours held, takes ctx->lock to decide, and wakes and signals
 * after dropping it (activation may run under a wait-queue head lock or
 * sighand->siglock, so neither may be taken under ctx->lock).
 * aem_deferred_lock is a leaf, never held with ctx->lock; aem_upcall_mutex
 * serialises the policy parameter and the tracepoint probe.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/compat.h>
#include <linux/hash.h>
#include <linux/irq_work.h>
#include <linux/moduleparam.h>
#include <linux/poll.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/signal.h>
#include <linux/spinlock.h>
#include <linux/tracepoint.h>
#include <asm/syscall.h>

#include "aem_core.h"

/*
 * ---- System-call policy of handler upcalls (AEM-3.5.3) ----
 *
 * Handlers that run asynchronously start from the doorbell signal, which
 * the thread takes on its next return to user space: after whatever
 * system call it made, or an interrupt. The administrator may restrict
 * that to the return from a set of system calls (upcall_syscalls, native
 * syscall numbers): the doorbell signal is then held on aem_deferred and
 * sent by a probe on the sys_exit tracepoint when the thread returns from
 * an allowed call, so the signal is taken on exactly that return and on
 * no other. A thread blocked in an allowed call is not interrupted for
 * it. While a restriction is set every thread of the system runs the
 * syscall-exit tracepoint work: a counter check unless a doorbell
 * waits, then a walk of the one bucket of the held doorbells that the
 * thread hashes to (aem_deferred[], by the thread they go to), not of all
 * of them.
 *
 * A bucket's lock is a leaf: never held with ctx->lock, and signals are
 * sent only after it is dropped (activation runs under sighand->siglock
 * for signalfd, so siglock -> ctx->lock exists). A context is on at most
 * one bucket, that of ctx->deferred_task, which only the kick sets (and
 * SET_SIGNAL and release wait for the kick before they undefer).
 */
#define AEM_UPCALL_NR	1024

static DECLARE_BITMAP(aem_upcall_allowed, AEM_UPCALL_NR);
static bool aem_upcall_restricted;
static DEFINE_MUTEX(aem_upcall_mutex);	/* the three above, the probe */
static struct tracepoint *aem_sys_exit_tp;
static bool aem_sys_exit_probed;

#define AEM_DEFERRED_BITS	6

static struct aem_deferred_bucket {
	spinlock_t lock;	/* see above */
	struct list_head list;
} aem_deferred[1 << AEM_DEFERRED_BITS];
static atomic_t aem_ndeferred = ATOMIC_INIT(0);

static struct aem_deferred_bucket *aem_bucket(struct task_struct *task)
{
	return &aem_deferred[hash_ptr(task, AEM_DEFERRED_BITS)];
}

static void aem_send_doorbell(struct task_struct *task, int signo)
{
	struct kernel_siginfo info;

	clear_siginfo(&info);
	info.si_signo = signo;
	info.si_code = SI_KERNEL;
	send_sig_info(signo, &info, task);
}

/* Sends the doorbells @current owes on the return from an allowed call. */
static void aem_sys_exit_probe(void *data, struct pt_regs *regs, long ret)
{
	struct aem_deferred_bucket *b;
	struct aem_ctx *ctx, *tmp;
	int signo[4], n = 0;
	unsigned long flags, nr;

	/*
	 * Every syscall exit of the system comes here while a restriction
	 * is set: a racy peek keeps it cheap. A doorbell added meanwhile is
	 * not lost: it waits for this thread's next allowed return.
	 */
	if (!atomic_read(&aem_ndeferred))
		return;
	/*
	 * The list names native system calls: a compat (32-bit) call's
	 * number means another call, so it never matches (its doorbell
	 * waits for a native allowed return, or for the restriction to go).
	 */
	if (in_compat_syscall())
		return;
	nr = syscall_get_nr(current, regs);
	if (nr >= AEM_UPCALL_NR || !test_bit(nr, aem_upcall_allowed))
		return;
	b = aem_bucket(current);
	spin_lock_irqsave(&b->lock, flags);
	list_for_each_entry_safe(ctx, tmp, &b->list, deferred_link) {
		if (ctx->deferred_task != current)
			continue;
		list_del_init(&ctx->deferred_link);
		atomic_dec(&aem_ndeferred);
		signo[n++] = ctx->deferred_signo;
		if (n == ARRAY_SIZE(signo))
			break;	/* the rest on the next allowed return */
	}
	spin_unlock_irqrestore(&b->lock, flags);
	while (n--)
		aem_send_doorbell(current, signo[n]);
}

/* Holds @ctx's doorbell for @task; false when no restriction is set. */
static bool aem_defer_doorbell(struct aem_ctx *ctx, struct task_struct *task,
			       int signo)
{
	struct aem_deferred_bucket *b;
	unsigned long flags;

	if (!READ_ONCE(aem_upcall_restricted))
		return false;
	/* Held already (for this thread: see SET_SIGNAL)? Then once is enough. */
	if (ctx->deferred_task && !list_empty_careful(&ctx->deferred_link))
		return true;
	b = aem_bucket(task);
	spin_lock_irqsave(&b->lock, flags);
	ctx->deferred_task = task;
	ctx->deferred_signo = signo;
	list_add_tail(&ctx->deferred_link, &b->list);
	atomic_inc(&aem_ndeferred);
	spin_unlock_irqrestore(&b->lock, flags);
	return true;
}

/*
 * Drops @ctx's held doorbell (its thread changes, or the context goes);
 * no kick runs. Returns true when one was held: the signal is owed.
 */
bool aem_undefer_doorbell(struct aem_ctx *ctx)
{
	struct aem_deferred_bucket *b;
	unsigned long flags;
	bool was;

	if (!ctx->deferred_task)
		return false;
	b = aem_bucket(ctx->deferred_task);
	spin_lock_irqsave(&b->lock, flags);
	was = !list_empty(&ctx->deferred_link);
	if (was) {
		list_del_init(&ctx->deferred_link);
		atomic_dec(&aem_ndeferred);
	}
	spin_unlock_irqrestore(&b->lock, flags);
	return was;
}

/* The restriction was lifted: send every held doorbell now. */
static void aem_flush_deferred(void)
{
	struct aem_deferred_bucket *b;
	struct task_struct *task;
	struct aem_ctx *ctx;
	unsigned long flags;
	int signo;

	for (b = aem_deferred; b < aem_deferred + ARRAY_SIZE(aem_deferred); b++) {
		for (;;) {
			spin_lock_irqsave(&b->lock, flags);
			ctx = list_first_entry_or_null(&b->list, struct aem_ctx,
						       deferred_link);
			if (ctx) {
				list_del_init(&ctx->deferred_link);
				atomic_dec(&aem_ndeferred);
				task = get_task_struct(ctx->deferred_task);
				signo = ctx->deferred_signo;
			}
			spin_unlock_irqrestore(&b->lock, flags);
			if (!ctx)
				break;
			aem_send_doorbell(task, signo);
			put_task_struct(task);
		}
	}
}

static void aem_find_sys_exit(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "sys_exit"))
		*(struct tracepoint **)priv = tp;
}

static int aem_upcall_set(const char *val, const struct kernel_param *kp)
{
	DECLARE_BITMAP(allowed, AEM_UPCALL_NR);
	bool limited = true;
	int ret = 0;

	bitmap_zero(allowed, AEM_UPCALL_NR);
	if (sysfs_streq(val, "") || sysfs_streq(val, "all"))
		limited = false;
	else if (!sysfs_streq(val, "none"))
		ret = bitmap_parselist(val, allowed, AEM_UPCALL_NR);
	if (ret)
		return ret;
	mutex_lock(&aem_upcall_mutex);
	if (limited && !aem_sys_exit_probed) {
		if (!aem_sys_exit_tp)
			for_each_kernel_tracepoint(aem_find_sys_exit,
						   &aem_sys_exit_tp);
		ret = aem_sys_exit_tp ?
		      tracepoint_probe_register(aem_sys_exit_tp,
						aem_sys_exit_probe, NULL) :
		      -EOPNOTSUPP;
		if (ret)
			goto out;
		aem_sys_exit_probed = true;
	}
	bitmap_copy(aem_upcall_allowed, allowed, AEM_UPCALL_NR);
	WRITE_ONCE(aem_upcall_restricted, limited);
	if (!limited && aem_sys_exit_probed) {
		tracepoint_probe_unregister(aem_sys_exit_tp,
					    aem_sys_exit_probe, NULL);
		tracepoint_synchronize_unregister();
		aem_sys_exit_probed = false;
	}
	if (!limited)
		aem_flush_deferred();
out:
	mutex_unlock(&aem_upcall_mutex);
	return ret;
}

static int aem_upcall_get(char *buf, const struct kernel_param *kp)
{
	int n;

	mutex_lock(&aem_upcall_mutex);
	if (!aem_upcall_restricted)
		n = sysfs_emit(buf, "all\n");
	else if (bitmap_empty(aem_upcall_allowed, AEM_UPCALL_NR))
		n = sysfs_emit(buf, "none\n");
	else
		n = sysfs_emit(buf, "%*pbl\n", AEM_UPCALL_NR,
			       aem_upcall_allowed);
	mutex_unlock(&aem_upcall_mutex);
	return n;
}

static const struct kernel_param_ops aem_upcall_ops = {
	.set = aem_upcall_set,
	.get = aem_upcall_get,
};

module_param_cb(upcall_syscalls, &aem_upcall_ops, NULL, 0644);
MODULE_PARM_DESC(upcall_syscalls,
		 "System calls (native numbers, a list such as 0,1,232 or 7-9) on whose return the doorbell signal of an asynchronous context may be taken; all: no restriction (default); none: never");

/*
 * ctx->kick: hardirq context, no locks held by our caller. Wakes the
 * waiters and rings the doorbell: the signal goes out only when the
 * doorbell word goes 0 -> 1. With a ring the word is shared with user
 * space and xchg() is the full barrier of the Dekker pairing (the
 * consumer stores 0 then re-reads tail); without one the pull path
 * re-arms it under ctx->lock when it leaves nothing pending.
 */
void aem_kick_fn(struct irq_work *work)
{
	struct aem_ctx *ctx = container_of(work, struct aem_ctx, kick);
	struct task_struct *task = NULL;
	unsigned long flags;
	struct aem_ring *ring;
	int signo;

	wake_up_interruptible_poll(&ctx->wq, EPOLLIN | EPOLLRDNORM);

	spin_lock_irqsave(&ctx->lock, flags);
	signo = ctx->signo;
	ring = ctx->ring;
	if (signo && ctx->sig_task) {
		if (ring) {
			if (aem_ring_nonempty(ctx) || ctx->bitmap ||
			    !list_empty(&ctx->recheck)) {
				if (!xchg(&ring->hdr->doorbell, 1))
					task = ctx->sig_task;
			}
		} else if ((ctx->bitmap || !list_empty(&ctx->recheck)) &&
			   !ctx->doorbell) {
			ctx->doorbell = true;
			task = ctx->sig_task;
		}
	}
	spin_unlock_irqrestore(&ctx->lock, flags);
	if (!task)
		return;
	/* sig_task cannot be put before irq_work_sync(): see SET_SIGNAL. */
	if (aem_defer_doorbell(ctx, task, signo))
		return;
	aem_send_doorbell(task, signo);
}

/* Module init: the buckets of held doorbells. */
void aem_doorbell_init(void)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(aem_deferred); i++) {
		spin_lock_init(&aem_deferred[i].lock);
		INIT_LIST_HEAD(&aem_deferred[i].list);
	}
}

/* Module exit: no context is left; detach the probe if it is attached. */
void aem_doorbell_exit(void)
{
	if (aem_sys_exit_probed) {
		tracepoint_probe_unregister(aem_sys_exit_tp,
					    aem_sys_exit_probe, NULL);
		tracepoint_synchronize_unregister();
	}
}
