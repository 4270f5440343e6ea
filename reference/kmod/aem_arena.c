// SPDX-License-Identifier: GPL-2.0
/*
 * AEM core: the event-data arena (AEM_IOC_ARENA_SETUP), where families put
 * the data of a delivery (the bytes a READ registration received), mapped
 * read-only by user space at AEM_ARENA_OFFSET.
 *
 * The allocator's records (two bitmaps of AEM_ARENA_BLOCK blocks) live
 * in kernel memory only, never in the shared mapping. A chunk belongs to
 * the family that allocated it until the family publishes it with the
 * delivery (aem_arena_publish()); from then on only user space frees it
 * (AEM_IOC_ARENA_FREE), and a chunk that is not published is not user
 * space's to free (-EINVAL).
 *
 * LOCKING: arena->lock (a spinlock, process context only) guards the
 * bitmaps and the waiters; arena->lock -> ctx->lock (a freed chunk wakes
 * its waiters with aem_recheck_later()).
 * ORDERING: ctx->arena is set once, under ctx->mutex, with
 * smp_store_release(); readers use aem_ctx_arena() (load-acquire).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "aem_core.h"
#include "aem_fault.h"

/* The arena, or NULL; pairs with the store-release in arena setup. */
struct aem_arena *aem_ctx_arena(struct aem_ctx *ctx)
{
	/* Set once: its fields are initialised before it is published. */
	return smp_load_acquire(&ctx->arena);
}

bool aem_reg_has_arena(const struct aem_event *reg)
{
	return aem_ctx_arena(reg->ctx);
}
EXPORT_SYMBOL_GPL(aem_reg_has_arena);

size_t aem_reg_arena_size(const struct aem_event *reg)
{
	struct aem_arena *a = aem_ctx_arena(reg->ctx);

	return a ? a->size : 0;
}
EXPORT_SYMBOL_GPL(aem_reg_arena_size);

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
		__set_bit(pos, a->kern);
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

/*
 * Free the chunk at block @pos, whoever owns it (the callers check);
 * arena->lock held. -EINVAL: not a chunk.
 */
static int __aem_arena_free(struct aem_arena *a, unsigned long pos)
{
	unsigned long end, next;

	if (pos >= a->nblocks || !test_bit(pos, a->start))
		return -EINVAL;
	__clear_bit(pos, a->kern);
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
 * aem_arena_free() - give back a chunk that was never published
 * @reg: the registration it was allocated for
 * @off: its offset
 */
void aem_arena_free(struct aem_event *reg, u64 off)
{
	struct aem_arena *a = aem_ctx_arena(reg->ctx);
	unsigned long pos = off / AEM_ARENA_BLOCK;

	if (WARN_ON_ONCE(!a || off % AEM_ARENA_BLOCK || pos >= a->nblocks))
		return;
	spin_lock(&a->lock);
	/* Only the family frees its own chunks: user space cannot. */
	if (!WARN_ON_ONCE(!test_bit(pos, a->kern)))
		__aem_arena_free(a, pos);
	aem_arena_wake(a);
	spin_unlock(&a->lock);
}
EXPORT_SYMBOL_GPL(aem_arena_free);

/**
 * aem_arena_publish() - hand a chunk to user space with its delivery
 * @reg: the registration it was allocated for
 * @off: its offset
 *
 * From now on AEM_IOC_ARENA_FREE may free it; the family must not touch it.
 */
void aem_arena_publish(struct aem_event *reg, u64 off)
{
	struct aem_arena *a = aem_ctx_arena(reg->ctx);
	unsigned long pos = off / AEM_ARENA_BLOCK;

	if (WARN_ON_ONCE(!a || off % AEM_ARENA_BLOCK || pos >= a->nblocks))
		return;
	spin_lock(&a->lock);
	WARN_ON_ONCE(!test_bit(pos, a->start) || !test_bit(pos, a->kern));
	__clear_bit(pos, a->kern);
	spin_unlock(&a->lock);
}
EXPORT_SYMBOL_GPL(aem_arena_publish);

void aem_arena_destroy(struct aem_arena *a)
{
	unsigned long i, npages = a->size >> PAGE_SHIFT;

	if (a->mem)
		vunmap(a->mem);
	for (i = 0; a->pages && i < npages && a->pages[i]; i++)
		__free_page(a->pages[i]);
	kvfree(a->pages);
	bitmap_free(a->used);
	bitmap_free(a->start);
	bitmap_free(a->kern);
	kfree(a);
}

/*
 * The arena's pages, charged to the opener's memory cgroup (vmalloc_user()
 * memory is not), and the kernel's mapping of them. 0 or -ENOMEM.
 */
static int aem_arena_alloc_pages(struct aem_arena *a)
{
	unsigned long i, npages = a->size >> PAGE_SHIFT;

	a->pages = kvcalloc(npages, sizeof(*a->pages),
			    GFP_KERNEL_ACCOUNT | __GFP_RETRY_MAYFAIL);
	if (!a->pages)
		return -ENOMEM;
	for (i = 0; i < npages; i++) {
		/* Over the cgroup's limit: ENOMEM, not the OOM killer. */
		a->pages[i] = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO |
					 __GFP_RETRY_MAYFAIL | __GFP_NOWARN);
		if (!a->pages[i])
			return -ENOMEM;
		cond_resched();
	}
	a->mem = vmap(a->pages, npages, VM_MAP, PAGE_KERNEL);
	return a->mem ? 0 : -ENOMEM;
}

int aem_ioc_arena_setup(struct aem_ctx *ctx, void __user *uarg)
{
	struct aem_arena_setup as;
	struct aem_arena *a;
	int ret;

	ret = aem_copy_in(&as, sizeof(as), uarg, AEM_ARENA_SETUP_SIZE_VER0);
	if (ret)
		return ret;
	if (as.flags || as.reserved0 || as.mmap_offset || as.block ||
	    !as.bytes || !PAGE_ALIGNED(as.bytes) ||
	    as.bytes > READ_ONCE(aem_max_arena_bytes) ||
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
	a->kern = bitmap_zalloc(a->nblocks, GFP_KERNEL_ACCOUNT);
	if (!a->used || !a->start || !a->kern || aem_arena_alloc_pages(a)) {
		aem_arena_destroy(a);
		return -ENOMEM;
	}
	mutex_lock(&ctx->mutex);
	if (ctx->arena)
		ret = -EBUSY;
	else	/* Set once; pairs with the acquire in aem_ctx_arena(). */
		smp_store_release(&ctx->arena, a);
	aem_ctx_unlock(ctx);
	if (ret) {
		aem_arena_destroy(a);
		return ret;
	}
	as.mmap_offset = AEM_ARENA_OFFSET;
	as.block = AEM_ARENA_BLOCK;
	return aem_copy_out(uarg, &as, sizeof(as));
}

int aem_ioc_arena_free(struct aem_ctx *ctx, void __user *uarg)
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
	/* A chunk a family still fills is not user space's to free. */
	ret = -EINVAL;
	if (!test_bit(af.offset / AEM_ARENA_BLOCK, a->kern))
		ret = __aem_arena_free(a, af.offset / AEM_ARENA_BLOCK);
	if (!ret)
		aem_arena_wake(a);
	spin_unlock(&a->lock);
	return ret;
}

/*
 * mmap() of the arena at AEM_ARENA_OFFSET; mmap_lock held. Read-only for
 * user space (families write it), shared with forked children (no
 * VM_DONTCOPY), so a PROCESS executor sees the data without a copy.
 */
int aem_arena_mmap(struct aem_ctx *ctx, struct vm_area_struct *vma)
{
	struct aem_arena *arena = aem_ctx_arena(ctx);

	if (!arena)
		return -ENODEV;
	if (vma->vm_end - vma->vm_start > arena->size ||
	    !(vma->vm_flags & VM_SHARED) ||
	    (vma->vm_flags & (VM_WRITE | VM_EXEC)))
		return -EINVAL;
	vma->vm_flags &= ~(VM_MAYWRITE | VM_MAYEXEC);
	/* From page 0 whatever the offset: the offset only names the arena. */
	return vm_map_pages_zero(vma, arena->pages, arena->size >> PAGE_SHIFT);
}
