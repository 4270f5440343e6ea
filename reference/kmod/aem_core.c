// SPDX-License-Identifier: GPL-2.0
/*
 * AEM - the Asynchronous Event Mechanism, core module: the context.
 *
 * aem.ko is several files, one concern each (listed in aem_core.h); this
 * one holds the context (/dev/aem, open, release, the ioctl table, the
 * pull ioctl, poll, mmap) and the LOCKING rules that span them all.
 *
 * /dev/aem is a misc device; one open() is one context, bound to the
 * thread group (and mm) that opened it. Event family modules register
 * with aem_register_family(); user space registers events of a family,
 * the family activates them (aem_activate(), from any context), and the
 * core queues the activations by priority and hands them to user space
 * through a pull ioctl (AEM_IOC_WAIT), an optional mmap'd completion ring,
 * poll() readiness of the fd and an optional RT-signal doorbell.
 *
 * LOCKING:
 * There are two locks per context and two global mutexes:
 *
 * 1) aem_family_lock (global mutex): the list of loaded families.
 *    aem_users_lock (global mutex): per-user accounting records; taken
 *    only in open and release, never with another AEM lock held.
 * 2) ctx->mutex: serialises the "slow" control paths of a context:
 *    registration, evctl, raise, popping deliveries for AEM_IOC_WAIT (held
 *    across the copy to user space, so a delivery that faults can be put
 *    back before anyone can clean its registration), ring setup, signal
 *    setup, the re-check of level-triggered sources, the reap work and
 *    the final teardown. It protects ctx->regs contents against
 *    concurrent destruction: a registration found in ctx->regs under
 *    ctx->mutex stays alive until the mutex is dropped, because only a
 *    holder of ctx->mutex destroys one. It is never held while sleeping
 *    for events.
 * 3) ctx->lock (spinlock, irq-safe): the priority queue (bitmap, level
 *    lists, overflow list), the reap and re-check lists, the boost
 *    request, every registration's pending state (count, value, error,
 *    state bits, stats), the ring producer side, the doorbell, and
 *    ctx->sig_task/signo. It is taken from any context (hardirq:
 *    hrtimers; wait-queue callbacks), always with spin_lock_irqsave().
 *    Under it the core only manipulates lists and bitmaps, writes the
 *    ring, and calls schedule_work() and irq_work_queue(), which take
 *    leaf locks at most: no wake-up, no signal, no family callback.
 *
 * Lock order: aem_family_lock -> ctx->mutex -> (family locks,
 * hrtimer base, wait-queue head locks) -> ctx->lock;
 * ctx->boost_mutex -> ctx->lock.
 * A family may call aem_activate() with its own lock or a wait-queue head
 * lock held (wq_head->lock -> ctx->lock), exactly like ep_poll_callback().
 * Because activation can happen under a wait-queue head lock or under
 * sighand->siglock (signalfd), the core never wakes its own wait queue or
 * sends the doorbell signal under ctx->lock or from the activation path
 * itself: it queues ctx->kick (an irq_work), which runs in hardirq context
 * with no locks held, wakes ctx->wq and sends the signal. mmap() runs
 * under mmap_lock and takes only ctx->lock, so mmap_lock -> ctx->mutex
 * never happens (ctx->mutex -> mmap_lock does, via copy_to_user()).
 *
 * Deferred work: ctx->kick (irq_work: wake-ups and the doorbell signal),
 * ctx->reap_work (destroys registrations whose final delivery was taken;
 * takes ctx->mutex) and ctx->boost_work (set_user_nice(), sleepable). A
 * boost change is applied by that work or, when an ioctl caused it, by
 * the ioctl itself on its way out (aem_boost_sync(), no other AEM lock
 * held); both take ctx->boost_mutex, a leaf apart from ctx->lock inside
 * it; ->release() touches the boost fields after cancel_work_sync().
 * All three are queued under ctx->lock, which is fine: queueing takes
 * only leaf locks.
 *
 * Lifetime: the file owns the context. ->release() destroys every
 * registration (family teardown first, so no activation can follow), then
 * flushes the reap work, the irq_work and the boost work, restores a
 * boosted thread, then frees the context. Each registration pins its
 * family's module; the fops pin aem.ko. Tested on a lockdep + KASAN +
 * DEBUG_ATOMIC_SLEEP + DEBUG_OBJECTS build of the same 6.1 source.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/bitops.h>
#include <linux/cred.h>
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/hashtable.h>
#include <linux/hrtimer.h>
#include <linux/irq_work.h>
#include <linux/miscdevice.h>
#include <linux/kref.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/overflow.h>
#include <linux/pagemap.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/seq_file.h>
#include <linux/pid.h>
#include <linux/sched/mm.h>
#include <linux/sched/prio.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/sched/user.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/tracepoint.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>
#include <asm/syscall.h>

#include "aem_core.h"
#include "aem_fault.h"

/* ---- Policy and limits (module parameters) ---- */

unsigned int aem_max_regs = 65536;
module_param_named(max_regs, aem_max_regs, uint, 0644);
MODULE_PARM_DESC(max_regs, "Registrations per context (default 65536)");

unsigned int aem_max_regs_per_user = 1048576;
module_param_named(max_regs_per_user, aem_max_regs_per_user, uint, 0644);
MODULE_PARM_DESC(max_regs_per_user,
		 "Registrations per user (effective uid of the opener) over all contexts (default 1048576)");

unsigned int aem_max_pending = 65536;
module_param_named(max_pending, aem_max_pending, uint, 0644);
MODULE_PARM_DESC(max_pending,
		 "Simultaneously pending registrations per context; over it activations are deferred and counted, and an overload notification is queued (default 65536)");

unsigned int aem_allowed_types = ~0u;
module_param_named(allowed_types, aem_allowed_types, uint, 0644);
MODULE_PARM_DESC(allowed_types,
		 "Bit (1 << AEM_EV_x): event type x may be registered (default all)");

unsigned int aem_allowed_exec = 0x7;
module_param_named(allowed_exec, aem_allowed_exec, uint, 0644);
MODULE_PARM_DESC(allowed_exec,
		 "Bit (1 << AEM_EXEC_x): executor x may be used (default 0x7: all)");

unsigned int aem_boost_prio;
module_param_named(boost_prio, aem_boost_prio, uint, 0644);
MODULE_PARM_DESC(boost_prio,
		 "While a registration of this priority or higher is pending, the context's thread runs at boost_ceiling; 0: no boosting (default 0)");

int aem_boost_ceiling;
module_param_named(boost_ceiling, aem_boost_ceiling, int, 0644);
MODULE_PARM_DESC(boost_ceiling,
		 "Nice value of a boosted thread: the admin's ceiling, applied without the thread's own permission, never lowering its priority (default 0)");

unsigned long long aem_min_timer_period = 100000;
module_param_named(min_timer_period_ns, aem_min_timer_period, ullong, 0644);
MODULE_PARM_DESC(min_timer_period_ns,
		 "Shortest period of a periodic timer in ns (default 100000)");

unsigned int aem_max_ctx_per_user = 4096;
module_param_named(max_ctx_per_user, aem_max_ctx_per_user, uint, 0644);
MODULE_PARM_DESC(max_ctx_per_user,
		 "Open contexts per user (effective uid of the opener); open() fails with EMFILE beyond (default 4096)");

unsigned long long aem_max_arena_bytes = 64ull << 20;
module_param_named(max_arena_bytes, aem_max_arena_bytes, ullong, 0644);
MODULE_PARM_DESC(max_arena_bytes,
		 "Largest event-data arena of a context in bytes (default 64 MiB)");

static const struct file_operations aem_fops;
static void aem_ctx_free(struct kref *ref);
static int aem_mm_attach(struct aem_ctx *ctx);
static struct dentry *aem_debugfs;
static DEFINE_MUTEX(aem_users_lock);
static DEFINE_HASHTABLE(aem_users, 6);

/* The accounting record of @uid with one more context; ERR_PTR() */
static struct aem_user *aem_user_get(kuid_t uid)
{
	struct aem_user *u;

	mutex_lock(&aem_users_lock);
	hash_for_each_possible(aem_users, u, node, __kuid_val(uid)) {
		if (uid_eq(u->uid, uid)) {
			if (u->refs >= READ_ONCE(aem_max_ctx_per_user))
				u = ERR_PTR(-EMFILE);
			else
				u->refs++;
			goto out;
		}
	}
	u = ERR_PTR(-EMFILE);
	if (!READ_ONCE(aem_max_ctx_per_user))
		goto out;
	u = kzalloc(sizeof(*u), GFP_KERNEL);
	if (!u) {
		u = ERR_PTR(-ENOMEM);
		goto out;
	}
	u->uid = uid;
	u->refs = 1;
	hash_add(aem_users, &u->node, __kuid_val(uid));
out:
	mutex_unlock(&aem_users_lock);
	return u;
}

static void aem_user_put(struct aem_user *u)
{
	mutex_lock(&aem_users_lock);
	if (!--u->refs) {
		WARN_ON_ONCE(atomic_read(&u->nregs));
		hash_del(&u->node);
		kfree(u);
	}
	mutex_unlock(&aem_users_lock);
}

/* Pop up to @max deliveries into @buf under ctx->mutex; returns count. */
static unsigned int aem_pop_batch(struct aem_ctx *ctx,
				  struct aem_popped *buf, unsigned int max)
{
	struct pid *old_pid = NULL;
	unsigned long flags;
	unsigned int n = 0, i;

	spin_lock_irqsave(&ctx->lock, flags);
	aem_overflow_refill(ctx);
	while (n < max && aem_pop(ctx, &buf[n]))
		n++;
	if (!ctx->bitmap && list_empty(&ctx->recheck))
		ctx->doorbell = false;	/* nothing left: re-arm */
	/*
	 * The handler of a boosting delivery runs boosted: unboosting here
	 * would even make the scheduler preempt this thread on its way out
	 * of the ioctl (set_user_nice() reschedules a running task whose
	 * priority drops), in front of CPU hogs, before the handler starts.
	 */
	for (i = 0; i < n; i++) {
		struct pid *o = aem_boost_hold(ctx, &buf[i].d);

		if (o)
			old_pid = o;
	}
	aem_after_pop(ctx);
	spin_unlock_irqrestore(&ctx->lock, flags);
	put_pid(old_pid);
	return n;
}

/*
 * Copy @n popped deliveries to user space without taking a page fault:
 * ctx->mutex is held, and a fault may wait on userfaultfd or a FUSE
 * server for as long as they like. What did not reach user space is put
 * back, most urgent first. Returns how many were copied; the caller
 * faults the page in without the mutex and comes back.
 */
static unsigned int aem_copy_deliveries(struct aem_ctx *ctx, u8 __user *dst,
					u32 dsize, struct aem_popped *buf,
					unsigned int n)
{
	unsigned long flags;
	unsigned int i;

	pagefault_disable();
	for (i = 0; i < n; i++, dst += dsize) {
		if (copy_to_user(dst, &buf[i].d, sizeof(buf[i].d)) ||
		    (dsize > sizeof(buf[i].d) &&
		     clear_user(dst + sizeof(buf[i].d),
				dsize - sizeof(buf[i].d))))
			break;
	}
	pagefault_enable();
	if (i == n)
		return n;
	spin_lock_irqsave(&ctx->lock, flags);
	while (n-- > i)
		aem_unpop(ctx, &buf[n]);
	spin_unlock_irqrestore(&ctx->lock, flags);
	irq_work_queue(&ctx->kick);
	return i;
}

static bool aem_has_pending(struct aem_ctx *ctx)
{
	unsigned long flags;

	if (unlikely(!list_empty_careful(&ctx->overflow))) {
		/* The ring was consumed: room under the pending limit? */
		spin_lock_irqsave(&ctx->lock, flags);
		aem_overflow_refill(ctx);
		aem_boost_check(ctx);
		spin_unlock_irqrestore(&ctx->lock, flags);
	}
	return READ_ONCE(ctx->bitmap) || !list_empty_careful(&ctx->recheck);
}

/* Sleep until something is pending: 1, 0 on timeout, -EINTR. */
static int aem_wait_pending(struct aem_ctx *ctx, s64 timeout_ns,
			    ktime_t deadline)
{
	ktime_t left;
	int ret;

	if (aem_has_pending(ctx))
		return 1;
	if (!timeout_ns)
		return 0;
	if (timeout_ns < 0) {
		ret = wait_event_interruptible(ctx->wq, aem_has_pending(ctx));
	} else {
		left = ktime_sub(deadline, ktime_get());
		if (left <= 0)
			return 0;
		ret = wait_event_interruptible_hrtimeout(ctx->wq,
							 aem_has_pending(ctx),
							 left);
		if (ret == -ETIME)
			return 0;
	}
	/* The timeout is relative: do not restart, report the signal. */
	return ret ? -EINTR : 1;
}

static int aem_ioc_wait(struct aem_ctx *ctx, void __user *uarg)
{
	unsigned int n, copied, faults = 0, total = 0, chunk;
	struct aem_popped *buf;
	unsigned long flags;
	ktime_t deadline = 0;
	bool faulted;
	struct aem_wait w;
	u8 __user *dst;
	int ret;

	ret = aem_copy_in(&w, sizeof(w), uarg, AEM_WAIT_SIZE_VER0);
	if (ret)
		return ret;
	if (w.flags & ~AEM_WAIT_REFILL)
		return -EINVAL;
	if (w.flags & AEM_WAIT_REFILL) {
		if (!READ_ONCE(ctx->ring))
			return -EINVAL;
		struct pid *old_pid = NULL;

		mutex_lock(&ctx->mutex);
		aem_run_recheck(ctx);
		spin_lock_irqsave(&ctx->lock, flags);
		n = aem_ring_refill(ctx, &old_pid);
		aem_after_pop(ctx);
		spin_unlock_irqrestore(&ctx->lock, flags);
		aem_ctx_unlock(ctx);
		put_pid(old_pid);
		irq_work_queue(&ctx->kick);
		return n;
	}
	if (!w.max || w.max > AEM_WAIT_MAX || w.dsize > PAGE_SIZE ||
	    w.dsize < AEM_DELIVERY_SIZE_VER0 || (w.dsize & 7))
		return -EINVAL;
	if (w.timeout_ns > 0) {
		/* A timeout past the end of time is no timeout. */
		deadline = ktime_get();
		deadline = w.timeout_ns < KTIME_MAX - deadline ?
			   ktime_add_ns(deadline, w.timeout_ns) : KTIME_MAX;
	}

	chunk = min_t(unsigned int, w.max, AEM_WAIT_BATCH);
	if (aem_should_fail(&aem_fail_wait_alloc))
		return -ENOMEM;
	buf = kmalloc_array(chunk, sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	dst = u64_to_user_ptr(w.deliveries);
	while (!total) {
		ret = aem_wait_pending(ctx, w.timeout_ns, deadline);
		if (ret <= 0)
			goto out;
		/* Pop and copy under ctx->mutex: see aem_unpop(). */
		mutex_lock(&ctx->mutex);
		aem_run_recheck(ctx);
		faulted = false;
		do {
			n = aem_pop_batch(ctx, buf, min(chunk, w.max - total));
			copied = aem_copy_deliveries(ctx, dst, w.dsize, buf, n);
			total += copied;
			dst += (size_t)copied * w.dsize;
			faulted = copied < n;
		} while (!faulted && n && total < w.max);
		aem_ctx_unlock(ctx);
		if (!faulted || total)
			continue;
		/*
		 * Nothing copied: fault the first entry in, without the
		 * mutex, and try again; a bad address, or one that will not
		 * stay mapped, is -EFAULT (the deliveries stay queued).
		 */
		ret = -EFAULT;
		if (++faults > AEM_WAIT_FAULTS ||
		    fault_in_writeable((char __user *)dst, w.dsize))
			goto out;
		ret = -EINTR;
		if (fatal_signal_pending(current))
			goto out;
	}
	ret = total;
out:
	kfree(buf);
	return ret;
}

static int aem_ioc_set_signal(struct aem_ctx *ctx, void __user *uarg)
{
	struct task_struct *task = NULL, *old;
	struct aem_signal sg;
	unsigned long flags;
	int ret;

	ret = aem_copy_in(&sg, sizeof(sg), uarg, AEM_SIGNAL_SIZE_VER0);
	if (ret)
		return ret;
	if (sg.flags || sg.tid < 0 ||
	    (sg.signo && (sg.signo < SIGRTMIN || sg.signo > SIGRTMAX)))
		return -EINVAL;
	if (sg.signo) {
		if (sg.tid) {
			struct pid *pid = find_get_pid(sg.tid);

			task = pid ? get_pid_task(pid, PIDTYPE_PID) : NULL;
			put_pid(pid);
			if (!task)
				return -ESRCH;
			if (!same_thread_group(task, current)) {
				put_task_struct(task);
				return -ESRCH;
			}
		} else {
			task = get_task_struct(current);
		}
	}
	mutex_lock(&ctx->mutex);
	spin_lock_irqsave(&ctx->lock, flags);
	old = ctx->sig_task;
	ctx->sig_task = task;
	ctx->signo = sg.signo;
	ctx->doorbell = false;
	spin_unlock_irqrestore(&ctx->lock, flags);
	/* A running kick may still use @old: wait for it. */
	irq_work_sync(&ctx->kick);
	/* A doorbell held for @old is owed: the kick below sends it again. */
	if (aem_undefer_doorbell(ctx) && ctx->ring)
		WRITE_ONCE(ctx->ring->hdr->doorbell, 0);
	aem_ctx_unlock(ctx);
	if (old)
		put_task_struct(old);
	/* Something may already be pending. */
	irq_work_queue(&ctx->kick);
	return 0;
}

/**
 * aem_file_is_ctx() - is @file an AEM context?
 * @file: any file
 *
 * Families refuse to watch AEM contexts (no loops, no reference cycles).
 */
bool aem_file_is_ctx(struct file *file)
{
	return file->f_op == &aem_fops;
}
EXPORT_SYMBOL_GPL(aem_file_is_ctx);

/* The context may only be used by the thread group (and mm) it belongs to. */
static bool aem_is_owner(struct aem_ctx *ctx)
{
	return task_tgid(current) == ctx->tgid && current->mm == ctx->mm;
}

static long aem_ioctl_op(struct aem_ctx *ctx, unsigned int cmd,
			 void __user *uarg)
{
	switch (_IOC_NR(cmd)) {
	case _IOC_NR(AEM_IOC_INFO):
		return aem_ioc_info(uarg);
	case _IOC_NR(AEM_IOC_REGISTER):
		return aem_ioc_register(ctx, uarg);
	case _IOC_NR(AEM_IOC_CTL):
		return aem_ioc_ctl(ctx, uarg);
	case _IOC_NR(AEM_IOC_WAIT):
		return aem_ioc_wait(ctx, uarg);
	case _IOC_NR(AEM_IOC_RAISE):
		return aem_ioc_raise(ctx, uarg);
	case _IOC_NR(AEM_IOC_SET_SIGNAL):
		return aem_ioc_set_signal(ctx, uarg);
	case _IOC_NR(AEM_IOC_RING_SETUP):
		return aem_ioc_ring_setup(ctx, uarg);
	case _IOC_NR(AEM_IOC_ARENA_SETUP):
		return aem_ioc_arena_setup(ctx, uarg);
	case _IOC_NR(AEM_IOC_ARENA_FREE):
		return aem_ioc_arena_free(ctx, uarg);
	}
	return -ENOTTY;
}

static long aem_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct aem_ctx *ctx = file->private_data;
	long ret;

	if (_IOC_TYPE(cmd) != AEM_IOC_MAGIC)
		return -ENOTTY;
	if (!aem_is_owner(ctx))
		return -EOWNERDEAD;
	aem_boost_unhold(ctx);
	ret = aem_ioctl_op(ctx, cmd, (void __user *)arg);
	/* A raise, pop or evctl may have changed the boost: apply it now. */
	aem_boost_sync(ctx);
	return ret;
}

static __poll_t aem_poll(struct file *file, poll_table *pt)
{
	struct aem_ctx *ctx = file->private_data;

	if (!aem_is_owner(ctx))
		return EPOLLERR;
	poll_wait(file, &ctx->wq, pt);
	if (!list_empty_careful(&ctx->recheck)) {
		/* Level-triggered sources: are they still ready? */
		mutex_lock(&ctx->mutex);
		aem_run_recheck(ctx);
		aem_ctx_unlock(ctx);
	}
	/*
	 * With a ring, registrations deferred by the pending limit wait for
	 * a REFILL once it is consumed: readable, so the consumer makes one.
	 */
	if (READ_ONCE(ctx->bitmap) || aem_ring_nonempty(ctx) ||
	    !list_empty_careful(&ctx->overflow))
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

/* mmap_lock is held: take ctx->lock at most (see LOCKING). */
static int aem_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct aem_ctx *ctx = file->private_data;

	if (!aem_is_owner(ctx))
		return -EOWNERDEAD;
	if (vma->vm_pgoff == AEM_ARENA_PGOFF)
		return aem_arena_mmap(ctx, vma);
	return aem_ring_mmap(ctx, vma);
}

static int aem_open(struct inode *inode, struct file *file)
{
	struct aem_ctx *ctx;
	int i, ret;

	if (aem_should_fail(&aem_fail_ctx_alloc))
		return -ENOMEM;
	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL_ACCOUNT);
	if (!ctx)
		return -ENOMEM;
	/* Accounted to the opener, checked against the opener's limits. */
	ctx->user = aem_user_get(file->f_cred->euid);
	if (IS_ERR(ctx->user)) {
		ret = PTR_ERR(ctx->user);
		kfree(ctx);
		return ret;
	}
	spin_lock_init(&ctx->lock);
	for (i = 0; i < AEM_PRIO_LEVELS; i++)
		INIT_LIST_HEAD(&ctx->level[i]);
	INIT_LIST_HEAD(&ctx->overflow);
	INIT_LIST_HEAD(&ctx->reap);
	INIT_LIST_HEAD(&ctx->recheck);
	INIT_LIST_HEAD(&ctx->overload.link);
	INIT_LIST_HEAD(&ctx->deferred_link);
	ctx->overload.prio = AEM_PRIO_MAX;
	init_waitqueue_head(&ctx->wq);
	init_irq_work(&ctx->kick, aem_kick_fn);
	INIT_WORK(&ctx->reap_work, aem_reap_fn);
	INIT_WORK(&ctx->boost_work, aem_boost_fn);
	mutex_init(&ctx->boost_mutex);
	ctx->opener = get_task_struct(current);
	ctx->may_nice = capable(CAP_SYS_NICE);
	mutex_init(&ctx->mutex);
	xa_init_flags(&ctx->regs, XA_FLAGS_ALLOC1 | XA_FLAGS_ACCOUNT);
	ctx->tgid = get_pid(task_tgid(current));
	kref_init(&ctx->ref);
	INIT_LIST_HEAD(&ctx->mm_link);
	ctx->mm = current->mm;
	if (ctx->mm) {
		mmgrab(ctx->mm);
		ret = aem_mm_attach(ctx);
		if (ret) {
			kref_put(&ctx->ref, aem_ctx_free);
			return ret;
		}
	}
	file->private_data = ctx;
	return 0;
}

/* Destroy every registration of @ctx; ctx->mutex not held. */
static void aem_ctx_destroy_regs(struct aem_ctx *ctx)
{
	struct aem_event *reg;
	unsigned long idx;

	mutex_lock(&ctx->mutex);
	xa_for_each(&ctx->regs, idx, reg) {
		xa_erase(&ctx->regs, idx);
		aem_reg_destroy(ctx, reg);
		cond_resched();
	}
	aem_ctx_unlock(ctx);
}

/*
 * The last reference is gone (the file's, and the exit teardown's if it
 * ran): no registration is left to activate, pop or time out.
 */
static void aem_ctx_free(struct kref *ref)
{
	struct aem_ctx *ctx = container_of(ref, struct aem_ctx, ref);

	cancel_work_sync(&ctx->reap_work);
	irq_work_sync(&ctx->kick);
	aem_undefer_doorbell(ctx);
	cancel_work_sync(&ctx->boost_work);
	aem_unboost(ctx);
	put_task_struct(ctx->opener);
	put_pid(ctx->boost_pid);
	aem_user_put(ctx->user);
	WARN_ON_ONCE(ctx->bitmap & ~BIT_ULL(AEM_PRIO_MAX));
	if (ctx->sig_task)
		put_task_struct(ctx->sig_task);
	if (ctx->ring)
		aem_ring_free(ctx->ring);
	if (ctx->arena)
		aem_arena_destroy(ctx->arena);
	xa_destroy(&ctx->regs);
	put_pid(ctx->tgid);
	if (ctx->mm)
		mmdrop(ctx->mm);
	mutex_destroy(&ctx->mutex);
	mutex_destroy(&ctx->boost_mutex);
	kfree(ctx);
}

/*
 * ---- The owner's exit ----
 *
 * A context is only usable by the thread group and mm that opened it, so
 * once that mm is gone (the process exited, or it called exec) its
 * registrations can never be delivered: they are destroyed then, not at
 * the last close of the file. That matters because the file can outlive
 * its owner in a place the owner's exit never closes: a registration holds
 * the socket (or any file) it watches, and the context's own fd can be in
 * flight in that socket's receive queue (SCM_RIGHTS), a cycle the unix
 * garbage collector does not see (the kernel refuses io_uring fds in
 * SCM_RIGHTS for the same reason). Destroying the registrations at exit
 * breaks the cycle: the socket goes, its queue is purged, the last
 * reference to the context goes with it.
 *
 * The hook is an mmu_notifier's release(), called by exit_mmap() (and
 * exec's mmput()) in the exiting task, sleepable (a kernel without
 * CONFIG_MMU_NOTIFIER has no hook: there the last close destroys them). One notifier per mm
 * (mmu_notifier_get()), with the mm's contexts on its list; the list and
 * ctx->mm_link are under am->lock (a leaf spinlock). The teardown holds a
 * reference on the context (ctx->ref) while it runs, so a concurrent last
 * close in another process leaves the freeing to whichever ends last.
 */
#ifdef CONFIG_MMU_NOTIFIER
struct aem_mm {
	struct mmu_notifier mn;
	spinlock_t lock;	/* see above */
	struct list_head ctxs;
};

static void aem_mm_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	struct aem_mm *am = container_of(mn, struct aem_mm, mn);
	struct aem_ctx *ctx;

	spin_lock(&am->lock);
	while ((ctx = list_first_entry_or_null(&am->ctxs, struct aem_ctx,
					       mm_link))) {
		list_del_init(&ctx->mm_link);
		kref_get(&ctx->ref);
		spin_unlock(&am->lock);
		aem_ctx_destroy_regs(ctx);
		kref_put(&ctx->ref, aem_ctx_free);
		spin_lock(&am->lock);
	}
	spin_unlock(&am->lock);
}

static struct mmu_notifier *aem_mm_alloc(struct mm_struct *mm)
{
	struct aem_mm *am = kzalloc(sizeof(*am), GFP_KERNEL_ACCOUNT);

	if (!am)
		return ERR_PTR(-ENOMEM);
	spin_lock_init(&am->lock);
	INIT_LIST_HEAD(&am->ctxs);
	return &am->mn;
}

static void aem_mm_free(struct mmu_notifier *mn)
{
	kfree(container_of(mn, struct aem_mm, mn));
}

static const struct mmu_notifier_ops aem_mm_ops = {
	.release		= aem_mm_release,
	.alloc_notifier		= aem_mm_alloc,
	.free_notifier		= aem_mm_free,
};

/* Put @ctx on its mm's list (open(), current->mm). */
static int aem_mm_attach(struct aem_ctx *ctx)
{
	struct mmu_notifier *mn = mmu_notifier_get(&aem_mm_ops, ctx->mm);
	struct aem_mm *am;

	if (IS_ERR(mn))
		return PTR_ERR(mn);
	am = container_of(mn, struct aem_mm, mn);
	spin_lock(&am->lock);
	list_add_tail(&ctx->mm_link, &am->ctxs);
	spin_unlock(&am->lock);
	ctx->owner_mm = am;
	return 0;
}

/* Take @ctx off its mm's list (release()); the exit teardown may run. */
static void aem_mm_detach(struct aem_ctx *ctx)
{
	struct aem_mm *am = ctx->owner_mm;

	if (!am)
		return;
	spin_lock(&am->lock);
	list_del_init(&ctx->mm_link);
	spin_unlock(&am->lock);
	mmu_notifier_put(&am->mn);
}
#else	/* !CONFIG_MMU_NOTIFIER: registrations go at the last close only */
static int aem_mm_attach(struct aem_ctx *ctx)
{
	return 0;
}

static void aem_mm_detach(struct aem_ctx *ctx)
{
}
#endif

static int aem_release(struct inode *inode, struct file *file)
{
	struct aem_ctx *ctx = file->private_data;

	aem_mm_detach(ctx);
	aem_ctx_destroy_regs(ctx);
	kref_put(&ctx->ref, aem_ctx_free);
	return 0;
}

/* /proc/<pid>/fdinfo/<fd>: a summary of the context. */
static void aem_show_fdinfo(struct seq_file *m, struct file *file)
{
	struct aem_ctx *ctx = file->private_data;
	unsigned long flags;
	u32 npending, ring;
	u64 bitmap;
	int signo;

	spin_lock_irqsave(&ctx->lock, flags);
	npending = ctx->npending;
	bitmap = ctx->bitmap;
	signo = ctx->signo;
	ring = ctx->ring ? ctx->ring->entries : 0;
	spin_unlock_irqrestore(&ctx->lock, flags);
	/* In the reader's pid namespace (0: not visible from there). */
	seq_printf(m, "aem-tgid:\t%d\n", pid_vnr(ctx->tgid));
	seq_printf(m, "aem-regs:\t%u\n", READ_ONCE(ctx->nregs));
	seq_printf(m, "aem-user-regs:\t%d\n", atomic_read(&ctx->user->nregs));
	seq_printf(m, "aem-pending:\t%u\n", npending);
	seq_printf(m, "aem-levels:\t%016llx\n", bitmap);
	seq_printf(m, "aem-signal:\t%d\n", signo);
	seq_printf(m, "aem-ring-entries:\t%u\n", ring);
}

static const struct file_operations aem_fops = {
	.show_fdinfo	= aem_show_fdinfo,
	.owner		= THIS_MODULE,
	.open		= aem_open,
	.release	= aem_release,
	.unlocked_ioctl	= aem_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.poll		= aem_poll,
	.mmap		= aem_mmap,
	.llseek		= noop_llseek,
};

static struct miscdevice aem_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "aem",
	.fops	= &aem_fops,
	.mode	= 0666,
};

static int __init aem_init(void)
{
	int ret;

	/* kmalloc-192 without family state: AEM-3.3.1's 256 bytes a registration */
	BUILD_BUG_ON(sizeof(struct aem_event) > 192);
	aem_doorbell_init();
	ret = misc_register(&aem_misc);
	if (ret)
		return ret;
	aem_debugfs = debugfs_create_dir("aem", NULL);
	aem_fault_debugfs(aem_debugfs, &aem_fail_ctx_alloc);
	aem_fault_debugfs(aem_debugfs, &aem_fail_reg_alloc);
	aem_fault_debugfs(aem_debugfs, &aem_fail_ring_alloc);
	aem_fault_debugfs(aem_debugfs, &aem_fail_wait_alloc);
	aem_fault_debugfs(aem_debugfs, &aem_fail_arena_setup);
	aem_fault_debugfs(aem_debugfs, &aem_fail_arena_chunk);
	pr_info("AEM core, API version %d\n", AEM_API_VERSION);
#ifdef AEM_MUTANT_NAME
	pr_warn("built with the mutant %s: a deliberate defect, for mutation testing only\n",
		AEM_MUTANT_NAME);
#endif
	return 0;
}

static void __exit aem_exit(void)
{
	/* No context is open (the fops pin the module): nothing is held. */
	aem_doorbell_exit();
#ifdef CONFIG_MMU_NOTIFIER
	/* Notifiers put by the last contexts are freed after a grace period. */
	mmu_notifier_synchronize();
#endif
	debugfs_remove(aem_debugfs);
	misc_deregister(&aem_misc);
}

module_init(aem_init);
module_exit(aem_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("AEM: Asynchronous Event Mechanism core (/dev/aem)");
MODULE_VERSION("1.0");

