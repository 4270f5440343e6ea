// SPDX-License-Identifier: GPL-2.0
/*
 * AEM timers (AEM_EV_TIMER): one hrtimer per registration, one-shot or
 * periodic, relative or absolute (AEM_ABSTIME), CLOCK_MONOTONIC or
 * CLOCK_REALTIME (AEM_REALTIME).
 *
 * Expirations are exact: a periodic timer forwards itself with
 * hrtimer_forward_now(), whose return value counts the periods elapsed
 * since the last expiry (overruns included), and activates the
 * registration with that count; the core adds it to the pending count,
 * so the sum delivered to user space equals the number of periods that
 * elapsed, however late user space consumes them.
 *
 * Interrupt load nobody consumes: like timerfd and POSIX timers, a
 * periodic timer stops re-arming while its last expiration was not taken.
 * The expiry that finds the previous one still pending parks the timer
 * (aem_activate_park(): decided under the context lock, so a delivery
 * cannot be taken between the test and the park) and returns
 * HRTIMER_NORESTART. The core then runs recheck() in the owner's context
 * before its next pop, which forwards the timer over the periods that
 * elapsed meanwhile and counts them into the pending delivery (one merged
 * delivery, as before), and again once that delivery is taken, which
 * starts the timer again. AEM_CTL_STATS and
 * LOOKUP count them first too (sync()), so counts stay exact at any read.
 * A user who never consumes costs two interrupts per timer, not one per
 * period; the minimum period (module parameter min_timer_period_ns of
 * aem.ko) bounds the rate of the timers that are consumed.
 *
 * LOCKING: at->lock (irq-safe) serialises the expiry's decision and the
 * restart; at->lock -> ctx->lock (activation). The restart may run while
 * the callback that parked is still returning: the timer is not enqueued
 * then, so hrtimer_forward() is allowed, and the callback's
 * HRTIMER_NORESTART leaves the new start alone.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/hrtimer.h>
#include <linux/module.h>

#include "aem_family.h"

#define AEM_TIMER_VERSION	1

/**
 * struct aem_timer - family state of a timer registration
 * @timer:  the hrtimer (hardirq callback)
 * @period: 0 for a one-shot timer
 * @reg:    the registration it activates
 * @lock:   see LOCKING
 * @parked: the last expiry found its predecessor unconsumed and did not
 *          re-arm (@lock)
 */
struct aem_timer {
	struct hrtimer timer;
	ktime_t period;
	struct aem_event *reg;
	spinlock_t lock;	/* see LOCKING */
	bool parked;
};

static enum hrtimer_restart aem_timer_fn(struct hrtimer *t)
{
	struct aem_timer *at = container_of(t, struct aem_timer, timer);
	enum hrtimer_restart ret = HRTIMER_RESTART;
	unsigned long flags;
	u64 n;

	if (!at->period || AEM_MUTANT(timer_fires_once)) {
		aem_activate(at->reg, 1, 1, AEM_VALUE_ADD);
		return HRTIMER_NORESTART;
	}
	spin_lock_irqsave(&at->lock, flags);
	n = hrtimer_forward_now(t, at->period);
	if (aem_activate_park(at->reg, n, n, AEM_VALUE_ADD)) {
		at->parked = true;
		ret = HRTIMER_NORESTART;
	}
	spin_unlock_irqrestore(&at->lock, flags);
	return ret;
}

/*
 * Count the periods a parked timer missed; restart it when @restart and
 * nobody left them unconsumed. at->lock held.
 */
static void aem_timer_catch_up(struct aem_timer *at, bool restart)
{
	u64 n;

	if (!at->parked)
		return;
	n = hrtimer_forward_now(&at->timer, at->period);
	if (AEM_MUTANT(timer_overruns_lost) && n)
		n = 1;		/* the periods missed while parked: one */
	if (n && aem_activate_park(at->reg, n, n, AEM_VALUE_ADD))
		return;		/* still unconsumed: stay parked */
	/* Restart once the parked delivery was taken (its pop re-checks). */
	if (!restart || (!n && !aem_reg_idle(at->reg)))
		return;
	at->parked = false;
	hrtimer_start_expires(&at->timer, HRTIMER_MODE_ABS);
}

/* The parked expiration was taken (owner's context, ctx->mutex). */
static void aem_timer_recheck(struct aem_event *reg)
{
	struct aem_timer *at = aem_reg_priv(reg);
	unsigned long flags;

	spin_lock_irqsave(&at->lock, flags);
	aem_timer_catch_up(at, true);
	spin_unlock_irqrestore(&at->lock, flags);
}

/* Before STATS and LOOKUP: the periods a parked timer missed. */
static void aem_timer_sync(struct aem_event *reg)
{
	struct aem_timer *at = aem_reg_priv(reg);
	unsigned long flags;

	spin_lock_irqsave(&at->lock, flags);
	aem_timer_catch_up(at, false);
	spin_unlock_irqrestore(&at->lock, flags);
}

static int aem_timer_setup(struct aem_event *reg, const union aem_reg_arg *arg)
{
	struct aem_timer *at = aem_reg_priv(reg);
	u32 flags = aem_reg_flags(reg);
	enum hrtimer_mode mode;
	clockid_t clock;

	if (flags & (AEM_EDGE | AEM_LEVEL))
		return -EINVAL;
	if (arg->timer.value_ns < 0 || arg->timer.period_ns < 0)
		return -EINVAL;
	if (arg->timer.period_ns &&
	    (u64)arg->timer.period_ns < aem_min_timer_period_ns())
		return -EINVAL;
	clock = (flags & AEM_REALTIME) ? CLOCK_REALTIME : CLOCK_MONOTONIC;
	mode = (flags & AEM_ABSTIME) ? HRTIMER_MODE_ABS : HRTIMER_MODE_REL;
	at->reg = reg;
	at->period = ns_to_ktime(arg->timer.period_ns);
	spin_lock_init(&at->lock);
	hrtimer_init(&at->timer, clock, mode);
	at->timer.function = aem_timer_fn;
	hrtimer_start(&at->timer, ns_to_ktime(arg->timer.value_ns), mode);
	return 0;
}

static void aem_timer_teardown(struct aem_event *reg)
{
	struct aem_timer *at = aem_reg_priv(reg);

	hrtimer_cancel(&at->timer);
}

static struct aem_family aem_timer_family = {
	.type		= AEM_EV_TIMER,
	.version	= AEM_TIMER_VERSION,
	.name		= "timer",
	.owner		= THIS_MODULE,
	.priv_size	= sizeof(struct aem_timer),
	.arg_size	= sizeof(struct aem_timer_arg),
	.setup		= aem_timer_setup,
	.teardown	= aem_timer_teardown,
	.recheck	= aem_timer_recheck,
	.sync		= aem_timer_sync,
	.parked_only	= true,
};

static int __init aem_timer_init(void)
{
	return aem_register_family(&aem_timer_family);
}

static void __exit aem_timer_exit(void)
{
	aem_unregister_family(&aem_timer_family);
}

module_init(aem_timer_init);
module_exit(aem_timer_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("AEM timer event family");
MODULE_VERSION("1.0");
