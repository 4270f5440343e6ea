// SPDX-License-Identifier: GPL-2.0
/*
 * AEM core: families and registrations.
 *
 * A family module registers a struct aem_family; a registration is a
 * struct aem_event with the family's state after it (one kmalloc), found
 * by id in ctx->regs. It pins its family's module, so an old version of a
 * family unloads once its last registration is gone.
 *
 * LOCKING: aem_family_lock (global mutex) guards the family list.
 * Registration, evctl, raise, destruction and the reaper run under
 * ctx->mutex, which keeps a registration found in ctx->regs alive: only
 * a holder of ctx->mutex destroys one. The registration's pending state
 * is under ctx->lock (aem_queue.c). Order: aem_family_lock is never held
 * with ctx->mutex; ctx->mutex -> family locks -> ctx->lock.
 *
 * LIFETIME: an id is reserved (NULL in ctx->regs) before the family's
 * setup, which may already activate the registration; it becomes visible
 * (AEM_RS_LIVE) only once setup succeeded. A registration that got its
 * final delivery goes on ctx->reap and is destroyed by the reap work.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/hrtimer.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "aem_core.h"
#include "aem_fault.h"

static DEFINE_MUTEX(aem_family_lock);
static LIST_HEAD(aem_families);

/* ---- Families ---- */

/**
 * aem_register_family() - make an event family available
 * @fam: the family; must stay valid until aem_unregister_family()
 *
 * Return: 0, -EINVAL for a bad family, -EEXIST when the same type and
 * version is already loaded.
 */
int aem_register_family(struct aem_family *fam)
{
	struct aem_family *f;
	int ret = 0;

	if (!fam->type || fam->type > AEM_EV_MAX || !fam->version ||
	    !fam->setup || !fam->teardown ||
	    fam->arg_size > sizeof(union aem_reg_arg))
		return -EINVAL;
	mutex_lock(&aem_family_lock);
	list_for_each_entry(f, &aem_families, list) {
		if (f->type == fam->type && f->version == fam->version) {
			ret = -EEXIST;
			goto out;
		}
	}
	list_add_tail(&fam->list, &aem_families);
	pr_info("family %s (type %u) version %u registered\n",
		fam->name, fam->type, fam->version);
out:
	mutex_unlock(&aem_family_lock);
	return ret;
}
EXPORT_SYMBOL_GPL(aem_register_family);

/**
 * aem_unregister_family() - remove a family
 * @fam: a registered family
 *
 * Called from the family module's exit: no registration uses it any more,
 * because each one holds a reference on the module.
 */
void aem_unregister_family(struct aem_family *fam)
{
	mutex_lock(&aem_family_lock);
	list_del(&fam->list);
	mutex_unlock(&aem_family_lock);
}
EXPORT_SYMBOL_GPL(aem_unregister_family);

/* Newest family of @type (or exactly @version), module pinned; or NULL. */
static struct aem_family *aem_family_get(u32 type, u32 version)
{
	struct aem_family *f, *best = NULL;

	mutex_lock(&aem_family_lock);
	list_for_each_entry(f, &aem_families, list) {
		if (f->type != type)
			continue;
		if (version ? f->version == version :
		    (!best || f->version > best->version))
			best = f;
	}
	if (best && !try_module_get(best->owner))
		best = NULL;
	mutex_unlock(&aem_family_lock);
	return best;
}

void *aem_reg_priv(struct aem_event *reg)
{
	return reg->priv;
}
EXPORT_SYMBOL_GPL(aem_reg_priv);

u32 aem_reg_flags(const struct aem_event *reg)
{
	return reg->flags;
}
EXPORT_SYMBOL_GPL(aem_reg_flags);

u32 aem_reg_type(const struct aem_event *reg)
{
	return reg->type;
}
EXPORT_SYMBOL_GPL(aem_reg_type);

int aem_reg_id(const struct aem_event *reg)
{
	return reg->id;
}
EXPORT_SYMBOL_GPL(aem_reg_id);

void aem_reg_set_fd(struct aem_event *reg, int fd)
{
	reg->fd = fd;
}
EXPORT_SYMBOL_GPL(aem_reg_set_fd);

u64 aem_min_timer_period_ns(void)
{
	return READ_ONCE(aem_min_timer_period);
}
EXPORT_SYMBOL_GPL(aem_min_timer_period_ns);

/* ---- Registrations ---- */

static enum hrtimer_restart aem_tmo_fn(struct hrtimer *t)
{
	struct aem_event *reg = container_of(t, struct aem_tmo, timer)->reg;
	struct aem_ctx *ctx = reg->ctx;
	enum hrtimer_restart ret = HRTIMER_NORESTART;
	unsigned long flags;
	ktime_t deadline;

	spin_lock_irqsave(&ctx->lock, flags);
	if ((reg->state & AEM_RS_DOOMED) || AEM_MUTANT(timeout_never_fires))
		goto out;
	deadline = ktime_add(reg->tmo->last_act, reg->tmo->timeout);
	if (ktime_after(deadline, ktime_get())) {
		/* Activated since: wait for the rest of the window. */
		hrtimer_set_expires(t, deadline);
		ret = HRTIMER_RESTART;
		goto out;
	}
	reg->error = -ETIMEDOUT;
	reg->state |= AEM_RS_DOOMED;
	if (reg->node.q == AEM_Q_IDLE) {
		aem_enqueue(ctx, reg);
		aem_pending_changed(ctx);
	}
out:
	spin_unlock_irqrestore(&ctx->lock, flags);
	return ret;
}

/*
 * Take @reg off every list of the core: the queue, the reap and re-check
 * lists and the arena's waiters. Its family no longer activates it (torn
 * down, or its setup failed and unhooked). ctx->mutex held.
 */
static void aem_reg_unlink(struct aem_ctx *ctx, struct aem_event *reg)
{
	struct aem_arena *a = aem_ctx_arena(ctx);
	unsigned long flags;

	if (a) {
		spin_lock(&a->lock);
		list_del_init(&reg->arena_link);
		spin_unlock(&a->lock);
	}
	spin_lock_irqsave(&ctx->lock, flags);
	reg->state |= AEM_RS_DOOMED;
	aem_dequeue(ctx, reg);
	list_del_init(&reg->reap_link);
	list_del_init(&reg->recheck_link);
	aem_boost_check(ctx);
	spin_unlock_irqrestore(&ctx->lock, flags);
}

/* Destroy @reg, already erased from ctx->regs; ctx->mutex held. */
void aem_reg_destroy(struct aem_ctx *ctx, struct aem_event *reg)
{
	struct aem_family *fam = reg->fam;

	fam->teardown(reg);
	if (reg->tmo)
		hrtimer_cancel(&reg->tmo->timer);
	aem_reg_unlink(ctx, reg);
	ctx->nregs--;
	atomic_dec(&ctx->user->nregs);
	kfree(reg->tmo);
	kfree(reg);
	module_put(fam->owner);
}

/*
 * The reaper never sleeps on ctx->mutex: a holder may be stuck for long
 * (a page fault served by userfaultfd or FUSE in a copy to user space, a
 * FUSE ->poll()), and a kworker blocked behind it would trip the hung-task
 * detector. When the mutex is busy, its holder reschedules this work as
 * it lets go (aem_ctx_unlock()), so no final delivery is left unreaped.
 */
void aem_reap_fn(struct work_struct *work)
{
	struct aem_ctx *ctx = container_of(work, struct aem_ctx, reap_work);
	struct aem_event *reg;
	unsigned long flags;

	if (!mutex_trylock(&ctx->mutex))
		return;
	for (;;) {
		spin_lock_irqsave(&ctx->lock, flags);
		reg = list_first_entry_or_null(&ctx->reap, struct aem_event,
					       reap_link);
		if (reg)
			list_del_init(&reg->reap_link);
		spin_unlock_irqrestore(&ctx->lock, flags);
		if (!reg)
			break;
		if (xa_erase(&ctx->regs, reg->id) == reg)
			aem_reg_destroy(ctx, reg);
		cond_resched();
	}
	mutex_unlock(&ctx->mutex);
}

/* Drop ctx->mutex; hand the reaping that waited for it to the work. */
void aem_ctx_unlock(struct aem_ctx *ctx)
{
	mutex_unlock(&ctx->mutex);
	if (!list_empty_careful(&ctx->reap))
		schedule_work(&ctx->reap_work);
}

/* A live registration by id, or NULL; ctx->mutex held. */
static struct aem_event *aem_reg_find(struct aem_ctx *ctx, int id)
{
	struct aem_event *reg;

	if (id <= 0)
		return NULL;
	reg = xa_load(&ctx->regs, id);
	/* LIVE is written under ctx->mutex (held); DOOMED may come any time. */
	if (!reg || (READ_ONCE(reg->state) &
		     (AEM_RS_LIVE | AEM_RS_DOOMED)) != AEM_RS_LIVE)
		return NULL;
	return reg;
}

/* Priority from flags: default, or the AEM_PRIO() field; -EINVAL. */
static int aem_flags_prio(u32 flags)
{
	u32 p;

	if (!(flags & AEM_PRIO_GIVEN))
		return (flags & AEM_PRIO_FIELD) ? -EINVAL : AEM_PRIO_DEFAULT;
	p = (flags & AEM_PRIO_FIELD) >> AEM_PRIO_SHIFT;
	return p <= AEM_PRIO_MAX ? p : -EINVAL;
}

int aem_copy_in(void *dst, size_t ksize, const void __user *src, size_t ver0)
{
	u32 usize;

	if (get_user(usize, (const u32 __user *)src))
		return -EFAULT;
	if (usize < ver0)
		return -EINVAL;
	if (usize > PAGE_SIZE)
		return -E2BIG;
	return copy_struct_from_user(dst, ksize, src, usize);
}

/* Copy @src back, at most the caller's size (first u32 of @src). */
int aem_copy_out(void __user *dst, const void *src, size_t ksize)
{
	u32 usize = *(const u32 *)src;

	return copy_to_user(dst, src, min_t(size_t, usize, ksize)) ?
		-EFAULT : 0;
}

static bool aem_mem_is_zero(const void *p, size_t len)
{
	return !memchr_inv(p, 0, len);
}

int aem_ioc_register(struct aem_ctx *ctx, void __user *uarg)
{
	struct aem_reg __user *ureg = uarg;
	struct aem_family *fam;
	struct aem_event *reg;
	struct aem_reg kreg;
	unsigned long flags;
	int prio, ret;
	u32 id;

	ret = aem_copy_in(&kreg, sizeof(kreg), uarg, AEM_REG_SIZE_VER0);
	if (ret)
		return ret;
	if (kreg.reserved0 || (kreg.flags & ~AEM_FLAGS_VALID) ||
	    (kreg.flags & AEM_EXEC_MASK) == AEM_EXEC_MASK ||
	    ((kreg.flags & AEM_EDGE) && (kreg.flags & AEM_LEVEL)) ||
	    !kreg.type || kreg.type > AEM_EV_MAX || kreg.id)
		return -EINVAL;
	prio = aem_flags_prio(kreg.flags);
	if (prio < 0)
		return prio;
	if (!(READ_ONCE(aem_allowed_types) & BIT(kreg.type)) ||
	    !(READ_ONCE(aem_allowed_exec) & BIT(kreg.flags & AEM_EXEC_MASK)))
		return -EPERM;
	fam = aem_family_get(kreg.type, kreg.family_version);
	if (!fam)
		return -EOPNOTSUPP;
	ret = -EINVAL;
	if (!aem_mem_is_zero((u8 *)&kreg.arg + fam->arg_size,
			     sizeof(kreg.arg) - fam->arg_size))
		goto out_put;

	/*
	 * Reserve the id (lookups see NULL until setup succeeded) and store
	 * it before the source is hooked: from then on the first delivery
	 * may reach the ring or another thread's WAIT, and a registration
	 * that exists must never be reported as an error. The store may
	 * fault, so it is done before ctx->mutex is taken.
	 */
	ret = xa_alloc_cyclic(&ctx->regs, &id, NULL, XA_LIMIT(1, INT_MAX),
			      &ctx->next_id, GFP_KERNEL_ACCOUNT);
	if (ret < 0)
		goto out_put;
	ret = -EFAULT;
	if (put_user(id, &ureg->id))
		goto out_unreserve;
	mutex_lock(&ctx->mutex);
	ret = -EMFILE;
	if (ctx->nregs >= READ_ONCE(aem_max_regs))
		goto out_unlock;
	ret = -EDQUOT;
	if (atomic_inc_return(&ctx->user->nregs) > READ_ONCE(aem_max_regs_per_user))
		goto out_unuser;
	ret = -ENOMEM;
	if (aem_should_fail(&aem_fail_reg_alloc))
		goto out_unuser;
	reg = kzalloc(struct_size(reg, priv,
				  DIV_ROUND_UP(fam->priv_size, sizeof(long))),
		      GFP_KERNEL_ACCOUNT);
	if (!reg)
		goto out_unuser;
	reg->ctx = ctx;
	reg->fam = fam;
	reg->type = kreg.type;
	reg->flags = kreg.flags;
	reg->fd = -1;
	reg->user_data = kreg.user_data;
	INIT_LIST_HEAD(&reg->node.link);
	reg->node.prio = prio;
	INIT_LIST_HEAD(&reg->reap_link);
	INIT_LIST_HEAD(&reg->recheck_link);
	INIT_LIST_HEAD(&reg->arena_link);
	if (kreg.flags & AEM_DISABLED)
		reg->state |= AEM_RS_DISABLED;
	reg->id = id;
	ctx->nregs++;
	ret = fam->setup(reg, &kreg.arg);
	if (ret) {
		/*
		 * The family unhooked its source, but a wakeup that came
		 * during setup may have queued the registration for a
		 * re-check, an activation or an arena wait meanwhile.
		 */
		aem_reg_unlink(ctx, reg);
		ctx->nregs--;
		goto out_free;
	}
	xa_store(&ctx->regs, id, reg, GFP_KERNEL);	/* slot exists */
	/*
	 * Under ctx->lock like every other writer of @state: the source is
	 * hooked, and an activation on another CPU rewrites @state (the
	 * merge bits, PARKED) under ctx->lock. A plain |= here raced with
	 * it and could lose LIVE: a registration then no one can find or
	 * clean (CLEAN said -ENOENT) until the context closes.
	 */
	spin_lock_irqsave(&ctx->lock, flags);
	reg->state |= AEM_RS_LIVE;
	spin_unlock_irqrestore(&ctx->lock, flags);
	aem_ctx_unlock(ctx);
	return id;

out_free:
	kfree(reg);
out_unuser:
	atomic_dec(&ctx->user->nregs);
out_unlock:
	aem_ctx_unlock(ctx);
out_unreserve:
	xa_erase(&ctx->regs, id);
out_put:
	module_put(fam->owner);
	return ret;
}

/* AEM_CTL_LOOKUP: fill @info (copied in and out by the caller). */
static void aem_ctl_lookup(struct aem_ctx *ctx, struct aem_event *reg,
			   struct aem_reg_info *info)
{
	unsigned long flags;

	info->id = reg->id;
	info->type = reg->type;
	info->fd = reg->fd;
	info->family_version = reg->fam->version;
	info->user_data = reg->user_data;
	info->timeout_ms = reg->tmo ? ktime_to_ms(reg->tmo->timeout) : 0;
	/* Pairs with the store-release that published the ring. */
	struct aem_ring *ring = smp_load_acquire(&ctx->ring);
	struct aem_ring_share sh;
	u32 ktail = 0;

	spin_lock_irqsave(&ctx->lock, flags);
	info->prio = reg->node.prio;
	info->flags = (reg->flags & ~AEM_PRIO_FIELD) | AEM_PRIO_GIVEN |
		      (info->prio << AEM_PRIO_SHIFT);
	info->enabled = !(reg->state & AEM_RS_DISABLED);
	info->pending = reg->count;
	if (ring)
		ktail = ring->ktail;
	spin_unlock_irqrestore(&ctx->lock, flags);
	if (ring) {
		aem_ring_unconsumed(ring, ktail, reg->id, &sh);
		info->pending = aem_sat_add(info->pending, sh.occurrences);
	}
}

/* AEM_CTL_STATS: fill @st (copied in and out by the caller). */
static void aem_ctl_stats(struct aem_ctx *ctx, struct aem_event *reg,
			  struct aem_reg_stats *st)
{
	unsigned long flags;

	/* Pairs with the store-release that published the ring. */
	struct aem_ring *ring = smp_load_acquire(&ctx->ring);
	struct aem_ring_share sh;
	u32 ktail = 0;

	spin_lock_irqsave(&ctx->lock, flags);
	st->activations = reg->stats.activations;
	st->deliveries = reg->stats.deliveries;
	st->merged = reg->stats.merged;
	st->errors = reg->stats.errors;
	st->overflows = reg->stats.overflows;
	st->pending = AEM_MUTANT(stats_pending_zero) ? 0 : reg->count;
	if (ring)
		ktail = ring->ktail;
	spin_unlock_irqrestore(&ctx->lock, flags);
	if (!ring)
		return;
	/* In the ring, not consumed: pending, not delivered yet. */
	aem_ring_unconsumed(ring, ktail, reg->id, &sh);
	st->deliveries -= min(st->deliveries, sh.entries);
	st->merged -= min(st->merged, sh.merged);
	st->errors -= min(st->errors, sh.errors);
	st->pending = aem_sat_add(st->pending, sh.occurrences);
}

static int aem_ctl_set_prio(struct aem_ctx *ctx, struct aem_event *reg,
			    u64 prio)
{
	unsigned long flags;

	if (prio > AEM_PRIO_MAX)
		return -EINVAL;
	spin_lock_irqsave(&ctx->lock, flags);
	if (reg->node.q == AEM_Q_QUEUED) {
		aem_level_del(ctx, &reg->node);
		reg->node.prio = prio;
		aem_level_add(ctx, &reg->node, false);
	} else {
		reg->node.prio = prio;
	}
	aem_boost_check(ctx);
	spin_unlock_irqrestore(&ctx->lock, flags);
	return 0;
}

static int aem_ctl_enable(struct aem_ctx *ctx, struct aem_event *reg, bool on)
{
	unsigned long flags;

	spin_lock_irqsave(&ctx->lock, flags);
	if (on) {
		reg->state &= ~AEM_RS_DISABLED;
		if ((reg->count || reg->error) && reg->node.q == AEM_Q_IDLE) {
			aem_enqueue(ctx, reg);
			aem_pending_changed(ctx);
		}
	} else {
		reg->state |= AEM_RS_DISABLED;
		aem_dequeue(ctx, reg);
		aem_boost_check(ctx);
	}
	spin_unlock_irqrestore(&ctx->lock, flags);
	return 0;
}

static int aem_ctl_set_timeout(struct aem_ctx *ctx, struct aem_event *reg,
			       u64 ms)
{
	struct aem_tmo *tmo = reg->tmo;
	unsigned long flags;

	if (ms > (u64)INT_MAX * MSEC_PER_SEC)
		return -EINVAL;
	if (!tmo) {
		if (!ms)
			return 0;
		tmo = kzalloc(sizeof(*tmo), GFP_KERNEL_ACCOUNT);
		if (!tmo)
			return -ENOMEM;
		hrtimer_init(&tmo->timer, CLOCK_MONOTONIC, HRTIMER_MODE_REL);
		tmo->timer.function = aem_tmo_fn;
		tmo->reg = reg;
	}
	hrtimer_cancel(&tmo->timer);
	/* Published with its window under ctx->lock: activation reads both. */
	spin_lock_irqsave(&ctx->lock, flags);
	reg->tmo = tmo;
	tmo->timeout = ms_to_ktime(ms);
	tmo->last_act = ktime_get();
	spin_unlock_irqrestore(&ctx->lock, flags);
	if (ms)
		hrtimer_start(&tmo->timer, tmo->timeout, HRTIMER_MODE_REL);
	return 0;
}

/*
 * The structs LOOKUP and STATS point to are copied in before and out after
 * ctx->mutex (a fault in a copy may wait on userfaultfd or FUSE: never
 * with the context's mutex held).
 */
int aem_ioc_ctl(struct aem_ctx *ctx, void __user *uarg)
{
	void __user *uout = NULL;
	union {
		struct aem_reg_info info;
		struct aem_reg_stats st;
	} out;
	struct aem_event *reg;
	struct aem_ctl c;
	int ret;

	ret = aem_copy_in(&c, sizeof(c), uarg, AEM_CTL_SIZE_VER0);
	if (ret)
		return ret;
	if (c.reserved0 || !c.op || c.op > AEM_CTL_MAX)
		return -EINVAL;
	if (c.op == AEM_CTL_LOOKUP) {
		uout = u64_to_user_ptr(c.arg);
		ret = aem_copy_in(&out.info, sizeof(out.info), uout,
				  AEM_REG_INFO_SIZE_VER0);
	} else if (c.op == AEM_CTL_STATS) {
		uout = u64_to_user_ptr(c.arg);
		ret = aem_copy_in(&out.st, sizeof(out.st), uout,
				  AEM_REG_STATS_SIZE_VER0);
		if (!ret && out.st.reserved0)
			ret = -EINVAL;
	}
	mutex_lock(&ctx->mutex);
	reg = aem_reg_find(ctx, c.id);
	if (!reg || ret) {
		/* An unknown id is -ENOENT whatever the pointer. */
		ret = reg ? ret : -ENOENT;
		uout = NULL;
		goto out;
	}
	switch (c.op) {
	case AEM_CTL_ENABLE:
	case AEM_CTL_DISABLE:
	case AEM_CTL_CLEAN:
		ret = c.arg ? -EINVAL :
		      c.op == AEM_CTL_CLEAN ? 0 :
		      aem_ctl_enable(ctx, reg, c.op == AEM_CTL_ENABLE);
		if (!ret && c.op == AEM_CTL_CLEAN) {
			xa_erase(&ctx->regs, reg->id);
			aem_reg_destroy(ctx, reg);
		}
		break;
	case AEM_CTL_FILTER:
		ret = reg->fam->filter ? reg->fam->filter(reg, c.arg) :
		      -EOPNOTSUPP;
		break;
	case AEM_CTL_LOOKUP:
		if (reg->fam->sync)
			reg->fam->sync(reg);
		aem_ctl_lookup(ctx, reg, &out.info);
		break;
	case AEM_CTL_SET_TIMEOUT:
		ret = aem_ctl_set_timeout(ctx, reg, c.arg);
		break;
	case AEM_CTL_SET_PRIO:
		ret = aem_ctl_set_prio(ctx, reg, c.arg);
		break;
	case AEM_CTL_STATS:
		if (reg->fam->sync)
			reg->fam->sync(reg);
		aem_ctl_stats(ctx, reg, &out.st);
		break;
	}
out:
	aem_ctx_unlock(ctx);
	if (!ret && uout)
		ret = aem_copy_out(uout, &out, c.op == AEM_CTL_LOOKUP ?
				   sizeof(out.info) : sizeof(out.st));
	return ret;
}

int aem_ioc_raise(struct aem_ctx *ctx, void __user *uarg)
{
	struct aem_raise r;
	struct aem_event *reg;
	int ret;

	ret = aem_copy_in(&r, sizeof(r), uarg, AEM_RAISE_SIZE_VER0);
	if (ret)
		return ret;
	if (r.flags || r.reserved0 || !r.count)
		return -EINVAL;
	mutex_lock(&ctx->mutex);
	reg = aem_reg_find(ctx, r.id);
	if (!reg)
		ret = -ENOENT;
	else if (!reg->fam->raise)
		ret = -EOPNOTSUPP;
	else
		ret = reg->fam->raise(reg, r.count, r.value);
	aem_ctx_unlock(ctx);
	return ret;
}

int aem_ioc_info(void __user *uarg)
{
	struct aem_family *f;
	struct aem_info info;
	int ret;

	ret = aem_copy_in(&info, sizeof(info), uarg, AEM_INFO_SIZE_VER0);
	if (ret)
		return ret;
	memset((u8 *)&info + sizeof(info.size), 0,
	       sizeof(info) - sizeof(info.size));
	info.api_version = AEM_API_VERSION;
	info.prio_levels = AEM_PRIO_LEVELS;
	info.max_regs = READ_ONCE(aem_max_regs);
	info.max_pending = READ_ONCE(aem_max_pending);
	info.max_regs_per_user = READ_ONCE(aem_max_regs_per_user);
	info.min_timer_period_ns = READ_ONCE(aem_min_timer_period);
	info.allowed_types = READ_ONCE(aem_allowed_types);
	info.allowed_exec = READ_ONCE(aem_allowed_exec);
	info.boost_prio = READ_ONCE(aem_boost_prio);
	info.boost_ceiling = READ_ONCE(aem_boost_ceiling);
	info.delivery_size = sizeof(struct aem_delivery);
	info.max_arena_bytes = READ_ONCE(aem_max_arena_bytes);
	mutex_lock(&aem_family_lock);
	list_for_each_entry(f, &aem_families, list) {
		info.types |= BIT(f->type);
		if (f->version > info.family_version[f->type])
			info.family_version[f->type] = f->version;
	}
	mutex_unlock(&aem_family_lock);
	return aem_copy_out(uarg, &info, sizeof(info));
}
