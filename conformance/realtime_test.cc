// Conformance: the soft real-time requirements AEM-3.2.1 (event priority and
// latency), AEM-3.2.2 (process priority enforcement) and AEM-3.2.3 (direct
// process invocation). Latency criteria are measured as ratios of two p99s
// taken in the same run, so the verdict does not depend on the machine.
#include <linux/capability.h>
#include <sched.h>
#include <sys/ioctl.h>

#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "conformance_util.hpp"

namespace {
using namespace conf;

// ===========================================================================
// Latency probe: this thread dispatches; a raiser thread stamps the time,
// raises a high-priority registration and waits for its handler's ack before
// the next sample. Latency = activation timestamp to handler entry.

struct Probe {
  std::atomic<uint64_t> raised_at{0};
  std::vector<uint64_t> samples;
  Counter acks;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> low_calls{0};
};
Probe* g_probe = nullptr;

void high_handler(int, uint64_t, uint64_t) {
  const uint64_t now = mono_ns();
  g_probe->samples.push_back(now - g_probe->raised_at.load());
  g_probe->acks.add();
}

void low_handler(int, uint64_t, uint64_t) {
  // A short piece of work (about a microsecond).
  for (int i = 0; i < 300; ++i) asm volatile("" ::: "memory");
  g_probe->low_calls.fetch_add(1, std::memory_order_relaxed);
}

// Measures n samples; with flood, a thread keeps lower-priority events of
// the same context pending all along. Returns the latencies (ns).
std::vector<uint64_t> measure_latency(int high, int stopper, size_t n, bool flood,
                                      const std::vector<int>& lows) {
  Probe probe;
  g_probe = &probe;
  probe.samples.reserve(n);
  std::atomic<bool> flooding{flood};
  std::thread flooder;
  if (flood)
    flooder = std::thread([&] {
      size_t i = 0;
      while (flooding.load(std::memory_order_relaxed)) {
        evsoft_raise(lows[i % lows.size()], 0);
        ++i;
        if (i % 64 == 0) std::this_thread::yield();
      }
    });
  std::thread raiser([&] {
    for (size_t i = 0; i < n; ++i) {
      probe.raised_at = mono_ns();
      if (evsoft_raise(high, i) != 0) break;
      if (!probe.acks.wait_for(i + 1)) break;
    }
    evsoft_raise(stopper, 0);
  });
  const uint64_t end = mono_ns() + 60000000000ull;
  while (!probe.stop.load() && mono_ns() < end) aem_dispatch(100);
  raiser.join();
  flooding = false;
  if (flooder.joinable()) flooder.join();
  while (aem_dispatch(0) > 0) {
  }
  g_probe = nullptr;
  return probe.samples;
}

// ===========================================================================
// AEM-3.2.1 Event priority (soft real-time)

class AEM_3_2_1 : public ConformanceTest {};

std::vector<int> g_order;
void rec(int jid, uint64_t, uint64_t) { g_order.push_back(jid); }

TEST_F(AEM_3_2_1, c1_HigherPriorityStartsFirstFifoWithinALevel) {
  AEM_REQ("AEM-3.2.1");
  g_order.clear();
  // 4 levels x 5 registrations, raised in a shuffled order.
  std::map<int, int> prio_of;
  std::vector<int> ids;
  for (int lvl : {5, 20, 40, 61})
    for (int k = 0; k < 5; ++k) {
      int id = evsoft(AEM_PRIO(lvl), rec);
      ASSERT_GT(id, 0);
      prio_of[id] = lvl;
      ids.push_back(id);
    }
  std::vector<int> raise_order;
  for (size_t i = 0; i < ids.size(); ++i) raise_order.push_back(ids[(i * 7 + 3) % ids.size()]);
  for (int id : raise_order) ASSERT_EQ(evsoft_raise(id, 0), 0);
  ASSERT_EQ(aem_dispatch(0), static_cast<int>(ids.size()));
  // Expected: by priority, then by activation order.
  std::vector<int> expected;
  for (int lvl : {61, 40, 20, 5})
    for (int id : raise_order)
      if (prio_of[id] == lvl) expected.push_back(id);
  EXPECT_EQ(g_order, expected);
}

TEST_F(AEM_3_2_1, c2_HighOvertakesAThousandPendingLows) {
  AEM_REQ("AEM-3.2.1");
  g_order.clear();
  static Pipe first_low_running, high_raised;
  first_low_running = Pipe();
  high_raised = Pipe();
  static int high;
  high = evsoft(AEM_PRIO(60), rec);
  ASSERT_GT(high, 0);
  std::vector<int> lows;
  for (int i = 0; i < 1000; ++i) {
    int id = evsoft(AEM_PRIO(10), [](int jid, uint64_t, uint64_t) {
      g_order.push_back(jid);
      if (g_order.size() == 1) {
        // The high one arrives from another thread while this runs.
        write_all(first_low_running.wr.get(), "r", 1);
        char c;
        read_exact(high_raised.rd.get(), &c, 1);
      }
    });
    ASSERT_GT(id, 0);
    lows.push_back(id);
  }
  for (int id : lows) ASSERT_EQ(evsoft_raise(id, 0), 0);
  std::thread other([] {
    char c;
    if (!read_exact(first_low_running.rd.get(), &c, 1)) return;
    evsoft_raise(high, 0);
    write_all(high_raised.wr.get(), "h", 1);
  });
  ASSERT_TRUE(dispatch_until([] { return g_order.size() >= 1001; }));
  other.join();
  ASSERT_EQ(g_order.size(), 1001u);
  EXPECT_EQ(g_order[0], lows[0]);
  EXPECT_EQ(g_order[1], high) << "the high-priority event waited behind pending low ones";
  size_t pos = std::find(g_order.begin(), g_order.end(), high) - g_order.begin();
  measure("lows_before_high", static_cast<uint64_t>(pos));
}

TEST_F(AEM_3_2_1, c3_HighPriorityLatencyUnderLoadAtMostTwiceUnloaded) {
  AEM_REQ("AEM-3.2.1");
  int high = evsoft(AEM_PRIO(AEM_PRIO_MAX), high_handler);
  int stopper = evsoft(AEM_PRIO(AEM_PRIO_MAX - 1), [](int, uint64_t, uint64_t) { g_probe->stop = true; });
  ASSERT_GT(high, 0);
  ASSERT_GT(stopper, 0);
  std::vector<int> lows;
  for (int i = 0; i < 64; ++i) {
    int id = evsoft(AEM_PRIO(5), low_handler);
    ASSERT_GT(id, 0);
    lows.push_back(id);
  }
  // Unloaded and loaded (one busy loop per CPU + a flood of low-priority
  // events) in alternating blocks, so that drift hits both alike.
  constexpr size_t kBlocks = 4, kPerBlock = 400;
  (void)measure_latency(high, stopper, 100, false, lows);  // warm-up
  std::vector<uint64_t> un, ld;
  unsigned hogs_n = 0;
  for (size_t b = 0; b < kBlocks; ++b) {
    auto u = measure_latency(high, stopper, kPerBlock, false, lows);
    un.insert(un.end(), u.begin(), u.end());
    BusyLoops hogs;
    hogs_n = hogs.count();
    auto l = measure_latency(high, stopper, kPerBlock, true, lows);
    ld.insert(ld.end(), l.begin(), l.end());
  }
  const size_t kSamples = kBlocks * kPerBlock;
  measure("busy_loops", static_cast<uint64_t>(hogs_n));
  const Percentiles unloaded = percentiles(un), loaded = percentiles(ld);
  uint64_t low_calls = 0;
  for (int id : lows) {
    aem_event_stats st{};
    if (evctl(id, AEM_CTL_STATS, ptr(&st)) == 0) low_calls += st.deliveries;
  }
  measure_latency("high_prio_latency_unloaded", unloaded);
  measure_latency("high_prio_latency_loaded", loaded);
  measure("high_prio_latency_p99_unloaded", unloaded.p99);
  measure("high_prio_latency_p99_loaded", loaded.p99);
  measure("low_prio_handlers_during_load", low_calls);
  ASSERT_EQ(unloaded.samples, kSamples);
  ASSERT_EQ(loaded.samples, kSamples);
  EXPECT_GT(low_calls, 0u) << "the flood of low-priority events did not run";
  EXPECT_LE(loaded.p99, 2 * unloaded.p99)
      << "p99 latency loaded " << loaded.p99 << " ns > 2 x unloaded " << unloaded.p99 << " ns";
}

// ===========================================================================
// AEM-3.2.2 Process priority enforcement (each case in a forked child: the
// boost changes the nice value of the thread that dispatches).

class AEM_3_2_2 : public ConformanceTest {};

constexpr int kCannot = 77;

void prio_probe(int, uint64_t, uint64_t) {}


// Registers on this thread, raises from another thread, reads this thread's
// scheduling attributes from the other thread while the event is pending.
struct BoostObservation {
  int base_nice = 0, pending_nice = 0, after_nice = 0;
  TaskSched base, pending, after;
};

int observe_boost(BoostObservation& o, unsigned long flags) {
  const pid_t me = tid();
  o.base_nice = nice_of(me);
  o.base = task_sched(me);
  int id = evsoft(flags, prio_probe);
  CHILD_CHECK(id > 0);
  std::thread outside([&] {
    evsoft_raise(id, 0);
    o.pending_nice = nice_of(me);
    o.pending = task_sched(me);
  });
  outside.join();
  CHILD_CHECK(aem_dispatch(0) == 1);
  o.after_nice = nice_of(me);
  o.after = task_sched(me);
  CHILD_CHECK(evctl(id, AEM_CTL_CLEAN, 0) == 0);
  fprintf(stderr, "boost: base %d pending %d after %d (policy %ld/%ld/%ld)\n", o.base_nice, o.pending_nice,
          o.after_nice, o.base.policy, o.pending.policy, o.after.policy);
  return 0;
}

TEST_F(AEM_3_2_2, c1_PendingHighPriorityEventRaisesTheThreadPriority) {
  AEM_REQ("AEM-3.2.2");
  KeepNice keep;
  CONF_BOOST_POLICY(policy, 10);
  ChildReport rep;
  int rc = run_in_child([&rep] {
    if (!can_lower_nice()) return kCannot;
    BoostObservation o;
    if (int r = observe_boost(o, AEM_PRIO(AEM_PRIO_MAX))) return r;
    rep.put("base_nice", static_cast<uint64_t>(o.base_nice + 100));
    rep.put("pending_nice", static_cast<uint64_t>(o.pending_nice + 100));
    CHILD_CHECK(o.pending_nice < o.base_nice);
    CHILD_CHECK(o.pending.ok && o.pending.nice == o.pending_nice);  // /proc agrees
    return 0;
  });
  rep.collect();
  if (rc == kCannot) GTEST_SKIP() << "this process may not raise a thread's priority (no CAP_SYS_NICE, RLIMIT_NICE)";
  EXPECT_EQ(rc, 0);
}

TEST_F(AEM_3_2_2, c2_PriorityRestoredAfterTheHandler) {
  AEM_REQ("AEM-3.2.2");
  KeepNice keep;
  CONF_BOOST_POLICY(policy, 10);
  int rc = run_in_child([] {
    if (!can_lower_nice()) return kCannot;
    BoostObservation o;
    if (int r = observe_boost(o, AEM_PRIO(AEM_PRIO_MAX))) return r;
    CHILD_CHECK(o.pending_nice < o.base_nice);  // there was a boost to restore
    CHILD_CHECK(o.after_nice == o.base_nice);
    CHILD_CHECK(o.after.ok && o.base.ok);
    CHILD_CHECK(o.after.policy == o.base.policy);
    CHILD_CHECK(o.after.rt_priority == o.base.rt_priority);
    CHILD_CHECK(o.after.nice == o.base.nice);
    // Below or at the default priority there is nothing to restore from.
    BoostObservation d;
    if (int r = observe_boost(d, AEM_PRIO(AEM_PRIO_DEFAULT))) return r;
    CHILD_CHECK(d.pending_nice == d.base_nice && d.after_nice == d.base_nice);
    return 0;
  });
  if (rc == kCannot) GTEST_SKIP() << "this process may not raise a thread's priority (no CAP_SYS_NICE, RLIMIT_NICE)";
  EXPECT_EQ(rc, 0);
}

bool drop_cap_sys_nice() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (syscall(SYS_capget, &hdr, data) != 0) return false;
  data[0].effective &= ~(1u << CAP_SYS_NICE);
  data[0].permitted &= ~(1u << CAP_SYS_NICE);
  data[0].inheritable &= ~(1u << CAP_SYS_NICE);
  return syscall(SYS_capset, &hdr, data) == 0;
}

TEST_F(AEM_3_2_2, c3_BoostNeverExceedsTheConfiguredCeiling) {
  AEM_REQ("AEM-3.2.2");
  KeepNice keep;
  CONF_BOOST_POLICY(policy, 3);
  ChildReport rep;
  int rc = run_in_child([&rep] {
    setenv("AEM_BOOST_CEILING", "3", 1);
    if (!can_lower_nice()) return kCannot;
    BoostObservation o;
    if (int r = observe_boost(o, AEM_PRIO(AEM_PRIO_MAX))) return r;
    rep.put("boost_steps", static_cast<uint64_t>(o.base_nice - o.pending_nice));
    CHILD_CHECK(o.pending_nice < o.base_nice);
    CHILD_CHECK(o.base_nice - o.pending_nice <= 3);
    CHILD_CHECK(o.after_nice == o.base_nice);
    return 0;
  });
  rep.collect();
  if (rc == kCannot) GTEST_SKIP() << "this process may not raise a thread's priority (no CAP_SYS_NICE, RLIMIT_NICE)";
  EXPECT_EQ(rc, 0);
}

TEST_F(AEM_3_2_2, c3_NeverRealtimeWithoutPrivilege) {
  AEM_REQ("AEM-3.2.2");
  KeepNice keep;
  CONF_BOOST_POLICY(policy, 10);
  EXPECT_CHILD_OK([] {
    // No CAP_SYS_NICE and RLIMIT_RTPRIO 0: SCHED_FIFO/RR are out of reach.
    rlimit rt{0, 0};
    CHILD_CHECK(setrlimit(RLIMIT_RTPRIO, &rt) == 0);
    CHILD_CHECK(drop_cap_sys_nice());
    BoostObservation o;
    if (int r = observe_boost(o, AEM_PRIO(AEM_PRIO_MAX))) return r;
    for (const TaskSched* s : {&o.base, &o.pending, &o.after}) {
      CHILD_CHECK(s->ok);
      CHILD_CHECK(s->policy != SCHED_FIFO && s->policy != SCHED_RR);
      CHILD_CHECK(s->rt_priority == 0);
    }
    CHILD_CHECK(sched_getscheduler(0) == SCHED_OTHER);
    return 0;
  });
}

TEST_F(AEM_3_2_2, c4_BoostedLatencyUnderCpuHogsAtMostTwiceUnloaded) {
  AEM_REQ("AEM-3.2.2");
  KeepNice keep;
  CONF_BOOST_POLICY(policy, 10);
  ChildReport rep;
  int rc = run_in_child([&rep] {
    if (!can_lower_nice()) return kCannot;
    int high = evsoft(AEM_PRIO(AEM_PRIO_MAX), high_handler);
    int stopper = evsoft(AEM_PRIO(AEM_PRIO_MAX - 1), [](int, uint64_t, uint64_t) { g_probe->stop = true; });
    CHILD_CHECK(high > 0 && stopper > 0);
    // Unloaded and with one busy loop per CPU (at the process's base
    // priority) in alternating blocks.
    constexpr size_t kBlocks = 4, kPerBlock = 400, kSamples = kBlocks * kPerBlock;
    (void)measure_latency(high, stopper, 100, false, {});
    std::vector<uint64_t> un, ld;
    for (size_t b = 0; b < kBlocks; ++b) {
      auto u = measure_latency(high, stopper, kPerBlock, false, {});
      un.insert(un.end(), u.begin(), u.end());
      BusyLoops hogs;
      auto l = measure_latency(high, stopper, kPerBlock, false, {});
      ld.insert(ld.end(), l.begin(), l.end());
    }
    const Percentiles unloaded = percentiles(un), loaded = percentiles(ld);
    rep.put("boosted_latency_p99_unloaded", unloaded.p99);
    rep.put("boosted_latency_p99_loaded", loaded.p99);
    rep.put("boosted_latency_unloaded_p50", unloaded.p50);
    rep.put("boosted_latency_loaded_p50", loaded.p50);
    rep.put("boosted_latency_unloaded_max", unloaded.max);
    rep.put("boosted_latency_loaded_max", loaded.max);
    rep.put("boosted_latency_samples", static_cast<uint64_t>(loaded.samples));
    CHILD_CHECK(unloaded.samples == kSamples && loaded.samples == kSamples);
    return 0;
  });
  auto kv = rep.collect();
  if (rc == kCannot) GTEST_SKIP() << "this process may not raise a thread's priority (no CAP_SYS_NICE, RLIMIT_NICE)";
  ASSERT_EQ(rc, 0);
  const uint64_t un = std::stoull(ChildReport::get(kv, "boosted_latency_p99_unloaded"));
  const uint64_t lo = std::stoull(ChildReport::get(kv, "boosted_latency_p99_loaded"));
  EXPECT_LE(lo, 2 * un) << "p99 latency with CPU hogs " << lo << " ns > 2 x unloaded " << un << " ns";
}

// ===========================================================================
// AEM-3.2.3 Direct process invocation

class AEM_3_2_3 : public ConformanceTest {};

TEST_F(AEM_3_2_3, c1_ReadHandlerGetsDataTheApplicationNeverRead) {
  AEM_REQ("AEM-3.2.3");
  static uint64_t delivered;
  static int64_t worst;  // max over calls of (FIONREAD + delivered so far) - sent
  static int eof;
  static uint64_t sent;
  delivered = 0;
  worst = INT64_MIN;
  eof = 0;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  constexpr size_t kTotal = 200000;
  sent = kTotal;
  ASSERT_GT(sockasync_read(tp.server.get(), 0,
                           [](int, int fd, const void*, size_t len) {
                             if (len == 0) {
                               ++eof;
                               return;
                             }
                             delivered += len;
                             int queued = -1;
                             if (ioctl(fd, FIONREAD, &queued) == 0)
                               worst = std::max<int64_t>(worst, static_cast<int64_t>(queued + delivered) -
                                                                    static_cast<int64_t>(sent));
                           }),
            0);
  std::string data = pattern_bytes(0, kTotal);
  ASSERT_TRUE(write_all(tp.client.get(), data.data(), data.size()));
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return eof > 0; }));
  EXPECT_EQ(delivered, kTotal);
  EXPECT_LE(worst, 0) << "bytes passed to the handler were still counted in the receive queue";
}

struct Chunk {
  uintptr_t ptr;
  size_t len;
  uint64_t hash;
};

TEST_F(AEM_3_2_3, c2_SameDataThroughSameThreadAndProcessExecutors) {
  AEM_REQ("AEM-3.2.3");
  static std::mutex mu;
  static std::vector<Chunk> same, thread;
  static std::string same_data, thread_data;
  static Counter thread_eof;
  static Pipe rep;
  static int same_eof;
  same.clear();
  thread.clear();
  same_data.clear();
  thread_data.clear();
  thread_eof.reset();
  rep = Pipe();
  same_eof = 0;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  ASSERT_GT(sockasync_read(tp.server.get(), AEM_EXEC_SAME,
                           [](int, int, const void* d, size_t len) {
                             if (!len) {
                               ++same_eof;
                               return;
                             }
                             same.push_back({reinterpret_cast<uintptr_t>(d), len, fnv(d, len)});
                             same_data.append(static_cast<const char*>(d), len);
                           }),
            0);
  ASSERT_GT(sockasync_read(tp.server.get(), AEM_EXEC_THREAD,
                           [](int, int, const void* d, size_t len) {
                             if (!len) {
                               thread_eof.add();
                               return;
                             }
                             std::lock_guard lk(mu);
                             thread.push_back({reinterpret_cast<uintptr_t>(d), len, fnv(d, len)});
                             thread_data.append(static_cast<const char*>(d), len);
                           }),
            0);
  ASSERT_GT(sockasync_read(tp.server.get(), AEM_EXEC_PROCESS,
                           [](int, int, const void* d, size_t len) {
                             Chunk c{reinterpret_cast<uintptr_t>(d), len, len ? fnv(d, len) : 0};
                             write_all(rep.wr.get(), &c, sizeof c);
                           }),
            0);
  const std::string msg = pattern_bytes(7, 100000);
  ASSERT_TRUE(write_all(tp.client.get(), msg.data(), msg.size()));
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return same_eof > 0; }));
  ASSERT_TRUE(thread_eof.wait_for(1));
  std::vector<Chunk> child;
  size_t child_bytes = 0;
  bool child_eof = false;
  while (!child_eof || child_bytes < msg.size()) {
    Chunk c{};
    ASSERT_TRUE(read_exact(rep.rd.get(), &c, sizeof c)) << "the process executor's reports stopped";
    if (c.len == 0)
      child_eof = true;
    else
      child.push_back(c), child_bytes += c.len;
  }
  EXPECT_TRUE(same_data == msg);
  std::lock_guard lk(mu);
  EXPECT_TRUE(thread_data == msg);
  EXPECT_EQ(child_bytes, msg.size());
  // The same chunks (length and contents), one handler call each, in every executor.
  auto key = [](const std::vector<Chunk>& v) {
    std::multiset<std::pair<size_t, uint64_t>> s;
    for (auto& c : v) s.emplace(c.len, c.hash);
    return s;
  };
  EXPECT_EQ(key(same), key(thread));
  EXPECT_EQ(key(same), key(child));
  measure("chunks", static_cast<uint64_t>(same.size()));
}

TEST_F(AEM_3_2_3, c3_AsyncHandlerInterruptsABusyLoopOnItsThread) {
  AEM_REQ("AEM-3.2.3");
  static std::atomic<pid_t> ran_on;
  static std::atomic<bool> ran;
  ran_on = 0;
  ran = false;
  int id = evsoft(AEM_EXEC_SAME, [](int, uint64_t, uint64_t) {
    ran_on = tid();
    ran = true;
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(aem_set_async(1), 0);
  Pipe start;
  std::thread activator([&] {
    char c;
    if (read_exact(start.rd.get(), &c, 1)) evsoft_raise(id, 0);
  });
  // The loop calls no AEM function; it is bounded at 5 s.
  const uint64_t t0 = mono_ns();
  const uint64_t end = t0 + 5000000000ull;
  ASSERT_TRUE(write_all(start.wr.get(), "s", 1));  // activation at the loop's start
  uint64_t now = t0;
  while (!ran.load(std::memory_order_relaxed) && (now = mono_ns()) < end) {
  }
  const uint64_t took = mono_ns() - t0;
  activator.join();
  ASSERT_EQ(aem_set_async(0), 0);
  EXPECT_TRUE(ran.load()) << "the handler did not run during the 5 s loop";
  EXPECT_EQ(ran_on.load(), tid());
  measure("interrupt_ns", took);
}

}  // namespace
