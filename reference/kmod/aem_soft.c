// SPDX-License-Identifier: GPL-2.0
/*
 * AEM software events (AEM_EV_SOFT): raised by the owner with
 * AEM_IOC_RAISE; every occurrence is counted, the delivery carries the
 * last raised 64-bit value.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>

#include "aem_family.h"

#ifndef AEM_SOFT_VERSION
#define AEM_SOFT_VERSION	1
#endif

static int aem_soft_setup(struct aem_event *reg, const union aem_reg_arg *arg)
{
	if (aem_reg_flags(reg) & (AEM_EDGE | AEM_LEVEL | AEM_ABSTIME |
				  AEM_REALTIME))
		return -EINVAL;
	return 0;
}

static void aem_soft_teardown(struct aem_event *reg)
{
}

static int aem_soft_raise(struct aem_event *reg, u64 count, u64 value)
{
	aem_activate(reg, count, value, AEM_VALUE_SET);
	return 0;
}

static struct aem_family aem_soft_family = {
	.type		= AEM_EV_SOFT,
	.version	= AEM_SOFT_VERSION,
	.name		= "soft",
	.owner		= THIS_MODULE,
	.arg_size	= 0,
	.setup		= aem_soft_setup,
	.teardown	= aem_soft_teardown,
	.raise		= aem_soft_raise,
};

static int __init aem_soft_init(void)
{
	return aem_register_family(&aem_soft_family);
}

static void __exit aem_soft_exit(void)
{
	aem_unregister_family(&aem_soft_family);
}

module_init(aem_soft_init);
module_exit(aem_soft_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("AEM software event family");
MODULE_VERSION("1.0");
