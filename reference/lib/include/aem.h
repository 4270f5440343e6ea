/* SPDX-License-Identifier: MIT */
/*
 * aem.h - the C API of libaem, the Asynchronous Event Mechanism.
 *
 * An application registers events (socket accept/read/close/state, timers,
 * any pollable fd, software events) with a handler, a priority and an
 * executor. The mechanism activates them and runs the handlers with their
 * data, one at a time per execution context, highest priority first, FIFO
 * within a priority, without losing an occurrence.
 *
 * Conventions (every call):
 *  - A call that can fail returns a negative errno value (-EINVAL, ...) and
 *    also sets errno to its positive value, so both `if (id < 0) perror("")`
 *    and `-ret` styles work.
 *  - Registration calls return an event id > 0, unique in the process's
 *    context and never reused while the registration is live.
 *  - Flag bits not in AEM_FLAGS_VALID are -EINVAL; so are AEM_EDGE together
 *    with AEM_LEVEL, the executor value 3, and AEM_PRIO(p) with p outside
 *    AEM_PRIO_MIN..AEM_PRIO_MAX.
 *  - Policy refusals (an event type or executor the policy forbids, a timer
 *    period below the policy minimum) are -EPERM; the registration limit is
 *    -ENOSPC. See aem_policy(7) in README.md for the knobs.
 *  - Calls made from inside a handler are allowed, except aem_dispatch() and
 *    enter_keepalive(), which are -EDEADLK there (a handler never runs inside
 *    another handler of the same execution context).
 *
 * Flags, priorities, event types and evctl operations come from the kernel
 * ABI header <linux/aem.h>, shared with the kernel modules.
 */
#ifndef AEM_H
#define AEM_H

#include <linux/aem.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif
#pragma GCC visibility push(default)

#define AEM_VERSION_MAJOR 0
#define AEM_VERSION_MINOR 1

/* Handlers. jid is the id the registration call returned. */
typedef void (*aem_accept_fn)(int jid, int listen_fd, int new_fd);
typedef void (*aem_read_fn)(int jid, int fd, const void *data, size_t len); /* len 0: EOF */
typedef void (*aem_close_fn)(int jid, int fd);
typedef void (*aem_sk_fn)(int jid, int fd, int old_tcp_state, int new_tcp_state);
typedef void (*aem_sock_fn)(int jid, int fd, unsigned int poll_events);
typedef void (*aem_timer_fn)(int jid, uint64_t expirations);
typedef void (*aem_fd_fn)(int jid, int fd, unsigned int revents);
typedef void (*aem_soft_fn)(int jid, uint64_t value, uint64_t occurrences);
typedef void (*aem_error_fn)(int jid, int error);

/* evctl(AEM_CTL_LOOKUP) fills this. */
struct aem_event_info {
	int jid;		/* the id looked up */
	int type;		/* AEM_EV_* */
	int fd;			/* the application's fd, -1 when none */
	int prio;		/* current priority */
	int enabled;		/* 1 enabled, 0 disabled */
	unsigned long flags;	/* the registration flags (priority as given;
				   fd/sock events: AEM_LEVEL when no trigger given) */
	unsigned int events;	/* current filter: poll bits, TCP state mask */
	int executor;		/* AEM_EXEC_* */
	uint64_t pending;	/* occurrences activated, not yet delivered */
};

/* evctl(AEM_CTL_STATS) fills this. */
struct aem_event_stats {
	uint64_t activations;	/* occurrences activated */
	uint64_t deliveries;	/* handler calls */
	uint64_t merged;	/* occurrences folded into another delivery */
	uint64_t errors;	/* error notifications raised for this id */
	uint64_t pending;	/* occurrences waiting for delivery */
};

/*
 * sockasync_accept - accept connections on a listening socket asynchronously.
 * The library accepts each connection and calls handler(jid, sfd, new_fd)
 * once per connection (connections are never merged); the application owns
 * new_fd. If addr is given, the peer address of that connection is stored in
 * *addr (at most *addrlen bytes, *addrlen updated) before the handler runs.
 * Errors: -EBADF sfd is not open; -ENOTSOCK not a socket; -EINVAL not
 * listening, NULL handler, addr without addrlen, bad flags; -EPERM/-ENOSPC
 * policy and limits.
 */
int sockasync_accept(int sfd, struct sockaddr *addr, socklen_t *addrlen,
		     unsigned long flags, aem_accept_fn handler);

/*
 * sockasync_read - read a socket asynchronously. The library reads the data
 * into memory it manages and calls handler(jid, fd, data, len) with each
 * chunk in order; data is valid until the handler returns. len 0 is EOF
 * (delivered once, after all data). Several read registrations on one socket
 * each receive every byte (dispatching). Errors: -EBADF, -ENOTSOCK, -EINVAL
 * (NULL handler, bad flags), -EPERM/-ENOSPC.
 */
int sockasync_read(int fd, unsigned long flags, aem_read_fn handler);

/*
 * sockasync_close - the connection on a socket is closed (peer closed or
 * hung up, or the socket was shut down). Delivered once.
 * Errors: -EBADF, -ENOTSOCK, -EINVAL, -EPERM/-ENOSPC.
 */
int sockasync_close(int fd, unsigned long flags, aem_close_fn handler);

/*
 * sockasync_sk - TCP state transitions of a socket: handler gets the old and
 * new TCP_* state. The user backend observes the state at every readiness
 * change of the socket, so a transition that starts and ends between two
 * such changes is seen as one (documented limit; the kmod backend hooks the
 * state change itself). AEM_CTL_FILTER takes a mask of (1u << new_state).
 * Errors: -EBADF, -ENOTSOCK, -EOPNOTSUPP not a TCP socket, -EINVAL,
 * -EPERM/-ENOSPC.
 */
int sockasync_sk(int fd, unsigned long flags, aem_sk_fn handler);

/*
 * sockasync_sock - socket state as a poll mask (POLLIN, POLLOUT, POLLRDHUP,
 * POLLHUP, POLLERR, POLLPRI); AEM_CTL_FILTER narrows the mask. Level
 * triggered unless AEM_EDGE. Errors: as sockasync_close.
 */
int sockasync_sock(int fd, unsigned long flags, aem_sock_fn handler);

/*
 * evtimer - a timer. value is the first expiry (relative, or absolute with
 * AEM_ABSTIME; CLOCK_MONOTONIC, or CLOCK_REALTIME with AEM_REALTIME) and is
 * required; period NULL or zero makes a one-shot timer. The handler gets the
 * number of expirations since its previous call: none is ever lost, however
 * long a handler takes (with AEM_PER_OCCURRENCE, one call per expiration,
 * each with 1). Errors: -EINVAL (NULL value or handler, tv_nsec outside
 * 0..999999999, negative time, bad flags), -EPERM (period below the policy
 * minimum, timers not allowed), -ENOSPC.
 */
int evtimer(const struct timespec *value, const struct timespec *period,
	    unsigned int flags, aem_timer_fn handler);

/*
 * evfd - any pollable fd. events are poll bits (POLLIN, POLLOUT, ...);
 * revents in the handler likewise. Level triggered (default, AEM_LEVEL):
 * called again after the handler returns while the fd is still ready; edge
 * (AEM_EDGE): once per new arrival. Errors: -EBADF, -EINVAL (no or unknown
 * event bits, NULL handler, bad flags), -EPERM (the fd does not support
 * poll, e.g. a regular file; or policy), -ENOSPC.
 */
int evfd(int fd, unsigned int events, unsigned long flags, aem_fd_fn handler);

/*
 * evsoft - a software event, raised by evsoft_raise(). The handler gets the
 * value of the latest raise and the number of raises merged into the call
 * (with AEM_PER_OCCURRENCE: one call per raise, each with its own value).
 * Errors: -EINVAL, -EPERM, -ENOSPC.
 */
int evsoft(unsigned long flags, aem_soft_fn handler);

/*
 * evsoft_raise - activate a software event, from any thread (and from a
 * handler). Never blocks on the handler, never loses a raise.
 * Errors: -EINVAL jid <= 0 or not a software event; -ENOENT no such id.
 */
int evsoft_raise(int jid, uint64_t value);

/*
 * evctl - control a registration (see <linux/aem.h> for the ops):
 *   AEM_CTL_ENABLE, AEM_CTL_DISABLE  arg 0. While disabled, occurrences are
 *       still counted and held; they are delivered after AEM_CTL_ENABLE.
 *   AEM_CTL_FILTER       arg: the family's event mask (poll bits for fd and
 *       socket-state events, 1u << TCP state for sockasync_sk). It applies
 *       to activations from the call on: an occurrence already pending is
 *       delivered with the mask it was activated with (nothing is lost).
 *   AEM_CTL_LOOKUP       arg: (unsigned long) struct aem_event_info *.
 *   AEM_CTL_SET_TIMEOUT  arg: milliseconds, 0 for none. Not activated within
 *       it (counted from this call, then from each activation): the error
 *       handler gets -ETIMEDOUT for that id and the registration is cleaned.
 *   AEM_CTL_SET_PRIO     arg: AEM_PRIO_MIN..AEM_PRIO_MAX.
 *   AEM_CTL_CLEAN        arg 0: unregister; pending occurrences are dropped
 *       (accepted fds closed). When it returns, the handler is not running
 *       in another thread and will not run again.
 *   AEM_CTL_STATS        arg: (unsigned long) struct aem_event_stats *.
 * Returns 0. Errors: -EINVAL (jid <= 0, unknown op, bad arg, NULL pointer,
 * filter for a family without one), -ENOENT (id never issued or cleaned).
 */
int evctl(int jid, unsigned int op, unsigned long arg);

/*
 * enter_keepalive - run the calling thread's handlers until aem_stop() or a
 * caught signal. Returns 0 after aem_stop() (also when aem_stop() was called
 * before it was entered), -EINTR after a signal, -EDEADLK inside a handler.
 */
int enter_keepalive(void);

/*
 * aem_dispatch - run the calling thread's pending handlers, waiting up to
 * timeout_ms (-1: forever, 0: not at all) for the first one. Returns the
 * number of handlers run (0 on timeout), -EINTR after a caught signal,
 * -EINVAL timeout_ms < -1, -EDEADLK inside a handler.
 */
int aem_dispatch(int timeout_ms);

/* aem_stop - make enter_keepalive() return, from a handler or any thread. */
void aem_stop(void);

/*
 * aem_set_async - on (1): the calling thread's handlers also interrupt its
 * main flow (a real-time signal, SA_RESTART, masked while a handler runs);
 * off (0): they run only in aem_dispatch()/enter_keepalive(). Outside the
 * library the interruption may land anywhere, libc included: the library
 * neither allocates nor frees while delivering there, and a handler used
 * asynchronously should follow the rules of a signal handler.
 * Errors: -EINVAL (on not 0 or 1).
 */
int aem_set_async(int on);

/*
 * aem_on_error - the handler for error notifications (-ETIMEDOUT timeout,
 * -ENOMEM no memory for event data, -EOVERFLOW pending limit reached: the
 * occurrences are still counted and delivered later, -ECONNRESET and other
 * errors reading a socket). It runs in the registration's execution context,
 * like its handler. NULL removes it. Returns 0.
 */
int aem_on_error(aem_error_fn handler);

/*
 * aem_set_allocator - event data (socket reads) is allocated from the
 * context's arena by default, and freed by the library after the handler
 * returns: the application never manages it (AEM-3.4.1). An application may
 * supply its own allocator instead; alloc returns NULL when it has no
 * memory, which is reported as -ENOMEM through aem_on_error() while the data
 * waits in the socket. Both NULL restores the arena.
 * Errors: -EINVAL (only one of alloc and release given).
 */
int aem_set_allocator(void *(*alloc)(size_t len, void *opaque),
		      void (*release)(void *p, size_t len, void *opaque), void *opaque);

/* aem_backend - "kmod" or "user"; NULL (errno set) when none can start. */
const char *aem_backend(void);

/*
 * aem_shutdown - clean every registration and release the process's
 * context; the next call starts a new one (reading the policy again).
 * Returns 0, or -EBUSY when called from a handler.
 */
int aem_shutdown(void);

#pragma GCC visibility pop
#ifdef __cplusplus
}
#endif

#endif /* AEM_H */
