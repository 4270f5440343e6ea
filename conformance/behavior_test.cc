// Conformance: the behaviour requirements AEM-3.6.1 (queuing), AEM-3.6.2
// (atomicity), AEM-3.6.3 (timers), AEM-3.6.4 (inheritance) and AEM-3.6.5
// (dispatching). Also defines the suite's allocation counter (the global
// operator new; see conformance_util.hpp).
#include <cstdlib>
#include <new>
#include <set>
#include <thread>
#include <vector>

#include "conformance_util.hpp"
#include "kernel_trace.hpp"

// ---------------------------------------------------------------------------
// Allocation counter: every operator new of the binary (libaem included,
// linked statically) goes through here.

namespace conf {
namespace {
thread_local uint64_t t_count = 0;
thread_local bool t_enabled = false;
std::atomic<uint64_t> g_count{0};
std::atomic<bool> g_enabled{false};
}  // namespace
uint64_t& AllocCount::count() { return t_count; }
bool& AllocCount::enabled() { return t_enabled; }
std::atomic<uint64_t>& AllocCount::global() { return g_count; }
std::atomic<bool>& AllocCount::global_enabled() { return g_enabled; }
}  // namespace conf

namespace {
void* counted_new(size_t n) {
  if (conf::t_enabled) ++conf::t_count;
  if (conf::g_enabled.load(std::memory_order_relaxed)) conf::g_count.fetch_add(1);
  if (void* p = malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(size_t n) { return counted_new(n); }
void* operator new[](size_t n) { return counted_new(n); }
void operator delete(void* p) noexcept { free(p); }
void operator delete[](void* p) noexcept { free(p); }
void operator delete(void* p, size_t) noexcept { free(p); }
void operator delete[](void* p, size_t) noexcept { free(p); }

namespace {
using namespace conf;

// Before the first test: the backend in use (recorded on <testsuites> as
// aem_backend, with the library version), then no context again.
class BackendEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    const char* b = aem_backend();
    backend_cache() = b ? b : "";
    ::testing::Test::RecordProperty("aem_backend", b ? b : "none");
    ::testing::Test::RecordProperty(
        "aem_version", std::to_string(AEM_VERSION_MAJOR) + "." + std::to_string(AEM_VERSION_MINOR));
    aem_shutdown();
    // No backend, no suite: every test would fail for the same reason.
    if (!b) {
      const char* want = getenv("AEM_BACKEND");
      GTEST_FAIL() << "libaem cannot start a backend (AEM_BACKEND=" << (want ? want : "")
                   << "): " << strerror(errno);
    }
  }
};
[[maybe_unused]] ::testing::Environment* const g_backend_env =
    ::testing::AddGlobalTestEnvironment(new BackendEnvironment);

// ===========================================================================
// AEM-3.6.1 Queuing

class AEM_3_6_1 : public ConformanceTest {};

TEST_F(AEM_3_6_1, c1_ActivationsWhileNotDispatchingAllDelivered) {
  AEM_REQ("AEM-3.6.1");
  static uint64_t soft_occ, timer_exp;
  static int fd_calls;
  soft_occ = timer_exp = 0;
  fd_calls = 0;
  int s = evsoft(0, [](int, uint64_t, uint64_t o) { soft_occ += o; });
  timespec v{0, 1000000};
  int t = evtimer(&v, nullptr, 0, [](int, uint64_t e) { timer_exp += e; });
  Pipe p;
  int f = evfd(p.rd.get(), POLLIN, AEM_EDGE, [](int, int, unsigned) { ++fd_calls; });
  ASSERT_GT(s, 0);
  ASSERT_GT(t, 0);
  ASSERT_GT(f, 0);
  // Other threads activate while this one neither dispatches nor is async.
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([s] {
      for (int k = 0; k < 1000; ++k) evsoft_raise(s, 0);
    });
  ts.emplace_back([&p] { write_all(p.wr.get(), "x", 1); });
  for (auto& th : ts) th.join();
  // Wait (stats only, no dispatch) until the timer and fd were activated.
  const uint64_t end = mono_ns() + kWaitMs * 1000000ull;
  for (int id : {t, f}) {
    aem_event_stats st{};
    while (evctl(id, AEM_CTL_STATS, ptr(&st)) == 0 && st.pending == 0 && mono_ns() < end)
      std::this_thread::yield();
  }
  EXPECT_EQ(soft_occ + timer_exp + static_cast<uint64_t>(fd_calls), 0u) << "a handler ran without dispatch";
  ASSERT_TRUE(dispatch_until([] { return soft_occ >= 4000 && timer_exp >= 1 && fd_calls >= 1; }));
  EXPECT_EQ(soft_occ, 4000u);
  EXPECT_EQ(timer_exp, 1u);
  EXPECT_EQ(fd_calls, 1);
}

std::vector<std::tuple<int, uint64_t, uint64_t>> g_calls;
void rec(int jid, uint64_t v, uint64_t occ) { g_calls.emplace_back(jid, v, occ); }

TEST_F(AEM_3_6_1, c2_NRaisesOneCallOrNCallsPerOccurrence) {
  AEM_REQ("AEM-3.6.1");
  g_calls.clear();
  int merged = evsoft(0, rec);
  int per = evsoft(AEM_PER_OCCURRENCE, rec);
  ASSERT_GT(merged, 0);
  ASSERT_GT(per, 0);
  constexpr uint64_t kN = 25;
  for (uint64_t i = 1; i <= kN; ++i) {
    ASSERT_EQ(evsoft_raise(merged, i), 0);
    ASSERT_EQ(evsoft_raise(per, 100 + i), 0);
  }
  ASSERT_TRUE(dispatch_until([] { return g_calls.size() >= kN + 1; }));
  while (aem_dispatch(0) > 0) {
  }
  std::vector<std::tuple<int, uint64_t, uint64_t>> m, p;
  for (auto& c : g_calls) (std::get<0>(c) == merged ? m : p).push_back(c);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(std::get<2>(m[0]), kN);
  ASSERT_EQ(p.size(), kN);
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_EQ(std::get<2>(p[i]), 1u);
    EXPECT_EQ(std::get<1>(p[i]), 101 + i);
  }
}

TEST_F(AEM_3_6_1, c3_QueueHighestPriorityFirstThenFirstActivation) {
  AEM_REQ("AEM-3.6.1");
  g_calls.clear();
  std::vector<int> lo, mid, hi;
  for (int i = 0; i < 4; ++i) {
    lo.push_back(evsoft(AEM_PRIO(3), rec));
    mid.push_back(evsoft(AEM_PRIO(30), rec));
    hi.push_back(evsoft(AEM_PRIO(55), rec));
  }
  for (auto* v : {&lo, &mid, &hi})
    for (int id : *v) ASSERT_GT(id, 0);
  // Interleaved activations; a second activation keeps the first's place.
  std::vector<int> seq = {mid[2], lo[1], hi[3], mid[0], lo[1], hi[0], lo[3], mid[2],
                          hi[1], lo[0], mid[1], hi[3], lo[2], mid[3], hi[2], hi[0]};
  for (int id : seq) ASSERT_EQ(evsoft_raise(id, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 12);
  std::vector<int> got;
  for (auto& c : g_calls) got.push_back(std::get<0>(c));
  std::vector<int> expected;
  for (auto* level : {&hi, &mid, &lo}) {
    std::set<int> in(level->begin(), level->end());
    std::set<int> seen;
    for (int id : seq)
      if (in.count(id) && seen.insert(id).second) expected.push_back(id);
  }
  EXPECT_EQ(got, expected);
}

TEST_F(AEM_3_6_1, c4_QueuingAnActivationAllocatesNothing) {
  AEM_REQ("AEM-3.6.1");
  if (!on_user_backend() && !on_kmod_backend())
    GTEST_SKIP() << "no allocation probe for the " << backend() << " backend";
  std::vector<int> ids;
  for (int i = 0; i < 500; ++i) {
    int id = evsoft((i % 2 ? AEM_PER_OCCURRENCE : 0) | AEM_PRIO(i % 64), noop_soft);
    ASSERT_GT(id, 0);
    ids.push_back(id);
  }
  auto raise_all = [&] {
    for (int round = 0; round < 3; ++round)
      for (int id : ids) evsoft_raise(id, static_cast<uint64_t>(round));
  };
  raise_all();  // warm-up
  while (aem_dispatch(0) > 0) {
  }
  // In the library (both backends): no heap allocation while queuing.
  uint64_t allocs = 0;
  auto queue = [&] {
    CountAllocations count;
    raise_all();
    allocs = count.count();
  };
  if (on_kmod_backend()) {
    // In the kernel: no allocation with an AEM module on the stack.
    int control = 0;
    expect_no_kernel_allocation(queue, [&] { control = evsoft(0, noop_soft); });
    if (IsSkipped()) return;
    if (control > 0) {
      EXPECT_EQ(evctl(control, AEM_CTL_CLEAN, 0), 0);
    }
  } else {
    queue();
  }
  while (aem_dispatch(0) > 0) {
  }
  measure("queued_activations", static_cast<uint64_t>(ids.size()) * 3);
  measure("allocations", allocs);
  EXPECT_EQ(allocs, 0u) << "queuing activations allocated memory";
}

// ===========================================================================
// AEM-3.6.2 Atomicity

class AEM_3_6_2 : public ConformanceTest {};

std::atomic<int> g_inside{0};
std::atomic<uint64_t> g_overlaps{0};
std::atomic<uint64_t> g_total{0};

void guarded(int, uint64_t, uint64_t occ) {
  if (g_inside.fetch_add(1) != 0) g_overlaps.fetch_add(1);
  // Stay inside up to 20 us, or until another handler enters: a mechanism
  // that can overlap two handlers gets a window wide enough to show it (a
  // bounded detection window, not a synchronisation).
  const uint64_t until = mono_ns() + 20000;
  while (g_inside.load() == 1 && mono_ns() < until) {
  }
  g_inside.fetch_sub(1);
  g_total.fetch_add(occ);
}

TEST_F(AEM_3_6_2, c1_HandlersOfOneContextNeverOverlapUnderStress) {
  AEM_REQ("AEM-3.6.2");
  constexpr int kRegs = 16, kThreads = 4, kEach = 5000;
  for (unsigned exec : {AEM_EXEC_SAME, AEM_EXEC_THREAD}) {
    SCOPED_TRACE(exec);
    g_inside = 0;
    g_overlaps = 0;
    g_total = 0;
    std::vector<int> ids;
    for (int i = 0; i < kRegs; ++i) {
      int id = evsoft(exec | AEM_PRIO(i * 4) | (i % 2 ? AEM_PER_OCCURRENCE : 0), guarded);
      ASSERT_GT(id, 0);
      ids.push_back(id);
    }
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t)
      ts.emplace_back([&ids, t] {
        for (int i = 0; i < kEach; ++i) evsoft_raise(ids[static_cast<size_t>((i + t) % kRegs)], 0);
      });
    constexpr uint64_t kAll = static_cast<uint64_t>(kThreads) * kEach;
    if (exec == AEM_EXEC_SAME) {
      EXPECT_TRUE(dispatch_until([] { return g_total.load() >= kAll; }, 60000));
      for (auto& t : ts) t.join();
    } else {
      for (auto& t : ts) t.join();
      const uint64_t end = mono_ns() + 60000000000ull;
      while (g_total.load() < kAll && mono_ns() < end) std::this_thread::yield();
    }
    EXPECT_EQ(g_total.load(), kAll);
    EXPECT_EQ(g_overlaps.load(), 0u);
    measure(exec == AEM_EXEC_SAME ? "handler_overlaps" : "handler_overlaps_thread_executor",
            g_overlaps.load());
    for (int id : ids) evctl(id, AEM_CTL_CLEAN, 0);
  }
}

TEST_F(AEM_3_6_2, c2_AsyncUpcallNeverInterruptsARunningHandler) {
  AEM_REQ("AEM-3.6.2");
  g_inside = 0;
  g_overlaps = 0;
  g_total = 0;
  static std::atomic<int> entered{0};
  entered = 0;
  // The handler runs long enough for many raises to land while it runs.
  int id = evsoft(AEM_PER_OCCURRENCE, [](int jid, uint64_t v, uint64_t occ) {
    entered.fetch_add(1);
    guarded(jid, v, occ);
    for (int i = 0; i < 2000; ++i) asm volatile("" ::: "memory");
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(aem_set_async(1), 0);
  constexpr uint64_t kN = 3000;
  std::thread t([id] {
    for (uint64_t i = 0; i < kN; ++i) evsoft_raise(id, i);
  });
  // This thread never dispatches: async upcalls run everything.
  const uint64_t end = mono_ns() + 60000000000ull;
  while (g_total.load() < kN && mono_ns() < end) {
  }
  t.join();
  ASSERT_EQ(aem_set_async(0), 0);
  dispatch_until([] { return g_total.load() >= kN; });
  EXPECT_EQ(g_total.load(), kN);
  EXPECT_EQ(g_overlaps.load(), 0u);
  measure("handler_overlaps", g_overlaps.load());
}

TEST_F(AEM_3_6_2, c3_DispatchInsideAHandlerStartsNoOtherHandler) {
  AEM_REQ("AEM-3.6.2");
  g_inside = 0;
  g_overlaps = 0;
  g_total = 0;
  static int disp_rc, keep_rc;
  static std::atomic<int> started_inside{0};
  disp_rc = keep_rc = 1;
  started_inside = 0;
  static int other;
  other = evsoft(0, [](int, uint64_t, uint64_t) {
    if (g_inside.load()) started_inside.fetch_add(1);
  });
  int first = evsoft(AEM_PRIO(60), [](int, uint64_t, uint64_t) {
    g_inside = 1;
    evsoft_raise(other, 0);  // pending while this one runs
    disp_rc = aem_dispatch(0);
    keep_rc = enter_keepalive();
    g_inside = 0;
  });
  ASSERT_GT(other, 0);
  ASSERT_GT(first, 0);
  ASSERT_EQ(evsoft_raise(first, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 2);
  EXPECT_EQ(disp_rc, -EDEADLK);
  EXPECT_EQ(keep_rc, -EDEADLK);
  EXPECT_EQ(started_inside.load(), 0) << "a handler started inside another one";
  // The same inside the thread executor.
  static Counter done;
  static std::atomic<int> tdisp, tkeep;
  done.reset();
  tdisp = tkeep = 1;
  int th = evsoft(AEM_EXEC_THREAD, [](int, uint64_t, uint64_t) {
    tdisp = aem_dispatch(0);
    tkeep = enter_keepalive();
    done.add();
  });
  ASSERT_GT(th, 0);
  ASSERT_EQ(evsoft_raise(th, 0), 0);
  ASSERT_TRUE(done.wait_for(1));
  EXPECT_EQ(tdisp.load(), -EDEADLK);
  EXPECT_EQ(tkeep.load(), -EDEADLK);
}

// ===========================================================================
// AEM-3.6.3 Timers and periodic events

class AEM_3_6_3 : public ConformanceTest {};

std::vector<std::pair<uint64_t, uint64_t>> g_fired;  // (expirations, CLOCK_MONOTONIC at call)
void rec_timer(int, uint64_t e) { g_fired.emplace_back(e, mono_ns()); }

TEST_F(AEM_3_6_3, c1_OneShotFiresOnceNotEarly) {
  AEM_REQ("AEM-3.6.3");
  for (bool zero_period : {false, true}) {
    SCOPED_TRACE(zero_period);
    g_fired.clear();
    static int sentinel;
    sentinel = 0;
    timespec v = ts_of(3000000), zero{0, 0};
    const uint64_t t0 = mono_ns();
    int id = evtimer(&v, zero_period ? &zero : nullptr, 0, rec_timer);
    ASSERT_GT(id, 0);
    ASSERT_TRUE(dispatch_until([] { return !g_fired.empty(); }));
    EXPECT_EQ(g_fired[0].first, 1u);
    EXPECT_GE(g_fired[0].second, t0 + 3000000) << "fired early";
    // A later timer bounds the wait for a (wrong) second expiry.
    timespec later = ts_of(20000000);
    ASSERT_GT(evtimer(&later, nullptr, 0, [](int, uint64_t) { ++sentinel; }), 0);
    ASSERT_TRUE(dispatch_until([] { return sentinel > 0; }));
    EXPECT_EQ(g_fired.size(), 1u) << "a one-shot timer fired again";
  }
}

TEST_F(AEM_3_6_3, c2_PeriodicNeverEarlyExpirationsMatchPeriods) {
  AEM_REQ("AEM-3.6.3");
  g_fired.clear();
  constexpr uint64_t P = 2000000;  // 2 ms
  timespec v = ts_of(P), per = ts_of(P);
  const uint64_t start_lo = mono_ns();
  int id = evtimer(&v, &per, 0, rec_timer);
  const uint64_t start_hi = mono_ns();
  ASSERT_GT(id, 0);
  static uint64_t sum;
  sum = 0;
  ASSERT_TRUE(dispatch_until([] {
    sum = 0;
    for (auto& f : g_fired) sum += f.first;
    return sum >= 60;
  }));
  ASSERT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);
  const uint64_t t_end = mono_ns();
  uint64_t acc = 0, early = 0;
  for (auto& [e, at] : g_fired) {
    acc += e;
    // The acc-th expiry is due at start + acc * P.
    if (at < start_lo + acc * P) ++early;
  }
  aem_event_stats st{};
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  const uint64_t elapsed_lo = (t_end - start_hi) / P;
  const uint64_t elapsed_hi = (t_end - start_lo) / P;
  EXPECT_EQ(early, 0u) << "expirations reported before they were due";
  EXPECT_GE(st.activations + 1, elapsed_lo) << "expirations lost";
  EXPECT_LE(st.activations, elapsed_hi + 1) << "expirations invented";
  EXPECT_EQ(acc + st.pending, st.activations);
  measure("expirations", acc);
  measure("periods_elapsed", elapsed_lo);
}

TEST_F(AEM_3_6_3, c3_InvalidTimerValuesRefusedWithEinval) {
  AEM_REQ("AEM-3.6.3");
  auto h = [](int, uint64_t) {};
  timespec ok{0, 1000000};
  timespec bad_ns{0, 1000000000}, neg_ns{0, -1}, neg_s{-1, 0};
  EXPECT_AEM_ERR(evtimer(nullptr, nullptr, 0, h), EINVAL);
  EXPECT_AEM_ERR(evtimer(nullptr, &ok, 0, h), EINVAL);
  EXPECT_AEM_ERR(evtimer(&neg_s, nullptr, 0, h), EINVAL);
  EXPECT_AEM_ERR(evtimer(&neg_ns, nullptr, 0, h), EINVAL);
  EXPECT_AEM_ERR(evtimer(&bad_ns, nullptr, 0, h), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, &neg_s, 0, h), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, &neg_ns, 0, h), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, &bad_ns, 0, h), EINVAL);
}

TEST_F(AEM_3_6_3, c3_PeriodBelowThePolicyMinimumRefusedWithEperm) {
  AEM_REQ("AEM-3.6.3");
  ChildReport rep;
  const int rc = run_in_child([&rep] {
    setenv("AEM_MIN_TIMER_PERIOD_NS", "1000000", 1);
    auto h = [](int, uint64_t) {};
    timespec v{1, 0}, fast{0, 999999}, ok{0, 1000000};
    errno = 0;
    const int r = evtimer(&v, &fast, 0, h);
    rep.put("below_minimum_rc", std::to_string(r));
    rep.put("below_minimum_errno", std::to_string(errno));
    CHILD_CHECK(evtimer(&v, &ok, 0, h) > 0);
    return 0;
  });
  auto kv = rep.collect();
  ASSERT_EQ(rc, 0);
  const int r = std::stoi(ChildReport::get(kv, "below_minimum_rc"));
  const int e = std::stoi(ChildReport::get(kv, "below_minimum_errno"));
  EXPECT_EQ(r, -EPERM) << "a period below the policy minimum returned " << r << " ("
                       << strerrorname_np(-r) << "), the catalog asks -EPERM";
  EXPECT_EQ(e, -r) << "errno";
}

TEST_F(AEM_3_6_3, c4_HundredPeriodicTimersEachMatchTheirPeriod) {
  AEM_REQ("AEM-3.6.3");
  constexpr int kTimers = 100;
  static uint64_t sums[kTimers];
  static int first_id;
  std::vector<int> ids;
  // Each timer's count is bracketed by clock reads (read_timer_count()): at
  // most the periods that could have elapsed between arming and the last
  // STATS read, at least those elapsed by a time after which it fired again.
  std::vector<uint64_t> period(kTimers), armed_lo(kTimers), armed_hi(kTimers);
  for (int i = 0; i < kTimers; ++i) {
    const auto u = static_cast<size_t>(i);
    sums[i] = 0;
    period[u] = 1000000ull + 250000ull * static_cast<uint64_t>(i);  // 1 .. 25.75 ms
    timespec v = ts_of(period[u]);
    armed_lo[u] = mono_ns();
    int id = evtimer(&v, &v, 0, [](int jid, uint64_t e) { sums[jid - first_id] += e; });
    armed_hi[u] = mono_ns();
    ASSERT_GT(id, 0);
    if (i == 0) first_id = id;
    ASSERT_EQ(id, first_id + i) << "ids are not consecutive; the test needs them to index";
    ids.push_back(id);
  }
  // Run until the slowest timer expired 8 times.
  ASSERT_TRUE(dispatch_until([] { return sums[kTimers - 1] >= 8; }, 60000));
  for (int id : ids) ASSERT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);  // held, still counted
  int bad = 0;
  for (int i = 0; i < kTimers; ++i) {
    const auto u = static_cast<size_t>(i);
    const TimerCount c = read_timer_count(ids[u]);
    ASSERT_TRUE(c.ok);
    const aem_event_stats& st = c.st;
    const uint64_t least = (c.t - armed_hi[u]) / period[u];
    const uint64_t most = (c.read_hi - armed_lo[u]) / period[u];
    const uint64_t got = st.activations;
    if (got + 1 < least || got > most + 1) {
      ++bad;
      ADD_FAILURE() << "timer " << i << " (period " << period[u] << " ns): " << got
                    << " expirations, " << least << " to " << most << " periods elapsed";
    }
    EXPECT_EQ(sums[i] + st.pending, st.activations);
  }
  measure("timers", static_cast<uint64_t>(kTimers));
  measure("timers_off_by_more_than_one", static_cast<uint64_t>(bad));
}

TEST_F(AEM_3_6_3, c5_MissedPeriodsCountedDisableEnableClean) {
  AEM_REQ("AEM-3.6.3");
  g_fired.clear();
  static bool block_once;
  block_once = true;
  constexpr uint64_t P = 2000000;
  timespec v = ts_of(P);
  int id = evtimer(&v, &v, 0, [](int jid, uint64_t e) {
    rec_timer(jid, e);
    if (block_once) {
      // The handler is delayed for five periods (the workload, not a sync).
      block_once = false;
      timespec d = ts_of(5 * P + P / 2);
      while (clock_nanosleep(CLOCK_MONOTONIC, 0, &d, &d) == EINTR) {
      }
    }
  });
  ASSERT_GT(id, 0);
  ASSERT_TRUE(dispatch_until([] { return g_fired.size() >= 2; }));
  EXPECT_GT(g_fired[1].first, 1u) << "periods missed while the handler was delayed were lost";
  // Disable: no handler call; enable: calls resume; clean: gone for good.
  ASSERT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);
  while (aem_dispatch(0) > 0) {
  }
  const size_t calls_disabled = g_fired.size();
  aem_event_stats st{};
  const uint64_t end = mono_ns() + kWaitMs * 1000000ull;
  uint64_t base = 0;
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  base = st.activations;
  do {  // three more periods pass while disabled
    ASSERT_EQ(aem_dispatch(1), 0) << "a disabled timer's handler ran";
    ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  } while (st.activations < base + 3 && mono_ns() < end);
  EXPECT_EQ(g_fired.size(), calls_disabled);
  ASSERT_EQ(evctl(id, AEM_CTL_ENABLE, 0), 0);
  ASSERT_TRUE(dispatch_until([&] { return g_fired.size() >= calls_disabled + 2; }));
  ASSERT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
  const size_t calls_cleaned = g_fired.size();
  static int sentinel;
  sentinel = 0;
  timespec later = ts_of(10 * P);
  ASSERT_GT(evtimer(&later, nullptr, 0, [](int, uint64_t) { ++sentinel; }), 0);
  ASSERT_TRUE(dispatch_until([] { return sentinel > 0; }));
  EXPECT_EQ(g_fired.size(), calls_cleaned) << "a cleaned timer fired";
  uint64_t max_e = 0;
  for (auto& f : g_fired) max_e = std::max(max_e, f.first);
  measure("max_expirations_per_call", max_e);
}

// ===========================================================================
// AEM-3.6.4 Inheritance

class AEM_3_6_4 : public ConformanceTest {};

uint64_t g_occ;
pid_t g_ran_in;
void soft_h(int, uint64_t, uint64_t occ) {
  g_occ += occ;
  g_ran_in = getpid();
}
uint64_t g_exp, g_gone_exp;

TEST_F(AEM_3_6_4, c1_InheritedRegistrationRunsInTheChild) {
  AEM_REQ("AEM-3.6.4");
  g_occ = 0;
  int inh = evsoft(AEM_INHERIT, soft_h);
  timespec v = ts_of(1000000);
  int inh_timer = evtimer(&v, &v, AEM_INHERIT, [](int, uint64_t e) { g_exp += e; });
  ASSERT_GT(inh, 0);
  ASSERT_GT(inh_timer, 0);
  EXPECT_CHILD_OK([=] {
    aem_event_info info{};
    CHILD_CHECK(evctl(inh, AEM_CTL_LOOKUP, ptr(&info)) == 0);
    CHILD_CHECK(info.jid == inh && info.type == AEM_EV_SOFT);
    CHILD_CHECK(evctl(inh_timer, AEM_CTL_LOOKUP, ptr(&info)) == 0);
    CHILD_CHECK(info.type == AEM_EV_TIMER);
    g_occ = 0;
    g_ran_in = 0;
    CHILD_CHECK(evsoft_raise(inh, 1) == 0);
    CHILD_CHECK(dispatch_until([] { return g_occ >= 1; }));
    CHILD_CHECK(g_ran_in == getpid());
    g_exp = 0;
    CHILD_CHECK(dispatch_until([] { return g_exp >= 3; }));
    return 0;
  });
}

TEST_F(AEM_3_6_4, c2_RegistrationWithoutInheritIsAbsentInTheChild) {
  AEM_REQ("AEM-3.6.4");
  timespec v = ts_of(1000000);
  int gone_soft = evsoft(0, soft_h);
  int gone_timer = evtimer(&v, &v, 0, [](int, uint64_t e) { g_gone_exp += e; });
  int kept_timer = evtimer(&v, &v, AEM_INHERIT, [](int, uint64_t e) { g_exp += e; });
  ASSERT_GT(gone_soft, 0);
  ASSERT_GT(gone_timer, 0);
  ASSERT_GT(kept_timer, 0);
  EXPECT_CHILD_OK([=] {
    aem_event_info info{};
    for (int id : {gone_soft, gone_timer}) {
      errno = 0;
      const int r = evctl(id, AEM_CTL_LOOKUP, ptr(&info));
      CHILD_CHECK(r < 0 && errno == -r);
    }
    CHILD_CHECK(evsoft_raise(gone_soft, 0) < 0);
    g_gone_exp = 0;
    g_exp = 0;
    // The inherited timer fires several times; the other one never does here.
    CHILD_CHECK(dispatch_until([] { return g_exp >= 10; }));
    CHILD_CHECK(g_gone_exp == 0);
    return 0;
  });
}

TEST_F(AEM_3_6_4, c3_ParentUnaffectedWhileAndAfterTheChildWorks) {
  AEM_REQ("AEM-3.6.4");
  g_occ = 0;
  static uint64_t other_occ;
  other_occ = 0;
  int inh = evsoft(AEM_INHERIT, soft_h);
  int own = evsoft(0, [](int, uint64_t, uint64_t o) { other_occ += o; });
  ASSERT_GT(inh, 0);
  ASSERT_GT(own, 0);
  Pipe child_registered, parent_checked, child_cleaned;
  std::thread parent_side([&] {
    // While the child works, raise the parent's registrations from here.
    char c;
    if (!read_exact(child_registered.rd.get(), &c, 1)) return;
    evsoft_raise(inh, 0);
    evsoft_raise(own, 0);
    write_all(parent_checked.wr.get(), "p", 1);
  });
  int rc = run_in_child([&] {
    int mine = evsoft(0, soft_h);
    CHILD_CHECK(mine > 0);
    CHILD_CHECK(write_all(child_registered.wr.get(), "r", 1));
    char c;
    CHILD_CHECK(read_exact(parent_checked.rd.get(), &c, 1));
    CHILD_CHECK(evctl(mine, AEM_CTL_CLEAN, 0) == 0);
    CHILD_CHECK(evctl(inh, AEM_CTL_CLEAN, 0) == 0);  // the child's copy only
    return 0;
  });
  parent_side.join();
  EXPECT_EQ(rc, 0);
  ASSERT_TRUE(dispatch_until([] { return g_occ >= 1 && other_occ >= 1; }));
  EXPECT_EQ(g_ran_in, getpid());
  // After the child exited: still registered, still delivered.
  aem_event_info info{};
  EXPECT_EQ(evctl(inh, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(evctl(own, AEM_CTL_LOOKUP, ptr(&info)), 0);
  ASSERT_EQ(evsoft_raise(inh, 0), 0);
  ASSERT_EQ(evsoft_raise(own, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return g_occ >= 2 && other_occ >= 2; }));
  EXPECT_EQ(g_occ, 2u);
  EXPECT_EQ(other_occ, 2u);
  (void)child_cleaned;
}

// ===========================================================================
// AEM-3.6.5 Event dispatching

class AEM_3_6_5 : public ConformanceTest {};

struct Stream {
  std::string data;
  int eofs = 0;
  int after_eof = 0;
};
Stream g_streams[2];
int g_stream_ids[2];

void read_into(int jid, int, const void* d, size_t len) {
  for (int i = 0; i < 2; ++i) {
    if (g_stream_ids[i] != jid) continue;
    Stream& s = g_streams[i];
    if (s.eofs) ++s.after_eof;
    if (len == 0)
      ++s.eofs;
    else
      s.data.append(static_cast<const char*>(d), len);
  }
}

TEST_F(AEM_3_6_5, c1_TwoReadersEachGetEveryByteThenEof) {
  AEM_REQ("AEM-3.6.5");
  for (auto& s : g_streams) s = Stream{};
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  g_stream_ids[0] = sockasync_read(tp.server.get(), 0, read_into);
  g_stream_ids[1] = sockasync_read(tp.server.get(), AEM_PRIO(50), read_into);
  ASSERT_GT(g_stream_ids[0], 0);
  ASSERT_GT(g_stream_ids[1], 0);
  constexpr size_t kTotal = 1 << 20;
  const std::string msg = pattern_bytes(3, kTotal);
  std::thread w([&] {
    for (size_t off = 0; off < kTotal; off += 3000) write_all(tp.client.get(), msg.data() + off, std::min<size_t>(3000, kTotal - off));
    tp.client.reset();
  });
  bool done = dispatch_until([] { return g_streams[0].eofs && g_streams[1].eofs; }, 60000);
  w.join();
  ASSERT_TRUE(done);
  while (aem_dispatch(0) > 0) {
  }
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(g_streams[i].data.size(), kTotal);
    EXPECT_TRUE(g_streams[i].data == msg);
    EXPECT_EQ(g_streams[i].eofs, 1);
    EXPECT_EQ(g_streams[i].after_eof, 0);
  }
}

std::map<int, std::vector<unsigned>> g_fd_by_id;

TEST_F(AEM_3_6_5, c2_EveryRegistrationOfASourceGetsEveryActivation) {
  AEM_REQ("AEM-3.6.5");
  g_fd_by_id.clear();
  Pipe p;
  constexpr int kRegs = 5, kWrites = 10;
  std::vector<int> ids;
  for (int i = 0; i < kRegs; ++i) {
    int id = evfd(p.rd.get(), POLLIN, AEM_EDGE | AEM_PER_OCCURRENCE | AEM_PRIO(10 + i),
                  [](int jid, int, unsigned rev) { g_fd_by_id[jid].push_back(rev); });
    ASSERT_GT(id, 0);
    ids.push_back(id);
  }
  for (int w = 1; w <= kWrites; ++w) {
    ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
    ASSERT_TRUE(dispatch_until([&] {
      for (int id : ids)
        if (g_fd_by_id[id].size() < static_cast<size_t>(w)) return false;
      return true;
    }));
  }
  while (aem_dispatch(0) > 0) {
  }
  for (int id : ids) {
    EXPECT_EQ(g_fd_by_id[id].size(), static_cast<size_t>(kWrites)) << "registration " << id;
    EXPECT_EQ(g_fd_by_id[id], g_fd_by_id[ids[0]]) << "different revents for the same activations";
  }
}

TEST_F(AEM_3_6_5, c3_CleaningOneLeavesTheOthersReceiving) {
  AEM_REQ("AEM-3.6.5");
  for (auto& s : g_streams) s = Stream{};
  g_fd_by_id.clear();
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  g_stream_ids[0] = sockasync_read(tp.server.get(), 0, read_into);
  g_stream_ids[1] = sockasync_read(tp.server.get(), 0, read_into);
  ASSERT_GT(g_stream_ids[0], 0);
  ASSERT_GT(g_stream_ids[1], 0);
  ASSERT_TRUE(write_all(tp.client.get(), "first", 5));
  ASSERT_TRUE(dispatch_until([] { return g_streams[0].data.size() >= 5 && g_streams[1].data.size() >= 5; }));
  ASSERT_EQ(evctl(g_stream_ids[0], AEM_CTL_CLEAN, 0), 0);
  ASSERT_TRUE(write_all(tp.client.get(), "second", 6));
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return g_streams[1].eofs > 0; }));
  EXPECT_EQ(g_streams[1].data, "firstsecond");
  EXPECT_EQ(g_streams[0].data, "first");
  EXPECT_EQ(g_streams[0].eofs, 0);
  // An fd source too.
  Pipe p;
  int a = evfd(p.rd.get(), POLLIN, AEM_EDGE, [](int jid, int, unsigned r) { g_fd_by_id[jid].push_back(r); });
  int b = evfd(p.rd.get(), POLLIN, AEM_EDGE, [](int jid, int, unsigned r) { g_fd_by_id[jid].push_back(r); });
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  ASSERT_EQ(evctl(a, AEM_CTL_CLEAN, 0), 0);
  for (int w = 1; w <= 3; ++w) {
    ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
    ASSERT_TRUE(dispatch_until([&] { return g_fd_by_id[b].size() >= static_cast<size_t>(w); }));
  }
  EXPECT_TRUE(g_fd_by_id[a].empty());
}

}  // namespace
