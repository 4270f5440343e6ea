// Timers: evtimer() errors, one-shot, periodic, absolute, CLOCK_REALTIME,
// sub-millisecond periods, no expiration lost however long a handler takes
// (AEM-3.6.3, PRF.1.4, AEM-3.5.1).
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Timer : public AemTest {};

TEST_F(Timer, Errors) {
  AEM_REQ("AEM-3.6.3", "AEM-3.1.3");
  timespec ok{0, 1000000};
  EXPECT_AEM_ERR(evtimer(nullptr, nullptr, 0, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(nullptr, &ok, 0, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, nullptr, 0, nullptr), EINVAL);
  timespec bad_ns{0, 1000000000};
  timespec neg_ns{0, -1};
  timespec neg_s{-1, 0};
  EXPECT_AEM_ERR(evtimer(&bad_ns, nullptr, 0, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&neg_ns, nullptr, 0, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&neg_s, nullptr, 0, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, &bad_ns, 0, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, &neg_ns, 0, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, &neg_s, 0, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, nullptr, 0x4000u, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, nullptr, AEM_EXEC_MASK, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evtimer(&ok, nullptr, AEM_PRIO(64), noop_timer), EINVAL);
}

std::vector<std::pair<uint64_t, uint64_t>> g_fired;  // (expirations, clock ns at call)
clockid_t g_clock = CLOCK_MONOTONIC;
void rec_timer(int, uint64_t exp) { g_fired.emplace_back(exp, clock_ns(g_clock)); }

TEST_F(Timer, OneShotRelative) {
  AEM_REQ("AEM-3.6.3", "AEM-3.1.2");
  g_fired.clear();
  g_clock = CLOCK_MONOTONIC;
  const uint64_t t0 = mono_ns();
  timespec v = ts_of(5000000);
  int id = evtimer(&v, nullptr, 0, rec_timer);
  ASSERT_GT(id, 0);
  ASSERT_TRUE(dispatch_until([] { return !g_fired.empty(); }));
  EXPECT_EQ(g_fired[0].first, 1u);
  EXPECT_GE(g_fired[0].second, t0 + 5000000);
  EXPECT_EQ(aem_dispatch(30), 0);  // a one-shot does not fire again
  EXPECT_EQ(g_fired.size(), 1u);
  // Period zero is a one-shot too.
  g_fired.clear();
  timespec zero{0, 0};
  v = ts_of(1000000);
  int id2 = evtimer(&v, &zero, 0, rec_timer);
  ASSERT_GT(id2, 0);
  ASSERT_TRUE(dispatch_until([] { return !g_fired.empty(); }));
  EXPECT_EQ(aem_dispatch(30), 0);
  ASSERT_EQ(g_fired.size(), 1u);
  EXPECT_EQ(g_fired[0].first, 1u);
  aem_event_stats st{};
  ASSERT_EQ(evctl(id2, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)), 0);
  EXPECT_EQ(st.activations, 1u);
  EXPECT_EQ(st.deliveries, 1u);
}

TEST_F(Timer, AbsoluteMonotonicAndRealtime) {
  AEM_REQ("AEM-3.6.3", "PRF.1.4");
  for (clockid_t c : {CLOCK_MONOTONIC, CLOCK_REALTIME}) {
    g_fired.clear();
    g_clock = c;
    const uint64_t at = clock_ns(c) + 20000000;
    timespec v = ts_of(at);
    unsigned flags = AEM_ABSTIME | (c == CLOCK_REALTIME ? AEM_REALTIME : 0u);
    int id = evtimer(&v, nullptr, flags, rec_timer);
    ASSERT_GT(id, 0);
    ASSERT_TRUE(dispatch_until([] { return !g_fired.empty(); }));
    EXPECT_EQ(g_fired[0].first, 1u);
    EXPECT_GE(g_fired[0].second, at) << "fired before its absolute time, clock " << c;
    aem_event_info info{};
    ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
    EXPECT_EQ(info.flags, static_cast<unsigned long>(flags));
  }
  // An absolute time already past fires at once, once.
  g_fired.clear();
  g_clock = CLOCK_MONOTONIC;
  timespec past = ts_of(mono_ns() - 1000000000ull);
  ASSERT_GT(evtimer(&past, nullptr, AEM_ABSTIME, rec_timer), 0);
  ASSERT_TRUE(dispatch_until([] { return !g_fired.empty(); }));
  EXPECT_EQ(g_fired[0].first, 1u);
}

// Periodic timer accounting: expirations k at start + k * period; the
// number that have occurred by time t is floor((t - start) / period). The
// handler blocks for several periods every block_every calls. Checks that
// every expiration is counted and delivered exactly: delivered + pending ==
// activations, and activations == periods elapsed (+-1 at the boundary).
struct Periodic {
  uint64_t period_ns;
  clockid_t clock;
  bool absolute;
  int block_every;      // 0: never block
  uint64_t block_periods;
  uint64_t target;      // expirations to see before the final check
  bool per_occurrence;
};

struct PeriodicState {
  uint64_t sum = 0, calls = 0, max_exp = 0, ones = 0;
  Periodic cfg{};
} g_ps;

void periodic_handler(int, uint64_t exp) {
  g_ps.sum += exp;
  ++g_ps.calls;
  if (exp > g_ps.max_exp) g_ps.max_exp = exp;
  if (exp == 1) ++g_ps.ones;
  if (g_ps.cfg.block_every && g_ps.calls % static_cast<uint64_t>(g_ps.cfg.block_every) == 0) {
    // The workload: a handler that takes several periods.
    timespec d = ts_of(g_ps.cfg.block_periods * g_ps.cfg.period_ns + g_ps.cfg.period_ns / 2);
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &d, &d) == EINTR) {
    }
  }
}

void check_periodic(const Periodic& cfg) {
  g_ps = PeriodicState{};
  g_ps.cfg = cfg;
  const uint64_t P = cfg.period_ns;
  timespec period = ts_of(P);
  uint64_t start_lo, start_hi;
  int id;
  unsigned flags = (cfg.clock == CLOCK_REALTIME ? AEM_REALTIME : 0u) |
                   (cfg.per_occurrence ? AEM_PER_OCCURRENCE : 0u);
  if (cfg.absolute) {
    const uint64_t start = clock_ns(cfg.clock) + 2 * P;
    timespec v = ts_of(start + P);
    id = evtimer(&v, &period, flags | AEM_ABSTIME, periodic_handler);
    start_lo = start_hi = start;
  } else {
    timespec v = ts_of(P);
    start_lo = clock_ns(cfg.clock);
    id = evtimer(&v, &period, flags, periodic_handler);
    start_hi = clock_ns(cfg.clock);
  }
  ASSERT_GT(id, 0);
  auto elapsed = [&](uint64_t t, uint64_t start) -> uint64_t { return t < start ? 0 : (t - start) / P; };
  ASSERT_TRUE(dispatch_until([&] { return g_ps.sum >= cfg.target; }, 60000));

  // Every expiration that occurred by t_ref gets counted.
  const uint64_t t_ref = clock_ns(cfg.clock);
  const uint64_t must = elapsed(t_ref, start_hi);
  aem_event_stats st{};
  const uint64_t end = mono_ns() + 60000000000ull;
  for (;;) {
    ASSERT_EQ(evctl(id, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)), 0);
    if (st.activations + 1 >= must || mono_ns() > end) break;
    aem_dispatch(1);
  }
  const uint64_t t_after = clock_ns(cfg.clock);
  EXPECT_GE(st.activations + 1, must) << "expirations lost";
  EXPECT_LE(st.activations, elapsed(t_after, start_lo) + 1) << "expirations invented";
  // Everything counted gets delivered: delivered + pending == activations.
  const uint64_t counted = st.activations;
  ASSERT_TRUE(dispatch_until([&] { return g_ps.sum >= counted; }, 60000));
  ASSERT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)), 0);
  EXPECT_EQ(g_ps.sum + st.pending, st.activations);
  EXPECT_EQ(st.deliveries, g_ps.calls);
  EXPECT_EQ(st.merged, g_ps.sum - g_ps.calls);
  EXPECT_LE(st.activations, elapsed(clock_ns(cfg.clock), start_lo) + 1);
  if (cfg.per_occurrence) {
    EXPECT_EQ(g_ps.max_exp, 1u);
  }
  ASSERT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
  ::testing::Test::RecordProperty("max_expirations_per_call", std::to_string(g_ps.max_exp));
}

TEST_F(Timer, PeriodicBlockingHandlerLosesNoExpirationAbsolute) {
  AEM_REQ("AEM-3.6.3", "AEM-3.5.1");
  check_periodic({10000000, CLOCK_MONOTONIC, true, 4, 4, 40, false});
}

TEST_F(Timer, PeriodicBlockingHandlerLosesNoExpirationRelative) {
  AEM_REQ("AEM-3.6.3", "AEM-3.5.1");
  check_periodic({10000000, CLOCK_MONOTONIC, false, 3, 3, 30, false});
}

TEST_F(Timer, PeriodicRealtimeClock) {
  AEM_REQ("AEM-3.6.3", "PRF.1.4");
  check_periodic({5000000, CLOCK_REALTIME, true, 5, 3, 30, false});
}

TEST_F(Timer, PeriodicPerOccurrence) {
  AEM_REQ("AEM-3.6.3", "AEM-3.5.1");
  check_periodic({5000000, CLOCK_MONOTONIC, true, 4, 3, 30, true});
}

TEST_F(Timer, SubMillisecondPeriod) {
  AEM_REQ("PRF.1.4", "AEM-3.6.3");
  check_periodic({200000, CLOCK_MONOTONIC, true, 50, 10, 300, false});
}

TEST_F(Timer, DisabledTimerCountsThenDeliversMerged) {
  AEM_REQ("AEM-3.6.3", "AEM-3.1.7", "AEM-3.5.1");
  g_fired.clear();
  g_clock = CLOCK_MONOTONIC;
  timespec v = ts_of(2000000), p = ts_of(2000000);
  int id = evtimer(&v, &p, AEM_DISABLED, rec_timer);
  ASSERT_GT(id, 0);
  aem_event_stats st{};
  const uint64_t end = mono_ns() + kWaitMs * 1000000ull;
  do {
    ASSERT_EQ(evctl(id, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)), 0);
    if (st.activations >= 5) break;
    ASSERT_EQ(aem_dispatch(2), 0);
  } while (mono_ns() < end);
  ASSERT_GE(st.activations, 5u);
  EXPECT_TRUE(g_fired.empty());
  ASSERT_EQ(evctl(id, AEM_CTL_ENABLE, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return !g_fired.empty(); }));
  EXPECT_GE(g_fired[0].first, 5u);
}

}  // namespace
