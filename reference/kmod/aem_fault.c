// SPDX-License-Identifier: GPL-2.0
/*
 * AEM: module-local fault injection (see aem_fault.h).
 */
#include <linux/debugfs.h>
#include <linux/export.h>
#include <linux/random.h>

#include "aem_fault.h"

struct aem_fault_attr aem_fail_ctx_alloc = AEM_FAULT_ATTR(fail_ctx_alloc);
struct aem_fault_attr aem_fail_reg_alloc = AEM_FAULT_ATTR(fail_reg_alloc);
struct aem_fault_attr aem_fail_ring_alloc = AEM_FAULT_ATTR(fail_ring_alloc);
struct aem_fault_attr aem_fail_wait_alloc = AEM_FAULT_ATTR(fail_wait_alloc);
struct aem_fault_attr aem_fail_arena_setup = AEM_FAULT_ATTR(fail_arena_setup);
struct aem_fault_attr aem_fail_arena_chunk = AEM_FAULT_ATTR(fail_arena_chunk);

bool __aem_should_fail(struct aem_fault_attr *attr)
{
	u32 interval = READ_ONCE(attr->interval);
	u32 prob = READ_ONCE(attr->probability);
	int calls = atomic_inc_return(&attr->calls);
	int left;

	if (interval > 1 && calls % interval)
		return false;
	if (prob < 100 && get_random_u32() % 100 >= prob)
		return false;
	/* Consume one of @times unless it is unlimited (-1) or used up. */
	do {
		left = atomic_read(&attr->times);
		if (left == 0)
			return false;
		if (left < 0)
			break;
	} while (atomic_cmpxchg(&attr->times, left, left - 1) != left);
	atomic_inc(&attr->failures);
	return true;
}
EXPORT_SYMBOL_GPL(__aem_should_fail);

void aem_fault_debugfs(struct dentry *parent, struct aem_fault_attr *attr)
{
	struct dentry *dir = debugfs_create_dir(attr->name, parent);

	debugfs_create_u32("probability", 0600, dir, &attr->probability);
	debugfs_create_u32("interval", 0600, dir, &attr->interval);
	debugfs_create_atomic_t("times", 0600, dir, &attr->times);
	debugfs_create_atomic_t("calls", 0400, dir, &attr->calls);
	debugfs_create_atomic_t("failures", 0400, dir, &attr->failures);
}
EXPORT_SYMBOL_GPL(aem_fault_debugfs);
