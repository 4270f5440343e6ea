// Software events: evsoft(), evsoft_raise(); merging, per-occurrence
// delivery, one-shot registrations, direct invocation with data and
// guaranteed delivery under concurrent raises (AEM-3.1.2, 3.2.3, 3.3.1,
// 3.5.1, 3.6.1).
#include <set>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Soft : public AemTest {};

struct Call {
  int jid;
  uint64_t value;
  uint64_t occ;
};
std::vector<Call> g_calls;
void rec(int jid, uint64_t v, uint64_t occ) { g_calls.push_back({jid, v, occ}); }

TEST_F(Soft, RaiseErrors) {
  AEM_REQ("AEM-3.1.4", "AEM-3.1.7");
  timespec v{10, 0};
  int t = evtimer(&v, nullptr, 0, noop_timer);
  ASSERT_GT(t, 0);
  EXPECT_AEM_ERR(evsoft_raise(t, 1), EINVAL);  // not a software event
  EXPECT_AEM_ERR(evsoft_raise(0, 1), EINVAL);
  EXPECT_AEM_ERR(evsoft_raise(-7, 1), EINVAL);
  EXPECT_AEM_ERR(evsoft_raise(t + 100, 1), ENOENT);
}

TEST_F(Soft, HandlerGetsValueAndOccurrencesAsParameters) {
  AEM_REQ("AEM-3.1.2", "AEM-3.2.3");
  g_calls.clear();
  int id = evsoft(0, rec);
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 0xdeadbeefcafeull), 0);
  ASSERT_EQ(aem_dispatch(0), 1);
  ASSERT_EQ(g_calls.size(), 1u);
  EXPECT_EQ(g_calls[0].jid, id);
  EXPECT_EQ(g_calls[0].value, 0xdeadbeefcafeull);
  EXPECT_EQ(g_calls[0].occ, 1u);
}

TEST_F(Soft, MergedCountsVersusPerOccurrence) {
  AEM_REQ("AEM-3.5.1", "AEM-3.6.1", "AEM-3.2.3");
  g_calls.clear();
  int merged = evsoft(0, rec);
  int per = evsoft(AEM_PER_OCCURRENCE, rec);
  ASSERT_GT(merged, 0);
  ASSERT_GT(per, 0);
  for (uint64_t i = 1; i <= 6; ++i) {
    ASSERT_EQ(evsoft_raise(merged, i), 0);
    ASSERT_EQ(evsoft_raise(per, 100 + i), 0);
  }
  ASSERT_TRUE(dispatch_until([] { return g_calls.size() >= 7; }));
  EXPECT_EQ(aem_dispatch(0), 0);
  std::vector<Call> m, p;
  for (auto& c : g_calls) (c.jid == merged ? m : p).push_back(c);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].occ, 6u);
  EXPECT_EQ(m[0].value, 6u);
  ASSERT_EQ(p.size(), 6u);
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_EQ(p[i].occ, 1u);
    EXPECT_EQ(p[i].value, 101 + i);
  }
}

TEST_F(Soft, OneshotIdInvalidAfterItsDelivery) {
  AEM_REQ("AEM-3.1.7", "AEM-3.1.4");
  static int in_handler_lookup;
  static std::vector<uint64_t> occs;
  occs.clear();
  in_handler_lookup = 1;
  int id = evsoft(AEM_ONESHOT, [](int jid, uint64_t, uint64_t occ) {
    occs.push_back(occ);
    aem_event_info info{};
    in_handler_lookup = evctl(jid, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info));
  });
  ASSERT_GT(id, 0);
  aem_event_info info{};
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  ASSERT_EQ(evsoft_raise(id, 1), 0);
  ASSERT_EQ(evsoft_raise(id, 2), 0);
  ASSERT_EQ(aem_dispatch(0), 1);
  ASSERT_EQ(occs.size(), 1u);
  EXPECT_EQ(occs[0], 2u);  // both raises merged into the one delivery
  EXPECT_EQ(in_handler_lookup, -ENOENT);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), ENOENT);
  EXPECT_AEM_ERR(evsoft_raise(id, 3), ENOENT);
  EXPECT_EQ(aem_dispatch(0), 0);
}

TEST_F(Soft, RaiseFromAHandler) {
  AEM_REQ("AEM-3.2.3", "AEM-3.6.1");
  static int self_calls;
  self_calls = 0;
  static int id;
  id = evsoft(0, [](int jid, uint64_t v, uint64_t) {
    ++self_calls;
    if (v < 9) evsoft_raise(jid, v + 1);
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return self_calls >= 10; }));
  EXPECT_EQ(self_calls, 10);
  EXPECT_EQ(aem_dispatch(0), 0);
}

TEST_F(Soft, ExactCountsUnderConcurrentRaises) {
  AEM_REQ("AEM-3.5.1", "AEM-3.3.1");
  constexpr int kThreads = 4;
  constexpr int kEach = 5000;
  static std::atomic<uint64_t> merged_total, per_calls;
  static std::vector<uint64_t> per_values;
  merged_total = 0;
  per_calls = 0;
  per_values.clear();
  int merged = evsoft(0, [](int, uint64_t, uint64_t occ) { merged_total += occ; });
  int per = evsoft(AEM_PER_OCCURRENCE, [](int, uint64_t v, uint64_t occ) {
    per_calls += occ;
    per_values.push_back(v);
  });
  ASSERT_GT(merged, 0);
  ASSERT_GT(per, 0);
  std::atomic<int> failures{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        if (evsoft_raise(merged, 0) != 0) ++failures;
        if (evsoft_raise(per, (static_cast<uint64_t>(t) << 32) | static_cast<uint64_t>(i)) != 0)
          ++failures;
      }
    });
  // Dispatch while they raise.
  const uint64_t total = kThreads * kEach;
  EXPECT_TRUE(dispatch_until([&] { return merged_total >= total && per_calls >= total; }, 60000));
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(merged_total.load(), total);
  EXPECT_EQ(per_calls.load(), total);
  // Each value exactly once, and per raising thread in raise order.
  std::set<uint64_t> uniq(per_values.begin(), per_values.end());
  EXPECT_EQ(uniq.size(), per_values.size());
  std::vector<int64_t> last(kThreads, -1);
  for (uint64_t v : per_values) {
    size_t t = static_cast<size_t>(v >> 32);
    auto i = static_cast<int64_t>(v & 0xffffffffu);
    ASSERT_LT(t, last.size());
    EXPECT_GT(i, last[t]);
    last[t] = i;
  }
  aem_event_stats st{};
  ASSERT_EQ(evctl(merged, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)), 0);
  EXPECT_EQ(st.activations, total);
  EXPECT_EQ(st.deliveries + st.merged, total);
  EXPECT_EQ(st.pending, 0u);
  ASSERT_EQ(evctl(per, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)), 0);
  EXPECT_EQ(st.activations, total);
  EXPECT_EQ(st.deliveries, total);
  EXPECT_EQ(st.merged, 0u);
}

TEST_F(Soft, RaiseNeverBlocksOnARunningHandler) {
  AEM_REQ("AEM-3.3.1", "AEM-3.5.1");
  // The THREAD executor's handler blocks; raises, registrations and evctl
  // from this thread all complete meanwhile.
  static Pipe started, release;
  static Counter occ_total;
  started = Pipe();
  release = Pipe();
  occ_total.reset();
  int id = evsoft(AEM_EXEC_THREAD, [](int, uint64_t v, uint64_t occ) {
    if (v == 0) {
      char c = 's';
      write_all(started.wr.get(), &c, 1);
      read_exact(release.rd.get(), &c, 1);
    }
    occ_total.add(occ);
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 0), 0);
  char c;
  ASSERT_TRUE(read_exact(started.rd.get(), &c, 1));
  for (int i = 0; i < 10000; ++i) ASSERT_EQ(evsoft_raise(id, 1), 0);
  int other = evsoft(0, rec);
  ASSERT_GT(other, 0);
  aem_event_stats st{};
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)), 0);
  EXPECT_EQ(st.activations, 10001u);
  EXPECT_EQ(st.pending, 10000u);
  ASSERT_TRUE(write_all(release.wr.get(), "r", 1));
  ASSERT_TRUE(occ_total.wait_for(10001));
  EXPECT_EQ(occ_total.get(), 10001u);
}

}  // namespace
