// SPDX-License-Identifier: GPL-2.0
/*
 * The soft event family built as version 2 under another module name:
 * it loads beside aem_soft.ko (version 1) to show and test the upgrade
 * path without reboot: new registrations get the newest version, old ones
 * keep theirs, and the old module unloads once its last one is cleaned.
 */
#define AEM_SOFT_VERSION	2
#include "aem_soft.c"
