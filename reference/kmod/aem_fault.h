/* SPDX-License-Identifier: GPL-2.0 */
/*
 * AEM: module-local fault injection. Debian's kernel is built without
 * CONFIG_FAULT_INJECTION, so struct fault_attr and should_fail() do not
 * exist there; this is a small clone with the same knobs, one debugfs
 * directory per site under /sys/kernel/debug/aem/:
 *
 *   probability  percent of eligible calls that fail (0: site off)
 *   interval     only every interval-th call is eligible (0, 1: all)
 *   times        how many failures remain (-1: no limit)
 *   calls        calls seen while the site was on (read-only)
 *   failures     failures injected so far (read-only)
 *
 * Example: echo 1 > times; echo 100 > probability: the next call fails.
 */
#ifndef _AEM_FAULT_H
#define _AEM_FAULT_H

#include <linux/atomic.h>
#include <linux/compiler.h>
#include <linux/types.h>

struct dentry;

/**
 * struct aem_fault_attr - one fault-injection site
 * @name:        debugfs directory name
 * @probability: percent of eligible calls that fail, 0: off
 * @interval:    every interval-th call is eligible
 * @times:       failures left, -1: unlimited
 * @calls:       calls counted while on
 * @failures:    failures injected
 */
struct aem_fault_attr {
	const char *name;
	u32 probability;
	u32 interval;
	atomic_t times;
	atomic_t calls;
	atomic_t failures;
};

#define AEM_FAULT_ATTR(n) {						\
	.name = #n, .interval = 1, .times = ATOMIC_INIT(-1),		\
	.calls = ATOMIC_INIT(0), .failures = ATOMIC_INIT(0) }

bool __aem_should_fail(struct aem_fault_attr *attr);

static inline bool aem_should_fail(struct aem_fault_attr *attr)
{
	if (likely(!READ_ONCE(attr->probability)))
		return false;
	return __aem_should_fail(attr);
}

void aem_fault_debugfs(struct dentry *parent, struct aem_fault_attr *attr);

/* The core's sites. */
extern struct aem_fault_attr aem_fail_ctx_alloc;
extern struct aem_fault_attr aem_fail_reg_alloc;
extern struct aem_fault_attr aem_fail_ring_alloc;
extern struct aem_fault_attr aem_fail_wait_alloc;
extern struct aem_fault_attr aem_fail_arena_setup;
extern struct aem_fault_attr aem_fail_arena_chunk;

#endif /* _AEM_FAULT_H */
