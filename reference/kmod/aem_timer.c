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
 * elapsed, however late user space consumes them. The minimum period
 * (module parameter min_timer_period_ns of aem.ko) bounds the interrupt
 * rate a user can cause, as timerfd's lazy re-arm would.
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
 */
struct aem_timer {
	struct hrtimer timer;
	ktime_t period;
	struct aem_event *reg;
};

static enum hrtimer_restart aem_timer_fn(struct hrtimer *t)
{
	struct aem_timer *at = container_of(t, struct aem_timer, timer);
	u64 n;

	if (!at->period) {
		aem_activate(at->reg, 1, 1, AEM_VALUE_ADD);
		return HRTIMER_NORESTART;
	}
	n = hrtimer_forward_now(t, at->period);
	aem_activate(at->reg, n, n, AEM_VALUE_ADD);
	return HRTIMER_RESTART;
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
