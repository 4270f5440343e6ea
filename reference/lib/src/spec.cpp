// SPDX-License-Identifier: MIT
// The registration contract both backends enforce before they allocate
// anything: the flags, the policy, then each family's own arguments. aem.ko
// checks again; these give the C API its exact errno on either backend.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>

#include "backend.hpp"

namespace aem::detail {
namespace {

bool valid_ts(const timespec& t) {
  return t.tv_sec >= 0 && t.tv_nsec >= 0 && t.tv_nsec < 1000000000;
}

int check_socket(int fd) {
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) return -EBADF;
  if (!S_ISSOCK(st.st_mode)) return -ENOTSOCK;
  return 0;
}

int check_flags(const Spec& spec, const Policy& policy, int& prio, unsigned& exec) {
  const uint64_t f = spec.flags;
  if (f & ~uint64_t{AEM_FLAGS_VALID}) return -EINVAL;
  exec = static_cast<unsigned>(f & AEM_EXEC_MASK);
  if (exec > AEM_EXEC_PROCESS) return -EINVAL;
  if ((f & AEM_EDGE) && (f & AEM_LEVEL)) return -EINVAL;
  if ((f & (AEM_EDGE | AEM_LEVEL)) && spec.type != AEM_EV_FD && spec.type != AEM_EV_SOCK)
    return -EINVAL;
  if ((f & (AEM_ABSTIME | AEM_REALTIME)) && spec.type != AEM_EV_TIMER) return -EINVAL;
  if ((f & AEM_PRIO_FIELD) && !(f & AEM_PRIO_GIVEN)) return -EINVAL;
  prio = AEM_PRIO_DEFAULT;
  if (f & AEM_PRIO_GIVEN) {
    const auto p = static_cast<int>((f & AEM_PRIO_FIELD) >> AEM_PRIO_SHIFT);
    if (p < AEM_PRIO_MIN || p > AEM_PRIO_MAX) return -EINVAL;
    prio = p;
  }
  if (!spec.invoke || spec.type < 1 || spec.type > AEM_EV_MAX) return -EINVAL;
  if (!(policy.allowed_types & (1u << spec.type))) return -EPERM;
  if (!(policy.allowed_executors & (1u << exec))) return -EPERM;
  return 0;
}

}  // namespace

int check_spec(const Spec& spec, const Policy& policy, uint64_t min_period_ns, int& prio,
               unsigned& exec) {
  if (int e = check_flags(spec, policy, prio, exec); e < 0) return e;
  switch (spec.type) {
    case AEM_EV_ACCEPT: {
      if (int e = check_socket(spec.fd); e < 0) return e;
      int on = 0;
      socklen_t len = sizeof on;
      if (getsockopt(spec.fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) < 0 || !on) return -EINVAL;
      if (spec.addr && !spec.addrlen) return -EINVAL;
      return 0;
    }
    case AEM_EV_READ:
    case AEM_EV_CLOSE:
    case AEM_EV_SOCK:
      return check_socket(spec.fd);
    case AEM_EV_SK: {
      if (int e = check_socket(spec.fd); e < 0) return e;
      int proto = 0;
      socklen_t len = sizeof proto;
      if (getsockopt(spec.fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0 || proto != IPPROTO_TCP)
        return -EOPNOTSUPP;
      return 0;
    }
    case AEM_EV_FD:
      if (spec.fd < 0 || fcntl(spec.fd, F_GETFD) < 0) return -EBADF;
      if (!spec.events || (spec.events & ~kPollBits)) return -EINVAL;
      return 0;
    case AEM_EV_TIMER:
      if (!spec.value || !valid_ts(*spec.value)) return -EINVAL;
      if (spec.period && !valid_ts(*spec.period)) return -EINVAL;
      if (spec.period && (spec.period->tv_sec || spec.period->tv_nsec)) {
        const auto sec = static_cast<uint64_t>(spec.period->tv_sec);
        const uint64_t ns = sec > UINT64_MAX / 1000000000ull
                                ? UINT64_MAX
                                : sec * 1000000000ull + static_cast<uint64_t>(spec.period->tv_nsec);
        if (ns < min_period_ns) return -EPERM;
      }
      return 0;
    default:  // AEM_EV_SOFT: nothing more to check
      return 0;
  }
}

}  // namespace aem::detail
