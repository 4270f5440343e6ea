// Conformance: AEM-3.3.1 Scalable event system. The cost of serving an
// event must not grow with the number of registered events; registration
// and dispatch never sleep; the activation path allocates nothing.
#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "conformance_util.hpp"
#include "kernel_trace.hpp"

namespace {
using namespace conf;

class AEM_3_3_1 : public ConformanceTest {};

// The criterion raises the policy limits for the test. kmod: aem.ko's
// default of 65536 registrations per context is the vendor's conservative
// default (each registration is unswappable kernel memory); an
// administrator who provisions a node for 10^6 events raises max_regs
// (and max_regs_per_user, 1048576 by default), as the suite does here as
// root, restoring both afterwards. The user backend's limit (2^21) is
// already above 10^6.
#define CONF_MILLION_REGISTRATIONS(policy)                                        \
  KmodPolicy policy;                                                              \
  if (on_kmod_backend()) {                                                        \
    CONF_KMOD_SET(policy, "max_regs", "1048576");                                 \
    CONF_KMOD_SET(policy, "max_regs_per_user", "1048576");                        \
  }

// Kernel memory per registration on the kmod backend (registration, its
// share of the id xarray, memcg accounting): at most this many bytes.
constexpr long kMaxKernelBytesPerRegistration = 256;

uint64_t g_handled;
void count_soft(int, uint64_t, uint64_t occ) { g_handled += occ; }

// Amortised ns per delivered event (activation to handler return) for
// rounds of `active` raised then dispatched: the best of `batches` (the
// intrinsic cost; preemption and other noise only ever add to a batch).
double cost_per_event(const std::vector<int>& active, int batches, int rounds) {
  std::vector<double> per;
  for (int b = 0; b < batches; ++b) {
    const uint64_t before = g_handled;
    const uint64_t t0 = mono_ns();
    for (int r = 0; r < rounds; ++r) {
      for (int id : active) evsoft_raise(id, 0);
      while (aem_dispatch(0) > 0) {
      }
    }
    const uint64_t dt = mono_ns() - t0;
    const uint64_t n = g_handled - before;
    if (n) per.push_back(static_cast<double>(dt) / static_cast<double>(n));
  }
  std::sort(per.begin(), per.end());
  return per.empty() ? 0 : per.front();
}

TEST_F(AEM_3_3_1, c1_CostPerEventWithAMillionRegistrationsAtMost1_3xTen) {
  AEM_REQ("AEM-3.3.1");
  CONF_MILLION_REGISTRATIONS(policy);
  g_handled = 0;
  std::vector<int> active;
  for (int i = 0; i < 10; ++i) {
    int id = evsoft(0, count_soft);
    ASSERT_GT(id, 0);
    active.push_back(id);
  }
  constexpr int kBatches = 41, kRounds = 200;
  (void)cost_per_event(active, 3, kRounds);  // warm-up
  const double ten = cost_per_event(active, kBatches, kRounds);
  const uint64_t t0 = mono_ns();
  std::vector<int> idle;
  idle.reserve(1000000);
  for (int i = 10; i < 1000000; ++i) {
    int id = evsoft(0, count_soft);
    ASSERT_GT(id, 0) << "registration " << i;
    idle.push_back(id);
  }
  const uint64_t reg_ns = mono_ns() - t0;
  (void)cost_per_event(active, 3, kRounds);
  const double million = cost_per_event(active, kBatches, kRounds);
  measure("cost_per_event_10_registrations", ten);
  measure("cost_per_event_1e6_registrations", million);
  measure("registration_ns_per_call", static_cast<double>(reg_ns) / 999990.0);
  measure("events_per_measurement", static_cast<uint64_t>(kRounds) * active.size());
  EXPECT_LE(million, 1.3 * ten) << "cost per event grew from " << ten << " ns (10 registrations) to "
                                << million << " ns (10^6)";
}

TEST_F(AEM_3_3_1, c2_AMillionRegistrationsSucceedAndClean) {
  AEM_REQ("AEM-3.3.1");
  CONF_MILLION_REGISTRATIONS(policy);
  Pipe p;
  timespec v{3600, 0};
  std::vector<int> ids;
  ids.reserve(1000000);
  const int first = evsoft(0, noop_soft);  // the context exists before measuring
  ASSERT_GT(first, 0);
  ids.push_back(first);
  const long slab0 = slab_bytes();
  const uint64_t t0 = mono_ns();
  for (int i = 1; i < 1000000; ++i) {
    int id;
    switch (i % 10000) {  // timers and fds hold kernel fds in the user backend
      case 0: id = evtimer(&v, nullptr, 0, noop_timer); break;
      case 1: id = evfd(p.rd.get(), POLLIN, 0, noop_fd); break;
      default: id = evsoft(0, noop_soft); break;
    }
    ASSERT_GT(id, 0) << "registration " << i;
    ids.push_back(id);
  }
  const uint64_t t1 = mono_ns();
  const long slab1 = slab_bytes();
  for (int id : ids) ASSERT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0) << "clean " << id;
  const uint64_t t2 = mono_ns();
  aem_event_info info{};
  EXPECT_AEM_ERR(evctl(ids[12345], AEM_CTL_LOOKUP, ptr(&info)), ENOENT);
  measure("registrations", static_cast<uint64_t>(ids.size()));
  measure("register_ns", t1 - t0);
  measure("clean_ns", t2 - t1);
  if (on_kmod_backend() && slab0 >= 0 && slab1 >= 0) {
    // Slab memory (/proc/meminfo) before and after 999999 registrations.
    const double per = static_cast<double>(slab1 - slab0) / 999999.0;
    measure("kernel_slab_bytes_before", static_cast<int64_t>(slab0));
    measure("kernel_slab_bytes_after", static_cast<int64_t>(slab1));
    measure("kernel_bytes_per_registration", per);
    EXPECT_LE(per, static_cast<double>(kMaxKernelBytesPerRegistration))
        << "kernel memory per registration";
    // Cleaned, the memory goes back: slab within 1% of what the million took
    // above the baseline (a bounded poll: the kernel frees in a work item).
    const long grown = slab1 - slab0, allowed = grown / 100;
    long slab2 = slab_bytes();
    for (int i = 0; i < 1000 && slab2 - slab0 > allowed; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      slab2 = slab_bytes();
    }
    measure("kernel_slab_bytes_after_clean", static_cast<int64_t>(slab2));
    EXPECT_LE(slab2 - slab0, allowed) << "slab memory not given back after cleaning: "
                                      << slab2 - slab0 << " of " << grown << " bytes";
  }
}

TEST_F(AEM_3_3_1, c3_DispatchAndRegistrationNeverSleep) {
  AEM_REQ("AEM-3.3.1");
  // A quiet context: each call on fresh sources, cleaned right after, so
  // that nothing else keeps the backend busy.
  ASSERT_GT(evsoft(0, noop_soft), 0);  // the context exists: its threads started
  ASSERT_EQ(aem_dispatch(0), 0);
  timespec v{3600, 0};
  using Reg = int (*)(int sock, int listener, int pipe_rd, const timespec* v);
  struct Call {
    const char* name;
    Reg fn;
  };
  const Call calls[] = {
      {"aem_dispatch(0)", [](int, int, int, const timespec*) { return aem_dispatch(0); }},
      {"evsoft", [](int, int, int, const timespec*) { return evsoft(0, noop_soft); }},
      {"evtimer", [](int, int, int, const timespec* t) { return evtimer(t, nullptr, 0, noop_timer); }},
      {"evfd", [](int, int, int rd, const timespec*) { return evfd(rd, POLLIN, 0, noop_fd); }},
      {"sockasync_accept",
       [](int, int l, int, const timespec*) { return sockasync_accept(l, nullptr, nullptr, 0, noop_accept); }},
      {"sockasync_read", [](int s, int, int, const timespec*) { return sockasync_read(s, 0, noop_read); }},
      {"sockasync_close", [](int s, int, int, const timespec*) { return sockasync_close(s, 0, noop_close); }},
      {"sockasync_sk", [](int s, int, int, const timespec*) { return sockasync_sk(s, 0, noop_sk); }},
      {"sockasync_sock", [](int s, int, int, const timespec*) { return sockasync_sock(s, AEM_EDGE, noop_sock); }},
  };
  std::map<std::string, uint64_t> slept_by;
  uint64_t total = 0, slept = 0;
  for (int round = 0; round < 20; ++round) {
    for (const auto& c : calls) {
      Pipe p;
      TcpPair tp;
      Fd l = tcp_listener();
      ASSERT_TRUE(tp.ok() && l);
      const long before = voluntary_switches();
      const int r = c.fn(tp.server.get(), l.get(), p.rd.get(), &v);
      const long after = voluntary_switches();
      EXPECT_GE(r, 0) << c.name;
      ++total;
      if (after != before) {
        ++slept;
        ++slept_by[c.name];
      }
      if (r > 0) evctl(r, AEM_CTL_CLEAN, 0);
    }
  }
  for (auto& [name, n] : slept_by) ADD_FAILURE() << name << " slept in " << n << " of 20 calls";
  measure("calls", total);
  measure("calls_that_slept", slept);
}

TEST_F(AEM_3_3_1, c4_ActivationPathAllocatesNothing) {
  AEM_REQ("AEM-3.3.1");
  if (!on_user_backend() && !on_kmod_backend())
    GTEST_SKIP() << "no allocation probe for the " << backend() << " backend";
  // Soft raises (calling thread) and fd readiness (the backend's poller, or
  // the kernel's wait-queue callback on kmod): counted once warmed up, before
  // anything is dispatched; on kmod the kernel's allocations with an AEM
  // module on the stack are traced as well (kernel_trace.hpp).
  constexpr int kRegs = 200;
  std::vector<int> soft;
  std::vector<Pipe> pipes(kRegs);
  std::vector<int> fds;
  for (int i = 0; i < kRegs; ++i) {
    int s = evsoft(AEM_PRIO(i % 64), noop_soft);
    int f = evfd(pipes[static_cast<size_t>(i)].rd.get(), POLLIN, AEM_EDGE | AEM_PRIO(i % 64), noop_fd);
    ASSERT_GT(s, 0);
    ASSERT_GT(f, 0);
    soft.push_back(s);
    fds.push_back(f);
  }
  auto round = [&](uint64_t* soft_allocs, uint64_t* all_allocs) {
    CountAllAllocations all;
    {
      CountAllocations mine;
      for (int s : soft) evsoft_raise(s, 1);
      for (int s : soft) evsoft_raise(s, 2);  // merges into the pending one
      if (soft_allocs) *soft_allocs = mine.count();
    }
    for (auto& p : pipes) write_all(p.wr.get(), "x", 1);
    // Wait until the poller activated every fd registration (stats only).
    const uint64_t end = mono_ns() + kWaitMs * 1000000ull;
    for (int f : fds) {
      aem_event_stats st{};
      while (evctl(f, AEM_CTL_STATS, ptr(&st)) == 0 && st.pending == 0 && mono_ns() < end)
        std::this_thread::yield();
    }
    if (all_allocs) *all_allocs = all.count();
  };
  auto drain = [&] {
    while (aem_dispatch(0) > 0) {
    }
    char buf[16];
    for (auto& p : pipes) (void)!read(p.rd.get(), buf, sizeof buf);
  };
  round(nullptr, nullptr);  // warm-up: queues reach their size
  drain();
  uint64_t soft_allocs = 1, all_allocs = 1;
  if (on_kmod_backend()) {
    int control = 0;
    expect_no_kernel_allocation([&] { round(&soft_allocs, &all_allocs); },
                                [&] { control = evsoft(0, noop_soft); });
    if (IsSkipped()) return;
    if (control > 0) {
      EXPECT_EQ(evctl(control, AEM_CTL_CLEAN, 0), 0);
    }
  } else {
    round(&soft_allocs, &all_allocs);
  }
  drain();
  measure("allocations_soft_raise", soft_allocs);
  measure("allocations_activation_all_threads", all_allocs);
  measure("activations", static_cast<uint64_t>(kRegs) * 3);
  EXPECT_EQ(soft_allocs, 0u) << "evsoft_raise allocated";
  EXPECT_EQ(all_allocs, 0u) << "activating fd registrations allocated";
}

}  // namespace
