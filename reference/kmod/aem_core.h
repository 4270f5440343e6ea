/* SPDX-License-Identifier: GPL-2.0 */
/*
 * AEM core (aem.ko): what its files share. Not an interface for family
 * modules (that is aem_family.h) nor for user space (uapi/linux/aem.h).
 *
 * Files of aem.ko, one concern each (the LOCKING rules that span them are
 * at the top of aem_core.c; each file states the ones of its own):
 *   aem_core.c      the context: /dev/aem, open/release, the ioctl table,
 *                   AEM_IOC_WAIT, the doorbell signal's target, poll, mmap
 *   aem_reg.c       families, registrations, evctl, raise, the reaper
 *   aem_queue.c     the priority queue, activation, re-checks, the boost
 *   aem_ring.c      the mmap'd completion ring
 *   aem_arena.c     the event-data arena
 *   aem_doorbell.c  the kick (wake-ups, doorbell signal) and the
 *                   upcall system-call policy
 *   aem_fault.c     fault injection
 */
#ifndef _AEM_CORE_H
#define _AEM_CORE_H

#include <linux/hrtimer.h>
#include <linux/irq_work.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mm_types.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/pid.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "aem_family.h"

struct aem_mm;

/* Policy and limits: module parameters of aem.ko (aem_core.c). */
extern unsigned int aem_max_regs;
extern unsigned int aem_max_regs_per_user;
extern unsigned int aem_max_pending;
extern unsigned int aem_allowed_types;
extern unsigned int aem_allowed_exec;
extern unsigned int aem_boost_prio;
extern int aem_boost_ceiling;
extern unsigned long long aem_min_timer_period;
extern unsigned long long aem_max_arena_bytes;
extern unsigned int aem_max_ctx_per_user;

#define AEM_MAX_RING_ENTRIES	4096
#define AEM_ARENA_BLOCK		1024
#define AEM_ARENA_PGOFF		(AEM_ARENA_OFFSET >> PAGE_SHIFT)
#define AEM_RING_ENTRIES_OFF	256
#define AEM_WAIT_MAX		1024
#define AEM_WAIT_FAULTS		8	/* fault-ins without progress: -EFAULT */
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
#define AEM_RS_PARKED		0x8	/* re-check after the next delivery is taken */
/* The last activation's enum aem_value_merge, for aem_unpop(). */
#define AEM_RS_MERGE_SHIFT	4
#define AEM_RS_MERGE		(0x3 << AEM_RS_MERGE_SHIFT)

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
 * @mem:     the kernel's mapping of @pages (vmap()), written by families
 * @pages:   the pages, charged to the opener's memory cgroup
 *           (GFP_KERNEL_ACCOUNT), mapped read-only into user space
 * @size:    bytes of @mem (page multiple)
 * @nblocks: @size / AEM_ARENA_BLOCK
 * @used:    bit per block: allocated
 * @start:   bit per block: first block of a chunk
 * @kern:    bit per block: the chunk starting there is the family's (not
 *           published yet): user space may not free it
 * @waiters: registrations to re-check when a chunk is freed
 *
 * The allocator's records live here only, never in the shared mapping.
 */
struct aem_arena {
	spinlock_t lock;	/* see above */
	void *mem;
	struct page **pages;
	size_t size;
	unsigned long nblocks;
	unsigned long *used;
	unsigned long *start;
	unsigned long *kern;
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
 * @npending:    registrations on @level (ctx->lock); with a ring, the
 *               pending limit also counts the entries user space has not
 *               consumed (aem_npending())
 * @ring_popping: aem_ring_refill() is between a pop and the entry it
 *               writes: that delivery counts as pending (ctx->lock)
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
 * @regs:        id -> struct aem_event (xarray; ctx->mutex to store or erase
 *              a registration; REGISTER reserves and frees an id (NULL)
 *              without it)
 * @next_id:     cyclic id allocation hint
 * @nregs:       entries in @regs (ctx->mutex)
 * @opener:      the thread that opened the context (referenced)
 * @user:        the opener's struct aem_user (referenced)
 * @boost_want:  a pending level >= boost_prio exists, or @boost_hold
 *               (ctx->lock)
 * @boost_hold:  AEM_IOC_WAIT popped (or refilled the ring with) a
 *               delivery at >= boost_prio and its
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
 * @owner_mm:    its notifier (aem_core.c), whose release() destroys the
 *               registrations when the owner exits; NULL: none
 * @mm_link:     on @owner_mm's list of contexts (its lock)
 * @ref:         the file's reference, and the exit teardown's while it
 *               runs; the last one frees the context
 * @deferred_link: on a bucket of aem_deferred (aem_doorbell.c) while a
 *               doorbell signal waits for its thread's return from an
 *               allowed system call (that bucket's lock, as are the next
 *               two; @deferred_task is written by the kick only)
 * @deferred_task: the thread it goes to (ctx->sig_task at the time)
 * @deferred_signo: the signal
 */
struct aem_ctx {
	spinlock_t lock;		/* see LOCKING */
	u64 bitmap;
	struct list_head level[AEM_PRIO_LEVELS];
	struct list_head overflow;
	u32 npending;
	bool ring_popping;
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
	struct aem_mm *owner_mm;
	struct list_head mm_link;
	struct kref ref;
	struct list_head deferred_link;
	struct task_struct *deferred_task;
	int deferred_signo;
};

/* aem_core.c */
int aem_copy_in(void *dst, size_t ksize, const void __user *src, size_t ver0);
int aem_copy_out(void __user *dst, const void *src, size_t ksize);

/* aem_reg.c */
void aem_reg_destroy(struct aem_ctx *ctx, struct aem_event *reg);
void aem_reap_fn(struct work_struct *work);
void aem_ctx_unlock(struct aem_ctx *ctx);	/* mutex_unlock(), then reap */
int aem_ioc_register(struct aem_ctx *ctx, void __user *uarg);
int aem_ioc_ctl(struct aem_ctx *ctx, void __user *uarg);
int aem_ioc_raise(struct aem_ctx *ctx, void __user *uarg);
int aem_ioc_info(void __user *uarg);

/* aem_queue.c: all under ctx->lock unless said otherwise */
void aem_level_add(struct aem_ctx *ctx, struct aem_pnode *n, bool head);
void aem_level_del(struct aem_ctx *ctx, struct aem_pnode *n);
void aem_enqueue(struct aem_ctx *ctx, struct aem_event *reg);
void aem_dequeue(struct aem_ctx *ctx, struct aem_event *reg);
/**
 * struct aem_popped - a delivery taken by aem_pop(), and what aem_unpop()
 *                     needs to put it back exactly after a failed copy
 * @d:      the delivery
 * @merged: what the pop added to the registration's merged count
 * @parked: the registration's AEM_RS_PARKED before the pop
 * @kept:   the pop took one occurrence of several and left the value
 */
struct aem_popped {
	struct aem_delivery d;
	u64 merged;
	u32 parked;
	bool kept;
};

bool aem_pop(struct aem_ctx *ctx, struct aem_popped *p);
void aem_unpop(struct aem_ctx *ctx, const struct aem_popped *p);
void aem_after_pop(struct aem_ctx *ctx);
void aem_pending_changed(struct aem_ctx *ctx);
void aem_overflow_refill(struct aem_ctx *ctx);	/* ctx->lock held */
void aem_boost_check(struct aem_ctx *ctx);
void aem_unboost(struct aem_ctx *ctx);		/* boost_mutex or release */
void aem_boost_fn(struct work_struct *work);
void aem_boost_sync(struct aem_ctx *ctx);	/* no AEM lock held */
void aem_boost_unhold(struct aem_ctx *ctx);	/* no AEM lock held */
struct pid *aem_boost_hold(struct aem_ctx *ctx, struct aem_delivery *d); /* ctx->lock */
void aem_run_recheck(struct aem_ctx *ctx);	/* ctx->mutex held */

/* aem_ring.c */
/* A registration's entries in the ring that user space has not consumed. */
struct aem_ring_share {
	u64 entries;
	u64 occurrences;
	u64 errors;
	u64 merged;
};

/* A count that saturates: it never wraps to a small number. */
static inline u64 aem_sat_add(u64 a, u64 b)
{
	u64 sum;

	return check_add_overflow(a, b, &sum) ? U64_MAX : sum;
}

bool aem_ring_nonempty(struct aem_ctx *ctx);
void aem_ring_unconsumed(struct aem_ring *ring, u32 ktail, s32 id,
			 struct aem_ring_share *sh);
u32 aem_ring_refill(struct aem_ctx *ctx, struct pid **held); /* ctx->lock */
u32 aem_ring_unconsumed_entries(struct aem_ctx *ctx);	/* ctx->lock */
void aem_ring_free(struct aem_ring *ring);
int aem_ioc_ring_setup(struct aem_ctx *ctx, void __user *uarg);
int aem_ring_mmap(struct aem_ctx *ctx, struct vm_area_struct *vma);

/* aem_arena.c */
struct aem_arena *aem_ctx_arena(struct aem_ctx *ctx);
void aem_arena_destroy(struct aem_arena *a);
int aem_ioc_arena_setup(struct aem_ctx *ctx, void __user *uarg);
int aem_ioc_arena_free(struct aem_ctx *ctx, void __user *uarg);
int aem_arena_mmap(struct aem_ctx *ctx, struct vm_area_struct *vma);

/* aem_doorbell.c */
void aem_kick_fn(struct irq_work *work);
bool aem_undefer_doorbell(struct aem_ctx *ctx);
void aem_doorbell_init(void);
void aem_doorbell_exit(void);

#endif /* _AEM_CORE_H */
