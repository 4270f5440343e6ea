// SPDX-License-Identifier: GPL-2.0
/*
 * Lifetimes decided rather than changed, each pinned by a test so that a
 * change of them is a decision too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

/*
 * The application's own close() of a watched socket is not seen: the
 * registration holds the socket's file (as io_uring's poll requests do),
 * because its wait queue is freed with the inode without a POLLFREE
 * wakeup, so a module cannot stay hooked without that reference. The
 * connection stays open until the registration is cleaned; then the peer
 * sees the end of the stream. (libaem cleans the registrations of an fd
 * when the application closes it.)
 */
AEM_TEST(own_close_seen_only_at_clean, .needs = AEM_NEED_SOCK)
{
	int fd = aem_open(), lis, cli, srv, id, r;
	struct pollfd p;
	uint16_t port;
	char c;

	CHECK(fd >= 0, "open");
	lis = aem_tcp_listener(&port);
	CHECK(lis >= 0, "listener: %d", lis);
	cli = aem_tcp_connect(port);
	CHECK(cli >= 0, "connect: %d", cli);
	srv = accept4(lis, NULL, NULL, SOCK_CLOEXEC);
	CHECK(srv >= 0, "accept: %s", strerror(errno));
	id = aem_reg_sock(fd, AEM_EV_CLOSE, srv, 0, 0);
	CHECK(id > 0, "register CLOSE: %d", id);
	close(srv);
	p.fd = cli;
	p.events = POLLIN;
	r = poll(&p, 1, 200);
	CHECK(r == 0, "the peer saw the close while registered (poll %d)", r);
	CHECK(aem_ctl(fd, id, AEM_CTL_CLEAN, 0) == 0, "clean");
	r = poll(&p, 1, 10000);
	CHECK(r == 1 && read(cli, &c, 1) == 0, "after CLEAN the peer sees the end: %d", r);
	close(cli);
	close(lis);
	close(fd);
}
