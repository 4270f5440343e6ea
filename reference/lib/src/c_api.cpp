// SPDX-License-Identifier: MIT
// The C API (aem.h) over the process's implicit context.
#include <cerrno>

#include "backend.hpp"
#include "mutant.hpp"

using aem::detail::Backend;
using aem::detail::Event;
using aem::detail::Spec;

namespace {

// Every failing call returns -errno and sets errno.
int ret(int r) {
  if (r < 0) errno = -r;
  return r;
}

Backend* ctx(int& err) { return aem::detail::implicit_backend(err); }

int add(Spec&& spec) {
  int err = 0;
  Backend* b = ctx(err);
  if (!b) return ret(err);
  return ret(b->add(std::move(spec)));
}

}  // namespace

extern "C" {

int sockasync_accept(int sfd, struct sockaddr* addr, socklen_t* addrlen, unsigned long flags,
                     aem_accept_fn handler) {
  Spec s;
  s.type = AEM_EV_ACCEPT;
  s.fd = sfd;
  s.flags = flags;
  s.addr = addr;
  s.addrlen = addrlen;
#if AEM_MUTANT(wrong_handler_arg)
  // MUTANT wrong_handler_arg: the accepted fd where the listening fd belongs.
  if (handler) s.invoke = [handler](const Event& e) { handler(e.jid, e.new_fd, e.new_fd); };
#else
  if (handler) s.invoke = [handler](const Event& e) { handler(e.jid, e.fd, e.new_fd); };
#endif
  return add(std::move(s));
}

int sockasync_read(int fd, unsigned long flags, aem_read_fn handler) {
  Spec s;
  s.type = AEM_EV_READ;
  s.fd = fd;
  s.flags = flags;
  if (handler) s.invoke = [handler](const Event& e) { handler(e.jid, e.fd, e.data, e.len); };
  return add(std::move(s));
}

int sockasync_close(int fd, unsigned long flags, aem_close_fn handler) {
  Spec s;
  s.type = AEM_EV_CLOSE;
  s.fd = fd;
  s.flags = flags;
  if (handler) s.invoke = [handler](const Event& e) { handler(e.jid, e.fd); };
  return add(std::move(s));
}

int sockasync_sk(int fd, unsigned long flags, aem_sk_fn handler) {
  Spec s;
  s.type = AEM_EV_SK;
  s.fd = fd;
  s.flags = flags;
  if (handler)
    s.invoke = [handler](const Event& e) { handler(e.jid, e.fd, e.old_state, e.new_state); };
  return add(std::move(s));
}

int sockasync_sock(int fd, unsigned long flags, aem_sock_fn handler) {
  Spec s;
  s.type = AEM_EV_SOCK;
  s.fd = fd;
  s.flags = flags;
  if (handler) s.invoke = [handler](const Event& e) { handler(e.jid, e.fd, e.events); };
  return add(std::move(s));
}

int evtimer(const struct timespec* value, const struct timespec* period, unsigned int flags,
            aem_timer_fn handler) {
  Spec s;
  s.type = AEM_EV_TIMER;
  s.value = value;
  s.period = period;
  s.flags = flags;
  if (handler) s.invoke = [handler](const Event& e) { handler(e.jid, e.count); };
  return add(std::move(s));
}

int evfd(int fd, unsigned int events, unsigned long flags, aem_fd_fn handler) {
  Spec s;
  s.type = AEM_EV_FD;
  s.fd = fd;
  s.events = events;
  s.flags = flags;
  if (handler) s.invoke = [handler](const Event& e) { handler(e.jid, e.fd, e.events); };
  return add(std::move(s));
}

int evsoft(unsigned long flags, aem_soft_fn handler) {
  Spec s;
  s.type = AEM_EV_SOFT;
  s.flags = flags;
  if (handler) s.invoke = [handler](const Event& e) { handler(e.jid, e.value, e.count); };
  return add(std::move(s));
}

int evsoft_raise(int jid, uint64_t value) {
  int err = 0;
  Backend* b = ctx(err);
  return ret(b ? b->raise(jid, value) : err);
}

int evctl(int jid, unsigned int op, unsigned long arg) {
  int err = 0;
  Backend* b = ctx(err);
  return ret(b ? b->ctl(jid, op, arg) : err);
}

int enter_keepalive(void) {
  int err = 0;
  Backend* b = ctx(err);
  return ret(b ? b->keepalive() : err);
}

int aem_dispatch(int timeout_ms) {
  int err = 0;
  Backend* b = ctx(err);
  return ret(b ? b->dispatch(timeout_ms) : err);
}

void aem_stop(void) {
  int err = 0;
  if (Backend* b = ctx(err)) b->stop();
}

int aem_set_async(int on) {
  int err = 0;
  Backend* b = ctx(err);
  return ret(b ? b->set_async(on) : err);
}

int aem_on_error(aem_error_fn handler) {
  int err = 0;
  Backend* b = ctx(err);
  if (!b) return ret(err);
  if (handler)
    b->on_error([handler](int jid, int e) { handler(jid, e); });
  else
    b->on_error(nullptr);
  return 0;
}

int aem_set_allocator(void* (*alloc)(size_t len, void* opaque),
                      void (*release)(void* p, size_t len, void* opaque), void* opaque) {
  if (!alloc != !release) return ret(-EINVAL);
  int err = 0;
  Backend* b = ctx(err);
  if (!b) return ret(err);
  b->set_allocator({alloc, release, opaque});
  return 0;
}

const char* aem_backend(void) {
  int err = 0;
  Backend* b = ctx(err);
  if (!b) {
    errno = -err;
    return nullptr;
  }
  return b->name();
}

int aem_shutdown(void) { return ret(aem::detail::shutdown_implicit()); }

}  // extern "C"
