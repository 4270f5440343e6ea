// SPDX-License-Identifier: GPL-2.0
/*
 * Hardening tests of the fd family (aem_fd.ko), as an unprivileged user.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "t_sock.h"

#define DBG_FD	"/sys/kernel/debug/aem_fd/"

/*
 * Defect 7 (fd family): a wakeup that reaches an entry setup() hooked,
 * before setup fails, queues the registration for a re-check; the core
 * then freed it still linked on ctx->recheck (use-after-free, list
 * corruption at the next AEM_IOC_WAIT). The real trigger, a file with
 * three wait queues, cannot be made from user space: fail_setup fails
 * setup right after hooking while a thread keeps waking the socket. The
 * old module had no fail_setup (the test failed on the missing knob);
 * the new module with the old core corrupts ctx->recheck. Needs the
 * window hit at least once (setup_woken).
 */
AEM_TEST(fd_setup_fail_wakeup, .needs = AEM_NEED_FD | AEM_NEED_DEBUGFS,
	 .root = 1, .timeout = 90,
	 .save = (const char *const[]){ DBG_FD "fail_setup/probability",
					DBG_FD "fail_setup/times", NULL })
{
	uint64_t end = aem_now_ns() + 20 * SEC;
	struct aem_delivery d[4];
	unsigned long iters = 0;
	int fd, r = 0, id, s[2];
	struct rootsrv root;
	struct waker wk;
	long w0, w1;

	CHECK(aem_write_file(DBG_FD "fail_setup/times", "-1") == 0,
	      "no " DBG_FD "fail_setup (old module?)");
	CHECK(rootsrv_start(&root) == 0, "root helper");
	aem_drop_root();
	fd = aem_open();
	CHECK(fd >= 0, "open: %d", fd);
	CHECK(waker_start(&wk) == 0, "socketpair/thread");
	w0 = rootsrv_read(&root, DBG_FD "setup_woken");
	CHECK(w0 >= 0 && rootsrv_write(&root, DBG_FD "fail_setup/probability",
				       "100") == 0, "fail_setup on");
	while (aem_now_ns() < end) {
		r = aem_reg_fd(fd, wk.s[0], POLLIN, iters & 1 ? AEM_EDGE : 0);
		if (r != -ENOMEM)
			break;
		/* Runs the re-checks the wakeups queued. */
		if (aem_wait(fd, d, 4, 0) != 0)
			break;
		iters++;
		if (iters % 256 == 0 &&
		    rootsrv_read(&root, DBG_FD "setup_woken") - w0 >= 100)
			break;
	}
	rootsrv_write(&root, DBG_FD "fail_setup/probability", "0");
	w1 = rootsrv_read(&root, DBG_FD "setup_woken");
	waker_stop(&wk);
	CHECK(r == -ENOMEM, "registration %lu with fail_setup: %d", iters, r);
	printf("# fd_setup_fail_wakeup: %lu failed setups, %ld woken in the window\n",
	       iters, w1 - w0);
	CHECK(w1 > w0, "the window was never hit in %lu setups", iters);
	/* The context is sound: a registration works. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) == 0, "pair");
	id = aem_reg_fd(fd, s[0], POLLIN, 0);
	CHECK(id > 0, "register after: %d", id);
	CHECK(write(s[1], "ok", 2) == 2, "write");
	CHECK(aem_wait(fd, d, 1, 5 * SEC) == 1 && d[0].id == id &&
	      (d[0].value & POLLIN), "no delivery after");
	close(s[0]);
	close(s[1]);
	close(fd);
	rootsrv_stop(&root);
}
