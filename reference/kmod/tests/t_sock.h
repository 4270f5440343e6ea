/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers of the socket and fd family tests (t_sock.c, t_fd.c).
 */
#ifndef AEM_T_SOCK_H
#define AEM_T_SOCK_H

#include <pthread.h>
#include <sys/types.h>

#define SEC	1000000000LL

/* A root helper process for root-only debugfs files (see t_sock.c). */
struct rootsrv {
	pid_t pid;
	int req;
	int rsp;
};

int rootsrv_start(struct rootsrv *r);	/* as root, before aem_drop_root() */
long rootsrv_read(struct rootsrv *r, const char *path);
int rootsrv_write(struct rootsrv *r, const char *path, const char *val);
void rootsrv_stop(struct rootsrv *r);

/* A thread that keeps waking the readers of s[0] (sends to s[1]). */
struct waker {
	pthread_t thread;
	int s[2];
	volatile int stop;
	unsigned long sent;
};

int waker_start(struct waker *w);	/* a new unix stream pair */
void waker_stop(struct waker *w);	/* joins, closes the pair */

#endif /* AEM_T_SOCK_H */
