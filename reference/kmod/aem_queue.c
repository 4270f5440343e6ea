// SPDX-License-Identifier: GPL-2.0
/*
 * AEM core: the priority queue, activation, re-checks and the boost.
 *
 * The queue is 64 FIFOs, one per priority, of the pending nodes embedded
 * in the registrations, a bitmap of the non-empty ones, and an overflow
 * FIFO for the registrations deferred by max_pending: queueing never
 * allocates and never fails, so activation (aem_activate(), from any
 * context, hardirq included) only counts.
 *
 * LOCKING: everything here runs under ctx->lock (irq-safe), unless the
 * function says otherwise: the boost is applied under ctx->boost_mutex
 * (a sleeping lock: set_user_nice()), outside ctx->lock, by the boost work
 * or by the ioctl that changed it; re-checks run under ctx->mutex in the
 * owner's context. Under ctx->lock the queue only links, counts and
 * queues work (schedule_work(), irq_work_queue(): leaf locks).
 *
 * ORDERING: ctx->bitmap is read locklessly (READ_ONCE) by poll() and the
 * wait condition; a stale read costs one more trip round the wait loop,
 * which re-checks under the lock. ctx->boost_gen/boost_applied are read
 * locklessly by aem_boost_sync() to skip a no-op; the apply itself reads
 * the state under ctx->lock.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitops.h>
#include <linux/irq_work.h>
#include <linux/ktime.h>
#include <linux/overflow.h>
#include <linux/sched.h>
#include <linux/sched/prio.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>

#include "aem_core.h"

/* ---- The priority queue (all under ctx->lock) ---- */

void aem_level_add(struct aem_ctx *ctx, struct aem_pnode *n, bool head)
{
	if (head)
		list_add(&n->link, &ctx->level[n->prio]);
	else
		list_add_tail(&n->link, &ctx->level[n->prio]);
	ctx->bitmap |= BIT_ULL(n->prio);
	n->q = AEM_Q_QUEUED;
}

void aem_level_del(struct aem_ctx *ctx, struct aem_pnode *n)
{
	list_del_init(&n->link);
	if (list_empty(&ctx->level[n->prio]))
		ctx->bitmap &= ~BIT_ULL(n->prio);
	n->q = AEM_Q_IDLE;
}

/*
 * Deliveries pending at once, as the pending limit counts them: the queued
 * registrations and, with a ring, the entries user space has not consumed
 * (pending too: see aem_ring_unconsumed()), one being written included.
 */
static u32 aem_npending(struct aem_ctx *ctx)
{
	return ctx->npending + aem_ring_unconsumed_entries(ctx) +
	       ctx->ring_popping;
}

/*
 * Move deferred registrations into the queue while under the limit: on a
 * pop, and with a ring on each refill (consuming the ring frees room
 * without telling the kernel).
 */
void aem_overflow_refill(struct aem_ctx *ctx)
{
	struct aem_pnode *n;

	while (!list_empty(&ctx->overflow) &&
	       aem_npending(ctx) < READ_ONCE(aem_max_pending)) {
		n = list_first_entry(&ctx->overflow, struct aem_pnode, link);
		list_del_init(&n->link);
		aem_level_add(ctx, n, false);
		ctx->npending++;
	}
}

/* Queue @reg (which is idle); never fails: over the limit it waits. */
void aem_enqueue(struct aem_ctx *ctx, struct aem_event *reg)
{
	if (aem_npending(ctx) >= READ_ONCE(aem_max_pending) &&
	    !AEM_MUTANT(pending_limit_ignored)) {
		list_add_tail(&reg->node.link, &ctx->overflow);
		reg->node.q = AEM_Q_OVERFLOW;
		reg->stats.overflows++;
		ctx->overload_count++;
		if (ctx->overload.q == AEM_Q_IDLE &&
		    !AEM_MUTANT(overflow_notice_lost))
			aem_level_add(ctx, &ctx->overload, false);
		return;
	}
	aem_level_add(ctx, &reg->node, false);
	ctx->npending++;
}

/* Take @reg out of the queue; its pending count stays. */
void aem_dequeue(struct aem_ctx *ctx, struct aem_event *reg)
{
	switch (reg->node.q) {
	case AEM_Q_QUEUED:
		aem_level_del(ctx, &reg->node);
		ctx->npending--;
		aem_overflow_refill(ctx);
		break;
	case AEM_Q_OVERFLOW:
		list_del_init(&reg->node.link);
		reg->node.q = AEM_Q_IDLE;
		break;
	}
}

/*
 * Pop the most urgent delivery into @p->d, and what undoes the pop into
 * the rest of @p. The registration's final delivery (error, or
 * AEM_ONESHOT) puts it on ctx->reap; the caller schedules the reap work.
 */
bool aem_pop(struct aem_ctx *ctx, struct aem_popped *p)
{
	struct aem_delivery *d = &p->d;
	struct aem_pnode *n;
	struct aem_event *reg;
	unsigned int prio;

	if (!ctx->bitmap)
		return false;
	prio = __fls(ctx->bitmap);
	n = list_first_entry(&ctx->level[prio], struct aem_pnode, link);
	memset(p, 0, sizeof(*p));
	d->prio = prio;
	if (n == &ctx->overload) {
		aem_level_del(ctx, n);
		d->type = AEM_EV_OVERLOAD;
		d->error = -EOVERFLOW;
		d->count = ctx->overload_count;
		ctx->overload_count = 0;
		return true;
	}
	reg = container_of(n, struct aem_event, node);
	d->id = reg->id;
	d->type = reg->type;
	d->user_data = reg->user_data;
	d->error = reg->error;
	d->data[0] = reg->data[0];
	d->data[1] = reg->data[1];
	if ((reg->flags & AEM_PER_OCCURRENCE) && reg->count > 1 &&
	    !reg->error && !(reg->flags & AEM_ONESHOT)) {
		/* One occurrence now, the rest after its level's others. */
		d->count = 1;
		d->value = reg->value;
		p->kept = true;
		reg->count--;
		list_move_tail(&n->link, &ctx->level[prio]);
	} else {
		d->count = reg->count;
		d->value = reg->value;
		if (reg->count > 1) {
			p->merged = reg->count - 1;
			reg->stats.merged += p->merged;
		}
		reg->count = 0;
		reg->value = 0;
		reg->error = 0;
		reg->data[0] = 0;
		reg->data[1] = 0;
		aem_dequeue(ctx, reg);
	}
	reg->stats.deliveries++;
	if (d->error) {
		reg->stats.errors++;
		d->flags |= AEM_DLV_FINAL;
	} else if (reg->flags & AEM_ONESHOT) {
		d->flags |= AEM_DLV_FINAL;
	}
	if (d->flags & AEM_DLV_FINAL) {
		reg->state |= AEM_RS_DOOMED;
		list_add_tail(&reg->reap_link, &ctx->reap);
	} else if (reg->fam->recheck && list_empty(&reg->recheck_link) &&
		   ((reg->state & AEM_RS_PARKED) ||
		    (!(reg->flags & AEM_EDGE) && !reg->fam->parked_only))) {
		/* Level trigger, or a parked source: go on at the next pop? */
		list_add_tail(&reg->recheck_link, &ctx->recheck);
	}
	p->parked = reg->state & AEM_RS_PARKED;
	reg->state &= ~AEM_RS_PARKED;
	return true;
}

/*
 * Undo aem_pop() of @p after a failed copy; ctx->mutex and ctx->lock held.
 * Occurrences counted since the pop are newer than the ones put back: their
 * value wins a SET merge, and the counts read in STATS are as if the pop had
 * never happened (a fault in the caller's buffer loses and invents nothing).
 */
void aem_unpop(struct aem_ctx *ctx, const struct aem_popped *p)
{
	const struct aem_delivery *d = &p->d;
	struct aem_event *reg;

	if (!d->id) {
		ctx->overload_count += d->count;
		if (ctx->overload.q == AEM_Q_IDLE)
			aem_level_add(ctx, &ctx->overload, true);
		return;
	}
	reg = xa_load(&ctx->regs, d->id);
	if (WARN_ON_ONCE(!reg))
		return;
	if (!reg->count) {
		/* Nothing newer: the delivery's data and value are current. */
		reg->data[0] = d->data[0];
		reg->data[1] = d->data[1];
		reg->value = d->value;
	} else if (!p->kept) {
		/* The pop took the value: merge it under the newer ones. */
		switch ((reg->state & AEM_RS_MERGE) >> AEM_RS_MERGE_SHIFT) {
		case AEM_VALUE_OR:
			reg->value |= d->value;
			break;
		case AEM_VALUE_ADD:
			reg->value += d->value;
			break;
		}
	}
	reg->count += d->count;
	reg->stats.merged -= p->merged;
	reg->state |= p->parked;
	reg->stats.deliveries--;
	if (d->flags & AEM_DLV_FINAL) {
		list_del_init(&reg->reap_link);
		reg->error = d->error;
		if (!d->error)
			reg->state &= ~AEM_RS_DOOMED;
		else
			reg->stats.errors--;
	}
	if (reg->node.q == AEM_Q_OVERFLOW)
		list_del_init(&reg->node.link);
	if (reg->node.q != AEM_Q_QUEUED) {
		aem_level_add(ctx, &reg->node, true);
		ctx->npending++;
	}
}

/*
 * Process priority enforcement (a ceiling, not priority inheritance):
 * while something of priority >= boost_prio is pending, the context's
 * thread runs at nice aem_boost_ceiling, if that is better than its own. That
 * thread is the one that popped the last delivery this urgent (the one
 * that runs such handlers: a worker thread, a dispatching thread), else
 * the doorbell thread, else the opener; it is restored when
 * nothing that urgent is pending any more and the handler of the last
 * such delivery has run (@boost_hold), unless someone changed its nice
 * value meanwhile. set_user_nice() checks no permission, so the
 * ceiling is the admin's (root-only module parameters), clamped to what
 * the thread's RLIMIT_NICE allows unless the opener had CAP_SYS_NICE (the
 * boost is never a way around the rlimit), and it never makes a thread
 * less urgent. ctx->lock held; the work does the rest.
 */
void aem_boost_check(struct aem_ctx *ctx)
{
	unsigned int p = READ_ONCE(aem_boost_prio);
	bool want = p && p <= AEM_PRIO_MAX &&
		    ((ctx->bitmap >> p) || ctx->boost_hold);

	if (want != ctx->boost_want) {
		ctx->boost_want = want;
		WRITE_ONCE(ctx->boost_gen, ctx->boost_gen + 1);
		schedule_work(&ctx->boost_work);
	}
}

void aem_unboost(struct aem_ctx *ctx)
{
	if (!ctx->boosted)
		return;
	if (task_nice(ctx->boosted) == ctx->boost_nice)
		set_user_nice(ctx->boosted, ctx->saved_nice);
	put_task_struct(ctx->boosted);
	ctx->boosted = NULL;
}

static void aem_boost_apply(struct aem_ctx *ctx)
{
	struct task_struct *task;
	unsigned long flags;
	unsigned int gen;
	int target;
	bool want;

	mutex_lock(&ctx->boost_mutex);
	spin_lock_irqsave(&ctx->lock, flags);
	want = ctx->boost_want;
	gen = ctx->boost_gen;
	rcu_read_lock();
	task = ctx->boost_pid ? pid_task(ctx->boost_pid, PIDTYPE_PID) : NULL;
	if (!task)	/* none yet, or it exited */
		task = ctx->sig_task ? ctx->sig_task : ctx->opener;
	get_task_struct(task);
	rcu_read_unlock();
	spin_unlock_irqrestore(&ctx->lock, flags);

	if (!want || ctx->boosted != task)
		aem_unboost(ctx);
	target = clamp(READ_ONCE(aem_boost_ceiling), MIN_NICE, MAX_NICE);
	if (!ctx->may_nice)
		target = max_t(int, target,
			       rlimit_to_nice(task_rlimit(task, RLIMIT_NICE)));
	if (want && !ctx->boosted && target < task_nice(task)) {
		ctx->saved_nice = task_nice(task);
		ctx->boost_nice = target;
		set_user_nice(task, target);
		ctx->boosted = get_task_struct(task);
	}
	WRITE_ONCE(ctx->boost_applied, gen);
	mutex_unlock(&ctx->boost_mutex);
	put_task_struct(task);
}

void aem_boost_fn(struct work_struct *work)
{
	aem_boost_apply(container_of(work, struct aem_ctx, boost_work));
}

/*
 * Process context, no AEM lock held: apply a boost change queued by the
 * ioctl that just ran (a raise, a pop, an evctl) now, instead of when the
 * work item gets a CPU. So the thread is boosted by the time the raise
 * returns and restored by the time the pop returns, and the boost does not
 * wait behind the very CPU hogs it is meant to beat. Changes made from
 * atomic context (timers, wait-queue callbacks) still go through the work.
 */
void aem_boost_sync(struct aem_ctx *ctx)
{
	/*
	 * Applied already (by the work, or by nobody: nothing changed)? A
	 * work that is running may have read an older state: then the
	 * generations differ and this applies again (idempotent) after it.
	 */
	if (READ_ONCE(ctx->boost_applied) == READ_ONCE(ctx->boost_gen))
		return;
	cancel_work(&ctx->boost_work);
	aem_boost_apply(ctx);
}

/*
 * The thread that popped a boosting delivery is back (its handler ran):
 * the boost it held may end with this ioctl.
 */
void aem_boost_unhold(struct aem_ctx *ctx)
{
	unsigned long flags;

	if (!READ_ONCE(ctx->boost_hold) ||
	    READ_ONCE(ctx->boost_hold_task) != current)
		return;
	spin_lock_irqsave(&ctx->lock, flags);
	if (ctx->boost_hold && ctx->boost_hold_task == current) {
		ctx->boost_hold = false;
		aem_boost_check(ctx);
	}
	spin_unlock_irqrestore(&ctx->lock, flags);
}

/*
 * The caller took delivery @d to run its handler: if it is that urgent,
 * the boost goes to the caller and lasts until its next ioctl on the
 * context (aem_boost_unhold()), and @d says so (AEM_DLV_BOOST). ctx->lock
 * held; returns the pid reference it replaced, for the caller to put once
 * the lock is dropped, or NULL.
 */
struct pid *aem_boost_hold(struct aem_ctx *ctx, struct aem_delivery *d)
{
	unsigned int p = READ_ONCE(aem_boost_prio);
	struct pid *old = NULL;

	if (!p || d->prio < p)
		return NULL;
	d->flags |= AEM_DLV_BOOST;
	ctx->boost_hold = true;
	ctx->boost_hold_task = current;
	if (ctx->boost_pid != task_pid(current)) {
		old = ctx->boost_pid;
		ctx->boost_pid = get_pid(task_pid(current));
	}
	return old;
}

/* After pops: reap what got its final delivery. ctx->lock held. */
void aem_after_pop(struct aem_ctx *ctx)
{
	if (!list_empty(&ctx->reap))
		schedule_work(&ctx->reap_work);
	aem_boost_check(ctx);
}

/* Something became pending: refill the ring, kick the irq_work. */
void aem_pending_changed(struct aem_ctx *ctx)
{
	aem_boost_check(ctx);
	if (ctx->ring) {
		aem_ring_refill(ctx, NULL);
		aem_after_pop(ctx);
	}
	irq_work_queue(&ctx->kick);
}

/* aem_activate(), and sets the pending family data when @data is given. */
static bool __aem_activate(struct aem_event *reg, u64 count, u64 value,
			   enum aem_value_merge how, const u64 *data, bool park)
{
	struct aem_ctx *ctx = reg->ctx;
	unsigned long flags;
	bool was = true;

	spin_lock_irqsave(&ctx->lock, flags);
	if (reg->state & AEM_RS_DOOMED)
		goto out;
	/* Earlier occurrences not taken yet (queued, held or disabled)? */
	was = reg->count || reg->error;
	if (was && park) {
		/*
		 * The family stops; it counts what it misses in its
		 * recheck(): once before the next pop (so the delivery
		 * taken carries them, merged) and once after it (to start
		 * again).
		 */
		reg->state |= AEM_RS_PARKED;
		if (list_empty(&reg->recheck_link)) {
			list_add_tail(&reg->recheck_link, &ctx->recheck);
			if (ctx->ring)
				WRITE_ONCE(ctx->ring->hdr->backlog, 1);
			irq_work_queue(&ctx->kick);
		}
	}
	if (data) {
		reg->data[0] = data[0];
		reg->data[1] = data[1];
	}
	/* Saturate: a count can never wrap to a small number. */
	reg->stats.activations = aem_sat_add(reg->stats.activations, count);
	reg->count = aem_sat_add(reg->count, count);
	if (AEM_MUTANT(merge_drops_count) && was)
		reg->count -= count;	/* merged into one: the count is lost */
	reg->state = (reg->state & ~AEM_RS_MERGE) | (how << AEM_RS_MERGE_SHIFT);
	switch (how) {
	case AEM_VALUE_SET:
		reg->value = value;
		break;
	case AEM_VALUE_OR:
		reg->value |= value;
		break;
	case AEM_VALUE_ADD:
		reg->value += value;
		break;
	}
	if (reg->tmo && reg->tmo->timeout)
		reg->tmo->last_act = ktime_get();
	if (!(reg->state & AEM_RS_DISABLED) && reg->node.q == AEM_Q_IDLE) {
		aem_enqueue(ctx, reg);
		aem_pending_changed(ctx);
	}
out:
	spin_unlock_irqrestore(&ctx->lock, flags);
	return was;
}

/**
 * aem_activate() - count occurrences of a registration
 * @reg:   the registration
 * @count: occurrences (>= 1)
 * @value: family value, merged as @how says
 * @how:   enum aem_value_merge
 *
 * Any context; never allocates, never fails. A disabled registration
 * counts and holds them; a doomed one (final delivery queued) ignores
 * them.
 */
void aem_activate(struct aem_event *reg, u64 count, u64 value,
		  enum aem_value_merge how)
{
	__aem_activate(reg, count, value, how, NULL, false);
}
EXPORT_SYMBOL_GPL(aem_activate);

/**
 * aem_activate_park() - count occurrences; park the source if unconsumed
 * @reg:   the registration
 * @count: occurrences (>= 1)
 * @value: family value, merged as @how says
 * @how:   enum aem_value_merge
 *
 * Like aem_activate(). Return: true when earlier occurrences were still
 * waiting to be taken (or the registration is going away): the family
 * should stop producing interrupts for it (a periodic timer stops
 * re-arming, as timerfd does), and its recheck() runs once the pending
 * delivery is taken, to count what it missed and start again. Decided
 * under the context lock, so a pop cannot slip between the test and the
 * request. Any context; never allocates.
 */
bool aem_activate_park(struct aem_event *reg, u64 count, u64 value,
		       enum aem_value_merge how)
{
	return __aem_activate(reg, count, value, how, NULL, true);
}
EXPORT_SYMBOL_GPL(aem_activate_park);

/**
 * aem_activate_data() - one occurrence that carries family data
 * @reg:   the registration
 * @value: aem_delivery.value
 * @data0: aem_delivery.data[0]
 * @data1: aem_delivery.data[1]
 *
 * Like aem_activate(reg, 1, value, AEM_VALUE_SET), and sets the data of
 * the pending delivery. A family that must not merge two of these calls
 * aem_reg_idle() first, in the owner's context (see aem_sock.c).
 */
void aem_activate_data(struct aem_event *reg, u64 value, u64 data0,
		       u64 data1)
{
	const u64 data[2] = { data0, data1 };

	__aem_activate(reg, 1, value, AEM_VALUE_SET, data, false);
}
EXPORT_SYMBOL_GPL(aem_activate_data);

/**
 * aem_reg_idle() - does @reg have nothing waiting for delivery?
 * @reg: the registration
 *
 * Return: true when no occurrence and no error is pending. Only the
 * family activates, so a family that checks this in its recheck()
 * (ctx->mutex held) and then activates once never merges two deliveries.
 */
bool aem_reg_idle(struct aem_event *reg)
{
	struct aem_ctx *ctx = reg->ctx;
	unsigned long flags;
	bool idle;

	spin_lock_irqsave(&ctx->lock, flags);
	idle = !reg->count && !reg->error;
	spin_unlock_irqrestore(&ctx->lock, flags);
	return idle;
}
EXPORT_SYMBOL_GPL(aem_reg_idle);

/**
 * aem_recheck_later() - have the family re-check @reg's source
 * @reg: the registration
 *
 * For wakeups that do not say what happened (a poll key of 0): the
 * family's recheck() runs in the owner's context (AEM_IOC_WAIT, poll())
 * before the next pop. Any context; never allocates.
 */
void aem_recheck_later(struct aem_event *reg)
{
	struct aem_ctx *ctx = reg->ctx;
	unsigned long flags;

	spin_lock_irqsave(&ctx->lock, flags);
	if (!(reg->state & AEM_RS_DOOMED) && list_empty(&reg->recheck_link)) {
		list_add_tail(&reg->recheck_link, &ctx->recheck);
		if (ctx->ring)
			WRITE_ONCE(ctx->ring->hdr->backlog, 1);
		irq_work_queue(&ctx->kick);
	}
	spin_unlock_irqrestore(&ctx->lock, flags);
}
EXPORT_SYMBOL_GPL(aem_recheck_later);

/*
 * Run family->recheck() for the registrations on ctx->recheck when the
 * call starts; ctx->mutex held, in the owner's context. The list is taken
 * whole under ctx->lock, and each entry is unlinked under ctx->lock before
 * its recheck runs. A registration queued again meanwhile (a level
 * triggered source that is still ready is popped into the ring by its own
 * activation, and the pop asks for the next re-check) waits for the next
 * call: one call does a bounded amount of work, however fast another
 * thread consumes the ring (it used to loop as long as the consumer kept
 * up, holding ctx->mutex). Destruction needs ctx->mutex, so nothing on the
 * local list is freed under us.
 */
void aem_run_recheck(struct aem_ctx *ctx)
{
	struct aem_event *reg;
	unsigned long flags;
	LIST_HEAD(batch);

	if (list_empty_careful(&ctx->recheck))
		return;
	spin_lock_irqsave(&ctx->lock, flags);
	list_splice_init(&ctx->recheck, &batch);
	spin_unlock_irqrestore(&ctx->lock, flags);
	for (;;) {
		spin_lock_irqsave(&ctx->lock, flags);
		reg = list_first_entry_or_null(&batch, struct aem_event,
					       recheck_link);
		if (reg)
			list_del_init(&reg->recheck_link);
		spin_unlock_irqrestore(&ctx->lock, flags);
		if (!reg)
			break;
		if (!(READ_ONCE(reg->state) & AEM_RS_DOOMED))
			reg->fam->recheck(reg);
		cond_resched();
	}
}
