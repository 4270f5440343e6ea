// SPDX-License-Identifier: MIT
// The boundary between the public APIs (C in c_api.cpp, C++ in cxx_api.cpp)
// and a backend (user space in user/, the kernel module later in kmod/).
//
// A Backend is one AEM context. Every method returns a negative errno on
// failure (never throws); the public layers turn that into errno or
// std::error_code. Methods are thread-safe.
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <string>

#include "aem.h"

namespace aem::detail {

// What a handler receives. Which fields mean something depends on type.
struct Event {
  int jid = 0;
  int type = 0;                    // AEM_EV_*
  int fd = -1;                     // the registration's fd (listen fd for accept)
  uint64_t count = 0;              // occurrences in this delivery (timer expirations,
                                   // software raises, merged readiness)
  uint64_t value = 0;              // software event value
  unsigned int events = 0;         // poll bits (fd, sock)
  int new_fd = -1;                 // accept: the accepted connection
  const sockaddr* addr = nullptr;  // accept: its peer address
  socklen_t addrlen = 0;
  int old_state = 0;  // sk: TCP states
  int new_state = 0;
  const void* data = nullptr;  // read: the chunk (len 0: EOF)
  size_t len = 0;
};

using Invoker = std::function<void(const Event&)>;
using ErrorHandler = std::function<void(int jid, int error)>;

// A registration request, validated by the backend.
struct Spec {
  int type = 0;                      // AEM_EV_*
  uint64_t flags = 0;                // AEM_* flag bits (validated)
  int fd = -1;                       // socket/fd families
  unsigned int events = 0;           // evfd: poll bits
  const timespec* value = nullptr;   // evtimer
  const timespec* period = nullptr;  // evtimer, may be null
  sockaddr* addr = nullptr;          // accept: where to store the peer address
  socklen_t* addrlen = nullptr;
  Invoker invoke;  // required
};

// The memory event data lives in (AEM-3.4.1): by default the context's
// arena; an application may supply its own.
struct Allocator {
  void* (*alloc)(size_t len, void* opaque) = nullptr;
  void (*release)(void* p, size_t len, void* opaque) = nullptr;
  void* opaque = nullptr;
};

// Limits and policy (AEM-3.5.3, AEM-3.5.4). Read from the environment for
// the implicit context; the C++ API may pass stricter ones.
struct Policy {
  size_t max_registrations = size_t{1} << 21;  // per context
  size_t max_pending = size_t{1} << 21;        // registrations pending at once
  uint32_t allowed_types = 0x1feu;             // bit (1 << AEM_EV_*)
  uint32_t allowed_executors = 0x7u;           // bit (1 << AEM_EXEC_*)
  int boost_ceiling = 10;                      // nice steps; 0: no boost
  uint64_t min_timer_period_ns = 0;            // 0: no minimum
  size_t arena_bytes = size_t{64} << 20;       // event-data arena
  uint32_t kmod_ring_entries = 256;            // kernel backend's ring; 0: none
  uint64_t kmod_spin_ns = 50000;               // watch the ring before sleeping

  // Reads AEM_MAX_REGISTRATIONS, AEM_MAX_PENDING, AEM_ALLOWED_TYPES,
  // AEM_ALLOWED_EXECUTORS, AEM_BOOST_CEILING, AEM_MIN_TIMER_PERIOD_NS,
  // AEM_ARENA_BYTES, AEM_KMOD_RING, AEM_KMOD_SPIN_US. Returns 0, or
  // -EINVAL with why set to a message that names the variable and what it
  // accepts.
  static int from_env(Policy& out, std::string& why);
};

// The poll bits an fd registration may ask for.
inline constexpr unsigned kPollBits = POLLIN | POLLPRI | POLLOUT | POLLRDNORM | POLLRDBAND |
                                      POLLWRNORM | POLLWRBAND | POLLERR | POLLHUP | POLLRDHUP;

// The registration contract (spec.cpp), checked by each backend before it
// allocates: returns 0 with the priority and executor of spec.flags, or
// -EINVAL (flags, arguments), -EPERM (policy, or a timer period below
// min_period_ns), -EBADF, -ENOTSOCK or -EOPNOTSUPP (the fd).
int check_spec(const Spec& spec, const Policy& policy, uint64_t min_period_ns, int& prio,
               unsigned& exec);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Unique per Backend object for the life of the process (a new context
  // at a reused address has another serial).
  uint64_t serial() const { return serial_; }

  virtual int add(Spec&& spec) = 0;  // id > 0 or -errno
  virtual int raise(int jid, uint64_t value) = 0;
  virtual int ctl(int jid, unsigned int op, unsigned long arg) = 0;
  virtual int dispatch(int timeout_ms) = 0;
  virtual int keepalive() = 0;
  virtual void stop() = 0;
  virtual int set_async(int on) = 0;
  virtual void on_error(ErrorHandler handler) = 0;
  virtual void set_allocator(const Allocator& a) = 0;
  // Cleans every registration; the object may then be destroyed.
  virtual int shutdown() = 0;

 private:
  static uint64_t next_serial();
  const uint64_t serial_ = next_serial();
};

// AEM_BACKEND=kmod|user, else kmod when /dev/aem exists, else user.
// On failure returns null, err < 0 and why explains it.
std::unique_ptr<Backend> make_backend(const Policy& policy, int& err, std::string& why);
std::unique_ptr<Backend> make_user_backend(const Policy& policy, int& err);
// The kernel backend (kmod/): one open of /dev/aem. Null with err < 0 and
// why set when it cannot start.
std::unique_ptr<Backend> make_kmod_backend(const Policy& policy, int& err, std::string& why);

// The process's implicit context (the C API's, and the C++
// aem::Context::process()). Null with err < 0 when it cannot start.
Backend* implicit_backend(int& err);
// Releases the implicit context (aem_shutdown()).
int shutdown_implicit();

// True on a thread that is running a handler right now.
bool in_handler();

}  // namespace aem::detail
