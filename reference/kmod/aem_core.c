// SPDX-License-Identifier: GPL-2.0
/*
 * AEM - the Asynchronous Event Mechanism, core module.
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
#include <linux/mm.h>
#include <linux/overflow.h>
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

#include "aem_family.h"
#include "aem_fault.h"

/* ---- Policy and limits (module parameters) ---- */

static unsigned int max_regs = 65536;
module_param(max_regs, uint, 0644);
MODULE_PARM_DESC(max_regs, "Registrations per context (default 65536)");

static unsigned int max_regs_per_user = 1048576;
module_param(max_regs_per_user, uint, 0644);
MODULE_PARM_DESC(max_regs_per_user,
		 "Registrations per user (effective uid of the opener) over all contexts (default 1048576)");

static unsigned int max_pending = 65536;
module_param(max_pending, uint, 0644);
MODULE_PARM_DESC(max_pending,
		 "Simultaneously pending registrations per context; over it activations are deferred and counted, and an overload notification is queued (default 65536)");

static unsigned int allowed_types = ~0u;
module_param(allowed_types, uint, 0644);
MODULE_PARM_DESC(allowed_types,
		 "Bit (1 << AEM_EV_x): event type x may be registered (default all)");

static unsigned int allowed_exec = 0x7;
module_param(allowed_exec, uint, 0644);
MODULE_PARM_DESC(allowed_exec,
		 "Bit (1 << AEM_EXEC_x): executor x may be used (default 0x7: all)");

static unsigned int boost_prio;
module_param(boost_prio, uint, 0644);
MODULE_PARM_DESC(boost_prio,
		 "While a registration of this priority or higher is pending, the context's thread runs at boost_ceiling; 0: no boosting (default 0)");

static int boost_ceiling;
module_param(boost_ceiling, int, 0644);
MODULE_PARM_DESC(boost_ceiling,
		 "Nice value of a boosted thread: the admin's ceiling, applied without the thread's own permission, never lowering its priority (default 0)");

static unsigned long long min_timer_period_ns = 100000;
module_param(min_timer_period_ns, ullong, 0644);
MODULE_PARM_DESC(min_timer_period_ns,
		 "Shortest period of a periodic timer in ns (default 100000)");

static unsigned long long max_arena_bytes = 64ull << 20;
module_param(max_arena_bytes, ullong, 0644);
MODULE_PARM_DESC(max_arena_bytes,
		 "Largest event-data arena of a context in bytes (default 64 MiB)");

#define AEM_MAX_RING_ENTRIES	4096
#define AEM_ARENA_BLOCK		1024
#define AEM_ARENA_PGOFF		(AEM_ARENA_OFFSET >> PAGE_SHIFT)
#define AEM_RING_ENTRIES_OFF	256
#define AEM_WAIT_MAX		1024
#define AEM_WAIT_BATCH		64

/* ---- Data structures ---- */

/* Where a pending node is. */
enum aem_qstate {
	AEM_Q_IDLE,		/* not queued */
	AEM_Q_QUEUED,		/* on ctx->level[prio] */
	AEM_Q_OVERFLOW,		/* on ctx->overflow (pending limit) */
};

/**
 * struct aem_pnode - a pending node, embedded: queueing never allocates
 * @link:  on ctx->level[@prio] or ctx->overflow
 * @prio:  the level it is (or will be) queued at
 * @q:     enum aem_qstate
 */
struct aem_pnode {
	struct list_head link;
	u8 prio;
	u8 q;
};

/* struct aem_event.state bits */
#define AEM_RS_DISABLED		0x1	/* occurrences held, not queued */
#define AEM_RS_DOOMED		0x2	/* final delivery queued or taken */
#define AEM_RS_LIVE		0x4	/* setup done, visible in ctx->regs */

/**
 * struct aem_event - one registration
 * @ctx:        the owning context
 * @fam:        its family (module pinned)
 * @id:         the id (> 0) in ctx->regs
 * @type:       AEM_EV_*
 * @flags:      the AEM_* flags given at registration
 * @fd:         watched fd given at registration, -1: none
 * @user_data:  returned in every delivery
 * @node:       the embedded pending node (ctx->lock)
 * @state:      AEM_RS_* (ctx->lock)
 * @error:      error to deliver, 0: none (ctx->lock)
 * @count:      occurrences not yet delivered (ctx->lock)
 * @value:      merged family value not yet delivered (ctx->lock)
 * @data:       family data of the pending delivery (ctx->lock)
 * @arena_link: on the arena's waiters while a family waits for room
 *              (arena->lock)
 * @reap_link:  on ctx->reap once its final delivery was taken (ctx->lock)
 * @recheck_link: on ctx->recheck while the family must re-check the source
 *              in the owner's context (level trigger, key-less wakeups)
 *              (ctx->lock)
 * @tmo:        the timeout state, allocated by the first
 *              AEM_CTL_SET_TIMEOUT (ctx->mutex) and published under
 *              ctx->lock: most registrations never have one, and an
 *              embedded hrtimer would push every registration from
 *              kmalloc-192 into kmalloc-256 (AEM-3.3.1: at most 256 bytes of
 *              kernel memory per registration, the id index included)
 * @stats:      AEM_CTL_STATS counters (ctx->lock); errors and overflows are
 *              32-bit to keep the registration in 192 bytes
 * @priv:       family state, @fam->priv_size bytes
 */
struct aem_event {
	struct aem_ctx *ctx;
	struct aem_family *fam;
	int id;
	u32 type;
	u32 flags;
	int fd;
	u64 user_data;
	struct aem_pnode node;
	u32 state;
	int error;
	u64 count;
	u64 value;
	u64 data[2];
	struct list_head arena_link;
	struct list_head reap_link;
	struct list_head recheck_link;
	struct aem_tmo *tmo;
	struct {
		u64 activations;
		u64 deliveries;
		u64 merged;
		u32 errors;
		u32 overflows;
	} stats;
	unsigned long priv[];
};

/**
 * struct aem_tmo - the timeout of a registration (AEM_CTL_SET_TIMEOUT)
 * @timer:    expires when the registration was not activated for @timeout
 * @reg:      the registration
 * @timeout:  the window, 0: none (set under ctx->mutex and ctx->lock)
 * @last_act: time of the last activation (ctx->lock)
 */
struct aem_tmo {
	struct hrtimer timer;
	struct aem_event *reg;
	ktime_t timeout;
	ktime_t last_act;
};

/**
 * struct aem_ring - the mmap'd completion ring
 * @mem:     vmalloc_user() memory: header, then the entries
 * @size:    bytes of @mem (page multiple)
 * @hdr:     header at the start of @mem
 * @ents:    entry array at AEM_RING_ENTRIES_OFF
 * @entries: number of entries (power of two)
 * @ktail:   the kernel's private tail; hdr->tail is only written
 * @user:    the user its pages are charged to (RLIMIT_MEMLOCK, like
 *           io_uring's rings), referenced; NULL: not charged
 *           (CAP_IPC_LOCK)
 * @pages:   pages charged to @user->locked_vm
 */
struct aem_ring {
	void *mem;
	size_t size;
	struct user_struct *user;
	unsigned long pages;
	struct aem_ring_hdr *hdr;
	struct aem_delivery *ents;
	u32 entries;
	u32 ktail;
};

/**
 * struct aem_arena - the data arena (mmap'd at AEM_ARENA_OFFSET)
 * @lock:    protects the bitmaps and @waiters; process context only, never
 *           taken with ctx->lock held (arena->lock -> ctx->lock)
 * @mem:     vmalloc_user() memory, written by families, read by user space
 * @size:    bytes of @mem (page multiple)
 * @nblocks: @size / AEM_ARENA_BLOCK
 * @used:    bit per block: allocated
 * @start:   bit per block: first block of a chunk
 * @waiters: registrations to re-check when a chunk is freed
 *
 * The allocator's records live here only, never in the shared mapping.
 */
struct aem_arena {
	spinlock_t lock;	/* see above */
	void *mem;
	size_t size;
	unsigned long nblocks;
	unsigned long *used;
	unsigned long *start;
	struct list_head waiters;
};

/**
 * struct aem_user - per-user accounting (the opener's effective uid)
 * @node:  in aem_users (aem_users_lock)
 * @uid:   the user
 * @refs:  contexts of this user (aem_users_lock)
 * @nregs: registrations of this user, all contexts
 */
struct aem_user {
	struct hlist_node node;
	kuid_t uid;
	unsigned int refs;
	atomic_t nregs;
};

/**
 * struct aem_ctx - one open of /dev/aem
 * @lock:        see LOCKING
 * @bitmap:      bit p set while ctx->level[p] is not empty (ctx->lock)
 * @level:       FIFO of pending nodes per priority (ctx->lock)
 * @overflow:    FIFO of nodes deferred by max_pending (ctx->lock)
 * @npending:    registrations on @level (ctx->lock)
 * @overload:    the context's own node for overload notifications
 * @overload_count: activations deferred since the last notification
 * @reap:        registrations whose final delivery was taken (ctx->lock)
 * @recheck:     registrations whose family->recheck() must run in the
 *               owner's context before the next pop (ctx->lock)
 * @doorbell:    signal sent, nothing re-armed it yet (ctx->lock; used
 *               when there is no ring, else ring->hdr->doorbell)
 * @signo:       doorbell signal, 0: none (ctx->lock)
 * @sig_task:    the thread it goes to, referenced (ctx->lock to read;
 *               replaced under ctx->mutex, old one put after
 *               irq_work_sync())
 * @ring:        completion ring or NULL; set once (ctx->lock)
 * @arena:       data arena or NULL; set once (ctx->mutex), read locklessly
 *               with acquire
 * @wq:          poll() and AEM_IOC_WAIT sleepers
 * @kick:        irq_work: wake @wq, ring the doorbell
 * @reap_work:   destroys the registrations on @reap
 * @mutex:       see LOCKING
 * @regs:        id -> struct aem_event (xarray; ctx->mutex for changes)
 * @next_id:     cyclic id allocation hint
 * @nregs:       entries in @regs (ctx->mutex)
 * @opener:      the thread that opened the context (referenced)
 * @user:        the opener's struct aem_user (referenced)
 * @boost_want:  a pending level >= boost_prio exists, or @boost_hold
 *               (ctx->lock)
 * @boost_hold:  AEM_IOC_WAIT popped a delivery at >= boost_prio and its
 *               caller has not come back with another ioctl (it runs the
 *               handler): the boost lasts until then (ctx->lock)
 * @boost_hold_task: that caller (compared, never dereferenced)
 * @boost_pid:   the thread that last popped a delivery at >= boost_prio,
 *               referenced: the next boost goes to it, as the library
 *               routes one executor's deliveries to one thread (ctx->lock)
 * @boost_gen:   bumped when @boost_want changes (ctx->lock)
 * @boost_applied: the @boost_gen last applied (boost_mutex)
 * @boost_work:  applies @boost_want from atomic context (sleepable)
 * @boost_mutex: serialises applying @boost_want (the work, or the ioctl
 *               that changed it) and the three fields below
 * @boosted:     the thread we boosted, referenced, or NULL (boost_mutex)
 * @boost_nice:  the nice value we set (boost_mutex)
 * @saved_nice:  its nice value before (boost_mutex)
 * @may_nice:    the opener had CAP_SYS_NICE: the ceiling is not clamped to
 *               RLIMIT_NICE (set at open, read by boost_work)
 * @tgid:        the owning thread group (referenced)
 * @mm:          the owning mm (mmgrab()ed)
 * @deferred_link: on aem_deferred while a doorbell signal waits for its
 *               thread's return from an allowed system call
 *               (aem_deferred_lock, as are the next two)
 * @deferred_task: the thread it goes to (ctx->sig_task at the time)
 * @deferred_signo: the signal
 */
struct aem_ctx {
	spinlock_t lock;		/* see LOCKING */
	u64 bitmap;
	struct list_head level[AEM_PRIO_LEVELS];
	struct list_head overflow;
	u32 npending;
	struct aem_pnode overload;
	u64 overload_count;
	struct list_head reap;
	struct list_head recheck;
	bool doorbell;
	int signo;
	struct task_struct *sig_task;
	struct aem_ring *ring;
	struct aem_arena *arena;
	wait_queue_head_t wq;
	struct irq_work kick;
	struct work_struct reap_work;
	struct mutex mutex;		/* see LOCKING */
	struct xarray regs;
	u32 next_id;
	u32 nregs;
	struct task_struct *opener;
	struct aem_user *user;
	bool boost_want;
	bool boost_hold;
	struct task_struct *boost_hold_task;
	struct pid *boost_pid;
	unsigned int boost_gen;
	unsigned int boost_applied;
	struct work_struct boost_work;
	struct mutex boost_mutex;	/* see @boost_mutex above */
	struct task_struct *boosted;
	int boost_nice;
	int saved_nice;
	bool may_nice;
	struct pid *tgid;
	struct mm_struct *mm;
	struct list_head deferred_link;
	struct task_struct *deferred_task;
	int deferred_signo;
};

static const struct file_operations aem_fops;
static DEFINE_MUTEX(aem_family_lock);
static LIST_HEAD(aem_families);
static struct dentry *aem_debugfs;
static DEFINE_MUTEX(aem_users_lock);
static DEFINE_HASHTABLE(aem_users, 6);

static struct aem_user *aem_user_get(kuid_t uid)
{
	struct aem_user *u;

	mutex_lock(&aem_users_lock);
	hash_for_each_possible(aem_users, u, node, __kuid_val(uid)) {
		if (uid_eq(u->uid, uid)) {
			u->refs++;
			goto out;
		}
	}
	u = kzalloc(sizeof(*u), GFP_KERNEL);
	if (u) {
		u->uid = uid;
		u->refs = 1;
		hash_add(aem_users, &u->node, __kuid_val(uid));
	}
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

/* The arena, or NULL; pairs with the store-release in arena setup. */
static struct aem_arena *aem_ctx_arena(struct aem_ctx *ctx)
{
	/* Set once: its fields are initialised before it is published. */
	return smp_load_acquire(&ctx->arena);
}

bool aem_reg_has_arena(const struct aem_event *reg)
{
	return aem_ctx_arena(reg->ctx);
}
EXPORT_SYMBOL_GPL(aem_reg_has_arena);

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
	return READ_ONCE(min_timer_period_ns);
}
EXPORT_SYMBOL_GPL(aem_min_timer_period_ns);

/* ---- The priority queue (all under ctx->lock) ---- */

static void aem_level_add(struct aem_ctx *ctx, struct aem_pnode *n, bool head)
{
	if (head)
		list_add(&n->link, &ctx->level[n->prio]);
	else
		list_add_tail(&n->link, &ctx->level[n->prio]);
	ctx->bitmap |= BIT_ULL(n->prio);
	n->q = AEM_Q_QUEUED;
}

static void aem_level_del(struct aem_ctx *ctx, struct aem_pnode *n)
{
	list_del_init(&n->link);
	if (list_empty(&ctx->level[n->prio]))
		ctx->bitmap &= ~BIT_ULL(n->prio);
	n->q = AEM_Q_IDLE;
}

/* Move deferred registrations into the queue while under the limit. */
static void aem_overflow_refill(struct aem_ctx *ctx)
{
	struct aem_pnode *n;

	while (!list_empty(&ctx->overflow) &&
	       ctx->npending < READ_ONCE(max_pending)) {
		n = list_first_entry(&ctx->overflow, struct aem_pnode, link);
		list_del_init(&n->link);
		aem_level_add(ctx, n, false);
		ctx->npending++;
	}
}

/* Queue @reg (which is idle); never fails: over the limit it waits. */
static void aem_enqueue(struct aem_ctx *ctx, struct aem_event *reg)
{
	if (ctx->npending >= READ_ONCE(max_pending)) {
		list_add_tail(&reg->node.link, &ctx->overflow);
		reg->node.q = AEM_Q_OVERFLOW;
		reg->stats.overflows++;
		ctx->overload_count++;
		if (ctx->overload.q == AEM_Q_IDLE)
			aem_level_add(ctx, &ctx->overload, false);
		return;
	}
	aem_level_add(ctx, &reg->node, false);
	ctx->npending++;
}

/* Take @reg out of the queue; its pending count stays. */
static void aem_dequeue(struct aem_ctx *ctx, struct aem_event *reg)
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

static bool aem_ring_nonempty(struct aem_ctx *ctx)
{
	struct aem_ring *ring = READ_ONCE(ctx->ring);

	return ring && READ_ONCE(ring->hdr->head) != READ_ONCE(ring->hdr->tail);
}

/*
 * Pop the most urgent delivery into @d. The registration's final delivery
 * (error, or AEM_ONESHOT) puts it on ctx->reap; the caller schedules the
 * reap work.
 */
static bool aem_pop(struct aem_ctx *ctx, struct aem_delivery *d)
{
	struct aem_pnode *n;
	struct aem_event *reg;
	unsigned int prio;

	if (!ctx->bitmap)
		return false;
	prio = __fls(ctx->bitmap);
	n = list_first_entry(&ctx->level[prio], struct aem_pnode, link);
	memset(d, 0, sizeof(*d));
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
		reg->count--;
		list_move_tail(&n->link, &ctx->level[prio]);
	} else {
		d->count = reg->count;
		d->value = reg->value;
		if (reg->count > 1)
			reg->stats.merged += reg->count - 1;
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
	} else if (reg->fam->recheck && !(reg->flags & AEM_EDGE) &&
		   list_empty(&reg->recheck_link)) {
		/* Level trigger: still ready at the next pop? */
		list_add_tail(&reg->recheck_link, &ctx->recheck);
	}
	return true;
}

/* Undo aem_pop() of @d after a failed copy; ctx->mutex and ctx->lock held. */
static void aem_unpop(struct aem_ctx *ctx, const struct aem_delivery *d)
{
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
		/* The family data belongs to the delivery put back. */
		reg->data[0] = d->data[0];
		reg->data[1] = d->data[1];
	}
	reg->count += d->count;
	reg->value |= d->value;
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
 * Move deliveries from the queue into the ring while it has room.
 * The entries are written first, then the tail is published with a
 * store-release; it pairs with the consumer's load-acquire of the tail.
 * The consumer's head is read with a load-acquire (pairs with its
 * store-release after reading the entries, so we never overwrite an entry
 * it is still reading) and is treated as hostile: only the kernel's own
 * ktail indexes the array, and a head that is not within the last
 * @entries positions makes the ring look full.
 */
static u32 aem_ring_refill(struct aem_ctx *ctx)
{
	struct aem_ring *ring = ctx->ring;
	struct aem_delivery d;
	u32 head, n = 0;

	if (!ring)
		return 0;
	/* Pairs with the consumer's store-release of head. */
	head = smp_load_acquire(&ring->hdr->head);
	while (ring->ktail - head < ring->entries && aem_pop(ctx, &d)) {
		ring->ents[ring->ktail & (ring->entries - 1)] = d;
		ring->ktail++;
		n++;
	}
	if (n) {
		/* Entries before tail; pairs with the consumer's acquire. */
		smp_store_release(&ring->hdr->tail, ring->ktail);
	}
	WRITE_ONCE(ring->hdr->backlog,
		   ctx->bitmap || !list_empty(&ctx->recheck) ? 1 : 0);
	return n;
}

/*
 * Process priority enforcement (a ceiling, not priority inheritance):
 * while something of priority >= boost_prio is pending, the context's
 * thread runs at nice boost_ceiling, if that is better than its own. That
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
static void aem_boost_check(struct aem_ctx *ctx)
{
	unsigned int p = READ_ONCE(boost_prio);
	bool want = p && p <= AEM_PRIO_MAX &&
		    ((ctx->bitmap >> p) || ctx->boost_hold);

	if (want != ctx->boost_want) {
		ctx->boost_want = want;
		WRITE_ONCE(ctx->boost_gen, ctx->boost_gen + 1);
		schedule_work(&ctx->boost_work);
	}
}

static void aem_unboost(struct aem_ctx *ctx)
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
	target = clamp(READ_ONCE(boost_ceiling), MIN_NICE, MAX_NICE);
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

static void aem_boost_fn(struct work_struct *work)
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
static void aem_boost_sync(struct aem_ctx *ctx)
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
static void aem_boost_unhold(struct aem_ctx *ctx)
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

/* After pops: reap what got its final delivery. ctx->lock held. */
static void aem_after_pop(struct aem_ctx *ctx)
{
	if (!list_empty(&ctx->reap))
		schedule_work(&ctx->reap_work);
	aem_boost_check(ctx);
}

/* Something became pending: refill the ring, kick the irq_work. */
static void aem_pending_changed(struct aem_ctx *ctx)
{
	aem_boost_check(ctx);
	if (ctx->ring) {
		aem_ring_refill(ctx);
		aem_after_pop(ctx);
	}
	irq_work_queue(&ctx->kick);
}

/* aem_activate(), and sets the pending family data when @data is given. */
static void __aem_activate(struct aem_event *reg, u64 count, u64 value,
			   enum aem_value_merge how, const u64 *data)
{
	struct aem_ctx *ctx = reg->ctx;
	unsigned long flags;

	spin_lock_irqsave(&ctx->lock, flags);
	if (reg->state & AEM_RS_DOOMED)
		goto out;
	if (data) {
		reg->data[0] = data[0];
		reg->data[1] = data[1];
	}
	/* Saturate: a count can never wrap to a small number. */
	if (check_add_overflow(reg->stats.activations, count,
			       &reg->stats.activations))
		reg->stats.activations = U64_MAX;
	if (check_add_overflow(reg->count, count, &reg->count))
		reg->count = U64_MAX;
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
	__aem_activate(reg, count, value, how, NULL);
}
EXPORT_SYMBOL_GPL(aem_activate);

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

	__aem_activate(reg, 1, value, AEM_VALUE_SET, data);
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

/* ---- The data arena ---- */

/**
 * aem_arena_alloc() - a chunk of the context's data arena
 * @reg:  the registration the data is for
 * @len:  bytes (> 0)
 * @off:  out: the chunk's offset in the arena (what user space sees)
 * @wait: when there is no room, re-check @reg (family->recheck()) once a
 *        chunk is freed
 *
 * Process context. Return: the kernel address of the chunk, or
 * ERR_PTR(-ENXIO) without an arena, ERR_PTR(-ENOMEM) without room.
 */
void *aem_arena_alloc(struct aem_event *reg, size_t len, u64 *off, bool wait)
{
	struct aem_arena *a = aem_ctx_arena(reg->ctx);
	unsigned long nr, pos;
	void *p = ERR_PTR(-ENOMEM);

	if (!a)
		return ERR_PTR(-ENXIO);
	nr = DIV_ROUND_UP(len, AEM_ARENA_BLOCK);
	if (!len || nr > a->nblocks || aem_should_fail(&aem_fail_arena_chunk))
		goto out_wait;
	spin_lock(&a->lock);
	pos = bitmap_find_next_zero_area(a->used, a->nblocks, 0, nr, 0);
	if (pos < a->nblocks) {
		bitmap_set(a->used, pos, nr);
		__set_bit(pos, a->start);
		*off = (u64)pos * AEM_ARENA_BLOCK;
		p = a->mem + *off;
	} else if (wait && list_empty(&reg->arena_link)) {
		list_add_tail(&reg->arena_link, &a->waiters);
	}
	spin_unlock(&a->lock);
	return p;

out_wait:
	if (wait && len && nr <= a->nblocks) {
		/* An injected failure: room may come back. */
		spin_lock(&a->lock);
		if (list_empty(&reg->arena_link))
			list_add_tail(&reg->arena_link, &a->waiters);
		spin_unlock(&a->lock);
	}
	return p;
}
EXPORT_SYMBOL_GPL(aem_arena_alloc);

/* Free the chunk at block @pos; arena->lock held. -EINVAL: not a chunk. */
static int __aem_arena_free(struct aem_arena *a, unsigned long pos)
{
	unsigned long end, next;

	if (pos >= a->nblocks || !test_bit(pos, a->start))
		return -EINVAL;
	end = find_next_zero_bit(a->used, a->nblocks, pos);
	next = find_next_bit(a->start, a->nblocks, pos + 1);
	end = min(end, next);
	__clear_bit(pos, a->start);
	bitmap_clear(a->used, pos, end - pos);
	return 0;
}

/* Wake the waiters of @a: their families re-check; arena->lock held. */
static void aem_arena_wake(struct aem_arena *a)
{
	struct aem_event *reg, *tmp;

	list_for_each_entry_safe(reg, tmp, &a->waiters, arena_link) {
		list_del_init(&reg->arena_link);
		aem_recheck_later(reg);
	}
}

/**
 * aem_arena_free() - give back a chunk that was never delivered
 * @reg: the registration it was allocated for
 * @off: its offset
 */
void aem_arena_free(struct aem_event *reg, u64 off)
{
	struct aem_arena *a = aem_ctx_arena(reg->ctx);

	if (WARN_ON_ONCE(!a || off % AEM_ARENA_BLOCK))
		return;
	spin_lock(&a->lock);
	WARN_ON_ONCE(__aem_arena_free(a, off / AEM_ARENA_BLOCK));
	aem_arena_wake(a);
	spin_unlock(&a->lock);
}
EXPORT_SYMBOL_GPL(aem_arena_free);

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
 * syscall-exit tracepoint work: an empty-list check unless a doorbell
 * waits.
 *
 * aem_deferred_lock is a leaf: never held with ctx->lock, and signals are
 * sent only after it is dropped (activation runs under sighand->siglock
 * for signalfd, so siglock -> ctx->lock exists).
 */
#define AEM_UPCALL_NR	1024

static DECLARE_BITMAP(aem_upcall_allowed, AEM_UPCALL_NR);
static bool aem_upcall_restricted;
static DEFINE_MUTEX(aem_upcall_mutex);	/* the three above, the probe */
static struct tracepoint *aem_sys_exit_tp;
static bool aem_sys_exit_probed;
static LIST_HEAD(aem_deferred);
static DEFINE_SPINLOCK(aem_deferred_lock);

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
	struct aem_ctx *ctx, *tmp;
	int signo[4], n = 0;
	unsigned long flags, nr;

	/*
	 * Every syscall exit of the system comes here while a restriction
	 * is set: a racy peek keeps it cheap. A doorbell added meanwhile is
	 * not lost: it waits for this thread's next allowed return.
	 */
	if (data_race(list_empty(&aem_deferred)))
		return;
	nr = syscall_get_nr(current, regs);
	if (nr >= AEM_UPCALL_NR || !test_bit(nr, aem_upcall_allowed))
		return;
	spin_lock_irqsave(&aem_deferred_lock, flags);
	list_for_each_entry_safe(ctx, tmp, &aem_deferred, deferred_link) {
		if (ctx->deferred_task != current)
			continue;
		list_del_init(&ctx->deferred_link);
		signo[n++] = ctx->deferred_signo;
		if (n == ARRAY_SIZE(signo))
			break;	/* the rest on the next allowed return */
	}
	spin_unlock_irqrestore(&aem_deferred_lock, flags);
	while (n--)
		aem_send_doorbell(current, signo[n]);
}

/* Holds @ctx's doorbell for @task; false when no restriction is set. */
static bool aem_defer_doorbell(struct aem_ctx *ctx, struct task_struct *task,
			       int signo)
{
	unsigned long flags;
	bool deferred = false;

	spin_lock_irqsave(&aem_deferred_lock, flags);
	if (READ_ONCE(aem_upcall_restricted)) {
		if (list_empty(&ctx->deferred_link)) {
			ctx->deferred_task = task;
			ctx->deferred_signo = signo;
			list_add_tail(&ctx->deferred_link, &aem_deferred);
		}
		deferred = true;
	}
	spin_unlock_irqrestore(&aem_deferred_lock, flags);
	return deferred;
}

/*
 * Drops @ctx's held doorbell (its thread changes, or the context goes);
 * no kick runs. Returns true when one was held: the signal is owed.
 */
static bool aem_undefer_doorbell(struct aem_ctx *ctx)
{
	unsigned long flags;
	bool was;

	spin_lock_irqsave(&aem_deferred_lock, flags);
	was = !list_empty(&ctx->deferred_link);
	list_del_init(&ctx->deferred_link);
	spin_unlock_irqrestore(&aem_deferred_lock, flags);
	return was;
}

/* The restriction was lifted: send every held doorbell now. */
static void aem_flush_deferred(void)
{
	struct task_struct *task;
	struct aem_ctx *ctx;
	unsigned long flags;
	int signo;

	for (;;) {
		spin_lock_irqsave(&aem_deferred_lock, flags);
		ctx = list_first_entry_or_null(&aem_deferred, struct aem_ctx,
					       deferred_link);
		if (ctx) {
			list_del_init(&ctx->deferred_link);
			task = get_task_struct(ctx->deferred_task);
			signo = ctx->deferred_signo;
		}
		spin_unlock_irqrestore(&aem_deferred_lock, flags);
		if (!ctx)
			return;
		aem_send_doorbell(task, signo);
		put_task_struct(task);
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
static void aem_kick_fn(struct irq_work *work)
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
 * Run family->recheck() for everything on ctx->recheck; ctx->mutex held,
 * in the owner's context. Each entry is unlinked under ctx->lock before
 * its recheck runs, so a pop from the activation path (ring refill) can
 * queue it again meanwhile.
 */
static void aem_run_recheck(struct aem_ctx *ctx)
{
	struct aem_event *reg;
	unsigned long flags;

	if (list_empty_careful(&ctx->recheck))
		return;
	for (;;) {
		spin_lock_irqsave(&ctx->lock, flags);
		reg = list_first_entry_or_null(&ctx->recheck, struct aem_event,
					       recheck_link);
		if (reg)
			list_del_init(&reg->recheck_link);
		spin_unlock_irqrestore(&ctx->lock, flags);
		if (!reg)
			break;
		if (!(READ_ONCE(reg->state) & AEM_RS_DOOMED))
			reg->fam->recheck(reg);
	}
}

/* ---- Registrations ---- */

static enum hrtimer_restart aem_tmo_fn(struct hrtimer *t)
{
	struct aem_event *reg = container_of(t, struct aem_tmo, timer)->reg;
	struct aem_ctx *ctx = reg->ctx;
	enum hrtimer_restart ret = HRTIMER_NORESTART;
	unsigned long flags;
	ktime_t deadline;

	spin_lock_irqsave(&ctx->lock, flags);
	if (reg->state & AEM_RS_DOOMED)
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

/* Destroy @reg, already erased from ctx->regs; ctx->mutex held. */
static void aem_reg_destroy(struct aem_ctx *ctx, struct aem_event *reg)
{
	struct aem_family *fam = reg->fam;
	struct aem_arena *a = ctx->arena;
	unsigned long flags;

	fam->teardown(reg);
	if (reg->tmo)
		hrtimer_cancel(&reg->tmo->timer);
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
	ctx->nregs--;
	atomic_dec(&ctx->user->nregs);
	kfree(reg->tmo);
	kfree(reg);
	module_put(fam->owner);
}

static void aem_reap_fn(struct work_struct *work)
{
	struct aem_ctx *ctx = container_of(work, struct aem_ctx, reap_work);
	struct aem_event *reg;
	unsigned long flags;

	mutex_lock(&ctx->mutex);
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
	}
	mutex_unlock(&ctx->mutex);
}

/* A live registration by id, or NULL; ctx->mutex held. */
static struct aem_event *aem_reg_find(struct aem_ctx *ctx, int id)
{
	struct aem_event *reg;

	if (id <= 0)
		return NULL;
	reg = xa_load(&ctx->regs, id);
	if (!reg || !(reg->state & AEM_RS_LIVE) ||
	    (READ_ONCE(reg->state) & AEM_RS_DOOMED))
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

static int aem_copy_in(void *dst, size_t ksize, const void __user *src,
		       size_t ver0)
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
static int aem_copy_out(void __user *dst, const void *src, size_t ksize)
{
	u32 usize = *(const u32 *)src;

	return copy_to_user(dst, src, min_t(size_t, usize, ksize)) ?
		-EFAULT : 0;
}

static bool aem_mem_is_zero(const void *p, size_t len)
{
	return !memchr_inv(p, 0, len);
}

static int aem_ioc_register(struct aem_ctx *ctx, void __user *uarg)
{
	struct aem_family *fam;
	struct aem_event *reg;
	struct aem_reg kreg;
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
	if (!(READ_ONCE(allowed_types) & BIT(kreg.type)) ||
	    !(READ_ONCE(allowed_exec) & BIT(kreg.flags & AEM_EXEC_MASK)))
		return -EPERM;
	fam = aem_family_get(kreg.type, kreg.family_version);
	if (!fam)
		return -EOPNOTSUPP;
	ret = -EINVAL;
	if (!aem_mem_is_zero((u8 *)&kreg.arg + fam->arg_size,
			     sizeof(kreg.arg) - fam->arg_size))
		goto out_put;

	mutex_lock(&ctx->mutex);
	ret = -EMFILE;
	if (ctx->nregs >= READ_ONCE(max_regs))
		goto out_unlock;
	ret = -EDQUOT;
	if (atomic_inc_return(&ctx->user->nregs) > READ_ONCE(max_regs_per_user))
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
	/* Reserve the id (lookups see NULL) until setup succeeded. */
	ret = xa_alloc_cyclic(&ctx->regs, &id, NULL, XA_LIMIT(1, INT_MAX),
			      &ctx->next_id, GFP_KERNEL_ACCOUNT);
	if (ret < 0)
		goto out_free;
	reg->id = id;
	ctx->nregs++;
	ret = fam->setup(reg, &kreg.arg);
	if (ret) {
		ctx->nregs--;
		xa_erase(&ctx->regs, id);
		goto out_free;
	}
	xa_store(&ctx->regs, id, reg, GFP_KERNEL);	/* slot exists */
	reg->state |= AEM_RS_LIVE;
	mutex_unlock(&ctx->mutex);
	/* @reg may be cleaned by another thread from here on. */
	if (put_user(id, &((struct aem_reg __user *)uarg)->id))
		return -EFAULT;	/* the registration stays; id was returned */
	return id;

out_free:
	kfree(reg);
out_unuser:
	atomic_dec(&ctx->user->nregs);
out_unlock:
	mutex_unlock(&ctx->mutex);
out_put:
	module_put(fam->owner);
	return ret;
}

static int aem_ctl_lookup(struct aem_ctx *ctx, struct aem_event *reg,
			  void __user *uinfo)
{
	struct aem_reg_info info;
	unsigned long flags;
	int ret;

	ret = aem_copy_in(&info, sizeof(info), uinfo, AEM_REG_INFO_SIZE_VER0);
	if (ret)
		return ret;
	info.id = reg->id;
	info.type = reg->type;
	info.fd = reg->fd;
	info.family_version = reg->fam->version;
	info.user_data = reg->user_data;
	info.timeout_ms = reg->tmo ? ktime_to_ms(reg->tmo->timeout) : 0;
	spin_lock_irqsave(&ctx->lock, flags);
	info.prio = reg->node.prio;
	info.flags = (reg->flags & ~AEM_PRIO_FIELD) | AEM_PRIO_GIVEN |
		     (info.prio << AEM_PRIO_SHIFT);
	info.enabled = !(reg->state & AEM_RS_DISABLED);
	info.pending = reg->count;
	spin_unlock_irqrestore(&ctx->lock, flags);
	return aem_copy_out(uinfo, &info, sizeof(info));
}

static int aem_ctl_stats(struct aem_ctx *ctx, struct aem_event *reg,
			 void __user *ustats)
{
	struct aem_reg_stats st;
	unsigned long flags;
	int ret;

	ret = aem_copy_in(&st, sizeof(st), ustats, AEM_REG_STATS_SIZE_VER0);
	if (ret)
		return ret;
	if (st.reserved0)
		return -EINVAL;
	spin_lock_irqsave(&ctx->lock, flags);
	st.activations = reg->stats.activations;
	st.deliveries = reg->stats.deliveries;
	st.merged = reg->stats.merged;
	st.errors = reg->stats.errors;
	st.overflows = reg->stats.overflows;
	st.pending = reg->count;
	spin_unlock_irqrestore(&ctx->lock, flags);
	return aem_copy_out(ustats, &st, sizeof(st));
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

static int aem_ioc_ctl(struct aem_ctx *ctx, void __user *uarg)
{
	struct aem_event *reg;
	struct aem_ctl c;
	int ret;

	ret = aem_copy_in(&c, sizeof(c), uarg, AEM_CTL_SIZE_VER0);
	if (ret)
		return ret;
	if (c.reserved0 || !c.op || c.op > AEM_CTL_MAX)
		return -EINVAL;
	mutex_lock(&ctx->mutex);
	reg = aem_reg_find(ctx, c.id);
	if (!reg) {
		ret = -ENOENT;
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
		ret = aem_ctl_lookup(ctx, reg, u64_to_user_ptr(c.arg));
		break;
	case AEM_CTL_SET_TIMEOUT:
		ret = aem_ctl_set_timeout(ctx, reg, c.arg);
		break;
	case AEM_CTL_SET_PRIO:
		ret = aem_ctl_set_prio(ctx, reg, c.arg);
		break;
	case AEM_CTL_STATS:
		ret = aem_ctl_stats(ctx, reg, u64_to_user_ptr(c.arg));
		break;
	}
out:
	mutex_unlock(&ctx->mutex);
	return ret;
}

static int aem_ioc_raise(struct aem_ctx *ctx, void __user *uarg)
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
	mutex_unlock(&ctx->mutex);
	return ret;
}

/* Pop up to @max deliveries into @buf under ctx->mutex; returns count. */
static unsigned int aem_pop_batch(struct aem_ctx *ctx,
				  struct aem_delivery *buf, unsigned int max)
{
	unsigned int p = READ_ONCE(boost_prio), i;
	struct pid *old_pid = NULL;
	unsigned long flags;
	unsigned int n = 0;

	spin_lock_irqsave(&ctx->lock, flags);
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
	for (i = 0; p && i < n; i++) {
		if (buf[i].prio >= p) {
			ctx->boost_hold = true;
			ctx->boost_hold_task = current;
			if (ctx->boost_pid != task_pid(current)) {
				old_pid = ctx->boost_pid;
				ctx->boost_pid = get_pid(task_pid(current));
			}
		}
	}
	aem_after_pop(ctx);
	spin_unlock_irqrestore(&ctx->lock, flags);
	put_pid(old_pid);
	return n;
}

static int aem_copy_deliveries(struct aem_ctx *ctx, u8 __user *dst,
			       u32 dsize, struct aem_delivery *buf,
			       unsigned int n)
{
	unsigned long flags;
	unsigned int i;

	for (i = 0; i < n; i++, dst += dsize) {
		if (copy_to_user(dst, &buf[i], sizeof(buf[i])) ||
		    (dsize > sizeof(buf[i]) &&
		     clear_user(dst + sizeof(buf[i]), dsize - sizeof(buf[i]))))
			break;
	}
	if (i == n)
		return 0;
	/* Put back what did not reach user space, most urgent first. */
	spin_lock_irqsave(&ctx->lock, flags);
	while (n-- > i)
		aem_unpop(ctx, &buf[n]);
	spin_unlock_irqrestore(&ctx->lock, flags);
	irq_work_queue(&ctx->kick);
	return i ? i : -EFAULT;
}

static bool aem_has_pending(struct aem_ctx *ctx)
{
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
	struct aem_delivery *buf;
	unsigned int n, total = 0, chunk;
	unsigned long flags;
	ktime_t deadline = 0;
	struct aem_wait w;
	u8 __user *dst;
	int ret;

	ret = aem_copy_in(&w, sizeof(w), uarg, AEM_WAIT_SIZE_VER0);
	if (ret)
		return ret;
	if (w.flags & ~AEM_WAIT_REFILL)
		return -EINVAL;
	if (w.flags & AEM_WAIT_REFILL) {
		if (!ctx->ring)
			return -EINVAL;
		mutex_lock(&ctx->mutex);
		aem_run_recheck(ctx);
		spin_lock_irqsave(&ctx->lock, flags);
		n = aem_ring_refill(ctx);
		aem_after_pop(ctx);
		spin_unlock_irqrestore(&ctx->lock, flags);
		mutex_unlock(&ctx->mutex);
		irq_work_queue(&ctx->kick);
		return n;
	}
	if (!w.max || w.max > AEM_WAIT_MAX || w.dsize > PAGE_SIZE ||
	    w.dsize < AEM_DELIVERY_SIZE_VER0 || (w.dsize & 7))
		return -EINVAL;
	if (w.timeout_ns > 0)
		deadline = ktime_add_ns(ktime_get(), w.timeout_ns);

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
		do {
			n = aem_pop_batch(ctx, buf, min(chunk, w.max - total));
			ret = aem_copy_deliveries(ctx, dst, w.dsize, buf, n);
			if (ret) {
				/* A fault: count what was copied, if any. */
				total += ret > 0 ? ret : 0;
				break;
			}
			total += n;
			dst += (size_t)n * w.dsize;
		} while (n && total < w.max);
		mutex_unlock(&ctx->mutex);
		if (ret < 0 && !total)
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
	mutex_unlock(&ctx->mutex);
	if (old)
		put_task_struct(old);
	/* Something may already be pending. */
	irq_work_queue(&ctx->kick);
	return 0;
}

/*
 * Ring memory is locked memory that user space maps: charge it to the
 * user's RLIMIT_MEMLOCK unless the caller has CAP_IPC_LOCK, the way
 * io_uring charges its rings (__io_account_mem()). The charge follows the
 * user, not the mm, so it can be returned from ->release() after exit.
 */
static int aem_ring_charge(struct aem_ring *ring)
{
	unsigned long limit, cur, want;
	struct user_struct *user;

	ring->pages = ring->size >> PAGE_SHIFT;
	if (capable(CAP_IPC_LOCK))
		return 0;
	user = current_user();
	limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	cur = atomic_long_read(&user->locked_vm);
	do {
		if (check_add_overflow(cur, ring->pages, &want) ||
		    want > limit)
			return -ENOMEM;
	} while (!atomic_long_try_cmpxchg(&user->locked_vm, &cur, want));
	ring->user = get_uid(user);
	return 0;
}

static void aem_ring_free(struct aem_ring *ring)
{
	if (ring->user) {
		atomic_long_sub(ring->pages, &ring->user->locked_vm);
		free_uid(ring->user);
	}
	vfree(ring->mem);
	kfree(ring);
}

static int aem_ioc_ring_setup(struct aem_ctx *ctx, void __user *uarg)
{
	struct aem_ring_setup rs;
	struct aem_ring *ring;
	unsigned long flags;
	int ret;

	ret = aem_copy_in(&rs, sizeof(rs), uarg, AEM_RING_SETUP_SIZE_VER0);
	if (ret)
		return ret;
	if (rs.flags || rs.entries_off || rs.mmap_size || rs.entries < 2 ||
	    rs.entries > AEM_MAX_RING_ENTRIES || !is_power_of_2(rs.entries))
		return -EINVAL;
	if (aem_should_fail(&aem_fail_ring_alloc))
		return -ENOMEM;
	ring = kzalloc(sizeof(*ring), GFP_KERNEL_ACCOUNT);
	if (!ring)
		return -ENOMEM;
	ring->entries = rs.entries;
	ring->size = PAGE_ALIGN(AEM_RING_ENTRIES_OFF +
				(size_t)rs.entries * sizeof(struct aem_delivery));
	ret = aem_ring_charge(ring);
	if (ret) {
		kfree(ring);
		return ret;
	}
	ring->mem = vmalloc_user(ring->size);
	if (!ring->mem) {
		aem_ring_free(ring);
		return -ENOMEM;
	}
	ring->hdr = ring->mem;
	ring->ents = ring->mem + AEM_RING_ENTRIES_OFF;
	ring->hdr->mask = rs.entries - 1;
	ring->hdr->entries = rs.entries;

	mutex_lock(&ctx->mutex);
	spin_lock_irqsave(&ctx->lock, flags);
	if (ctx->ring) {
		ret = -EBUSY;
	} else {
		/* Published under ctx->lock; never changes until release. */
		WRITE_ONCE(ctx->ring, ring);
		aem_ring_refill(ctx);
		aem_after_pop(ctx);
	}
	spin_unlock_irqrestore(&ctx->lock, flags);
	mutex_unlock(&ctx->mutex);
	if (ret) {
		aem_ring_free(ring);
		return ret;
	}
	irq_work_queue(&ctx->kick);
	rs.entries_off = AEM_RING_ENTRIES_OFF;
	rs.mmap_size = ring->size;
	return aem_copy_out(uarg, &rs, sizeof(rs));
}

static void aem_arena_destroy(struct aem_arena *a)
{
	vfree(a->mem);
	bitmap_free(a->used);
	bitmap_free(a->start);
	kfree(a);
}

static int aem_ioc_arena_setup(struct aem_ctx *ctx, void __user *uarg)
{
	struct aem_arena_setup as;
	struct aem_arena *a;
	int ret;

	ret = aem_copy_in(&as, sizeof(as), uarg, AEM_ARENA_SETUP_SIZE_VER0);
	if (ret)
		return ret;
	if (as.flags || as.reserved0 || as.mmap_offset || as.block ||
	    !as.bytes || !PAGE_ALIGNED(as.bytes) ||
	    as.bytes > READ_ONCE(max_arena_bytes) ||
	    as.bytes > AEM_ARENA_OFFSET)
		return -EINVAL;
	if (aem_should_fail(&aem_fail_arena_setup))
		return -ENOMEM;
	a = kzalloc(sizeof(*a), GFP_KERNEL_ACCOUNT);
	if (!a)
		return -ENOMEM;
	spin_lock_init(&a->lock);
	INIT_LIST_HEAD(&a->waiters);
	a->size = as.bytes;
	a->nblocks = as.bytes / AEM_ARENA_BLOCK;
	a->used = bitmap_zalloc(a->nblocks, GFP_KERNEL_ACCOUNT);
	a->start = bitmap_zalloc(a->nblocks, GFP_KERNEL_ACCOUNT);
	a->mem = vmalloc_user(a->size);
	if (!a->used || !a->start || !a->mem) {
		aem_arena_destroy(a);
		return -ENOMEM;
	}
	mutex_lock(&ctx->mutex);
	if (ctx->arena)
		ret = -EBUSY;
	else	/* Set once; pairs with the acquire in aem_ctx_arena(). */
		smp_store_release(&ctx->arena, a);
	mutex_unlock(&ctx->mutex);
	if (ret) {
		aem_arena_destroy(a);
		return ret;
	}
	as.mmap_offset = AEM_ARENA_OFFSET;
	as.block = AEM_ARENA_BLOCK;
	return aem_copy_out(uarg, &as, sizeof(as));
}

static int aem_ioc_arena_free(struct aem_ctx *ctx, void __user *uarg)
{
	struct aem_arena *a = aem_ctx_arena(ctx);
	struct aem_arena_free af;
	int ret;

	ret = aem_copy_in(&af, sizeof(af), uarg, AEM_ARENA_FREE_SIZE_VER0);
	if (ret)
		return ret;
	if (af.flags)
		return -EINVAL;
	if (!a)
		return -ENXIO;
	if (af.offset >= a->size || af.offset % AEM_ARENA_BLOCK)
		return -EINVAL;
	spin_lock(&a->lock);
	ret = __aem_arena_free(a, af.offset / AEM_ARENA_BLOCK);
	if (!ret)
		aem_arena_wake(a);
	spin_unlock(&a->lock);
	return ret;
}

static int aem_ioc_info(void __user *uarg)
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
	info.max_regs = READ_ONCE(max_regs);
	info.max_pending = READ_ONCE(max_pending);
	info.max_regs_per_user = READ_ONCE(max_regs_per_user);
	info.min_timer_period_ns = READ_ONCE(min_timer_period_ns);
	info.allowed_types = READ_ONCE(allowed_types);
	info.allowed_exec = READ_ONCE(allowed_exec);
	info.boost_prio = READ_ONCE(boost_prio);
	info.boost_ceiling = READ_ONCE(boost_ceiling);
	info.delivery_size = sizeof(struct aem_delivery);
	info.max_arena_bytes = READ_ONCE(max_arena_bytes);
	mutex_lock(&aem_family_lock);
	list_for_each_entry(f, &aem_families, list) {
		info.types |= BIT(f->type);
		if (f->version > info.family_version[f->type])
			info.family_version[f->type] = f->version;
	}
	mutex_unlock(&aem_family_lock);
	return aem_copy_out(uarg, &info, sizeof(info));
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
		mutex_unlock(&ctx->mutex);
	}
	if (READ_ONCE(ctx->bitmap) || aem_ring_nonempty(ctx))
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

/* mmap_lock is held: take ctx->lock only (see LOCKING). */
static int aem_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct aem_ctx *ctx = file->private_data;
	struct aem_arena *arena;
	struct aem_ring *ring;

	if (!aem_is_owner(ctx))
		return -EOWNERDEAD;
	if (vma->vm_pgoff == AEM_ARENA_PGOFF) {
		/*
		 * The arena: read-only for user space (families write it),
		 * shared with forked children (no VM_DONTCOPY), so a PROCESS
		 * executor sees the data without a copy.
		 */
		arena = aem_ctx_arena(ctx);
		if (!arena)
			return -ENODEV;
		if (vma->vm_end - vma->vm_start > arena->size ||
		    !(vma->vm_flags & VM_SHARED) ||
		    (vma->vm_flags & (VM_WRITE | VM_EXEC)))
			return -EINVAL;
		vma->vm_flags &= ~(VM_MAYWRITE | VM_MAYEXEC);
		return remap_vmalloc_range(vma, arena->mem, 0);
	}
	ring = READ_ONCE(ctx->ring);
	if (!ring)
		return -ENODEV;
	if (vma->vm_pgoff || vma->vm_end - vma->vm_start > ring->size)
		return -EINVAL;
	if (!(vma->vm_flags & VM_SHARED) || (vma->vm_flags & VM_EXEC))
		return -EINVAL;
	/* A forked child must not share the consumer state. */
	vma->vm_flags |= VM_DONTCOPY;
	return remap_vmalloc_range(vma, ring->mem, 0);
}

static int aem_open(struct inode *inode, struct file *file)
{
	struct aem_ctx *ctx;
	int i;

	if (aem_should_fail(&aem_fail_ctx_alloc))
		return -ENOMEM;
	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL_ACCOUNT);
	if (!ctx)
		return -ENOMEM;
	/* Accounted to the opener, checked against the opener's limits. */
	ctx->user = aem_user_get(file->f_cred->euid);
	if (!ctx->user) {
		kfree(ctx);
		return -ENOMEM;
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
	ctx->mm = current->mm;
	if (ctx->mm)
		mmgrab(ctx->mm);
	file->private_data = ctx;
	return 0;
}

static int aem_release(struct inode *inode, struct file *file)
{
	struct aem_ctx *ctx = file->private_data;
	struct aem_event *reg;
	unsigned long idx;

	mutex_lock(&ctx->mutex);
	xa_for_each(&ctx->regs, idx, reg) {
		xa_erase(&ctx->regs, idx);
		aem_reg_destroy(ctx, reg);
		cond_resched();
	}
	mutex_unlock(&ctx->mutex);
	/* No registration is left to activate, pop or time out. */
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
	seq_printf(m, "aem-tgid:\t%d\n", pid_nr(ctx->tgid));
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
	return 0;
}

static void __exit aem_exit(void)
{
	/* No context is open (the fops pin the module): nothing is held. */
	if (aem_sys_exit_probed) {
		tracepoint_probe_unregister(aem_sys_exit_tp,
					    aem_sys_exit_probe, NULL);
		tracepoint_synchronize_unregister();
	}
	debugfs_remove(aem_debugfs);
	misc_deregister(&aem_misc);
}

module_init(aem_init);
module_exit(aem_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("AEM: Asynchronous Event Mechanism core (/dev/aem)");
MODULE_VERSION("1.0");
