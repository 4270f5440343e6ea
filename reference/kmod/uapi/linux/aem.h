/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note OR MIT */
/*
 * AEM - the Asynchronous Event Mechanism: constants shared by the kernel
 * modules and libaem. This is the one source of truth for flag bits,
 * priorities, event types and control operations; libaem's <aem.h>
 * includes it, so a value can never differ between the two sides.
 *
 * Flags are 32-bit values (evtimer() takes an unsigned int). Bits that are
 * not in AEM_FLAGS_VALID are rejected with -EINVAL by both backends.
 */
#ifndef _UAPI_LINUX_AEM_H
#define _UAPI_LINUX_AEM_H

/* Priorities: higher is more urgent. */
#define AEM_PRIO_MIN		0
#define AEM_PRIO_MAX		63
#define AEM_PRIO_DEFAULT	32
#define AEM_PRIO_LEVELS		(AEM_PRIO_MAX - AEM_PRIO_MIN + 1)

/* Executor: a two-bit field; the value 3 is invalid. */
#define AEM_EXEC_SAME		0x0u	/* the registering thread runs it */
#define AEM_EXEC_THREAD		0x1u	/* a thread of the process runs it */
#define AEM_EXEC_PROCESS	0x2u	/* a new process per activation */
#define AEM_EXEC_MASK		0x3u

#define AEM_ONESHOT		0x4u	/* cleaned after its first delivery */
#define AEM_INHERIT		0x8u	/* a forked child keeps it */
#define AEM_DISABLED		0x10u	/* registered disabled */
#define AEM_PER_OCCURRENCE	0x20u	/* one delivery per occurrence */
#define AEM_EDGE		0x40u	/* fd events: once per new arrival */
#define AEM_LEVEL		0x80u	/* fd events: while ready (default) */
#define AEM_ABSTIME		0x100u	/* evtimer: value is an absolute time */
#define AEM_REALTIME		0x200u	/* evtimer: CLOCK_REALTIME, not MONOTONIC */

/*
 * AEM_PRIO(p): bit 15 says a priority is given, bits 16..23 hold it. The
 * macro does not mask p: a p outside AEM_PRIO_MIN..AEM_PRIO_MAX becomes the
 * field value 0xff, which no backend accepts (-EINVAL), so a bad priority
 * can never turn silently into another one.
 */
#define AEM_PRIO_GIVEN		0x8000u
#define AEM_PRIO_SHIFT		16
#define AEM_PRIO_FIELD		0xff0000u
#define AEM_PRIO(p)							\
	(AEM_PRIO_GIVEN |						\
	 (((p) >= AEM_PRIO_MIN && (p) <= AEM_PRIO_MAX) ?		\
	  ((unsigned int)(p) << AEM_PRIO_SHIFT) : AEM_PRIO_FIELD))

#define AEM_FLAGS_VALID							\
	(AEM_EXEC_MASK | AEM_ONESHOT | AEM_INHERIT | AEM_DISABLED |	\
	 AEM_PER_OCCURRENCE | AEM_EDGE | AEM_LEVEL | AEM_ABSTIME |	\
	 AEM_REALTIME | AEM_PRIO_GIVEN | AEM_PRIO_FIELD)

/* Event types (families). */
#define AEM_EV_ACCEPT		1	/* socket: a connection accepted */
#define AEM_EV_READ		2	/* socket: data read (len 0 = EOF) */
#define AEM_EV_CLOSE		3	/* socket: closed */
#define AEM_EV_SK		4	/* socket: TCP state transition */
#define AEM_EV_SOCK		5	/* socket: poll-mask state */
#define AEM_EV_TIMER		6	/* timer expirations */
#define AEM_EV_FD		7	/* any pollable fd */
#define AEM_EV_SOFT		8	/* software event */
#define AEM_EV_MAX		8

/* evctl() operations. */
#define AEM_CTL_ENABLE		1
#define AEM_CTL_DISABLE		2
#define AEM_CTL_FILTER		3
#define AEM_CTL_LOOKUP		4
#define AEM_CTL_SET_TIMEOUT	5
#define AEM_CTL_SET_PRIO	6
#define AEM_CTL_CLEAN		7
#define AEM_CTL_STATS		8
#define AEM_CTL_MAX		8

/*
 * ------------------------------------------------------------------------
 * Kernel ABI of /dev/aem (aem.ko and its family modules).
 *
 * One open() of /dev/aem is one context, bound to the thread group that
 * opened it; an ioctl() or mmap() from another thread group (an fd
 * inherited over fork() or passed over a socket) fails with -EOWNERDEAD.
 * Open it O_CLOEXEC.
 *
 * Every argument struct starts with a __u32 size that the caller sets to
 * sizeof() of the struct it was compiled with. The kernel accepts any size
 * from the first published one (AEM_*_SIZE_VER0) up to a page: bytes it
 * does not know must be zero (else -E2BIG), missing trailing bytes read as
 * zero, and it copies back at most the caller's size. The ioctl number is
 * matched on type and number only, so the size bits of the ioctl number
 * never change the meaning. Reserved fields and unused union bytes must be
 * zero (-EINVAL), unknown flag bits are -EINVAL. User pointers are __u64.
 * ------------------------------------------------------------------------
 */
#include <linux/types.h>
#include <linux/ioctl.h>

#define AEM_API_VERSION		1
#define AEM_IOC_MAGIC		0xA9

/* Flags of struct aem_delivery. */
#define AEM_DLV_FINAL		0x1u	/* the id is gone after this one */
#define AEM_DLV_BOOST		0x2u	/* the taker holds the boost for its */
					/* handler until its next ioctl on */
					/* the context (AEM_IOC_WAIT) */

/* Event type of a context notification (struct aem_delivery, id 0). */
#define AEM_EV_OVERLOAD		0	/* error -EOVERFLOW, see aem_delivery */

/* AEM_IOC_INFO: what the loaded modules offer and the current limits. */
struct aem_info {
	__u32 size;		/* in: sizeof(struct aem_info) */
	__u32 api_version;	/* AEM_API_VERSION */
	__u32 types;		/* bit (1 << AEM_EV_x): a family serves x */
	__u32 prio_levels;	/* AEM_PRIO_LEVELS */
	__u32 max_regs;		/* registrations per context */
	__u32 max_pending;	/* simultaneously pending per context */
	__u64 min_timer_period_ns;
	__u32 allowed_types;	/* bit (1 << AEM_EV_x) may be registered */
	__u32 allowed_exec;	/* bit (1 << AEM_EXEC_x) may be used */
	__u32 boost_prio;	/* pending at >= this priority boosts, 0: off */
	__s32 boost_ceiling;	/* nice value while boosted (never lower) */
	__u32 delivery_size;	/* sizeof(struct aem_delivery) */
	__u32 max_regs_per_user; /* registrations per user, all contexts */
	__u32 family_version[16]; /* newest version serving type i, 0: none */
	__u64 max_arena_bytes;	/* largest data arena (AEM_IOC_ARENA_SETUP) */
};

#define AEM_INFO_SIZE_VER0	120

/* Family arguments of struct aem_reg (union aem_reg_arg). */
struct aem_timer_arg {		/* AEM_EV_TIMER */
	__s64 value_ns;		/* first expiry: relative, or absolute with */
				/* AEM_ABSTIME (clock: AEM_REALTIME or not) */
	__s64 period_ns;	/* 0: one-shot, else >= min period */
};

struct aem_fd_arg {		/* AEM_EV_FD */
	__s32 fd;
	__u32 events;		/* poll bits: EPOLLIN, EPOLLOUT, ... */
};

/*
 * The socket families (AEM_EV_ACCEPT, READ, CLOSE, SK, SOCK). @events:
 *   AEM_EV_SOCK  poll bits (EPOLLIN, ...), 0: AEM_SOCK_DEFAULT
 *   AEM_EV_SK    TCP states to report transitions into, bit (1 << state),
 *                within AEM_SK_STATES; 0: all of them
 *   others       must be 0
 * Deliveries (struct aem_delivery), count 1 each except AEM_EV_SOCK:
 *   data[1]      0, or a negative errno the family met (for instance
 *                -ECONNRESET from a read, -EMFILE from an accept, -ENOMEM
 *                when the arena has no room): not final, the registration
 *                goes on (a read error other than -ENOMEM is followed by
 *                end of file); the other fields are then 0
 *   ACCEPT       value: the accepted connection's fd, installed in the
 *                owner's fd table (O_CLOEXEC, like accept4(SOCK_CLOEXEC);
 *                blocking), one per delivery. Only on TCP listeners
 *                (AF_INET/AF_INET6, IPPROTO_TCP; not MPTCP) and AF_UNIX
 *                stream and seqpacket ones: -EOPNOTSUPP for any other
 *                (their accepted sockets may not hold their network
 *                namespace). The kernel's
 *                LSM socket_accept hook is not called (not reachable
 *                from a module): see reference/kmod/README.md.
 *   READ         value: bytes read (0: end of file, delivered once);
 *                data[0]: their offset in the data arena, which user space
 *                gives back with AEM_IOC_ARENA_FREE; one chunk per delivery,
 *                at most the arena's size.
 *                Needs an arena (AEM_IOC_ARENA_SETUP) at registration.
 *   CLOSE        value: the poll bits that said so (EPOLLRDHUP, EPOLLHUP):
 *                the connection was closed (peer or own shutdown); once
 *   SK           value: the new TCP state; data[0]: the previous one. At
 *                most 64 SK registrations per socket, all contexts
 *                together: -ENOSPC beyond
 *   SOCK         value: poll bits, OR-ed; count: wakeups merged
 */
struct aem_sock_arg {
	__s32 fd;
	__u32 events;
};

#define AEM_SOCK_DEFAULT	0x201fu	/* IN PRI OUT ERR HUP RDHUP */
#define AEM_SK_STATES		0x1ffeu	/* TCP_ESTABLISHED .. TCP_CLOSING */

union aem_reg_arg {
	struct aem_timer_arg timer;
	struct aem_fd_arg fd;
	struct aem_sock_arg sock;
	__u64 raw[6];		/* bytes a family does not use must be 0 */
};

/*
 * AEM_IOC_REGISTER: create a registration. Returns the id (> 0), also
 * stored in @id. Errors: -EINVAL (bad size, flags, priority, type or
 * argument), -E2BIG (non-zero unknown tail), -EPERM (type or executor not
 * allowed by policy), -EOPNOTSUPP (no family module serves the type or the
 * requested version), -EMFILE (max_regs of the context reached), -EDQUOT
 * (max_regs_per_user reached), -ENOMEM, -EFAULT (the id could not be
 * stored: no registration exists). The id is stored before the source is
 * watched, so no delivery ever names a registration whose REGISTER failed;
 * on an error @id holds nothing of use. A periodic timer whose last expiration
 * was not taken stops interrupting until it is (like timerfd); its counts
 * stay exact: the periods it missed are counted into the pending delivery
 * and into AEM_CTL_STATS.
 */
struct aem_reg {
	__u32 size;		/* sizeof(struct aem_reg) */
	__u32 type;		/* AEM_EV_* */
	__u32 flags;		/* AEM_* flags, AEM_PRIO(p) included */
	__s32 id;		/* out: the registration id (0 in) */
	__u64 user_data;	/* opaque, returned in every delivery */
	__u32 family_version;	/* 0: the newest loaded family of @type */
	__u32 reserved0;	/* must be 0 */
	union aem_reg_arg arg;	/* per type, see above */
};

#define AEM_REG_SIZE_VER0	80

/*
 * AEM_IOC_CTL: evctl(). @arg is per @op:
 *   AEM_CTL_ENABLE, AEM_CTL_DISABLE, AEM_CTL_CLEAN  0
 *   AEM_CTL_FILTER       the family's event mask (-EOPNOTSUPP if none)
 *   AEM_CTL_LOOKUP       user pointer to struct aem_reg_info
 *   AEM_CTL_SET_TIMEOUT  milliseconds, 0: none
 *   AEM_CTL_SET_PRIO     AEM_PRIO_MIN..AEM_PRIO_MAX
 *   AEM_CTL_STATS        user pointer to struct aem_reg_stats
 * Returns 0 (or >= 0). -ENOENT: id never issued, cleaned or being cleaned
 * after its final delivery; -EINVAL: unknown op or bad argument.
 * While disabled, occurrences are counted but not delivered; enabling
 * delivers them (merged). A registration not activated for the timeout
 * gets one final delivery with error -ETIMEDOUT and is cleaned.
 */
struct aem_ctl {
	__u32 size;		/* sizeof(struct aem_ctl) */
	__s32 id;
	__u32 op;		/* AEM_CTL_* */
	__u32 reserved0;	/* must be 0 */
	__u64 arg;
};

#define AEM_CTL_SIZE_VER0	24

struct aem_reg_info {		/* AEM_CTL_LOOKUP */
	__u32 size;		/* in: sizeof(struct aem_reg_info) */
	__s32 id;
	__u32 type;
	__u32 flags;		/* as registered, priority field updated */
	__u32 prio;		/* current priority */
	__u32 enabled;		/* 1 or 0 */
	__s32 fd;		/* watched fd at registration, -1: none */
	__u32 family_version;
	__u64 user_data;
	__u64 pending;		/* occurrences not yet delivered (with a */
				/* ring: or in it, not consumed) */
	__u64 timeout_ms;	/* 0: none */
};

#define AEM_REG_INFO_SIZE_VER0	56

struct aem_reg_stats {		/* AEM_CTL_STATS */
	__u32 size;		/* in: sizeof(struct aem_reg_stats) */
	__u32 reserved0;
	__u64 activations;	/* occurrences counted */
	__u64 deliveries;	/* deliveries handed to user space (with */
				/* a ring: consumed, head past them) */
	__u64 merged;		/* occurrences merged into another delivery */
	__u64 errors;		/* error deliveries */
	__u64 overflows;	/* activations deferred by the pending limit */
	__u64 pending;		/* occurrences not yet delivered: always */
				/* activations = delivered counts + pending */
};

#define AEM_REG_STATS_SIZE_VER0	56

/*
 * One delivery: all occurrences of one registration merged since its last
 * delivery (one per occurrence with AEM_PER_OCCURRENCE), or an error, or a
 * context notification (id 0, type AEM_EV_OVERLOAD, error -EOVERFLOW, at
 * AEM_PRIO_MAX: the pending limit deferred registrations; count says how
 * many since the last notification; they are delivered later, in order,
 * with every occurrence counted: none is lost).
 */
struct aem_delivery {
	__s32 id;		/* registration id, 0: context notification */
	__u32 type;		/* AEM_EV_* */
	__u32 prio;		/* priority it was queued at */
	__u32 flags;		/* AEM_DLV_* */
	__s32 error;		/* 0 or -errno (-ETIMEDOUT, -EOVERFLOW, ...) */
	__u32 reserved0;
	__u64 count;		/* occurrences (timer: expirations) */
	__u64 value;		/* soft: last raised value; fd: revents */
	__u64 user_data;	/* from struct aem_reg */
	__u64 data[2];		/* family data (sockets), else 0 */
};

#define AEM_DELIVERY_SIZE_VER0	64

/*
 * AEM_IOC_WAIT: the pull path. Waits until something is pending (at most
 * @timeout_ns; < 0: forever, 0: do not wait, one past the end of time:
 * forever), then pops up to @max deliveries, highest priority first, FIFO
 * within a priority, into the array at @deliveries (stride @dsize).
 * Returns how many (0 on timeout), -EINTR on a signal. A delivery that
 * cannot be copied out is put back exactly, as if never taken (its count,
 * value and AEM_CTL_STATS); -EFAULT when none could be.
 * A delivery at or above aem_info.boost_prio keeps the boost until the
 * caller's next ioctl on the context: its handler runs boosted.
 */
struct aem_wait {
	__u32 size;		/* sizeof(struct aem_wait) */
	__u32 flags;		/* 0 or AEM_WAIT_REFILL */
	__u64 deliveries;	/* user pointer */
	__u32 max;		/* 1..1024 entries */
	__u32 dsize;		/* >= AEM_DELIVERY_SIZE_VER0 */
	__s64 timeout_ns;
};

#define AEM_WAIT_SIZE_VER0	32

/* AEM_IOC_RAISE: raise a software event (AEM_EV_SOFT) @count times. */
struct aem_raise {
	__u32 size;		/* sizeof(struct aem_raise) */
	__s32 id;
	__u64 count;		/* >= 1 */
	__u64 value;		/* delivered as aem_delivery.value (last wins) */
	__u32 flags;		/* must be 0 */
	__u32 reserved0;
};

#define AEM_RAISE_SIZE_VER0	32

/*
 * AEM_IOC_SET_SIGNAL: asynchronous delivery. While @signo != 0, the kernel
 * sends @signo (an RT signal, SIGRTMIN..SIGRTMAX as the kernel numbers
 * them: 32..64) to thread @tid (0: the caller) of the context's thread
 * group when the context goes from nothing pending to something pending.
 * The doorbell is re-armed when AEM_IOC_WAIT leaves nothing pending (or,
 * with a ring, when user space stores 0 into aem_ring_hdr.doorbell), so at
 * most one signal is queued per context. si_code is SI_KERNEL.
 */
struct aem_signal {
	__u32 size;		/* sizeof(struct aem_signal) */
	__s32 signo;		/* 0: off */
	__s32 tid;		/* 0: the calling thread */
	__u32 flags;		/* must be 0 */
};

#define AEM_SIGNAL_SIZE_VER0	16

/*
 * AEM_IOC_RING_SETUP: create the completion ring (once per context), then
 * mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0).
 * The ring's pages are locked memory charged to the caller's user against
 * RLIMIT_MEMLOCK (as io_uring charges its rings) unless the caller has
 * CAP_IPC_LOCK: -ENOMEM when they would exceed it.
 * The kernel moves deliveries from its priority queue into the ring while
 * there is room (on activation and on AEM_IOC_WAIT with AEM_WAIT_REFILL),
 * so the ring is in priority order at the time of each refill. A delivery
 * at or above aem_info.boost_prio (when boosting is on) is moved only by
 * AEM_IOC_WAIT(AEM_WAIT_REFILL): until then it is pending, with backlog
 * set, and the boost it causes lasts, as after a pop, until the caller's
 * next ioctl on the context (its handler runs boosted).
 *
 * Memory ordering (io_uring style): the kernel writes an entry, then
 * store-releases tail. User space load-acquires tail, reads entries up to
 * it, then store-releases head. The kernel load-acquires head. Doorbell
 * (Dekker): the kernel publishes tail, then xchg(doorbell, 1) and signals
 * on 0 -> 1; the consumer stores doorbell = 0 (seq_cst), then re-reads
 * tail before sleeping.
 */
struct aem_ring_setup {
	__u32 size;		/* sizeof(struct aem_ring_setup) */
	__u32 entries;		/* in: power of two, 2..4096 */
	__u32 flags;		/* must be 0 */
	__u32 entries_off;	/* out: offset of the entry array */
	__u64 mmap_size;	/* out: bytes to mmap */
};

#define AEM_RING_SETUP_SIZE_VER0	24

struct aem_ring_hdr {
	__u32 head;		/* consumer index, written by user space */
	__u32 pad0[15];
	__u32 tail;		/* producer index, written by the kernel */
	__u32 mask;		/* entries - 1 */
	__u32 entries;
	__u32 backlog;		/* 1: deliveries wait in the kernel queue; */
				/* drain, then AEM_IOC_WAIT(AEM_WAIT_REFILL) */
	__u32 pad1[12];
	__u32 doorbell;		/* see AEM_IOC_SET_SIGNAL */
	__u32 pad2[15];
};

/* struct aem_wait.flags */
#define AEM_WAIT_REFILL		0x1u	/* refill the ring, pop nothing */

/*
 * The data arena ("vmtable"): event data the kernel produces (socket reads)
 * lives here, in memory user space maps read-only with
 * mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, AEM_ARENA_OFFSET). The
 * mapping is inherited by fork() (the ring's is not), so a child process
 * sees the data without a copy. The allocator's records are kernel memory
 * only; user space gives a chunk back with AEM_IOC_ARENA_FREE, once it was
 * delivered (a chunk the kernel is still filling: -EINVAL). The pages are
 * charged to the memory cgroup of the caller (-ENOMEM over its limit).
 * Set up once per context.
 */
#define AEM_ARENA_OFFSET	0x10000000ull

struct aem_arena_setup {
	__u32 size;		/* sizeof(struct aem_arena_setup) */
	__u32 flags;		/* must be 0 */
	__u64 bytes;		/* in: page multiple, up to max_arena_bytes */
	__u64 mmap_offset;	/* out: AEM_ARENA_OFFSET */
	__u32 block;		/* out: allocation unit in bytes */
	__u32 reserved0;	/* must be 0 */
};

#define AEM_ARENA_SETUP_SIZE_VER0	32

struct aem_arena_free {
	__u32 size;		/* sizeof(struct aem_arena_free) */
	__u32 flags;		/* must be 0 */
	__u64 offset;		/* a chunk's offset, as delivered */
};

#define AEM_ARENA_FREE_SIZE_VER0	16

#define AEM_IOC_INFO		_IOWR(AEM_IOC_MAGIC, 0x00, struct aem_info)
#define AEM_IOC_REGISTER	_IOWR(AEM_IOC_MAGIC, 0x01, struct aem_reg)
#define AEM_IOC_CTL		_IOW(AEM_IOC_MAGIC, 0x02, struct aem_ctl)
#define AEM_IOC_WAIT		_IOW(AEM_IOC_MAGIC, 0x03, struct aem_wait)
#define AEM_IOC_RAISE		_IOW(AEM_IOC_MAGIC, 0x04, struct aem_raise)
#define AEM_IOC_SET_SIGNAL	_IOW(AEM_IOC_MAGIC, 0x05, struct aem_signal)
#define AEM_IOC_RING_SETUP	_IOWR(AEM_IOC_MAGIC, 0x06, struct aem_ring_setup)
#define AEM_IOC_ARENA_SETUP	_IOWR(AEM_IOC_MAGIC, 0x07, struct aem_arena_setup)
#define AEM_IOC_ARENA_FREE	_IOW(AEM_IOC_MAGIC, 0x08, struct aem_arena_free)

#endif /* _UAPI_LINUX_AEM_H */
