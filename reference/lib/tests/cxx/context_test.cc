// Tests of aem::Context: the process context, fresh contexts and their
// Options (limits), independence, move semantics, loop control, errors.
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <cstdlib>
#include <string>
#include <vector>

#include "aem/aem.hpp"
#include "aem_req.hpp"
#include "cxx_test_util.hpp"

using namespace std::chrono_literals;

namespace {

using cxx_test::dispatch_until;
using cxx_test::kBound;
using cxx_test::thrown_code;

aem::Options user_options() { return aem::Options{.backend = aem::BackendKind::user}; }

// The backend the run asked for (AEM_BACKEND), the user backend when none.
std::string wanted_backend() {
  const char* b = getenv("AEM_BACKEND");
  return b && *b ? b : "user";
}

std::errc errc(const std::error_code& ec) { return static_cast<std::errc>(ec.value()); }

}  // namespace

TEST(CxxContext, ProcessContextIsTheCApiContext) {
  AEM_REQ("AEM-3.1.1", "AEM-3.1.4");
  aem::Context ctx = aem::Context::process();
  EXPECT_TRUE(ctx);
  EXPECT_TRUE(ctx.is_process());
  EXPECT_EQ(ctx.backend_name(), wanted_backend());
  EXPECT_EQ(aem_backend(), wanted_backend());

  uint64_t got = 0;
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised& e) { got += e.value * e.occurrences; });
  ASSERT_GT(ev.id(), 0);
  // The same id, seen through the C API.
  aem_event_info info{};
  ASSERT_EQ(evctl(ev.id(), AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  EXPECT_EQ(info.type, AEM_EV_SOFT);
  // Raised through the C API, dispatched by the C API: the C++ handler runs.
  ASSERT_EQ(evsoft_raise(ev.id(), 5), 0);
  EXPECT_EQ(aem_dispatch(5000), 1);
  EXPECT_EQ(got, 5u);
  // And the other way round.
  ev.raise(7);
  EXPECT_EQ(aem::Context::process().dispatch(5s), 1u);
  EXPECT_EQ(got, 12u);
}

TEST(CxxContext, ProcessHandleIsNonOwning) {
  AEM_REQ("AEM-3.1.1");
  int id = evsoft(0, [](int, uint64_t, uint64_t) {});
  ASSERT_GT(id, 0);
  { aem::Context p = aem::Context::process(); }  // destroying a handle leaves the context alone
  aem_event_info info{};
  EXPECT_EQ(evctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  EXPECT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
}

TEST(CxxContext, FreshContextOpens) {
  AEM_REQ("AEM-3.1.1");
  aem::Context a;
  EXPECT_TRUE(a);
  EXPECT_FALSE(a.is_process());
  EXPECT_EQ(a.backend_name(), wanted_backend());
  aem::Context b(user_options());
  EXPECT_EQ(b.backend_name(), "user");
  std::error_code ec = make_error_code(std::errc::io_error);
  aem::Context c(user_options(), ec);
  EXPECT_FALSE(ec);
  EXPECT_TRUE(c);
  EXPECT_EQ(c.backend_name(ec), "user");
  EXPECT_FALSE(ec);
}

TEST(CxxContext, KmodChoiceWithoutKernelBackend) {
  AEM_REQ("AEM-3.5.2");
  std::error_code ec;
  aem::Context c(aem::Options{.backend = aem::BackendKind::kmod}, ec);
  if (!ec) {
    EXPECT_EQ(c.backend_name(), "kmod");
    return;
  }
  EXPECT_EQ(errc(ec), std::errc::no_such_device);
  EXPECT_FALSE(c);
  EXPECT_EQ(errc(thrown_code([] { aem::Context k(aem::Options{.backend = aem::BackendKind::kmod}); })),
            std::errc::no_such_device);
}

TEST(CxxContext, InvalidOptionsAreRejected) {
  AEM_REQ("AEM-3.5.4", "AEM-3.5.2");
  const std::vector<aem::Options> bad = {
      {.max_registrations = 0},
      {.max_registrations = (std::size_t{1} << 30) + 1},
      {.max_pending = 0},
      {.allowed_types = 1u},  // bit 0 is no event type
      {.allowed_executors = 1u << 3},
      {.boost_ceiling = -1},
      {.boost_ceiling = 40},
      {.min_timer_period = -1ns},
      {.min_timer_period = 2h},
      {.arena_bytes = 100},
      {.backend = static_cast<aem::BackendKind>(42)},
  };
  for (const auto& o : bad) {
    EXPECT_FALSE(o.validate().empty());
    EXPECT_THROW(aem::Context c(o), std::invalid_argument);
    std::error_code ec;
    aem::Context c(o, ec);
    EXPECT_EQ(errc(ec), std::errc::invalid_argument);
    EXPECT_FALSE(c);
    // An empty context reports invalid_argument for everything.
    EXPECT_EQ(errc(thrown_code([&] { c.soft([](const aem::SoftRaised&) {}); })),
              std::errc::invalid_argument);
    auto r = c.soft([](const aem::SoftRaised&) {}, ec);
    EXPECT_EQ(errc(ec), std::errc::invalid_argument);
    EXPECT_FALSE(r);
    c.dispatch(0ms, ec);
    EXPECT_EQ(errc(ec), std::errc::invalid_argument);
    EXPECT_EQ(c.backend_name(ec), "");
    EXPECT_EQ(errc(ec), std::errc::invalid_argument);
  }
  EXPECT_TRUE(aem::Options{}.validate().empty());
}

TEST(CxxContext, OptionsFromEnvironment) {
  AEM_REQ("AEM-3.5.4");
  ASSERT_EQ(setenv("AEM_MAX_REGISTRATIONS", "3", 1), 0);
  aem::Options o = aem::Options::from_environment();
  EXPECT_EQ(o.max_registrations, 3u);
  ASSERT_EQ(setenv("AEM_MAX_REGISTRATIONS", "zero", 1), 0);
  EXPECT_THROW(aem::Options::from_environment(), std::invalid_argument);
  std::error_code ec;
  aem::Options::from_environment(ec);
  EXPECT_EQ(errc(ec), std::errc::invalid_argument);
  ASSERT_EQ(unsetenv("AEM_MAX_REGISTRATIONS"), 0);
  aem::Options::from_environment(ec);
  EXPECT_FALSE(ec);
}

TEST(CxxContext, MaxRegistrationsLimit) {
  AEM_REQ("AEM-3.5.4");
  aem::Context ctx(aem::Options{.backend = aem::BackendKind::user, .max_registrations = 2});
  auto nop = [](const aem::SoftRaised&) {};
  aem::SoftEvent a = ctx.soft(nop);
  aem::SoftEvent b = ctx.soft(nop);
  EXPECT_EQ(errc(thrown_code([&] { ctx.soft(nop); })), std::errc::no_space_on_device);
  EXPECT_EQ(thrown_code([&] { ctx.timer(1h, 0ns, [](const aem::TimerEvent&) {}); }),
            std::errc::no_space_on_device);
  std::error_code ec;
  aem::SoftEvent c = ctx.soft(nop, ec);
  EXPECT_EQ(ec, std::errc::no_space_on_device);
  EXPECT_FALSE(c);
  EXPECT_EQ(c.id(), 0);
  // RAII: destroying one frees its place.
  a.reset();
  c = ctx.soft(nop, ec);
  EXPECT_FALSE(ec);
  EXPECT_TRUE(c);
  // The process context is not limited by this one.
  aem::SoftEvent p = aem::Context::process().soft(nop);
  EXPECT_TRUE(p);
}

TEST(CxxContext, AllowedTypesExecutorsAndMinPeriod) {
  AEM_REQ("AEM-3.5.4", "AEM-3.5.3");
  aem::Context ctx(aem::Options{.backend = aem::BackendKind::user,
                                .allowed_types = aem::mask(aem::EventType::soft) |
                                                 aem::mask(aem::EventType::timer),
                                .allowed_executors = aem::mask(aem::Executor::same),
                                .min_timer_period = 10ms});
  auto nop = [](const aem::SoftRaised&) {};
  auto tick = [](const aem::TimerEvent&) {};
  int efd = eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  EXPECT_EQ(thrown_code([&] { ctx.fd(efd, POLLIN, [](const aem::FdEvent&) {}); }),
            std::errc::operation_not_permitted);
  std::error_code ec;
  EXPECT_FALSE(ctx.fd(efd, POLLIN, [](const aem::FdEvent&) {}, ec));
  EXPECT_EQ(ec, std::errc::operation_not_permitted);
  EXPECT_EQ(thrown_code([&] { ctx.soft(nop, {.executor = aem::Executor::thread}); }),
            std::errc::operation_not_permitted);
  EXPECT_EQ(thrown_code([&] { ctx.timer(1ms, 1ms, tick); }), std::errc::operation_not_permitted);
  EXPECT_FALSE(ctx.timer(1ms, 9ms, tick, {}, ec));
  EXPECT_EQ(ec, std::errc::operation_not_permitted);
  EXPECT_TRUE(ctx.timer(1h, 10ms, tick));
  EXPECT_TRUE(ctx.timer(1ms, tick));  // one-shot: no period to limit
  EXPECT_TRUE(ctx.soft(nop));
  ::close(efd);
}

TEST(CxxContext, MaxPendingOverflowIsReportedNothingLost) {
  AEM_REQ("AEM-3.5.4", "AEM-3.5.2", "AEM-3.5.1");
  aem::Context ctx(aem::Options{.backend = aem::BackendKind::user, .max_pending = 1});
  std::vector<std::error_code> errors;
  ctx.on_error([&](int, std::error_code e) { errors.push_back(e); });
  uint64_t total = 0;
  std::vector<aem::SoftEvent> evs;
  for (int i = 0; i < 4; ++i)
    evs.push_back(ctx.soft([&](const aem::SoftRaised& e) { total += e.occurrences; }));
  for (auto& e : evs) {
    e.raise(1);
    e.raise(2);
  }
  EXPECT_TRUE(dispatch_until(ctx, [&] { return total == 8; }));
  EXPECT_EQ(total, 8u);
  ASSERT_FALSE(errors.empty());
  EXPECT_EQ(errors.front(), std::errc::value_too_large);  // EOVERFLOW
}

TEST(CxxContext, TwoContextsAreIndependent) {
  AEM_REQ("AEM-3.1.1", "AEM-3.1.4");
  aem::Context a(user_options());
  aem::Context b(user_options());
  int ran_a = 0, ran_b = 0;
  aem::SoftEvent ea = a.soft([&](const aem::SoftRaised&) { ++ran_a; });
  aem::SoftEvent eb = b.soft([&](const aem::SoftRaised&) { ++ran_b; });
  eb.raise(1);
  EXPECT_EQ(a.dispatch(0ms), 0u);  // b's pending event never runs in a's dispatch
  EXPECT_EQ(ran_b, 0);
  ea.raise(1);
  EXPECT_EQ(a.dispatch(5s), 1u);
  EXPECT_EQ(ran_a, 1);
  EXPECT_EQ(ran_b, 0);
  EXPECT_EQ(b.dispatch(5s), 1u);
  EXPECT_EQ(ran_b, 1);
  EXPECT_EQ(ran_a, 1);
  // Ids are per context: an id of b that a never issued is unknown to a.
  aem::SoftEvent eb2 = b.soft([](const aem::SoftRaised&) {});
  std::error_code ec;
  if (eb2.id() != ea.id()) {
    a.lookup(eb2.id(), ec);
    EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  }
  // Destroying a context leaves the other alone.
  { aem::Context gone = std::move(a); }
  eb.raise(1);
  EXPECT_EQ(b.dispatch(5s), 1u);
  EXPECT_EQ(ran_b, 2);
}

TEST(CxxContext, MoveSemantics) {
  AEM_REQ("AEM-3.1.1");
  aem::Context a(user_options());
  int ran = 0;
  aem::SoftEvent ev = a.soft([&](const aem::SoftRaised&) { ++ran; });
  aem::Context b = std::move(a);
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_TRUE(b);
  std::error_code ec;
  a.dispatch(0ms, ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { a.dispatch(0ms); }), std::errc::invalid_argument);
  // The registration follows its context.
  ev.raise(1);
  EXPECT_EQ(b.dispatch(5s), 1u);
  EXPECT_EQ(ran, 1);
  // Move assignment closes the target's old context: its registrations go.
  aem::Context c(user_options());
  aem::SoftEvent old = c.soft([](const aem::SoftRaised&) {});
  c = std::move(b);
  old.info(ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  EXPECT_TRUE(ev.info().enabled);  // b's lives on in c
}

TEST(CxxContext, RegistrationOutlivesContext) {
  AEM_REQ("AEM-3.1.7");
  aem::SoftEvent ev;
  {
    aem::Context ctx(user_options());
    ev = ctx.soft([](const aem::SoftRaised&) {});
    EXPECT_TRUE(ev.info().enabled);
  }
  std::error_code ec;
  ev.info(ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  ev.raise(1, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  EXPECT_THROW(ev.raise(1), std::system_error);
  ev.reset();  // harmless
}

TEST(CxxContext, DispatchErrors) {
  AEM_REQ("AEM-3.5.2", "AEM-3.1.7");
  aem::Context ctx(user_options());
  std::error_code ec;
  EXPECT_EQ(ctx.dispatch(-1ms, ec), 0u);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.dispatch(-5ms); }), std::errc::invalid_argument);
  EXPECT_EQ(ctx.dispatch(0ms, ec), 0u);
  EXPECT_FALSE(ec);
  EXPECT_EQ(ctx.poll(), 0u);
  // Inside a handler: -EDEADLK, both overloads.
  std::error_code inside;
  bool threw = false;
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised&) {
    ctx.dispatch(0ms, inside);
    try {
      ctx.run();
    } catch (const std::system_error& e) {
      threw = e.code() == std::errc::resource_deadlock_would_occur;
    }
  });
  ev.raise();
  EXPECT_EQ(ctx.dispatch(5s), 1u);
  EXPECT_EQ(inside, std::errc::resource_deadlock_would_occur);
  EXPECT_TRUE(threw);
}

TEST(CxxContext, DispatchForeverReturnsAfterAHandler) {
  AEM_REQ("AEM-3.1.7");
  aem::Context ctx(user_options());
  int ran = 0;
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised&) { ++ran; });
  std::thread t([&] { ev.raise(1); });
  EXPECT_GE(ctx.dispatch(), 1u);  // returns once the raise ran
  t.join();
  EXPECT_EQ(ran, 1);
}

TEST(CxxContext, RunUntilStopFromHandler) {
  AEM_REQ("AEM-3.1.7");
  aem::Context ctx(user_options());
  int ran = 0;
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised& e) {
    ran += static_cast<int>(e.occurrences);
    if (ran >= 3) ctx.stop();
  }, {.per_occurrence = true});
  std::thread t([&] {
    for (int i = 0; i < 3; ++i) ev.raise(static_cast<uint64_t>(i));
  });
  ctx.run();
  t.join();
  EXPECT_EQ(ran, 3);
  // A stop() before run() makes it return at once (error_code overload).
  ctx.stop();
  std::error_code ec = make_error_code(std::errc::io_error);
  ctx.run(ec);
  EXPECT_FALSE(ec);
}

TEST(CxxContext, RunStoppedFromAnotherThread) {
  AEM_REQ("AEM-3.1.7");
  aem::Context ctx(user_options());
  std::promise<void> started;
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised&) { started.set_value(); });
  ev.raise();
  std::thread t([&] {
    started.get_future().wait();  // run() is running handlers now
    ctx.stop();
  });
  ctx.run();
  t.join();
}

TEST(CxxContext, AsyncDeliveryInterruptsMainFlow) {
  AEM_REQ("AEM-3.1.6", "AEM-3.1.7");
  aem::Context ctx(user_options());
  std::atomic<int> ran{0};
  aem::SoftEvent ev = ctx.soft([&](const aem::SoftRaised&) { ran.fetch_add(1); });
  std::error_code ec = make_error_code(std::errc::io_error);
  ctx.set_async(true, ec);
  EXPECT_FALSE(ec);
  std::thread t([&] { ev.raise(1); });
  // No dispatch: the handler interrupts this loop.
  const auto end = std::chrono::steady_clock::now() + kBound;
  while (ran.load() == 0 && std::chrono::steady_clock::now() < end) {
  }
  t.join();
  EXPECT_EQ(ran.load(), 1);
  ctx.set_async(false);
}

TEST(CxxContext, ErrorHandlerReplacedAndRemoved) {
  AEM_REQ("AEM-3.5.2");
  aem::Context ctx(user_options());
  int first = 0, second = 0;
  ctx.on_error([&](int, std::error_code) { ++first; });
  ctx.on_error([&](int, std::error_code) { ++second; });
  aem::SoftEvent ev = ctx.soft([](const aem::SoftRaised&) {});
  ev.set_timeout(1ms);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return second == 1; }));
  EXPECT_EQ(first, 0);
  std::error_code ec = make_error_code(std::errc::io_error);
  ctx.on_error(nullptr, ec);
  EXPECT_FALSE(ec);
  aem::SoftEvent ev2 = ctx.soft([](const aem::SoftRaised&) {});
  ev2.set_timeout(1ms);
  // The timeout cleans it; with no error handler nobody is called.
  const auto end = std::chrono::steady_clock::now() + kBound;
  while ((ev2.info(ec), !ec) && std::chrono::steady_clock::now() < end) ctx.dispatch(10ms);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  EXPECT_EQ(second, 1);
}

TEST(CxxContext, ProcessContextSurvivesCShutdown) {
  AEM_REQ("AEM-3.1.4");
  aem::SoftEvent ev = aem::Context::process().soft([](const aem::SoftRaised&) {});
  ASSERT_TRUE(ev);
  ASSERT_EQ(aem_shutdown(), 0);
  // A new implicit context: ids start again. The old Registration must not
  // touch the new context's events.
  int cid = evsoft(0, [](int, uint64_t, uint64_t) {});
  ASSERT_GT(cid, 0);
  std::error_code ec;
  ev.info(ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
  ev.reset();
  aem_event_info info{};
  EXPECT_EQ(evctl(cid, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0)
      << "destroying a Registration of the old process context cleaned id " << cid
      << " of the new one";
  evctl(cid, AEM_CTL_CLEAN, 0);
}
