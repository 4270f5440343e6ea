// Tests of aem::Registration and aem::SoftEvent: RAII, move, release/adopt,
// the control operations (both error styles), options, handlers, executors.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "aem/aem.hpp"
#include "aem_req.hpp"
#include "cxx_test_util.hpp"

using namespace std::chrono_literals;

namespace {

using cxx_test::dispatch_until;
using cxx_test::kBound;
using cxx_test::thrown_code;

aem::Context fresh() { return aem::Context(aem::Options{.backend = aem::BackendKind::user}); }

bool c_api_knows(int id) {
  aem_event_info info{};
  return evctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)) == 0;
}

const auto nop = [](const aem::SoftRaised&) {};

}  // namespace

TEST(CxxRegistration, DestructorCleansOnProcessContext) {
  AEM_REQ("AEM-3.1.7", "AEM-3.1.4");
  int id = 0;
  {
    aem::SoftEvent ev = aem::Context::process().soft(nop);
    id = ev.id();
    ASSERT_GT(id, 0);
    EXPECT_TRUE(c_api_knows(id));
  }
  errno = 0;
  EXPECT_FALSE(c_api_knows(id));
  EXPECT_EQ(errno, ENOENT);
}

TEST(CxxRegistration, DestructorCleansOnFreshContext) {
  AEM_REQ("AEM-3.1.7", "AEM-3.1.4");
  aem::Context ctx = fresh();
  int id = 0;
  {
    aem::Registration r = ctx.timer(1h, 1h, [](const aem::TimerEvent&) {});
    id = r.id();
    EXPECT_EQ(ctx.lookup(id).type, aem::EventType::timer);
  }
  std::error_code ec;
  ctx.lookup(id, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  EXPECT_EQ(thrown_code([&] { ctx.lookup(id); }), std::errc::no_such_file_or_directory);
}

TEST(CxxRegistration, IdsAreUniqueAndPositive) {
  AEM_REQ("AEM-3.1.4");
  aem::Context ctx = fresh();
  std::vector<aem::SoftEvent> evs;
  std::vector<int> ids;
  for (int i = 0; i < 50; ++i) {
    evs.push_back(ctx.soft(nop));
    ids.push_back(evs.back().id());
    EXPECT_GT(ids.back(), 0);
  }
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
}

TEST(CxxRegistration, MoveSemantics) {
  AEM_REQ("AEM-3.1.4", "AEM-3.1.7");
  aem::Context ctx = fresh();
  int ran = 0;
  aem::SoftEvent a = ctx.soft([&](const aem::SoftRaised&) { ++ran; });
  const int id = a.id();
  aem::SoftEvent b = std::move(a);
  EXPECT_EQ(b.id(), id);
  EXPECT_EQ(a.id(), 0);  // NOLINT(bugprone-use-after-move)
  EXPECT_FALSE(a);
  EXPECT_TRUE(b);
  // A moved-from registration: invalid_argument, both overloads.
  std::error_code ec;
  a.raise(1, ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { a.enable(); }), std::errc::invalid_argument);
  a.info(ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  b.raise(1);
  EXPECT_EQ(ctx.dispatch(5s), 1u);
  EXPECT_EQ(ran, 1);
  // Move assignment cleans the target's previous registration.
  aem::SoftEvent c = ctx.soft(nop);
  const int old = c.id();
  c = std::move(b);
  EXPECT_EQ(c.id(), id);
  ctx.lookup(old, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  EXPECT_EQ(ctx.lookup(id).id, id);
  // Slicing into a plain Registration keeps ownership.
  aem::Registration r = std::move(c);
  EXPECT_EQ(r.id(), id);
  r.reset();
  EXPECT_FALSE(r);
  ctx.lookup(id, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  // A default-constructed one is empty.
  aem::Registration empty;
  EXPECT_FALSE(empty);
  EXPECT_EQ(empty.release(), 0);
}

TEST(CxxRegistration, ReleaseAndAdopt) {
  AEM_REQ("AEM-3.1.4", "AEM-3.1.7");
  aem::Context ctx = fresh();
  int id = 0;
  {
    aem::SoftEvent ev = ctx.soft(nop);
    id = ev.release();
    EXPECT_FALSE(ev);
  }
  EXPECT_EQ(ctx.lookup(id).type, aem::EventType::soft);  // still live
  {
    aem::Registration r = ctx.adopt(id);
    EXPECT_EQ(r.id(), id);
  }
  std::error_code ec;
  ctx.lookup(id, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  EXPECT_EQ(thrown_code([&] { ctx.adopt(id); }), std::errc::no_such_file_or_directory);
  EXPECT_FALSE(ctx.adopt(-3, ec));
  EXPECT_EQ(ec, std::errc::invalid_argument);
  // A C API registration adopted on the process context.
  int cid = evsoft(0, [](int, uint64_t, uint64_t) {});
  ASSERT_GT(cid, 0);
  { aem::Registration r = aem::Context::process().adopt(cid); }
  EXPECT_FALSE(c_api_knows(cid));
}

TEST(CxxRegistration, EnableDisable) {
  AEM_REQ("AEM-3.1.7", "AEM-3.5.1");
  aem::Context ctx = fresh();
  uint64_t calls = 0, occ = 0;
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised& e) {
    ++calls;
    occ += e.occurrences;
  }, {.disabled = true});
  EXPECT_FALSE(ev.info().enabled);
  ev.raise(1);
  ev.raise(2);
  ev.raise(3);
  EXPECT_EQ(ctx.dispatch(0ms), 0u);  // held while disabled
  EXPECT_EQ(ev.info().pending, 3u);
  std::error_code ec = make_error_code(std::errc::io_error);
  ev.enable(ec);
  EXPECT_FALSE(ec);
  EXPECT_EQ(ctx.dispatch(5s), 1u);  // merged into one call
  EXPECT_EQ(calls, 1u);
  EXPECT_EQ(occ, 3u);
  ev.disable();
  EXPECT_FALSE(ev.info().enabled);
  ev.raise(4);
  EXPECT_EQ(ctx.dispatch(0ms), 0u);
  ev.enable();
  EXPECT_EQ(ctx.dispatch(5s), 1u);
  EXPECT_EQ(occ, 4u);
  ev.disable(ec);
  EXPECT_FALSE(ec);
  // Errors: after reset, both overloads.
  aem::SoftEvent gone = ctx.soft(nop);
  aem::Registration alias = ctx.adopt(gone.id());
  gone.reset();
  EXPECT_EQ(thrown_code([&] { alias.enable(); }), std::errc::no_such_file_or_directory);
  alias.disable(ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  alias.release();
}

TEST(CxxRegistration, PriorityOrderAndSetPriority) {
  AEM_REQ("AEM-3.1.5", "AEM-3.1.7");
  aem::Context ctx = fresh();
  std::vector<char> order;
  aem::SoftEvent low = ctx.soft([&](const aem::SoftRaised&) { order.push_back('L'); },
                                {.priority = 10});
  aem::SoftEvent mid = ctx.soft([&](const aem::SoftRaised&) { order.push_back('M'); });
  aem::SoftEvent high = ctx.soft([&](const aem::SoftRaised&) { order.push_back('H'); },
                                 {.priority = aem::priority_max});
  EXPECT_EQ(low.info().priority, 10);
  EXPECT_EQ(mid.info().priority, aem::priority_default);
  low.raise();
  mid.raise();
  high.raise();
  EXPECT_EQ(ctx.dispatch(5s), 3u);
  EXPECT_EQ(order, (std::vector<char>{'H', 'M', 'L'}));
  // Priorities are settable later, also while pending.
  order.clear();
  low.raise();
  high.raise();
  low.set_priority(aem::priority_max);
  std::error_code ec = make_error_code(std::errc::io_error);
  high.set_priority(aem::priority_min, ec);
  EXPECT_FALSE(ec);
  EXPECT_EQ(low.info().priority, aem::priority_max);
  EXPECT_EQ(ctx.dispatch(5s), 2u);
  EXPECT_EQ(order, (std::vector<char>{'L', 'H'}));
  // Out of range: invalid_argument, both overloads; nothing changes.
  EXPECT_EQ(thrown_code([&] { low.set_priority(aem::priority_max + 1); }),
            std::errc::invalid_argument);
  low.set_priority(-1, ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_EQ(low.info().priority, aem::priority_max);
  // At registration too.
  EXPECT_EQ(thrown_code([&] { ctx.soft(nop, {.priority = 64}); }), std::errc::invalid_argument);
  EXPECT_FALSE(ctx.soft(nop, {.priority = -1}, ec));
  EXPECT_EQ(ec, std::errc::invalid_argument);
}

TEST(CxxRegistration, TimeoutReportsAndCleans) {
  AEM_REQ("AEM-3.1.7", "AEM-3.5.2");
  aem::Context ctx = fresh();
  int err_id = 0;
  std::error_code err;
  ctx.on_error([&](int id, std::error_code e) {
    err_id = id;
    err = e;
  });
  aem::SoftEvent ev = ctx.soft(nop);
  ev.set_timeout(5ms);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return err_id != 0; }));
  EXPECT_EQ(err_id, ev.id());
  EXPECT_EQ(err, std::errc::timed_out);
  std::error_code ec;
  ev.info(ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  // Bad timeouts, both overloads.
  aem::SoftEvent other = ctx.soft(nop);
  EXPECT_EQ(thrown_code([&] { other.set_timeout(-1ms); }), std::errc::invalid_argument);
  other.set_timeout(std::chrono::milliseconds(int64_t{1} << 40), ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  other.set_timeout(1h, ec);
  EXPECT_FALSE(ec);
  other.set_timeout(0ms);  // none
}

TEST(CxxRegistration, FilterAndInfo) {
  AEM_REQ("AEM-3.1.7");
  aem::Context ctx = fresh();
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ASSERT_GE(efd, 0);
  aem::Registration r = ctx.fd(efd, POLLIN, [](const aem::FdEvent&) {});
  aem::EventInfo i = r.info();
  EXPECT_EQ(i.id, r.id());
  EXPECT_EQ(i.type, aem::EventType::fd);
  EXPECT_EQ(i.fd, efd);
  EXPECT_EQ(i.events, unsigned{POLLIN});
  EXPECT_EQ(i.executor, aem::Executor::same);
  EXPECT_TRUE(i.enabled);
  r.filter(POLLIN | POLLOUT);
  EXPECT_EQ(r.info().events, unsigned{POLLIN | POLLOUT});
  std::error_code ec;
  r.filter(0, ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  aem::SoftEvent s = ctx.soft(nop);
  EXPECT_EQ(thrown_code([&] { s.filter(POLLIN); }), std::errc::invalid_argument);
  EXPECT_EQ(s.info().fd, -1);
  ::close(efd);
}

TEST(CxxRegistration, Stats) {
  AEM_REQ("AEM-3.1.7", "AEM-3.5.1");
  aem::Context ctx = fresh();
  aem::SoftEvent ev = ctx.soft(nop);
  for (int i = 0; i < 3; ++i) ev.raise(static_cast<uint64_t>(i));
  aem::EventStats s = ev.stats();
  EXPECT_EQ(s.activations, 3u);
  EXPECT_EQ(s.pending, 3u);
  EXPECT_EQ(ctx.dispatch(5s), 1u);
  std::error_code ec = make_error_code(std::errc::io_error);
  s = ev.stats(ec);
  EXPECT_FALSE(ec);
  EXPECT_EQ(s.activations, 3u);
  EXPECT_EQ(s.deliveries, 1u);
  EXPECT_EQ(s.merged, 2u);
  EXPECT_EQ(s.pending, 0u);
  aem::Registration none;
  EXPECT_EQ(thrown_code([&] { none.stats(); }), std::errc::invalid_argument);
}

TEST(CxxRegistration, OneshotAndPerOccurrence) {
  AEM_REQ("AEM-3.1.1", "AEM-3.5.1");
  aem::Context ctx = fresh();
  std::vector<uint64_t> values;
  aem::SoftEvent per = ctx.soft([&](const aem::SoftRaised& e) {
    EXPECT_EQ(e.occurrences, 1u);
    values.push_back(e.value);
  }, {.per_occurrence = true});
  for (uint64_t v : {11u, 22u, 33u}) per.raise(v);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return values.size() == 3; }));
  EXPECT_EQ(values, (std::vector<uint64_t>{11, 22, 33}));

  int once = 0;
  aem::SoftEvent one = ctx.soft([&](const aem::SoftRaised&) { ++once; }, {.oneshot = true});
  one.raise(1);
  EXPECT_EQ(ctx.dispatch(5s), 1u);
  EXPECT_EQ(once, 1);
  std::error_code ec;
  one.raise(2, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
}

TEST(CxxRegistration, HandlerCleansItself) {
  AEM_REQ("AEM-3.1.7");
  aem::Context ctx = fresh();
  aem::SoftEvent ev;
  int ran = 0;
  ev = ctx.soft([&](const aem::SoftRaised&) {
    ++ran;
    ev.reset();  // destroying its own registration from inside its handler
  });
  const int id = ev.id();
  ev.raise(1);
  EXPECT_EQ(ctx.dispatch(5s), 1u);
  EXPECT_EQ(ran, 1);
  EXPECT_FALSE(ev);
  std::error_code ec;
  ctx.lookup(id, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
}

TEST(CxxRegistration, HandlerOwningRegistrationsOfItsContext) {
  AEM_REQ("AEM-3.1.2", "AEM-3.1.7");
  aem::Context ctx = fresh();
  // A move-only handler owning another registration of the same context: it
  // is destroyed when the one-shot is cleaned, which cleans what it owns.
  aem::SoftEvent inner = ctx.soft(nop);
  const int inner_id = inner.id();
  int ran = 0;
  aem::SoftEvent outer = ctx.soft(
      [&ran, owned = std::move(inner), box = std::make_unique<int>(7)](const aem::SoftRaised&) {
        ran += *box;
        EXPECT_TRUE(owned);
      },
      {.oneshot = true});
  outer.raise();
  EXPECT_EQ(ctx.dispatch(5s), 1u);
  EXPECT_EQ(ran, 7);
  std::error_code ec;
  ctx.lookup(inner_id, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);

  // A handler owning its own registration (through a shared holder), and a
  // context destroyed with such handlers registered: no deadlock.
  auto self = std::make_shared<aem::SoftEvent>();
  *self = ctx.soft([self](const aem::SoftRaised&) {});
  aem::Context other = fresh();
  aem::SoftEvent keep = other.soft(nop);
  aem::SoftEvent holder = other.soft([k = std::move(keep)](const aem::SoftRaised&) {});
  holder.release();
  { aem::Context gone = std::move(other); }
}

TEST(CxxRegistration, HandlersAreAnyCallable) {
  AEM_REQ("AEM-3.1.2", "AEM-3.1.3");
  aem::Context ctx = fresh();
  // A lambda capturing by value and by reference.
  std::string prefix = "v=";
  std::string out;
  aem::SoftEvent a = ctx.soft([prefix, &out](const aem::SoftRaised& e) {
    out += prefix + std::to_string(e.value);
  });
  // A std::function.
  uint64_t fn_sum = 0;
  std::function<void(const aem::SoftRaised&)> f = [&](const aem::SoftRaised& e) { fn_sum += e.value; };
  aem::SoftEvent b = ctx.soft(f);
  // A function object with state.
  struct Counter {
    int* n;
    void operator()(const aem::SoftRaised&) const { ++*n; }
  };
  int n = 0;
  aem::SoftEvent c = ctx.soft(Counter{&n});
  a.raise(3);
  b.raise(4);
  c.raise(5);
  EXPECT_EQ(ctx.dispatch(5s), 3u);
  EXPECT_EQ(out, "v=3");
  EXPECT_EQ(fn_sum, 4u);
  EXPECT_EQ(n, 1);
}

TEST(CxxRegistration, MissingHandlerIsRejected) {
  AEM_REQ("AEM-3.1.3", "AEM-3.5.2");
  aem::Context ctx = fresh();
  std::function<void(const aem::SoftRaised&)> empty;
  EXPECT_EQ(thrown_code([&] { ctx.soft(empty); }), std::errc::invalid_argument);
  std::error_code ec;
  EXPECT_FALSE(ctx.soft(nullptr, ec));
  EXPECT_EQ(ec, std::errc::invalid_argument);
  void (*null_fn)(const aem::TimerEvent&) = nullptr;
  EXPECT_EQ(thrown_code([&] { ctx.timer(1ms, 1ms, null_fn); }), std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.fd(0, POLLIN, nullptr); }), std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.read(0, nullptr); }), std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.accept(0, nullptr); }), std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.close(0, nullptr); }), std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.tcp_state(0, nullptr); }), std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.socket_state(0, nullptr); }), std::errc::invalid_argument);
}

TEST(CxxRegistration, InvalidOptions) {
  AEM_REQ("AEM-3.1.1", "AEM-3.5.2");
  aem::Context ctx = fresh();
  EXPECT_EQ(thrown_code([&] { ctx.soft(nop, {.executor = static_cast<aem::Executor>(3)}); }),
            std::errc::invalid_argument);
  // Edge/level trigger only for fd families.
  EXPECT_EQ(thrown_code([&] { ctx.soft(nop, {.trigger = aem::Trigger::edge}); }),
            std::errc::invalid_argument);
  EXPECT_EQ(aem::to_flags({}), AEM_PRIO(AEM_PRIO_DEFAULT));
  EXPECT_EQ(aem::to_flags({.priority = 5, .executor = aem::Executor::thread, .oneshot = true,
                           .inherit = true, .disabled = true, .per_occurrence = true,
                           .trigger = aem::Trigger::edge}),
            AEM_PRIO(5) | AEM_EXEC_THREAD | AEM_ONESHOT | AEM_INHERIT | AEM_DISABLED |
                AEM_PER_OCCURRENCE | AEM_EDGE);
}

TEST(CxxRegistration, SoftRaisedFromManyThreadsExactCount) {
  AEM_REQ("AEM-3.5.1", "AEM-3.6.2", "AEM-3.1.2");
  aem::Context ctx = fresh();
  constexpr int kThreads = 4, kRaises = 2000;
  uint64_t total = 0;
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised& e) { total += e.occurrences; });
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&ev, t] {
      for (int i = 0; i < kRaises; ++i) ev.raise(static_cast<uint64_t>(t));
    });
  EXPECT_TRUE(dispatch_until(ctx, [&] { return total == uint64_t{kThreads} * kRaises; }));
  for (auto& t : ts) t.join();
  ctx.poll();
  EXPECT_EQ(total, uint64_t{kThreads} * kRaises);
  EXPECT_EQ(ev.stats().activations, uint64_t{kThreads} * kRaises);
}

TEST(CxxRegistration, SoftRaisedFromManyThreadsPerOccurrence) {
  AEM_REQ("AEM-3.5.1", "AEM-3.6.2");
  aem::Context ctx = fresh();
  constexpr int kThreads = 3, kRaises = 500;
  std::vector<uint64_t> per_thread(kThreads);
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised& e) { ++per_thread.at(e.value); },
                               {.per_occurrence = true});
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&ev, t] {
      for (int i = 0; i < kRaises; ++i) ev.raise(static_cast<uint64_t>(t));
    });
  uint64_t sum = 0;
  EXPECT_TRUE(dispatch_until(ctx, [&] {
    sum = 0;
    for (auto n : per_thread) sum += n;
    return sum == uint64_t{kThreads} * kRaises;
  }));
  for (auto& t : ts) t.join();
  for (auto n : per_thread) EXPECT_EQ(n, uint64_t{kRaises});
}

TEST(CxxRegistration, ExecutorThread) {
  AEM_REQ("AEM-3.1.6");
  aem::Context ctx = fresh();
  std::promise<std::thread::id> ran_on;
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised&) { ran_on.set_value(std::this_thread::get_id()); },
                               {.executor = aem::Executor::thread});
  EXPECT_EQ(ev.info().executor, aem::Executor::thread);
  ev.raise(1);
  auto fut = ran_on.get_future();
  ASSERT_EQ(fut.wait_for(kBound), std::future_status::ready);  // no dispatch needed
  EXPECT_NE(fut.get(), std::this_thread::get_id());
  EXPECT_EQ(ctx.dispatch(0ms), 0u);
  // Destroying it from another thread while it may run: waits, then gone.
  std::atomic<int> runs{0};
  aem::SoftEvent busy = ctx.soft([&](const aem::SoftRaised&) { runs.fetch_add(1); },
                                 {.executor = aem::Executor::thread});
  for (int i = 0; i < 100; ++i) busy.raise();
  busy.reset();  // when it returns, the handler is not running and never runs again
  const int after = runs.load();
  std::promise<void> synced;
  aem::SoftEvent sync = ctx.soft([&](const aem::SoftRaised&) { synced.set_value(); },
                                 {.executor = aem::Executor::thread});
  sync.raise();
  ASSERT_EQ(synced.get_future().wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(runs.load(), after);
}

TEST(CxxRegistration, ExecutorProcess) {
  AEM_REQ("AEM-3.1.6", "AEM-3.2.3");
  aem::Context ctx = fresh();
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised& e) {
    const pid_t me = getpid();
    (void)!write(p[1], &me, sizeof me);
    (void)!write(p[1], &e.value, sizeof e.value);
  }, {.executor = aem::Executor::process});
  ev.raise(99);
  pid_t child = 0;
  uint64_t value = 0;
  pollfd pf{p[0], POLLIN, 0};
  ASSERT_EQ(::poll(&pf, 1, 10000), 1);
  ASSERT_EQ(::read(p[0], &child, sizeof child), static_cast<ssize_t>(sizeof child));
  ASSERT_EQ(::read(p[0], &value, sizeof value), static_cast<ssize_t>(sizeof value));
  EXPECT_NE(child, getpid());
  EXPECT_EQ(value, 99u);
  ::close(p[0]);
  ::close(p[1]);
}
