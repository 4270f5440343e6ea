// SPDX-License-Identifier: MIT
// The C++ API (aem/aem.hpp) over the backends.
//
// Lifetimes
//   Core       one context: owns its Backend, or (the process context)
//              resolves the implicit one at each call, as the C API does.
//              A Context owns a shared_ptr to it; Registrations hold a
//              weak_ptr, so a Registration never keeps a context alive and
//              becomes inert when its Context is gone. A Registration also
//              remembers the Backend it was made in: after aem_shutdown()
//              the process context is a new Backend, where the old id means
//              nothing (-ENOENT rather than cleaning someone else's event).
//   Handlers   live in a shared slot. The backend's Invoker holds it through
//              a Keep, whose destructor does not destroy the handler but
//              buries it in a lock-free graveyard. The backend destroys
//              Invokers under its own lock (a clean, a one-shot, a timeout,
//              shutdown); a handler that owns a Registration or SoftEvent of
//              the same context would call back into the backend from there
//              and deadlock. drain() destroys the buried handlers at points
//              where this thread holds no library lock: after each call of
//              this API into the backend.
#include <atomic>
#include <climits>
#include <cerrno>
#include <cstring>
#include <algorithm>
#include <new>
#include <stdexcept>

#include "aem/aem.hpp"
#include "backend.hpp"

namespace aem::detail {

struct Core {
  std::unique_ptr<Backend> owned;  // null: the process's implicit context
};

namespace {

// ---------------------------------------------------------------------------
// The graveyard: a Treiber stack (push one, take all), usable from any
// thread and from the doorbell signal handler, no lock to deadlock on.

struct Grave {
  std::shared_ptr<void> p;
  Grave* next = nullptr;
};
std::atomic<Grave*> g_graves{nullptr};

void bury(std::shared_ptr<void>& p) noexcept {
  auto* g = new (std::nothrow) Grave;
  if (!g) return;  // no memory: p is destroyed where it is
  g->p = std::move(p);
  g->next = g_graves.load(std::memory_order_relaxed);
  while (!g_graves.compare_exchange_weak(g->next, g, std::memory_order_release,
                                         std::memory_order_relaxed)) {
  }
}

void drain() noexcept {
  while (Grave* g = g_graves.exchange(nullptr, std::memory_order_acquire)) {
    while (g) {
      Grave* next = g->next;
      delete g;  // may destroy a handler, which may bury more: next round
      g = next;
    }
  }
}

// Holds a handler slot; buries it instead of destroying it.
struct Keep {
  std::shared_ptr<void> p;
  explicit Keep(std::shared_ptr<void> q) noexcept : p(std::move(q)) {}
  Keep(const Keep&) = default;
  Keep(Keep&&) noexcept = default;
  Keep& operator=(const Keep&) = delete;
  Keep& operator=(Keep&&) = delete;
  ~Keep() {
    if (p) bury(p);
  }
};

std::error_code errc_of(int neg) noexcept { return {-neg, std::generic_category()}; }

void set(std::error_code& ec, int rc) noexcept {
  if (rc < 0)
    ec = errc_of(rc);
  else
    ec.clear();
}

[[noreturn]] void raise_error(const std::error_code& ec, const char* what) {
  throw std::system_error(ec, what);
}

// The backend of a context: owned, or the implicit one (started on demand).
Backend* resolve(Core* core, int& err) noexcept {
  err = 0;
  if (!core) {
    err = -EINVAL;
    return nullptr;
  }
  if (core->owned) return core->owned.get();
  Backend* b = implicit_backend(err);
  if (!b && err == 0) err = -ENOMEM;
  return b;
}

// Backend::serial() is unique to one Backend instance for the life of the
// process, so a Registration of a process context that aem_shutdown()
// released is not taken for one of its successor (which may well live at
// the same address).
uint64_t serial_of(const Backend* b) noexcept { return b ? b->serial() : 0; }

std::shared_ptr<Core>& process_core() {
  // Never destroyed: Registrations of the process context may be destroyed
  // during static destruction.
  static auto* core = new std::shared_ptr<Core>(std::make_shared<Core>());
  return *core;
}

bool to_timespec(std::chrono::nanoseconds d, timespec& ts) noexcept {
  const auto n = d.count();
  if (n < 0) return false;
  ts.tv_sec = static_cast<time_t>(n / 1000000000);
  ts.tv_nsec = static_cast<long>(n % 1000000000);
  return true;
}

EventInfo to_info(const aem_event_info& i) noexcept {
  EventInfo out;
  out.id = i.jid;
  out.type = static_cast<EventType>(i.type);
  out.fd = i.fd;
  out.priority = i.prio;
  out.enabled = i.enabled != 0;
  out.executor = static_cast<Executor>(i.executor);
  out.events = i.events;
  out.flags = i.flags;
  out.pending = i.pending;
  return out;
}

int validate_options(const Options& o, std::string& why) {
  auto bad = [&](std::string w) {
    why = std::move(w);
    return -EINVAL;
  };
  if (o.backend != BackendKind::automatic && o.backend != BackendKind::user &&
      o.backend != BackendKind::kmod)
    return bad("backend: not a BackendKind");
  if (o.max_registrations < 1 || o.max_registrations > (std::size_t{1} << 30))
    return bad("max_registrations: expected 1 .. 2^30");
  if (o.max_pending < 1 || o.max_pending > (std::size_t{1} << 30))
    return bad("max_pending: expected 1 .. 2^30");
  if (o.allowed_types & ~all_event_types)
    return bad("allowed_types: only aem::mask(EventType) bits (aem::all_event_types)");
  if (o.allowed_executors & ~all_executors)
    return bad("allowed_executors: only aem::mask(Executor) bits (aem::all_executors)");
  if (o.boost_ceiling < 0 || o.boost_ceiling > 39) return bad("boost_ceiling: expected 0 .. 39");
  if (o.min_timer_period < std::chrono::nanoseconds{0} || o.min_timer_period > std::chrono::hours{1})
    return bad("min_timer_period: expected 0 .. 1 h");
  if (o.arena_bytes < 4096 || o.arena_bytes > (std::size_t{1} << 36))
    return bad("arena_bytes: expected 4096 .. 2^36");
  return 0;
}

std::unique_ptr<Backend> open_backend(const Options& o, int& err, std::string& why) {
  if (validate_options(o, why) < 0) {
    err = -EINVAL;
    return nullptr;
  }
  Policy p;
  p.max_registrations = o.max_registrations;
  p.max_pending = o.max_pending;
  p.allowed_types = o.allowed_types;
  p.allowed_executors = o.allowed_executors;
  p.boost_ceiling = o.boost_ceiling;
  p.min_timer_period_ns = static_cast<uint64_t>(o.min_timer_period.count());
  p.arena_bytes = o.arena_bytes;
  err = 0;
  std::unique_ptr<Backend> b;
  switch (o.backend) {
    case BackendKind::automatic:
      b = make_backend(p, err, why);
      break;
    case BackendKind::user:
      b = make_user_backend(p, err);
      break;
    case BackendKind::kmod:
      b = make_kmod_backend(p, err, why);
      break;
  }
  if (!b && err == 0) err = -ENOMEM;
  return b;
}

}  // namespace

// Everything that needs the private parts of the public classes.
struct Access {
  // A Registration's backend, with its core held alive meanwhile.
  struct Held {
    std::shared_ptr<Core> core;
    Backend* b = nullptr;
  };
  static int hold(const Registration& r, Held& h) noexcept {
    if (r.id_ <= 0) return -EINVAL;
    h.core = r.core_.lock();
    if (!h.core) return -ENOENT;  // its context is gone, and the id with it
    int err = 0;
    h.b = resolve(h.core.get(), err);
    if (!h.b) return err;
    if (h.b != r.backend_ || serial_of(h.b) != r.serial_)
      return -ENOENT;  // the process context was restarted
    return 0;
  }

  static int ctl(const Registration& r, unsigned op, unsigned long arg) noexcept {
    Held h;
    int rc = hold(r, h);
    if (rc == 0) rc = h.b->ctl(r.id_, op, arg);
    return rc;
  }

  static int raise(const SoftEvent& s, uint64_t value) noexcept {
    Held h;
    int rc = hold(s, h);
    if (rc == 0) rc = h.b->raise(s.id_, value);
    return rc;
  }

  static Core* core(const Context& c) noexcept { return c.core_.get(); }
  static const std::shared_ptr<Core>& core_ptr(const Context& c) noexcept { return c.core_; }

  static Context make_context(std::shared_ptr<Core> core) noexcept {
    return Context(std::move(core));
  }

  template <class R>
  static R make(const Context& c, Backend* b, int id) noexcept {
    return R(std::weak_ptr<Core>(c.core_), b, serial_of(b), id);
  }

  // Registers spec with a handler for events E built by make(Event).
  template <class R, class E, class Make>
  static R add(const Context& c, Spec& spec, Handler<E>&& handler, Make make_event,
               std::error_code& ec) noexcept {
    int rc = 0;
    Backend* b = nullptr;
    if (!handler) {
      rc = -EINVAL;
    } else if (!(b = resolve(c.core_.get(), rc))) {
    } else {
      try {
        auto slot = std::make_shared<Handler<E>>(std::move(handler));
        Handler<E>* fn = slot.get();
        spec.invoke = [keep = Keep(std::move(slot)), fn, make_event](const Event& e) noexcept {
          const E ev = make_event(e);
          (*fn)(ev);
        };
        rc = b->add(std::move(spec));
      } catch (const std::bad_alloc&) {
        rc = -ENOMEM;
      }
    }
    spec.invoke = nullptr;  // a refused handler goes to the graveyard
    drain();
    set(ec, rc);
    if (rc < 0) return R();
    return make<R>(c, b, rc);
  }
};

}  // namespace aem::detail

namespace aem {

using detail::Access;
using detail::Backend;
using detail::Event;
using detail::Spec;

unsigned long to_flags(const RegOptions& o) noexcept {
  unsigned long f = AEM_PRIO(o.priority);
  unsigned exec = static_cast<unsigned>(o.executor);
  f |= exec > AEM_EXEC_MASK ? AEM_EXEC_MASK : exec;  // out of range: the invalid value 3
  if (o.oneshot) f |= AEM_ONESHOT;
  if (o.inherit) f |= AEM_INHERIT;
  if (o.disabled) f |= AEM_DISABLED;
  if (o.per_occurrence) f |= AEM_PER_OCCURRENCE;
  if (o.trigger == Trigger::edge)
    f |= AEM_EDGE;
  else if (o.trigger != Trigger::level)
    f |= AEM_EDGE | AEM_LEVEL;  // not a Trigger: rejected
  return f;
}

// ---------------------------------------------------------------------------
// Options.

Options Options::from_environment() {
  detail::Policy p;
  std::string why;
  if (detail::Policy::from_env(p, why) < 0) throw std::invalid_argument("aem::Options: " + why);
  Options o;
  o.max_registrations = p.max_registrations;
  o.max_pending = p.max_pending;
  o.allowed_types = p.allowed_types;
  o.allowed_executors = p.allowed_executors;
  o.boost_ceiling = p.boost_ceiling;
  o.min_timer_period = std::chrono::nanoseconds(static_cast<int64_t>(p.min_timer_period_ns));
  o.arena_bytes = p.arena_bytes;
  return o;
}

Options Options::from_environment(std::error_code& ec) noexcept {
  try {
    Options o = from_environment();
    ec.clear();
    return o;
  } catch (const std::invalid_argument&) {
    ec = std::make_error_code(std::errc::invalid_argument);
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
  }
  return Options{};
}

std::string Options::validate() const {
  std::string why;
  detail::validate_options(*this, why);
  return why;
}

// ---------------------------------------------------------------------------
// Registration.

Registration::~Registration() { reset(); }

Registration::Registration(Registration&& o) noexcept
    : core_(std::move(o.core_)), backend_(std::exchange(o.backend_, nullptr)),
      serial_(std::exchange(o.serial_, 0)), id_(std::exchange(o.id_, 0)) {}

Registration& Registration::operator=(Registration&& o) noexcept {
  if (this != &o) {
    reset();
    core_ = std::move(o.core_);
    backend_ = std::exchange(o.backend_, nullptr);
    serial_ = std::exchange(o.serial_, 0);
    id_ = std::exchange(o.id_, 0);
  }
  return *this;
}

void Registration::reset() noexcept {
  if (id_ > 0) Access::ctl(*this, AEM_CTL_CLEAN, 0);
  core_.reset();
  backend_ = nullptr;
  serial_ = 0;
  id_ = 0;
  detail::drain();
}

int Registration::release() noexcept {
  core_.reset();
  backend_ = nullptr;
  serial_ = 0;
  return std::exchange(id_, 0);
}

void Registration::enable(std::error_code& ec) noexcept {
  detail::set(ec, Access::ctl(*this, AEM_CTL_ENABLE, 0));
}
void Registration::enable() {
  std::error_code ec;
  enable(ec);
  if (ec) detail::raise_error(ec, "aem::Registration::enable");
}

void Registration::disable(std::error_code& ec) noexcept {
  detail::set(ec, Access::ctl(*this, AEM_CTL_DISABLE, 0));
}
void Registration::disable() {
  std::error_code ec;
  disable(ec);
  if (ec) detail::raise_error(ec, "aem::Registration::disable");
}

void Registration::set_priority(int priority, std::error_code& ec) noexcept {
  if (priority < priority_min || priority > priority_max) {
    ec = std::make_error_code(std::errc::invalid_argument);
    return;
  }
  detail::set(ec, Access::ctl(*this, AEM_CTL_SET_PRIO, static_cast<unsigned long>(priority)));
}
void Registration::set_priority(int priority) {
  std::error_code ec;
  set_priority(priority, ec);
  if (ec) detail::raise_error(ec, "aem::Registration::set_priority");
}

void Registration::set_timeout(std::chrono::milliseconds timeout, std::error_code& ec) noexcept {
  if (timeout.count() < 0 || timeout.count() > INT_MAX) {
    ec = std::make_error_code(std::errc::invalid_argument);
    return;
  }
  detail::set(ec,
              Access::ctl(*this, AEM_CTL_SET_TIMEOUT, static_cast<unsigned long>(timeout.count())));
}
void Registration::set_timeout(std::chrono::milliseconds timeout) {
  std::error_code ec;
  set_timeout(timeout, ec);
  if (ec) detail::raise_error(ec, "aem::Registration::set_timeout");
}

void Registration::filter(unsigned mask, std::error_code& ec) noexcept {
  detail::set(ec, Access::ctl(*this, AEM_CTL_FILTER, mask));
}
void Registration::filter(unsigned mask) {
  std::error_code ec;
  filter(mask, ec);
  if (ec) detail::raise_error(ec, "aem::Registration::filter");
}

EventInfo Registration::info(std::error_code& ec) const noexcept {
  aem_event_info i{};
  int rc = Access::ctl(*this, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&i));
  detail::set(ec, rc);
  return rc < 0 ? EventInfo{} : detail::to_info(i);
}
EventInfo Registration::info() const {
  std::error_code ec;
  EventInfo i = info(ec);
  if (ec) detail::raise_error(ec, "aem::Registration::info");
  return i;
}

EventStats Registration::stats(std::error_code& ec) const noexcept {
  aem_event_stats s{};
  int rc = Access::ctl(*this, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&s));
  detail::set(ec, rc);
  if (rc < 0) return {};
  return {s.activations, s.deliveries, s.merged, s.errors, s.pending};
}
EventStats Registration::stats() const {
  std::error_code ec;
  EventStats s = stats(ec);
  if (ec) detail::raise_error(ec, "aem::Registration::stats");
  return s;
}

void SoftEvent::raise(std::uint64_t value, std::error_code& ec) const noexcept {
  detail::set(ec, Access::raise(*this, value));
}
void SoftEvent::raise(std::uint64_t value) const {
  std::error_code ec;
  raise(value, ec);
  if (ec) detail::raise_error(ec, "aem::SoftEvent::raise");
}

// ---------------------------------------------------------------------------
// Context: life.

Context Context::process() noexcept { return Context(detail::process_core()); }

Context::Context() : Context(Options{}) {}

Context::Context(const Options& options) {
  int err = 0;
  std::string why;
  auto b = detail::open_backend(options, err, why);
  if (!b) {
    if (err == -EINVAL && !why.empty()) throw std::invalid_argument("aem::Context: " + why);
    throw std::system_error(detail::errc_of(err), why.empty() ? "aem::Context" : why);
  }
  core_ = std::make_shared<detail::Core>();
  core_->owned = std::move(b);
}

Context::Context(const Options& options, std::error_code& ec) noexcept {
  int err = 0;
  try {
    std::string why;
    auto b = detail::open_backend(options, err, why);
    if (b) {
      core_ = std::make_shared<detail::Core>();
      core_->owned = std::move(b);
    }
  } catch (const std::bad_alloc&) {
    err = -ENOMEM;
  }
  detail::set(ec, core_ ? 0 : err);
}

namespace {
void close_core(std::shared_ptr<detail::Core>& core) noexcept {
  if (core && core->owned) {
    core->owned->shutdown();
    core->owned->on_error(nullptr);
  }
  core.reset();
  detail::drain();
}
}  // namespace

Context::~Context() { close_core(core_); }

Context::Context(Context&& o) noexcept : core_(std::move(o.core_)) {}

Context& Context::operator=(Context&& o) noexcept {
  if (this != &o) {
    close_core(core_);
    core_ = std::move(o.core_);
  }
  return *this;
}

bool Context::is_process() const noexcept { return core_ && !core_->owned; }

// ---------------------------------------------------------------------------
// Context: registration.

namespace {

Spec spec_of(int type, const RegOptions& o, int fd = -1) {
  Spec s;
  s.type = type;
  s.flags = to_flags(o);
  s.fd = fd;
  return s;
}

#define AEM_THROWING(call, what)             \
  do {                                       \
    std::error_code ec_;                     \
    auto r_ = call;                          \
    if (ec_) detail::raise_error(ec_, what); \
    return r_;                               \
  } while (0)

TimerEvent make_timer(const Event& e) { return {e.jid, e.count}; }

Registration add_timer(const Context& c, const timespec& first, const timespec& period,
                       unsigned long extra, Handler<TimerEvent>&& h, const RegOptions& o,
                       std::error_code& ec) noexcept {
  Spec s = spec_of(AEM_EV_TIMER, o);
  s.flags |= extra;
  s.value = &first;
  s.period = &period;
  return Access::add<Registration>(c, s, std::move(h), make_timer, ec);
}

Registration bad_timer(std::error_code& ec) noexcept {
  ec = std::make_error_code(std::errc::invalid_argument);
  detail::drain();
  return Registration();
}

}  // namespace

Registration Context::timer(std::chrono::nanoseconds first, std::chrono::nanoseconds period,
                            Handler<TimerEvent> handler, const RegOptions& opts,
                            std::error_code& ec) noexcept {
  timespec v{}, p{};
  if (!detail::to_timespec(first, v) || !detail::to_timespec(period, p)) return bad_timer(ec);
  return add_timer(*this, v, p, 0, std::move(handler), opts, ec);
}
Registration Context::timer(std::chrono::nanoseconds first, std::chrono::nanoseconds period,
                            Handler<TimerEvent> handler, const RegOptions& opts) {
  AEM_THROWING(timer(first, period, std::move(handler), opts, ec_), "aem::Context::timer");
}

Registration Context::timer(std::chrono::steady_clock::time_point first,
                            std::chrono::nanoseconds period, Handler<TimerEvent> handler,
                            const RegOptions& opts, std::error_code& ec) noexcept {
  // libstdc++'s steady_clock is CLOCK_MONOTONIC.
  timespec v{}, p{};
  if (!detail::to_timespec(first.time_since_epoch(), v) || !detail::to_timespec(period, p))
    return bad_timer(ec);
  return add_timer(*this, v, p, AEM_ABSTIME, std::move(handler), opts, ec);
}
Registration Context::timer(std::chrono::steady_clock::time_point first,
                            std::chrono::nanoseconds period, Handler<TimerEvent> handler,
                            const RegOptions& opts) {
  AEM_THROWING(timer(first, period, std::move(handler), opts, ec_), "aem::Context::timer");
}

Registration Context::timer(std::chrono::system_clock::time_point first,
                            std::chrono::nanoseconds period, Handler<TimerEvent> handler,
                            const RegOptions& opts, std::error_code& ec) noexcept {
  timespec v{}, p{};
  if (!detail::to_timespec(first.time_since_epoch(), v) || !detail::to_timespec(period, p))
    return bad_timer(ec);
  return add_timer(*this, v, p, AEM_ABSTIME | AEM_REALTIME, std::move(handler), opts, ec);
}
Registration Context::timer(std::chrono::system_clock::time_point first,
                            std::chrono::nanoseconds period, Handler<TimerEvent> handler,
                            const RegOptions& opts) {
  AEM_THROWING(timer(first, period, std::move(handler), opts, ec_), "aem::Context::timer");
}

Registration Context::read(int fd, Handler<ReadEvent> handler, const RegOptions& opts,
                           std::error_code& ec) noexcept {
  Spec s = spec_of(AEM_EV_READ, opts, fd);
  return Access::add<Registration>(
      *this, s, std::move(handler),
      [](const Event& e) {
        return ReadEvent{e.jid, e.fd,
                         std::span<const std::byte>(static_cast<const std::byte*>(e.data), e.len)};
      },
      ec);
}
Registration Context::read(int fd, Handler<ReadEvent> handler, const RegOptions& opts) {
  AEM_THROWING(read(fd, std::move(handler), opts, ec_), "aem::Context::read");
}

Registration Context::accept(int listen_fd, Handler<AcceptEvent> handler, const RegOptions& opts,
                             std::error_code& ec) noexcept {
  Spec s = spec_of(AEM_EV_ACCEPT, opts, listen_fd);
  return Access::add<Registration>(
      *this, s, std::move(handler),
      [](const Event& e) {
        AcceptEvent a;
        a.id = e.jid;
        a.listen_fd = e.fd;
        a.fd = e.new_fd;
        if (e.addr && e.addrlen > 0) {
          const auto n = std::min<std::size_t>(e.addrlen, sizeof a.peer.storage);
          std::memcpy(&a.peer.storage, e.addr, n);
          a.peer.size = static_cast<socklen_t>(n);
        }
        return a;
      },
      ec);
}
Registration Context::accept(int listen_fd, Handler<AcceptEvent> handler, const RegOptions& opts) {
  AEM_THROWING(accept(listen_fd, std::move(handler), opts, ec_), "aem::Context::accept");
}

Registration Context::close(int fd, Handler<CloseEvent> handler, const RegOptions& opts,
                            std::error_code& ec) noexcept {
  Spec s = spec_of(AEM_EV_CLOSE, opts, fd);
  return Access::add<Registration>(
      *this, s, std::move(handler), [](const Event& e) { return CloseEvent{e.jid, e.fd}; }, ec);
}
Registration Context::close(int fd, Handler<CloseEvent> handler, const RegOptions& opts) {
  AEM_THROWING(close(fd, std::move(handler), opts, ec_), "aem::Context::close");
}

Registration Context::tcp_state(int fd, Handler<TcpStateEvent> handler, const RegOptions& opts,
                                std::error_code& ec) noexcept {
  Spec s = spec_of(AEM_EV_SK, opts, fd);
  return Access::add<Registration>(
      *this, s, std::move(handler),
      [](const Event& e) { return TcpStateEvent{e.jid, e.fd, e.old_state, e.new_state}; }, ec);
}
Registration Context::tcp_state(int fd, Handler<TcpStateEvent> handler, const RegOptions& opts) {
  AEM_THROWING(tcp_state(fd, std::move(handler), opts, ec_), "aem::Context::tcp_state");
}

Registration Context::socket_state(int fd, Handler<SocketStateEvent> handler,
                                   const RegOptions& opts, std::error_code& ec) noexcept {
  Spec s = spec_of(AEM_EV_SOCK, opts, fd);
  return Access::add<Registration>(
      *this, s, std::move(handler),
      [](const Event& e) { return SocketStateEvent{e.jid, e.fd, e.events}; }, ec);
}
Registration Context::socket_state(int fd, Handler<SocketStateEvent> handler,
                                   const RegOptions& opts) {
  AEM_THROWING(socket_state(fd, std::move(handler), opts, ec_), "aem::Context::socket_state");
}

Registration Context::fd(int fd, unsigned events, Handler<FdEvent> handler,
                         const RegOptions& opts, std::error_code& ec) noexcept {
  Spec s = spec_of(AEM_EV_FD, opts, fd);
  s.events = events;
  return Access::add<Registration>(
      *this, s, std::move(handler), [](const Event& e) { return FdEvent{e.jid, e.fd, e.events}; },
      ec);
}
Registration Context::fd(int fd, unsigned events, Handler<FdEvent> handler,
                         const RegOptions& opts) {
  AEM_THROWING(this->fd(fd, events, std::move(handler), opts, ec_), "aem::Context::fd");
}

SoftEvent Context::soft(Handler<SoftRaised> handler, const RegOptions& opts,
                        std::error_code& ec) noexcept {
  Spec s = spec_of(AEM_EV_SOFT, opts);
  return Access::add<SoftEvent>(
      *this, s, std::move(handler),
      [](const Event& e) { return SoftRaised{e.jid, e.value, e.count}; }, ec);
}
SoftEvent Context::soft(Handler<SoftRaised> handler, const RegOptions& opts) {
  AEM_THROWING(soft(std::move(handler), opts, ec_), "aem::Context::soft");
}

// ---------------------------------------------------------------------------
// Context: ids.

EventInfo Context::lookup(int id, std::error_code& ec) const noexcept {
  int rc = 0;
  Backend* b = detail::resolve(core_.get(), rc);
  aem_event_info i{};
  if (b) rc = b->ctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&i));
  detail::set(ec, rc);
  return rc < 0 ? EventInfo{} : detail::to_info(i);
}
EventInfo Context::lookup(int id) const {
  AEM_THROWING(lookup(id, ec_), "aem::Context::lookup");
}

Registration Context::adopt(int id, std::error_code& ec) noexcept {
  int rc = 0;
  Backend* b = detail::resolve(core_.get(), rc);
  aem_event_info i{};
  if (b) rc = b->ctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&i));
  detail::set(ec, rc);
  if (rc < 0) return Registration();
  return Access::make<Registration>(*this, b, id);
}
Registration Context::adopt(int id) { AEM_THROWING(adopt(id, ec_), "aem::Context::adopt"); }

// ---------------------------------------------------------------------------
// Context: loop control.

std::size_t Context::dispatch(std::chrono::milliseconds timeout, std::error_code& ec) noexcept {
  int rc = 0;
  if (timeout.count() < 0) {
    rc = -EINVAL;
  } else if (Backend* b = detail::resolve(core_.get(), rc)) {
    const auto ms = timeout.count() > INT_MAX ? INT_MAX : static_cast<int>(timeout.count());
    rc = b->dispatch(ms);
  }
  detail::drain();
  detail::set(ec, rc);
  return rc < 0 ? 0 : static_cast<std::size_t>(rc);
}
std::size_t Context::dispatch(std::chrono::milliseconds timeout) {
  AEM_THROWING(dispatch(timeout, ec_), "aem::Context::dispatch");
}
std::size_t Context::dispatch() {
  int rc = 0;
  if (Backend* b = detail::resolve(core_.get(), rc)) rc = b->dispatch(-1);
  detail::drain();
  if (rc < 0) detail::raise_error(detail::errc_of(rc), "aem::Context::dispatch");
  return static_cast<std::size_t>(rc);
}

void Context::run(std::error_code& ec) noexcept {
  int rc = 0;
  if (Backend* b = detail::resolve(core_.get(), rc)) rc = b->keepalive();
  detail::drain();
  detail::set(ec, rc);
}
void Context::run() {
  std::error_code ec;
  run(ec);
  if (ec) detail::raise_error(ec, "aem::Context::run");
}

void Context::stop() noexcept {
  int rc = 0;
  if (Backend* b = detail::resolve(core_.get(), rc)) b->stop();
}

void Context::set_async(bool on, std::error_code& ec) noexcept {
  int rc = 0;
  if (Backend* b = detail::resolve(core_.get(), rc)) rc = b->set_async(on ? 1 : 0);
  detail::set(ec, rc);
}
void Context::set_async(bool on) {
  std::error_code ec;
  set_async(on, ec);
  if (ec) detail::raise_error(ec, "aem::Context::set_async");
}

void Context::on_error(ErrorHandler handler, std::error_code& ec) noexcept {
  int rc = 0;
  if (Backend* b = detail::resolve(core_.get(), rc)) {
    if (!handler) {
      b->on_error(nullptr);
    } else {
      try {
        auto slot = std::make_shared<ErrorHandler>(std::move(handler));
        ErrorHandler* fn = slot.get();
        b->on_error([keep = detail::Keep(std::move(slot)), fn](int jid, int err) noexcept {
          (*fn)(jid, detail::errc_of(err));
        });
      } catch (const std::bad_alloc&) {
        rc = -ENOMEM;
      }
    }
  }
  detail::drain();
  detail::set(ec, rc);
}
void Context::on_error(ErrorHandler handler) {
  std::error_code ec;
  on_error(std::move(handler), ec);
  if (ec) detail::raise_error(ec, "aem::Context::on_error");
}

std::string_view Context::backend_name(std::error_code& ec) const noexcept {
  int rc = 0;
  Backend* b = detail::resolve(core_.get(), rc);
  detail::set(ec, rc);
  return b ? std::string_view(b->name()) : std::string_view();
}
std::string_view Context::backend_name() const {
  AEM_THROWING(backend_name(ec_), "aem::Context::backend_name");
}

}  // namespace aem
