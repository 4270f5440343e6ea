/* SPDX-License-Identifier: GPL-2.0 */
/*
 * AEM: the interface between the core (aem.ko) and the event family
 * modules (aem_timer.ko, aem_soft.ko, aem_fd.ko, ...).
 *
 * A family serves one event type (AEM_EV_*) in one version. Several
 * versions of a family may be loaded at the same time (as modules with
 * different names): new registrations use the newest one unless user
 * space asks for a version, existing registrations keep theirs, and each
 * registration pins its family's module, so the old one can be unloaded
 * once its last registration is gone (upgrade without reboot).
 */
#ifndef _AEM_FAMILY_H
#define _AEM_FAMILY_H

#include <linux/kconfig.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/types.h>
#include "uapi/linux/aem.h"

/*
 * Mutation testing (./cglcert mutants --backend kmod): a build with
 * "make AEM_MUTANT=<name>" (the names are in Kbuild) compiles one named
 * defect in, and the conformance suite must fail the requirement it breaks.
 * if (AEM_MUTANT(name)) keeps every defect compiled and type-checked in a
 * real build, where it is 0 and the compiler drops it.
 */
#define AEM_MUTANT(name) IS_ENABLED(AEM_MUTANT_##name)

struct aem_event;
struct file;

/**
 * struct aem_family - an event family
 * @type:      the AEM_EV_* type it serves
 * @version:   its version (> 0); (type, version) is unique while loaded
 * @name:      a short name for messages
 * @owner:     THIS_MODULE
 * @priv_size: bytes of per-registration family state (aem_reg_priv())
 * @arg_size:  bytes of union aem_reg_arg the family reads; the core
 *             rejects a registration whose remaining bytes are not zero
 * @setup:     validate @arg and start the source; process context, may
 *             sleep; the registration may be activated before it returns;
 *             returns 0 or -errno (then @teardown is not called)
 * @teardown:  stop the source; may sleep; after it returns the family
 *             never calls aem_activate() for @reg again
 * @raise:     optional: AEM_IOC_RAISE for this family
 * @filter:    optional: AEM_CTL_FILTER for this family
 * @recheck:   optional: re-check the source in the owner's context and
 *             aem_activate() if it is (still) ready; runs for level
 *             triggered registrations (no AEM_EDGE) after each delivery,
 *             and after aem_recheck_later(); may sleep
 * @parked_only: recheck() runs only after a delivery that
 *             aem_activate_park() parked, never as a level trigger
 * @sync:      optional: bring the registration's counts up to date before
 *             AEM_CTL_STATS and AEM_CTL_LOOKUP read them (a periodic timer
 *             that stopped while its expirations were not consumed counts
 *             the ones it missed); ctx->mutex held, may sleep
 * @list:      the core's list of families; private to the core
 */
struct aem_family {
	u32 type;
	u32 version;
	const char *name;
	struct module *owner;
	size_t priv_size;
	size_t arg_size;
	int (*setup)(struct aem_event *reg, const union aem_reg_arg *arg);
	void (*teardown)(struct aem_event *reg);
	int (*raise)(struct aem_event *reg, u64 count, u64 value);
	int (*filter)(struct aem_event *reg, u64 mask);
	void (*recheck)(struct aem_event *reg);
	void (*sync)(struct aem_event *reg);
	bool parked_only;
	struct list_head list;
};

/* How aem_activate() merges @value into the pending value. */
enum aem_value_merge {
	AEM_VALUE_SET,		/* the last value wins (soft events) */
	AEM_VALUE_OR,		/* OR of all values (poll masks) */
	AEM_VALUE_ADD,		/* sum of all values */
};

int aem_register_family(struct aem_family *fam);
void aem_unregister_family(struct aem_family *fam);

/*
 * Count @count occurrences of @reg. Any context (hardirq included); never
 * allocates, never fails, never sleeps. Takes the context lock with
 * spin_lock_irqsave(): a caller may hold a wait-queue head lock, but must
 * hold no lock that the core takes ctx->lock before (there is none).
 */
void aem_activate(struct aem_event *reg, u64 count, u64 value,
		  enum aem_value_merge how);

bool aem_activate_park(struct aem_event *reg, u64 count, u64 value,
		       enum aem_value_merge how);
void aem_activate_data(struct aem_event *reg, u64 value, u64 data0,
		       u64 data1);
bool aem_reg_idle(struct aem_event *reg);

void *aem_arena_alloc(struct aem_event *reg, size_t len, u64 *off, bool wait);
void aem_arena_free(struct aem_event *reg, u64 off);
/*
 * Hand the chunk at @off to user space: from now on AEM_IOC_ARENA_FREE
 * may free it, and the family must not touch it (call it right before
 * the activation that delivers @off). Until then only the family may
 * free it (aem_arena_free()); user space gets -EINVAL for it.
 */
void aem_arena_publish(struct aem_event *reg, u64 off);
/* Bytes of the context's arena, 0 without one. */
size_t aem_reg_arena_size(const struct aem_event *reg);

void aem_recheck_later(struct aem_event *reg);
bool aem_file_is_ctx(struct file *file);

void *aem_reg_priv(struct aem_event *reg);
u32 aem_reg_flags(const struct aem_event *reg);
u32 aem_reg_type(const struct aem_event *reg);
bool aem_reg_has_arena(const struct aem_event *reg);
int aem_reg_id(const struct aem_event *reg);
void aem_reg_set_fd(struct aem_event *reg, int fd);
u64 aem_min_timer_period_ns(void);

#endif /* _AEM_FAMILY_H */
