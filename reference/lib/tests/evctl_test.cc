// evctl(): the control API (AEM-3.1.7), priority changes after registration
// (AEM-3.1.5) and the error contract of every operation.
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Evctl : public AemTest {};

unsigned long ptr(void* p) { return reinterpret_cast<unsigned long>(p); }

struct SoftCall {
  int jid;
  uint64_t value;
  uint64_t occ;
};
std::vector<SoftCall> g_soft;
void rec_soft(int jid, uint64_t v, uint64_t occ) { g_soft.push_back({jid, v, occ}); }

TEST_F(Evctl, ErrorsOfEveryOperation) {
  AEM_REQ("AEM-3.1.7", "AEM-3.1.4");
  int id = evsoft(0, rec_soft);
  ASSERT_GT(id, 0);
  aem_event_info info{};
  aem_event_stats st{};
  // jid 0 and negative: -EINVAL for every op.
  for (unsigned op = AEM_CTL_ENABLE; op <= AEM_CTL_MAX; ++op) {
    EXPECT_AEM_ERR(evctl(0, op, 0), EINVAL);
    EXPECT_AEM_ERR(evctl(-3, op, 0), EINVAL);
  }
  // Unknown id.
  EXPECT_AEM_ERR(evctl(id + 1000, AEM_CTL_ENABLE, 0), ENOENT);
  EXPECT_AEM_ERR(evctl(id + 1000, AEM_CTL_STATS, ptr(&st)), ENOENT);
  // Unknown op.
  EXPECT_AEM_ERR(evctl(id, 0, 0), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_MAX + 1, 0), EINVAL);
  EXPECT_AEM_ERR(evctl(id, 0xffffffffu, 0), EINVAL);
  // Non-zero arg where 0 is required.
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_ENABLE, 1), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_DISABLE, 7), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_CLEAN, 1), EINVAL);
  // NULL pointers.
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_LOOKUP, 0), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_STATS, 0), EINVAL);
  // Priority out of range.
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_SET_PRIO, AEM_PRIO_MAX + 1), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_SET_PRIO, static_cast<unsigned long>(-1)), EINVAL);
  // Filter on families without one.
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_FILTER, POLLIN), EINVAL);
  timespec v{10, 0};
  int t = evtimer(&v, nullptr, 0, noop_timer);
  ASSERT_GT(t, 0);
  EXPECT_AEM_ERR(evctl(t, AEM_CTL_FILTER, POLLIN), EINVAL);
  // Filter with a bad mask on an fd event.
  Pipe p;
  int f = evfd(p.rd.get(), POLLIN, 0, noop_fd);
  ASSERT_GT(f, 0);
  EXPECT_AEM_ERR(evctl(f, AEM_CTL_FILTER, 0), EINVAL);
  EXPECT_AEM_ERR(evctl(f, AEM_CTL_FILTER, 0x40000000ul), EINVAL);
  // The registration is untouched by all of that.
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.enabled, 1);
  EXPECT_EQ(info.prio, AEM_PRIO_DEFAULT);
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  EXPECT_EQ(st.activations, 0u);
}

TEST_F(Evctl, LookupFields) {
  AEM_REQ("AEM-3.1.7");
  const unsigned long fl = AEM_PRIO(7) | AEM_PER_OCCURRENCE;
  int s = evsoft(fl, rec_soft);
  ASSERT_GT(s, 0);
  aem_event_info info{};
  ASSERT_EQ(evctl(s, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.jid, s);
  EXPECT_EQ(info.type, AEM_EV_SOFT);
  EXPECT_EQ(info.fd, -1);
  EXPECT_EQ(info.prio, 7);
  EXPECT_EQ(info.enabled, 1);
  EXPECT_EQ(info.flags, fl);
  EXPECT_EQ(info.executor, static_cast<int>(AEM_EXEC_SAME));
  EXPECT_EQ(info.pending, 0u);
  ASSERT_EQ(evsoft_raise(s, 1), 0);
  ASSERT_EQ(evsoft_raise(s, 2), 0);
  ASSERT_EQ(evctl(s, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.pending, 2u);

  Pipe p;
  int f = evfd(p.rd.get(), POLLIN | POLLPRI, AEM_DISABLED | AEM_EXEC_THREAD, noop_fd);
  ASSERT_GT(f, 0);
  ASSERT_EQ(evctl(f, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.jid, f);
  EXPECT_EQ(info.type, AEM_EV_FD);
  EXPECT_EQ(info.fd, p.rd.get());
  EXPECT_EQ(info.prio, AEM_PRIO_DEFAULT);
  EXPECT_EQ(info.enabled, 0);
  EXPECT_EQ(info.events, static_cast<unsigned>(POLLIN | POLLPRI));
  EXPECT_EQ(info.executor, static_cast<int>(AEM_EXEC_THREAD));
  ASSERT_EQ(evctl(f, AEM_CTL_FILTER, POLLIN), 0);
  ASSERT_EQ(evctl(f, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.events, static_cast<unsigned>(POLLIN));

  timespec v{10, 0};
  int t = evtimer(&v, nullptr, AEM_PRIO(40), noop_timer);
  ASSERT_GT(t, 0);
  ASSERT_EQ(evctl(t, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.type, AEM_EV_TIMER);
  EXPECT_EQ(info.fd, -1);
  EXPECT_EQ(info.prio, 40);
  ASSERT_EQ(evctl(t, AEM_CTL_SET_PRIO, 3), 0);
  ASSERT_EQ(evctl(t, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.prio, 3);
}

TEST_F(Evctl, StatsCountActivationsDeliveriesMerged) {
  AEM_REQ("AEM-3.1.7", "AEM-3.5.1");
  g_soft.clear();
  int id = evsoft(0, rec_soft);
  ASSERT_GT(id, 0);
  for (int i = 1; i <= 5; ++i) ASSERT_EQ(evsoft_raise(id, static_cast<uint64_t>(i)), 0);
  aem_event_stats st{};
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  EXPECT_EQ(st.activations, 5u);
  EXPECT_EQ(st.deliveries, 0u);
  EXPECT_EQ(st.pending, 5u);
  ASSERT_EQ(aem_dispatch(0), 1);
  ASSERT_EQ(g_soft.size(), 1u);
  EXPECT_EQ(g_soft[0].occ, 5u);
  EXPECT_EQ(g_soft[0].value, 5u);  // the latest raise
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  EXPECT_EQ(st.activations, 5u);
  EXPECT_EQ(st.deliveries, 1u);
  EXPECT_EQ(st.merged, 4u);
  EXPECT_EQ(st.errors, 0u);
  EXPECT_EQ(st.pending, 0u);

  // Per occurrence: nothing merged.
  g_soft.clear();
  int po = evsoft(AEM_PER_OCCURRENCE, rec_soft);
  ASSERT_GT(po, 0);
  for (int i = 1; i <= 4; ++i) ASSERT_EQ(evsoft_raise(po, static_cast<uint64_t>(10 + i)), 0);
  ASSERT_TRUE(dispatch_until([] { return g_soft.size() >= 4; }));
  ASSERT_EQ(g_soft.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(g_soft[i].occ, 1u);
    EXPECT_EQ(g_soft[i].value, 11 + i);  // each raise with its own value, in order
  }
  ASSERT_EQ(evctl(po, AEM_CTL_STATS, ptr(&st)), 0);
  EXPECT_EQ(st.activations, 4u);
  EXPECT_EQ(st.deliveries, 4u);
  EXPECT_EQ(st.merged, 0u);
}

TEST_F(Evctl, DisabledHoldsOccurrencesThenEnableDelivers) {
  AEM_REQ("AEM-3.1.7", "AEM-3.6.1", "AEM-3.5.1");
  g_soft.clear();
  int id = evsoft(AEM_DISABLED, rec_soft);
  ASSERT_GT(id, 0);
  aem_event_info info{};
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.enabled, 0);
  ASSERT_EQ(evsoft_raise(id, 1), 0);
  ASSERT_EQ(evsoft_raise(id, 2), 0);
  EXPECT_EQ(aem_dispatch(0), 0);
  EXPECT_TRUE(g_soft.empty());
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.pending, 2u);
  ASSERT_EQ(evctl(id, AEM_CTL_ENABLE, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 1);
  ASSERT_EQ(g_soft.size(), 1u);
  EXPECT_EQ(g_soft[0].occ, 2u);

  // Disable while pending: held, then delivered once enabled again.
  g_soft.clear();
  ASSERT_EQ(evsoft_raise(id, 3), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);
  ASSERT_EQ(evsoft_raise(id, 4), 0);
  EXPECT_EQ(aem_dispatch(0), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_ENABLE, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 1);
  ASSERT_EQ(g_soft.size(), 1u);
  EXPECT_EQ(g_soft[0].occ, 2u);
  EXPECT_EQ(g_soft[0].value, 4u);
  // Enable twice, disable twice: idempotent.
  EXPECT_EQ(evctl(id, AEM_CTL_ENABLE, 0), 0);
  EXPECT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);
  EXPECT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);
}

TEST_F(Evctl, DisabledFdEventHeldThenDelivered) {
  AEM_REQ("AEM-3.1.7");
  static int calls;
  calls = 0;
  Pipe p;
  int id = evfd(p.rd.get(), POLLIN, AEM_DISABLED, [](int, int fd, unsigned rev) {
    if (rev & POLLIN) {
      char buf[16];
      if (read(fd, buf, sizeof buf) > 0) ++calls;
    }
  });
  ASSERT_GT(id, 0);
  ASSERT_TRUE(write_all(p.wr.get(), "ab", 2));
  // Wait until the readiness was observed (pending > 0), nothing delivered.
  aem_event_info info{};
  const uint64_t end = mono_ns() + kWaitMs * 1000000ull;
  do {
    ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
    if (info.pending) break;
    EXPECT_EQ(aem_dispatch(5), 0);
  } while (mono_ns() < end);
  EXPECT_GT(info.pending, 0u);
  EXPECT_EQ(calls, 0);
  ASSERT_EQ(evctl(id, AEM_CTL_ENABLE, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return calls >= 1; }));
}

TEST_F(Evctl, SetPrioReordersPending) {
  AEM_REQ("AEM-3.1.5", "AEM-3.2.1");
  g_soft.clear();
  int a = evsoft(AEM_PRIO(10), rec_soft);
  int b = evsoft(AEM_PRIO(20), rec_soft);
  int c = evsoft(AEM_PRIO(30), rec_soft);
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  ASSERT_GT(c, 0);
  ASSERT_EQ(evsoft_raise(a, 0), 0);
  ASSERT_EQ(evsoft_raise(b, 0), 0);
  ASSERT_EQ(evsoft_raise(c, 0), 0);
  // a goes above everything; c goes below everything.
  ASSERT_EQ(evctl(a, AEM_CTL_SET_PRIO, 50), 0);
  ASSERT_EQ(evctl(c, AEM_CTL_SET_PRIO, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 3);
  ASSERT_EQ(g_soft.size(), 3u);
  EXPECT_EQ(g_soft[0].jid, a);
  EXPECT_EQ(g_soft[1].jid, b);
  EXPECT_EQ(g_soft[2].jid, c);
  // The new priority also holds for later activations.
  g_soft.clear();
  ASSERT_EQ(evsoft_raise(c, 0), 0);
  ASSERT_EQ(evsoft_raise(b, 0), 0);
  ASSERT_EQ(evsoft_raise(a, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 3);
  ASSERT_EQ(g_soft.size(), 3u);
  EXPECT_EQ(g_soft[0].jid, a);
  EXPECT_EQ(g_soft[1].jid, b);
  EXPECT_EQ(g_soft[2].jid, c);
}

TEST_F(Evctl, CleanDropsPendingAndInvalidatesId) {
  AEM_REQ("AEM-3.1.7", "AEM-3.1.4");
  g_soft.clear();
  int id = evsoft(0, rec_soft);
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 1), 0);
  ASSERT_EQ(evsoft_raise(id, 1), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
  EXPECT_EQ(aem_dispatch(0), 0);
  EXPECT_TRUE(g_soft.empty());
  aem_event_info info{};
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), ENOENT);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_ENABLE, 0), ENOENT);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_CLEAN, 0), ENOENT);
  EXPECT_AEM_ERR(evsoft_raise(id, 1), ENOENT);
}

TEST_F(Evctl, CleanFromInsideItsOwnHandler) {
  AEM_REQ("AEM-3.1.7");
  static int calls, clean_rc, lookup_rc, raise_rc;
  calls = 0;
  clean_rc = lookup_rc = raise_rc = 1;
  int id = evsoft(AEM_PER_OCCURRENCE, [](int jid, uint64_t, uint64_t) {
    ++calls;
    clean_rc = evctl(jid, AEM_CTL_CLEAN, 0);
    aem_event_info info{};
    lookup_rc = evctl(jid, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info));
    raise_rc = evsoft_raise(jid, 0);
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 0), 0);
  ASSERT_EQ(evsoft_raise(id, 0), 0);
  ASSERT_EQ(evsoft_raise(id, 0), 0);
  EXPECT_EQ(aem_dispatch(0), 1);  // the other two were dropped with the registration
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(clean_rc, 0);
  EXPECT_EQ(lookup_rc, -ENOENT);
  EXPECT_EQ(raise_rc, -ENOENT);
  EXPECT_EQ(aem_dispatch(0), 0);
}

TEST_F(Evctl, CleanWaitsForHandlerRunningInAnotherThread) {
  AEM_REQ("AEM-3.1.7", "AEM-3.1.6");
  static Pipe started, release;
  static std::atomic<bool> finished;
  static std::atomic<int> calls;
  started = Pipe();
  release = Pipe();
  finished = false;
  calls = 0;
  int id = evsoft(AEM_EXEC_THREAD, [](int, uint64_t, uint64_t) {
    ++calls;
    char c = 's';
    write_all(started.wr.get(), &c, 1);
    read_exact(release.rd.get(), &c, 1);
    finished = true;
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 0), 0);
  char c;
  ASSERT_TRUE(read_exact(started.rd.get(), &c, 1));
  Pipe cleaning;
  std::atomic<int> clean_rc{1};
  bool finished_when_clean_returned = false;
  std::thread cleaner([&] {
    char x = 'c';
    write_all(cleaning.wr.get(), &x, 1);
    clean_rc = evctl(id, AEM_CTL_CLEAN, 0);
    finished_when_clean_returned = finished.load();
  });
  ASSERT_TRUE(read_exact(cleaning.rd.get(), &c, 1));
  ASSERT_TRUE(write_all(release.wr.get(), "r", 1));
  cleaner.join();
  EXPECT_EQ(clean_rc.load(), 0);
  EXPECT_TRUE(finished_when_clean_returned) << "CLEAN returned while the handler ran";
  EXPECT_EQ(calls.load(), 1) << "the handler ran again after CLEAN";
}

TEST_F(Evctl, SetTimeoutCleansAndReportsEtimedout) {
  AEM_REQ("AEM-3.1.7", "AEM-3.5.2");
  static std::vector<std::pair<int, int>> errs;
  errs.clear();
  ASSERT_EQ(aem_on_error([](int jid, int e) { errs.emplace_back(jid, e); }), 0);
  int id = evsoft(0, rec_soft);
  int keep = evsoft(0, rec_soft);
  ASSERT_GT(id, 0);
  ASSERT_GT(keep, 0);
  ASSERT_EQ(evctl(id, AEM_CTL_SET_TIMEOUT, 30), 0);
  ASSERT_EQ(evctl(keep, AEM_CTL_SET_TIMEOUT, 30), 0);
  ASSERT_EQ(evctl(keep, AEM_CTL_SET_TIMEOUT, 0), 0);  // removed again
  ASSERT_TRUE(dispatch_until([] { return !errs.empty(); }));
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_EQ(errs[0].first, id);
  EXPECT_EQ(errs[0].second, -ETIMEDOUT);
  aem_event_info info{};
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), ENOENT);
  EXPECT_EQ(evctl(keep, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_AEM_ERR(evctl(keep, AEM_CTL_SET_TIMEOUT, static_cast<unsigned long>(-1)), EINVAL);
}

TEST_F(Evctl, FilterNarrowsFdEvents) {
  AEM_REQ("AEM-3.1.7");
  static unsigned seen;
  static int calls;
  seen = 0;
  calls = 0;
  // A socket is writable at once: with POLLIN|POLLOUT the handler sees
  // POLLOUT; after filtering to POLLIN it only hears about data.
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = evfd(tp.server.get(), POLLIN | POLLOUT, AEM_EDGE, [](int, int fd, unsigned rev) {
    ++calls;
    seen |= rev;
    if (rev & POLLIN) {
      char buf[64];
      while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
      }
    }
  });
  ASSERT_GT(id, 0);
  ASSERT_TRUE(dispatch_until([] { return (seen & POLLOUT) != 0; }));
  ASSERT_EQ(evctl(id, AEM_CTL_FILTER, POLLIN), 0);
  while (aem_dispatch(0) > 0) {
  }
  seen = 0;
  ASSERT_TRUE(write_all(tp.client.get(), "data", 4));
  ASSERT_TRUE(dispatch_until([] { return (seen & POLLIN) != 0; }));
  EXPECT_EQ(seen & POLLOUT, 0u);
}

}  // namespace
