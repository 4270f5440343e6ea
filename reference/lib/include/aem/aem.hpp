// SPDX-License-Identifier: MIT
// aem/aem.hpp - the C++ API of libaem, the Asynchronous Event Mechanism.
//
// The idiomatic face of the same mechanism the C API (aem.h) offers:
//
//   aem::Context ctx;                               // a fresh context
//   auto tick = ctx.timer(10ms, 10ms, [&](const aem::TimerEvent& e) {
//     ticks += e.expirations;                       // none is ever lost
//   });
//   auto wake = ctx.soft([&](const aem::SoftRaised& e) { ... },
//                        {.priority = 50, .executor = aem::Executor::thread});
//   std::thread([&] { wake.raise(42); }).detach();
//   ctx.dispatch(100ms);                            // runs what is pending
//
// Model (see docs/design.md §3):
//  - A Context is one AEM context. Context::process() is the process's
//    implicit context, the same one the C API uses; Context(Options) opens a
//    fresh one with its own limits. Events of one context never run in
//    another context's dispatch().
//  - Every registration call returns an RAII Registration (SoftEvent for
//    software events): destroying it unregisters the event
//    (AEM_CTL_CLEAN); release() gives up ownership and returns the id.
//  - Handlers are any callable (lambda with captures, std::function,
//    function pointer, move-only callable) invocable with the family's
//    typed event, e.g. `void(const aem::ReadEvent&)`. Handlers of one
//    execution context run one at a time, highest priority first, FIFO
//    within a priority. A handler must not let an exception escape: one that
//    does calls std::terminate() (as for std::thread).
//  - A handler may be destroyed long after its registration was cleaned
//    (it is destroyed outside the library's locks, at the next call into
//    this API or when its Context is destroyed), so a handler may own
//    Registrations, SoftEvents or other resources of the same context.
//
// Errors, by the caller's choice (std::filesystem style): every operation
// that can fail has an overload that throws std::system_error (category
// std::generic_category(), value the positive errno) and an overload taking
// a trailing `std::error_code&` that never throws: it clears the code on
// success and sets it on failure. The errno values are the C API's:
//   std::errc::invalid_argument        bad argument, flag, priority, timeout,
//                                      empty handler, empty Registration or
//                                      moved-from Context
//   std::errc::operation_not_permitted the policy forbids the event type or
//                                      executor, timer period below the minimum
//   std::errc::no_space_on_device      the registration limit is reached
//   std::errc::bad_file_descriptor     fd is not open
//   std::errc::not_a_socket            a socket family on a non-socket
//   std::errc::operation_not_supported sockasync_sk on a non-TCP socket
//   std::errc::no_such_file_or_directory  the registration is gone (cleaned,
//                                      one-shot delivered, timed out, or its
//                                      Context destroyed)
//   std::errc::resource_deadlock_would_occur  dispatch()/run() in a handler
//   std::errc::interrupted             dispatch()/run() after a caught signal
// Construction of a Context with invalid Options throws std::invalid_argument
// (the error_code overload reports std::errc::invalid_argument).
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

#include "aem.h"

#ifndef AEM_CXX_API
#define AEM_CXX_API __attribute__((visibility("default")))
#endif

namespace aem {

namespace detail {
struct Core;
struct Access;
class Backend;
}  // namespace detail

// ---------------------------------------------------------------------------
// Vocabulary.

// Priorities: higher is more urgent.
inline constexpr int priority_min = AEM_PRIO_MIN;
inline constexpr int priority_max = AEM_PRIO_MAX;
inline constexpr int priority_default = AEM_PRIO_DEFAULT;

// Who runs a handler (AEM-3.1.6).
enum class Executor : unsigned {
  same = AEM_EXEC_SAME,       // the registering thread, in dispatch()/run()
                              // or, with set_async(true), by interrupting it
  thread = AEM_EXEC_THREAD,   // a thread of the process (the context's worker)
  process = AEM_EXEC_PROCESS  // a new process per activation (a "cloner")
};

// Trigger mode of fd-based events (fd(), socket_state()): level (the
// default) calls the handler again while the fd is ready; edge once per new
// arrival. Other families accept only Trigger::level.
enum class Trigger { level, edge };

// Event families.
enum class EventType : int {
  accept = AEM_EV_ACCEPT,
  read = AEM_EV_READ,
  close = AEM_EV_CLOSE,
  tcp_state = AEM_EV_SK,
  socket_state = AEM_EV_SOCK,
  timer = AEM_EV_TIMER,
  fd = AEM_EV_FD,
  soft = AEM_EV_SOFT
};

// Bit masks for Options::allowed_types / allowed_executors.
constexpr unsigned mask(EventType t) noexcept { return 1u << static_cast<int>(t); }
constexpr unsigned mask(Executor e) noexcept { return 1u << static_cast<unsigned>(e); }
inline constexpr unsigned all_event_types = 0x1feu;  // every EventType
inline constexpr unsigned all_executors = 0x7u;      // every Executor

// Options of one registration, designated-initializer friendly:
//   ctx.timer(1s, 1s, h, {.priority = 40, .executor = aem::Executor::thread});
struct RegOptions {
  int priority = priority_default;  // priority_min..priority_max, else invalid
  Executor executor = Executor::same;
  bool oneshot = false;         // cleaned after its first delivery
  bool inherit = false;         // a forked child keeps it
  bool disabled = false;        // registered disabled; enable() to start
  bool per_occurrence = false;  // one delivery per occurrence, never merged
  Trigger trigger = Trigger::level;  // fd(), socket_state() only
};

// What evctl(AEM_CTL_LOOKUP) reports.
struct EventInfo {
  int id = 0;
  EventType type{};
  int fd = -1;              // the watched fd, -1 when none
  int priority = 0;         // current priority
  bool enabled = false;
  Executor executor = Executor::same;
  unsigned events = 0;      // current filter: poll bits, TCP state mask
  unsigned long flags = 0;  // the C flags as registered
  std::uint64_t pending = 0;  // occurrences activated, not yet delivered
};

// What evctl(AEM_CTL_STATS) reports.
struct EventStats {
  std::uint64_t activations = 0;  // occurrences activated
  std::uint64_t deliveries = 0;   // handler calls
  std::uint64_t merged = 0;       // occurrences folded into another delivery
  std::uint64_t errors = 0;       // error notifications raised for this id
  std::uint64_t pending = 0;      // occurrences waiting for delivery
};

// A peer address (accept()).
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t size = 0;
  const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
  sa_family_t family() const noexcept { return storage.ss_family; }
};

// ---------------------------------------------------------------------------
// Typed events: what a handler receives. References into an event (the
// bytes of a ReadEvent) are valid until the handler returns.

struct TimerEvent {
  int id = 0;
  std::uint64_t expirations = 0;  // since the previous call (>= 1)
};

struct ReadEvent {
  int id = 0;
  int fd = -1;
  std::span<const std::byte> data;  // one chunk, in order; empty: EOF
  bool eof() const noexcept { return data.empty(); }
  std::string_view text() const noexcept {
    return {reinterpret_cast<const char*>(data.data()), data.size()};
  }
};

struct AcceptEvent {
  int id = 0;
  int listen_fd = -1;
  int fd = -1;         // the accepted connection; the application owns it
  SocketAddress peer;  // its peer address
};

struct CloseEvent {
  int id = 0;
  int fd = -1;
};

struct TcpStateEvent {
  int id = 0;
  int fd = -1;
  int old_state = 0;  // TCP_* (netinet/tcp.h)
  int new_state = 0;
};

struct SocketStateEvent {
  int id = 0;
  int fd = -1;
  unsigned events = 0;  // poll bits
};

struct FdEvent {
  int id = 0;
  int fd = -1;
  unsigned revents = 0;  // poll bits
};

struct SoftRaised {
  int id = 0;
  std::uint64_t value = 0;        // the latest raise's value
  std::uint64_t occurrences = 0;  // raises merged into this call (>= 1)
};

// ---------------------------------------------------------------------------
// A move-only type-erased callable (std::move_only_function is C++23).

template <class Sig>
class MoveOnlyFunction;

namespace detail {
template <class T>
inline constexpr bool is_function_wrapper = false;
template <class S>
inline constexpr bool is_function_wrapper<std::function<S>> = true;
template <class S>
inline constexpr bool is_function_wrapper<MoveOnlyFunction<S>> = true;
}  // namespace detail

template <class R, class... A>
class MoveOnlyFunction<R(A...)> {
 public:
  MoveOnlyFunction() noexcept = default;
  MoveOnlyFunction(std::nullptr_t) noexcept {}
  // Any callable invocable with A...; an empty std::function or a null
  // function pointer gives an empty MoveOnlyFunction.
  template <class F>
    requires(!std::same_as<std::remove_cvref_t<F>, MoveOnlyFunction> &&
             std::is_invocable_r_v<R, std::decay_t<F>&, A...> &&
             std::constructible_from<std::decay_t<F>, F>)
  MoveOnlyFunction(F&& f) {
    using D = std::decay_t<F>;
    if constexpr (std::is_pointer_v<D> || std::is_member_pointer_v<D> || detail::is_function_wrapper<D>) {
      if (!f) return;
    }
    p_ = std::make_unique<Impl<D>>(std::forward<F>(f));
  }
  MoveOnlyFunction(MoveOnlyFunction&&) noexcept = default;
  MoveOnlyFunction& operator=(MoveOnlyFunction&&) noexcept = default;

  explicit operator bool() const noexcept { return p_ != nullptr; }
  R operator()(A... a) { return p_->call(std::forward<A>(a)...); }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual R call(A... a) = 0;
  };
  template <class F>
  struct Impl final : Base {
    template <class G>
    explicit Impl(G&& g) : f(std::forward<G>(g)) {}
    R call(A... a) override { return std::invoke(f, std::forward<A>(a)...); }
    F f;
  };
  std::unique_ptr<Base> p_;
};

// The handler of events of type E.
template <class E>
using Handler = MoveOnlyFunction<void(const E&)>;

// The context's error handler: id of the registration, the error
// (std::errc::timed_out: its timeout expired and it was cleaned;
// not_enough_memory: no memory for event data, the data waits;
// value_too_large (EOVERFLOW): the pending limit was reached, occurrences
// are still counted and delivered later; socket read errors as they are).
using ErrorHandler = MoveOnlyFunction<void(int id, std::error_code error)>;

// ---------------------------------------------------------------------------
// Options of a fresh Context: its backend and its limits (AEM-3.5.3/3.5.4).

enum class BackendKind {
  automatic,  // AEM_BACKEND, else kmod when /dev/aem exists, else user
  user,       // the user-space backend (epoll, timerfd, ...)
  kmod        // the kernel modules through /dev/aem
};

struct AEM_CXX_API Options {
  BackendKind backend = BackendKind::automatic;
  std::size_t max_registrations = std::size_t{1} << 21;  // 1 .. 2^30
  std::size_t max_pending = std::size_t{1} << 21;        // 1 .. 2^30 registrations pending
  unsigned allowed_types = all_event_types;              // mask(EventType) bits, subset of all
  unsigned allowed_executors = all_executors;            // mask(Executor) bits, subset of all
  int boost_ceiling = 10;          // 0 .. 39 nice steps a pending high priority may boost; 0 none
  std::chrono::nanoseconds min_timer_period{0};          // 0 .. 1 h; 0 no minimum
  std::size_t arena_bytes = std::size_t{64} << 20;       // 4096 .. 2^36 bytes of event data

  // The limits the implicit context reads from the environment
  // (AEM_MAX_REGISTRATIONS, ... see aem_policy(7) in README.md), starting
  // from the defaults. Throws std::invalid_argument naming the variable.
  static Options from_environment();
  static Options from_environment(std::error_code& ec) noexcept;

  // Empty when valid, else a message naming the first bad field.
  std::string validate() const;
};

class Context;

// ---------------------------------------------------------------------------
// Registration: RAII ownership of one registered event (AEM-3.1.1, 3.1.4,
// 3.1.7). Move-only. A default-constructed or moved-from Registration is
// empty (id() == 0); its operations report std::errc::invalid_argument.
// Not synchronised itself: do not move/reset one object while another
// thread uses it (the const operations may run concurrently).

class AEM_CXX_API Registration {
 public:
  Registration() noexcept = default;
  // Cleans the registration (AEM_CTL_CLEAN), errors ignored. Safe from
  // inside its own handler; from another thread it waits until its handler
  // is not running. When the Context is already gone, does nothing.
  ~Registration();
  Registration(Registration&& other) noexcept;
  Registration& operator=(Registration&& other) noexcept;  // cleans the old one first
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;

  // The event id (> 0, unique in its context while live), 0 when empty.
  int id() const noexcept { return id_; }
  explicit operator bool() const noexcept { return id_ > 0; }

  // Enable / disable delivery (AEM_CTL_ENABLE/DISABLE). While disabled,
  // occurrences are counted and held, delivered after enable().
  void enable();
  void enable(std::error_code& ec) noexcept;
  void disable();
  void disable(std::error_code& ec) noexcept;

  // New priority, priority_min..priority_max (else invalid_argument).
  void set_priority(int priority);
  void set_priority(int priority, std::error_code& ec) noexcept;

  // Not activated within timeout (0: none; negative or above INT_MAX ms:
  // invalid_argument): the error handler gets std::errc::timed_out for
  // this id and the registration is cleaned.
  void set_timeout(std::chrono::milliseconds timeout);
  void set_timeout(std::chrono::milliseconds timeout, std::error_code& ec) noexcept;

  // The family's event mask (poll bits for fd() and socket_state(),
  // 1u << TCP state for tcp_state()); invalid_argument for families
  // without one or bits outside the family's set.
  void filter(unsigned mask);
  void filter(unsigned mask, std::error_code& ec) noexcept;

  // AEM_CTL_LOOKUP / AEM_CTL_STATS.
  EventInfo info() const;
  EventInfo info(std::error_code& ec) const noexcept;
  EventStats stats() const;
  EventStats stats(std::error_code& ec) const noexcept;

  // Cleans now (as the destructor); the Registration is empty afterwards.
  void reset() noexcept;
  // Gives up ownership without cleaning: returns the id (0 when empty),
  // the Registration is empty; evctl()/Context::adopt() can take it over.
  int release() noexcept;

 protected:
  friend class Context;
  friend struct detail::Access;
  Registration(std::weak_ptr<detail::Core> core, detail::Backend* backend, std::uint64_t serial,
               int id) noexcept
      : core_(std::move(core)), backend_(backend), serial_(serial), id_(id) {}

  std::weak_ptr<detail::Core> core_;
  detail::Backend* backend_ = nullptr;  // the context it was made in
  std::uint64_t serial_ = 0;            // and its serial number
  int id_ = 0;
};

// A software event (evsoft): a Registration that can be raised.
class AEM_CXX_API SoftEvent : public Registration {
 public:
  SoftEvent() noexcept = default;

  // Activates it, from any thread and from handlers; never blocks on the
  // handler, never loses a raise. The handler gets the latest value and how
  // many raises were merged into the call. Errors: invalid_argument (empty),
  // no_such_file_or_directory (cleaned).
  void raise(std::uint64_t value = 0) const;
  void raise(std::uint64_t value, std::error_code& ec) const noexcept;

 private:
  friend class Context;
  friend struct detail::Access;
  using Registration::Registration;
};

// ---------------------------------------------------------------------------
// Context: one AEM context. Movable, non-copyable. Thread-safe: any thread
// may register, control, raise and dispatch (each thread dispatches the
// Executor::same handlers it registered).

class AEM_CXX_API Context {
 public:
  // The process's implicit context, shared with the C API (non-owning:
  // destroying the returned object leaves the context alone). Errors in
  // starting it surface at the first operation.
  static Context process() noexcept;

  // A fresh context with its own limits. Throws std::invalid_argument for
  // bad Options, std::system_error when no backend can start (e.g.
  // no_such_device for BackendKind::kmod without /dev/aem).
  Context();
  explicit Context(const Options& options);
  // Never throws: on failure ec is set and the Context is empty (each
  // operation then reports invalid_argument).
  Context(const Options& options, std::error_code& ec) noexcept;

  // An owned context is shut down: every registration is cleaned, its
  // threads end; then its handlers are destroyed. Must not run inside one
  // of this context's own handlers. A non-owning one does nothing.
  ~Context();
  Context(Context&& other) noexcept;
  Context& operator=(Context&& other) noexcept;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // True for a usable context (not moved-from, not failed).
  explicit operator bool() const noexcept { return core_ != nullptr; }
  // True for the process's implicit context.
  bool is_process() const noexcept;

  // -- Registration (AEM-3.1.1). Each returns an owning Registration; the
  // error_code overloads return an empty one on failure.

  // A timer: first expiry after `first` (>= 0), then every `period` (0: a
  // one-shot timer). The handler gets the expirations since its previous
  // call; none is ever lost. Errors: invalid_argument (negative times),
  // operation_not_permitted (period below the policy minimum).
  Registration timer(std::chrono::nanoseconds first, std::chrono::nanoseconds period,
                     Handler<TimerEvent> handler, const RegOptions& opts = {});
  Registration timer(std::chrono::nanoseconds first, std::chrono::nanoseconds period,
                     Handler<TimerEvent> handler, const RegOptions& opts,
                     std::error_code& ec) noexcept;
  Registration timer(std::chrono::nanoseconds first, std::chrono::nanoseconds period,
                     Handler<TimerEvent> handler, std::error_code& ec) noexcept {
    return timer(first, period, std::move(handler), RegOptions{}, ec);
  }
  // One-shot timer after `delay`.
  Registration timer(std::chrono::nanoseconds delay, Handler<TimerEvent> handler,
                     const RegOptions& opts = {}) {
    return timer(delay, std::chrono::nanoseconds{0}, std::move(handler), opts);
  }
  Registration timer(std::chrono::nanoseconds delay, Handler<TimerEvent> handler,
                     const RegOptions& opts, std::error_code& ec) noexcept {
    return timer(delay, std::chrono::nanoseconds{0}, std::move(handler), opts, ec);
  }
  // Absolute first expiry on the monotonic clock (steady_clock) or the
  // real-time clock (system_clock: follows clock changes). A time in the
  // past expires at once.
  Registration timer(std::chrono::steady_clock::time_point first, std::chrono::nanoseconds period,
                     Handler<TimerEvent> handler, const RegOptions& opts = {});
  Registration timer(std::chrono::steady_clock::time_point first, std::chrono::nanoseconds period,
                     Handler<TimerEvent> handler, const RegOptions& opts,
                     std::error_code& ec) noexcept;
  Registration timer(std::chrono::system_clock::time_point first, std::chrono::nanoseconds period,
                     Handler<TimerEvent> handler, const RegOptions& opts = {});
  Registration timer(std::chrono::system_clock::time_point first, std::chrono::nanoseconds period,
                     Handler<TimerEvent> handler, const RegOptions& opts,
                     std::error_code& ec) noexcept;

  // Data read from a socket, in order, each chunk once per read
  // registration; then one empty ReadEvent (EOF). Errors: bad_file_descriptor,
  // not_a_socket.
  Registration read(int fd, Handler<ReadEvent> handler, const RegOptions& opts = {});
  Registration read(int fd, Handler<ReadEvent> handler, const RegOptions& opts,
                    std::error_code& ec) noexcept;
  Registration read(int fd, Handler<ReadEvent> handler, std::error_code& ec) noexcept {
    return read(fd, std::move(handler), RegOptions{}, ec);
  }

  // Connections accepted on a listening socket, one call per connection,
  // with the new fd (owned by the application) and the peer address.
  // Errors: bad_file_descriptor, not_a_socket, invalid_argument (not listening).
  Registration accept(int listen_fd, Handler<AcceptEvent> handler, const RegOptions& opts = {});
  Registration accept(int listen_fd, Handler<AcceptEvent> handler, const RegOptions& opts,
                      std::error_code& ec) noexcept;
  Registration accept(int listen_fd, Handler<AcceptEvent> handler, std::error_code& ec) noexcept {
    return accept(listen_fd, std::move(handler), RegOptions{}, ec);
  }

  // The connection on a socket is closed (peer closed, hung up, shut
  // down); delivered once. Errors: bad_file_descriptor, not_a_socket.
  Registration close(int fd, Handler<CloseEvent> handler, const RegOptions& opts = {});
  Registration close(int fd, Handler<CloseEvent> handler, const RegOptions& opts,
                     std::error_code& ec) noexcept;
  Registration close(int fd, Handler<CloseEvent> handler, std::error_code& ec) noexcept {
    return close(fd, std::move(handler), RegOptions{}, ec);
  }

  // TCP state transitions (old and new TCP_* state). Errors:
  // bad_file_descriptor, not_a_socket, operation_not_supported (not TCP).
  Registration tcp_state(int fd, Handler<TcpStateEvent> handler, const RegOptions& opts = {});
  Registration tcp_state(int fd, Handler<TcpStateEvent> handler, const RegOptions& opts,
                         std::error_code& ec) noexcept;
  Registration tcp_state(int fd, Handler<TcpStateEvent> handler, std::error_code& ec) noexcept {
    return tcp_state(fd, std::move(handler), RegOptions{}, ec);
  }

  // Socket state as poll bits (POLLIN, POLLOUT, POLLRDHUP, POLLHUP,
  // POLLERR, POLLPRI); filter() narrows it. Errors: as close().
  Registration socket_state(int fd, Handler<SocketStateEvent> handler,
                            const RegOptions& opts = {});
  Registration socket_state(int fd, Handler<SocketStateEvent> handler, const RegOptions& opts,
                            std::error_code& ec) noexcept;
  Registration socket_state(int fd, Handler<SocketStateEvent> handler,
                            std::error_code& ec) noexcept {
    return socket_state(fd, std::move(handler), RegOptions{}, ec);
  }

  // Any pollable fd; events are poll bits. Errors: bad_file_descriptor,
  // invalid_argument (no or unknown bits), operation_not_permitted (fd
  // does not support poll, e.g. a regular file).
  Registration fd(int fd, unsigned events, Handler<FdEvent> handler, const RegOptions& opts = {});
  Registration fd(int fd, unsigned events, Handler<FdEvent> handler, const RegOptions& opts,
                  std::error_code& ec) noexcept;
  Registration fd(int fd, unsigned events, Handler<FdEvent> handler,
                  std::error_code& ec) noexcept {
    return this->fd(fd, events, std::move(handler), RegOptions{}, ec);
  }

  // A software event, raised with SoftEvent::raise().
  SoftEvent soft(Handler<SoftRaised> handler, const RegOptions& opts = {});
  SoftEvent soft(Handler<SoftRaised> handler, const RegOptions& opts,
                 std::error_code& ec) noexcept;
  SoftEvent soft(Handler<SoftRaised> handler, std::error_code& ec) noexcept {
    return soft(std::move(handler), RegOptions{}, ec);
  }

  // -- Ids.

  // AEM_CTL_LOOKUP of any id of this context (e.g. one released, or one
  // made through the C API on the process context).
  EventInfo lookup(int id) const;
  EventInfo lookup(int id, std::error_code& ec) const noexcept;
  // Takes ownership of a live id of this context (checked with a lookup).
  Registration adopt(int id);
  Registration adopt(int id, std::error_code& ec) noexcept;

  // -- Loop control.

  // Runs the calling thread's pending handlers of this context, waiting up
  // to timeout (negative: invalid_argument; above INT_MAX ms: clamped) for
  // the first one; returns how many ran (0 on timeout). Without a timeout:
  // waits as long as it takes. Errors: interrupted (a caught signal),
  // resource_deadlock_would_occur (inside a handler).
  std::size_t dispatch(std::chrono::milliseconds timeout);
  std::size_t dispatch(std::chrono::milliseconds timeout, std::error_code& ec) noexcept;
  std::size_t dispatch();
  // dispatch(0ms): runs what is pending, never waits.
  std::size_t poll() { return dispatch(std::chrono::milliseconds{0}); }

  // Runs the calling thread's handlers until stop() (enter_keepalive()).
  // A stop() before run() makes it return at once. Errors: interrupted,
  // resource_deadlock_would_occur.
  void run();
  void run(std::error_code& ec) noexcept;

  // Makes run() return, from a handler or any thread.
  void stop() noexcept;

  // on: the calling thread's Executor::same handlers also interrupt its
  // main flow (a real-time signal); off: only dispatch()/run() run them.
  void set_async(bool on);
  void set_async(bool on, std::error_code& ec) noexcept;

  // The context's error handler (see ErrorHandler); an empty one removes
  // it. It runs in the registration's execution context, like its handler.
  void on_error(ErrorHandler handler);
  void on_error(ErrorHandler handler, std::error_code& ec) noexcept;

  // "kmod" or "user".
  std::string_view backend_name() const;
  std::string_view backend_name(std::error_code& ec) const noexcept;

 private:
  friend struct detail::Access;
  explicit Context(std::shared_ptr<detail::Core> core) noexcept : core_(std::move(core)) {}

  std::shared_ptr<detail::Core> core_;
};

// The C flags for RegOptions (AEM_PRIO(p) | executor | ...), as the C API
// takes them; an out-of-range priority yields flags every backend rejects.
AEM_CXX_API unsigned long to_flags(const RegOptions& opts) noexcept;

}  // namespace aem
