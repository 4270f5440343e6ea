// SPDX-License-Identifier: GPL-2.0
/*
 * AEM core: the completion ring, mmap'd by user space (AEM_IOC_RING_SETUP).
 *
 * The ring is a header and a power-of-two array of struct aem_delivery in
 * vmalloc_user() memory, charged to the user's RLIMIT_MEMLOCK. The kernel
 * produces (aem_ring_refill(), under ctx->lock, from any context), user
 * space consumes.
 *
 * ORDERING (the rules of io_uring's CQ ring):
 * - producer: write the entries, then smp_store_release(&hdr->tail);
 *   the consumer's smp_load_acquire(&hdr->tail) pairs with it;
 * - consumer: read the entries, then store-release hdr->head; the
 *   producer's smp_load_acquire(&hdr->head) pairs with it, so an entry is
 *   never overwritten while it is read;
 * - ctx->ring is set once, under ctx->lock, with smp_store_release();
 *   lockless readers load it with smp_load_acquire() (the ring's fields
 *   are initialised before it is published).
 * Everything in the shared header is hostile: only the kernel's private
 * ktail indexes the array, and a head outside the last @entries positions
 * makes the ring look full.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/log2.h>
#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/sched/user.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "aem_core.h"
#include "aem_fault.h"

/* Entries user space has not consumed; a hostile head counts as full. */
u32 aem_ring_unconsumed_entries(struct aem_ctx *ctx)
{
	struct aem_ring *ring = ctx->ring;	/* set under ctx->lock */

	if (!ring)
		return 0;
	return min(ring->ktail - READ_ONCE(ring->hdr->head), ring->entries);
}

bool aem_ring_nonempty(struct aem_ctx *ctx)
{
	/* Pairs with the store-release that published the ring. */
	struct aem_ring *ring = smp_load_acquire(&ctx->ring);

	return ring && READ_ONCE(ring->hdr->head) != READ_ONCE(ring->hdr->tail);
}

/*
 * Move deliveries from the queue into the ring while it has room.
 * @held is NULL when an activation refills (any context), and points to
 * a pid reference to put when the consumer's AEM_IOC_WAIT(AEM_WAIT_REFILL)
 * does. A delivery at >= boost_prio keeps the context's thread boosted
 * while it is pending and while its handler runs (aem_boost_check()), so
 * only the consumer moves it, holding the boost for itself as a pop by
 * AEM_IOC_WAIT does; an activation stops in front of it (pops go in
 * priority order: it is the most urgent pending) and leaves backlog set.
 * The entries are written first, then the tail is published with a
 * store-release; it pairs with the consumer's load-acquire of the tail.
 * The consumer's head is read with a load-acquire (pairs with its
 * store-release after reading the entries, so we never overwrite an entry
 * it is still reading) and is treated as hostile: only the kernel's own
 * ktail indexes the array, and a head that is not within the last
 * @entries positions makes the ring look full.
 */
u32 aem_ring_refill(struct aem_ctx *ctx, struct pid **held)
{
	unsigned int bp = READ_ONCE(aem_boost_prio);
	struct aem_ring *ring = ctx->ring;
	struct aem_popped p;
	struct pid *old;
	u32 head, n = 0;

	if (!ring)
		return 0;
	if (bp > AEM_PRIO_MAX)
		bp = 0;
	/* Pairs with the consumer's store-release of head. */
	head = smp_load_acquire(&ring->hdr->head);
	/* What the consumer took made room under the pending limit. */
	aem_overflow_refill(ctx);
	while (ring->ktail - head < ring->entries) {
		bool popped;

		if (!held && bp && (ctx->bitmap >> bp))
			break;
		ctx->ring_popping = true;
		popped = aem_pop(ctx, &p);
		ctx->ring_popping = false;
		if (!popped)
			break;
		old = held ? aem_boost_hold(ctx, &p.d) : NULL;
		if (old)
			*held = old;
		ring->ents[ring->ktail & (ring->entries - 1)] = p.d;
		ring->ktail++;
		n++;
	}
	if (n) {
		/* Entries before tail; pairs with the consumer's acquire. */
		smp_store_release(&ring->hdr->tail, ring->ktail);
	}
	WRITE_ONCE(ring->hdr->backlog,
		   ctx->bitmap || !list_empty(&ctx->recheck) ||
		   !list_empty(&ctx->overflow) ? 1 : 0);
	return n;
}

/*
 * Add up what the entries of registration @id that user space has not
 * consumed hold: from head to @ktail, a tail read under ctx->lock together
 * with the registration's counts. Such entries are still pending: the
 * kernel never writes over them before head passes them. User space may
 * scribble on them, which skews only its own figures (the caller clamps).
 */
void aem_ring_unconsumed(struct aem_ring *ring, u32 ktail, s32 id,
			 struct aem_ring_share *sh)
{
	u32 head = READ_ONCE(ring->hdr->head), i;
	const struct aem_delivery *e;
	u64 count;

	memset(sh, 0, sizeof(*sh));
	if (ktail - head > ring->entries)	/* hostile head */
		head = ktail - ring->entries;
	for (i = head; i != ktail; i++) {
		e = &ring->ents[i & (ring->entries - 1)];
		if (READ_ONCE(e->id) != id)
			continue;
		count = READ_ONCE(e->count);
		sh->entries++;
		sh->occurrences = aem_sat_add(sh->occurrences, count);
		if (READ_ONCE(e->error))
			sh->errors++;
		else if (count > 1)
			sh->merged = aem_sat_add(sh->merged, count - 1);
	}
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

void aem_ring_free(struct aem_ring *ring)
{
	if (ring->user) {
		atomic_long_sub(ring->pages, &ring->user->locked_vm);
		free_uid(ring->user);
	}
	vfree(ring->mem);
	kfree(ring);
}

int aem_ioc_ring_setup(struct aem_ctx *ctx, void __user *uarg)
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
		/*
		 * Published under ctx->lock, with release: lockless readers
		 * (poll(), mmap()) load it with acquire and see its fields.
		 * Never changes until release.
		 */
		smp_store_release(&ctx->ring, ring);
		aem_ring_refill(ctx, NULL);
		aem_after_pop(ctx);
	}
	spin_unlock_irqrestore(&ctx->lock, flags);
	aem_ctx_unlock(ctx);
	if (ret) {
		aem_ring_free(ring);
		return ret;
	}
	irq_work_queue(&ctx->kick);
	rs.entries_off = AEM_RING_ENTRIES_OFF;
	rs.mmap_size = ring->size;
	return aem_copy_out(uarg, &rs, sizeof(rs));
}

/* mmap() of the ring at offset 0; mmap_lock held. */
int aem_ring_mmap(struct aem_ctx *ctx, struct vm_area_struct *vma)
{
	/* Pairs with the store-release that published the ring. */
	struct aem_ring *ring = smp_load_acquire(&ctx->ring);

	if (!ring)
		return -ENODEV;
	if (vma->vm_pgoff || vma->vm_end - vma->vm_start > ring->size)
		return -EINVAL;
	if (!(vma->vm_flags & VM_SHARED) || (vma->vm_flags & VM_EXEC))
		return -EINVAL;
	/* Data, never code; a forked child must not share the consumer state. */
	vma->vm_flags &= ~VM_MAYEXEC;
	vma->vm_flags |= VM_DONTCOPY;
	return remap_vmalloc_range(vma, ring->mem, 0);
}
