// SPDX-License-Identifier: GPL-2.0
/*
 * Tests of the completion ring (aem_ring.c) as the library consumes it:
 * deliveries flow without a system call, and what must still pass
 * through one (a boosting delivery) does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "harness.h"

static const char boost_prio[] = "/sys/module/aem/parameters/boost_prio";
static const char boost_ceiling[] = "/sys/module/aem/parameters/boost_ceiling";

static uint32_t ring_entries_off;

static struct aem_ring_hdr *ring_map(int fd, uint32_t entries)
{
	struct aem_ring_setup rs = { .size = sizeof(rs), .entries = entries };
	void *map;

	if (aem_ioctl(fd, AEM_IOC_RING_SETUP, &rs))
		return NULL;
	ring_entries_off = rs.entries_off;
	map = mmap(NULL, rs.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	return map == MAP_FAILED ? NULL : map;
}

static const struct aem_delivery *ring_entry(struct aem_ring_hdr *hdr, uint32_t i)
{
	const struct aem_delivery *ents =
		(const void *)((char *)hdr + ring_entries_off);

	return &ents[i & hdr->mask];
}

static int refill(int fd)
{
	struct aem_wait w = { .size = sizeof(w), .flags = AEM_WAIT_REFILL };

	return aem_ioctl(fd, AEM_IOC_WAIT, &w);
}

/*
 * An activation moves deliveries into the ring, but one at or above
 * boost_prio must keep the thread boosted until its handler has run: it
 * waits in the queue (backlog set) until the consumer's own REFILL moves
 * it, and the boost lasts until that consumer's next ioctl. Before, the
 * raise moved it into the ring at once: the queue was empty, the thread
 * was never boosted, and its handler ran at the thread's own priority.
 */
AEM_TEST(ring_boosting_delivery_waits_for_consumer, .needs = AEM_NEED_PARAMS, .root = 1)
{
	char old_prio[32] = "0", old_ceiling[32] = "0";
	struct aem_ring_hdr *hdr;
	uint32_t tail_lo, tail_hi, backlog;
	int fd, hi, lo, n0, n1, n2, n3, n4, got;
	uint32_t prio_taken = 0, flags_taken = 0, flags_low;

	aem_read_file(boost_prio, old_prio, sizeof(old_prio));
	aem_read_file(boost_ceiling, old_ceiling, sizeof(old_ceiling));
	CHECK(aem_write_file(boost_prio, "50") == 0 &&
	      aem_write_file(boost_ceiling, "-5") == 0, "boost parameters");
	fd = aem_open();
	CHECK(fd >= 0, "open");
	hdr = ring_map(fd, 8);
	CHECK(hdr, "ring");
	hi = aem_reg_soft(fd, AEM_PRIO(60));
	lo = aem_reg_soft(fd, AEM_PRIO(10));
	CHECK(hi > 0 && lo > 0, "register: %d %d", hi, lo);

	n0 = getpriority(PRIO_PROCESS, 0);
	CHECK(aem_raise(fd, lo, 1, 0) == 0, "raise low");
	tail_lo = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
	n1 = getpriority(PRIO_PROCESS, 0);
	CHECK(aem_raise(fd, hi, 1, 0) == 0, "raise urgent");
	tail_hi = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
	backlog = __atomic_load_n(&hdr->backlog, __ATOMIC_RELAXED);
	n2 = getpriority(PRIO_PROCESS, 0);
	/* Consume the low one, then take the urgent one with REFILL. */
	flags_low = ring_entry(hdr, 0)->flags;
	__atomic_store_n(&hdr->head, tail_lo, __ATOMIC_RELEASE);
	got = refill(fd);
	if (got == 1) {
		prio_taken = ring_entry(hdr, tail_lo)->prio;
		flags_taken = ring_entry(hdr, tail_lo)->flags;
	}
	n3 = getpriority(PRIO_PROCESS, 0);	/* its handler would run now */
	__atomic_store_n(&hdr->head, __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE),
			 __ATOMIC_RELEASE);
	CHECK(refill(fd) == 0, "second refill");
	n4 = getpriority(PRIO_PROCESS, 0);
	aem_write_file(boost_prio, old_prio);
	aem_write_file(boost_ceiling, old_ceiling);
	close(fd);

	CHECK(tail_lo == 1, "the low-priority raise did not reach the ring: tail %u", tail_lo);
	CHECK(n0 == 0 && n1 == 0, "boosted by a low priority: %d %d", n0, n1);
	CHECK(tail_hi == 1 && backlog == 1,
	      "the urgent raise went into the ring by itself: tail %u backlog %u", tail_hi,
	      backlog);
	CHECK(n2 == -5, "not boosted while urgent pending: nice %d", n2);
	CHECK(got == 1 && prio_taken == 60, "REFILL moved %d, priority %u", got, prio_taken);
	CHECK(flags_taken == AEM_DLV_BOOST && flags_low == 0,
	      "delivery flags: urgent %#x, low %#x", flags_taken, flags_low);
	CHECK(n3 == -5, "not boosted while its handler runs: nice %d", n3);
	CHECK(n4 == 0, "not restored by the next ioctl: nice %d", n4);
}

/*
 * An entry in the ring that head has not passed is pending, not
 * delivered: STATS and LOOKUP count it so, and activations = delivered
 * counts + pending holds at every moment. Before, the kernel counted it
 * delivered as soon as it was written, so an application that read STATS
 * while its library had not consumed the ring saw fewer pending
 * occurrences than the ring held (pending 0, deliveries 3 below).
 */
AEM_TEST(ring_unconsumed_entries_are_pending)
{
	struct aem_reg_stats st0, st1;
	struct aem_reg_info info = { .size = sizeof(info) };
	struct aem_ring_hdr *hdr;
	int fd, id, i, lk;

	fd = aem_open();
	CHECK(fd >= 0, "open");
	hdr = ring_map(fd, 8);
	CHECK(hdr, "ring");
	id = aem_reg_soft(fd, 0);
	CHECK(id > 0, "register: %d", id);
	for (i = 0; i < 3; i++)
		CHECK(aem_raise(fd, id, 1, i) == 0, "raise %d", i);
	CHECK(__atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE) == 3,
	      "tail %u after 3 raises", hdr->tail);
	CHECK(aem_stats(fd, id, &st0) == 0, "stats");
	__atomic_store_n(&hdr->head, 2, __ATOMIC_RELEASE);	/* consume two */
	CHECK(aem_stats(fd, id, &st1) == 0, "stats");
	lk = aem_ctl(fd, id, AEM_CTL_LOOKUP, (uint64_t)(uintptr_t)&info);
	close(fd);
	CHECK(st0.activations == 3 && st0.pending == 3 && st0.deliveries == 0,
	      "nothing consumed: activations %llu pending %llu deliveries %llu",
	      (unsigned long long)st0.activations, (unsigned long long)st0.pending,
	      (unsigned long long)st0.deliveries);
	CHECK(st1.activations == 3 && st1.pending == 1 && st1.deliveries == 2,
	      "two consumed: activations %llu pending %llu deliveries %llu",
	      (unsigned long long)st1.activations, (unsigned long long)st1.pending,
	      (unsigned long long)st1.deliveries);
	CHECK(lk == 0 && info.pending == 1, "LOOKUP: %d, pending %llu", lk,
	      (unsigned long long)info.pending);
}

/*
 * The pending limit (max_pending) counts the entries user space has not
 * consumed, as STATS does: they are pending. Over it, a registration waits
 * on the overflow list and the overload notification goes out; the REFILL
 * after the consumer took the ring lets the deferred ones in. Before, a
 * ring took every activation, whatever the limit: six registrations sat in
 * a ring under a limit of four, with no notification.
 */
AEM_TEST(ring_counts_toward_pending_limit, .needs = AEM_NEED_PARAMS, .root = 1)
{
	const char *mp = "/sys/module/aem/parameters/max_pending";
	char old[32] = "0";
	struct aem_ring_hdr *hdr;
	uint32_t tail1, tail2, overloads = 0, regs = 0, ids = 0, i;
	int fd, id[6], n, got;

	CHECK(aem_read_file(mp, old, sizeof(old)) == 0 && aem_write_file(mp, "4") == 0,
	      "max_pending");
	fd = aem_open();
	CHECK(fd >= 0, "open");
	hdr = ring_map(fd, 16);
	CHECK(hdr, "ring");
	for (n = 0; n < 6; n++) {
		id[n] = aem_reg_soft(fd, 0);
		CHECK(id[n] > 0, "register %d: %d", n, id[n]);
		CHECK(aem_raise(fd, id[n], 1, n) == 0, "raise %d", n);
	}
	tail1 = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
	for (i = 0; i < tail1; i++) {
		overloads += ring_entry(hdr, i)->id == 0;
		regs += ring_entry(hdr, i)->id > 0;
	}
	__atomic_store_n(&hdr->head, tail1, __ATOMIC_RELEASE);	/* consume */
	got = refill(fd);
	tail2 = __atomic_load_n(&hdr->tail, __ATOMIC_ACQUIRE);
	for (i = tail1; i < tail2; i++)
		ids += ring_entry(hdr, i)->id > 0;
	__atomic_store_n(&hdr->head, tail2, __ATOMIC_RELEASE);
	aem_write_file(mp, old);
	close(fd);
	CHECK(regs == 4 && overloads >= 1,
	      "over a limit of 4: %u registrations' entries, %u overload notices", regs,
	      overloads);
	CHECK(got == 2 && tail2 == tail1 + 2 && ids == 2,
	      "the REFILL after consuming moved %d (%u registrations)", got, ids);
}
