// Registration: ids, flags, handlers, priorities at registration
// (AEM-3.1.1, 3.1.3, 3.1.4, 3.1.5, 3.3.1).
#include <set>
#include <unordered_map>
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Registration : public AemTest {};

std::vector<std::pair<int, uint64_t>> g_calls;  // (jid, occurrences)
void record_soft(int jid, uint64_t, uint64_t occ) { g_calls.emplace_back(jid, occ); }
int g_other;
void other_soft(int, uint64_t, uint64_t occ) { g_other += static_cast<int>(occ); }

TEST_F(Registration, IdsArePositiveAndUnique) {
  AEM_REQ("AEM-3.1.4");
  std::set<int> ids;
  for (int i = 0; i < 100; ++i) {
    int id = evsoft(0, noop_soft);
    ASSERT_GT(id, 0);
    EXPECT_TRUE(ids.insert(id).second) << "id " << id << " issued twice";
  }
  // Ids are unique across families too.
  Pipe p;
  timespec v{10, 0};
  int t = evtimer(&v, nullptr, 0, noop_timer);
  int f = evfd(p.rd.get(), POLLIN, 0, noop_fd);
  ASSERT_GT(t, 0);
  ASSERT_GT(f, 0);
  EXPECT_TRUE(ids.insert(t).second);
  EXPECT_TRUE(ids.insert(f).second);
}

TEST_F(Registration, IdNotReusedWhileLive) {
  AEM_REQ("AEM-3.1.4");
  std::set<int> live;
  std::vector<int> order;
  for (int i = 0; i < 50; ++i) {
    int id = evsoft(0, noop_soft);
    ASSERT_GT(id, 0);
    live.insert(id);
    order.push_back(id);
  }
  // Clean every other one, register more: a new id never equals a live one.
  for (size_t i = 0; i < order.size(); i += 2) {
    ASSERT_EQ(evctl(order[i], AEM_CTL_CLEAN, 0), 0);
    live.erase(order[i]);
  }
  for (int i = 0; i < 100; ++i) {
    int id = evsoft(0, noop_soft);
    ASSERT_GT(id, 0);
    EXPECT_TRUE(live.insert(id).second) << "id " << id << " is already live";
  }
  // A cleaned id is invalid.
  aem_event_info info{};
  EXPECT_AEM_ERR(evctl(order[0], AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), ENOENT);
  EXPECT_AEM_ERR(evsoft_raise(order[0], 1), ENOENT);
}

TEST_F(Registration, InvalidIds) {
  AEM_REQ("AEM-3.1.4", "AEM-3.1.7");
  aem_event_info info{};
  EXPECT_AEM_ERR(evctl(0, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), EINVAL);
  EXPECT_AEM_ERR(evctl(-5, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), EINVAL);
  EXPECT_AEM_ERR(evctl(123456, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), ENOENT);
  EXPECT_AEM_ERR(evsoft_raise(0, 1), EINVAL);
  EXPECT_AEM_ERR(evsoft_raise(-1, 1), EINVAL);
  EXPECT_AEM_ERR(evsoft_raise(123456, 1), ENOENT);
}

TEST_F(Registration, SameEventManyTimesSameAndDifferentHandlers) {
  AEM_REQ("AEM-3.1.1");
  g_calls.clear();
  g_other = 0;
  // One fd registered three times: twice the same handler, once another one.
  Pipe p;
  static std::vector<int> fd_calls;
  fd_calls.clear();
  auto fdh = [](int jid, int fd, unsigned rev) {
    if (rev & POLLIN) fd_calls.push_back(jid);
    (void)fd;
  };
  static int other_fd_calls;
  other_fd_calls = 0;
  auto fdh2 = [](int, int, unsigned rev) {
    if (rev & POLLIN) ++other_fd_calls;
  };
  int a = evfd(p.rd.get(), POLLIN, AEM_EDGE, fdh);
  int b = evfd(p.rd.get(), POLLIN, AEM_EDGE, fdh);
  int c = evfd(p.rd.get(), POLLIN, AEM_EDGE, fdh2);
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  ASSERT_GT(c, 0);
  EXPECT_NE(a, b);
  EXPECT_NE(b, c);
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
  ASSERT_TRUE(dispatch_until([] { return fd_calls.size() >= 2 && other_fd_calls >= 1; }));
  std::set<int> got(fd_calls.begin(), fd_calls.end());
  EXPECT_EQ(got, (std::set<int>{a, b}));
  EXPECT_EQ(other_fd_calls, 1);

  // Software events: the same handler on two registrations, each gets its own.
  int s1 = evsoft(0, record_soft);
  int s2 = evsoft(0, record_soft);
  int s3 = evsoft(0, other_soft);
  ASSERT_GT(s1, 0);
  ASSERT_GT(s2, 0);
  ASSERT_GT(s3, 0);
  ASSERT_EQ(evsoft_raise(s1, 0), 0);
  ASSERT_EQ(evsoft_raise(s2, 0), 0);
  ASSERT_EQ(evsoft_raise(s2, 0), 0);
  ASSERT_EQ(evsoft_raise(s3, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return g_calls.size() >= 2 && g_other >= 1; }));
  uint64_t n1 = 0, n2 = 0;
  for (auto& [jid, occ] : g_calls) (jid == s1 ? n1 : n2) += occ;
  EXPECT_EQ(n1, 1u);
  EXPECT_EQ(n2, 2u);
  EXPECT_EQ(g_other, 1);
}

TEST_F(Registration, NullHandlerRejectedByEveryFamily) {
  AEM_REQ("AEM-3.1.3");
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  timespec v{1, 0};
  EXPECT_AEM_ERR(evsoft(0, nullptr), EINVAL);
  EXPECT_AEM_ERR(evtimer(&v, nullptr, 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(l.get(), nullptr, nullptr, 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_read(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_close(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_sk(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_sock(tp.server.get(), 0, nullptr), EINVAL);
}

TEST_F(Registration, BadFlagsRejected) {
  AEM_REQ("AEM-3.1.5", "AEM-3.1.6");
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  timespec v{1, 0};
  // Unknown bits.
  EXPECT_AEM_ERR(evsoft(0x400u, noop_soft), EINVAL);
  EXPECT_AEM_ERR(evsoft(0x80000000ul, noop_soft), EINVAL);
  EXPECT_AEM_ERR(evsoft(1ul << 40, noop_soft), EINVAL);
  EXPECT_AEM_ERR(evtimer(&v, nullptr, 0x1000000u, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, 0x4000u, noop_fd), EINVAL);
  EXPECT_AEM_ERR(sockasync_read(tp.server.get(), 1ul << 33, noop_read), EINVAL);
  // Edge and level together.
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, AEM_EDGE | AEM_LEVEL, noop_fd), EINVAL);
  EXPECT_AEM_ERR(sockasync_sock(tp.server.get(), AEM_EDGE | AEM_LEVEL, noop_sock), EINVAL);
  // Executor value 3.
  EXPECT_AEM_ERR(evsoft(3u, noop_soft), EINVAL);
  EXPECT_AEM_ERR(evtimer(&v, nullptr, AEM_EXEC_MASK, noop_timer), EINVAL);
  // Priorities outside the range.
  EXPECT_AEM_ERR(evsoft(AEM_PRIO(-1), noop_soft), EINVAL);
  EXPECT_AEM_ERR(evsoft(AEM_PRIO(64), noop_soft), EINVAL);
  EXPECT_AEM_ERR(evsoft(AEM_PRIO(1000), noop_soft), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, AEM_PRIO(64), noop_fd), EINVAL);
  // A priority field without the "given" bit.
  EXPECT_AEM_ERR(evsoft(5u << AEM_PRIO_SHIFT, noop_soft), EINVAL);
  // Nothing was registered by the failures: the next id is valid and works.
  int id = evsoft(AEM_PRIO(5), noop_soft);
  ASSERT_GT(id, 0);
  aem_event_info info{};
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  EXPECT_EQ(info.prio, 5);
}

TEST_F(Registration, PriorityAtRegistrationDefaultAndBounds) {
  AEM_REQ("AEM-3.1.5");
  struct Case {
    unsigned long flags;
    int prio;
  } cases[] = {{0, AEM_PRIO_DEFAULT},
               {AEM_PRIO(5), 5},
               {AEM_PRIO(AEM_PRIO_MIN), AEM_PRIO_MIN},
               {AEM_PRIO(AEM_PRIO_MAX), AEM_PRIO_MAX},
               {AEM_PRIO(AEM_PRIO_DEFAULT), AEM_PRIO_DEFAULT}};
  for (const auto& c : cases) {
    int id = evsoft(c.flags, noop_soft);
    ASSERT_GT(id, 0);
    aem_event_info info{};
    ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
    EXPECT_EQ(info.prio, c.prio) << "flags " << std::hex << c.flags;
  }
  // Every family takes a priority.
  Pipe p;
  timespec v{10, 0};
  int t = evtimer(&v, nullptr, AEM_PRIO(60), noop_timer);
  int f = evfd(p.rd.get(), POLLIN, AEM_PRIO(1), noop_fd);
  ASSERT_GT(t, 0);
  ASSERT_GT(f, 0);
  aem_event_info info{};
  ASSERT_EQ(evctl(t, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  EXPECT_EQ(info.prio, 60);
  ASSERT_EQ(evctl(f, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  EXPECT_EQ(info.prio, 1);
}

TEST_F(Registration, EveryFamilyRegistersAndCleans) {
  AEM_REQ("AEM-3.1.1", "AEM-3.1.4", "AEM-3.1.7");
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  timespec v{10, 0};
  int ids[] = {
      evsoft(0, noop_soft),
      evtimer(&v, nullptr, 0, noop_timer),
      evfd(p.rd.get(), POLLIN, 0, noop_fd),
      sockasync_accept(l.get(), nullptr, nullptr, 0, noop_accept),
      sockasync_read(tp.server.get(), 0, noop_read),
      sockasync_close(tp.server.get(), 0, noop_close),
      sockasync_sk(tp.server.get(), 0, noop_sk),
      sockasync_sock(tp.server.get(), AEM_EDGE, noop_sock),
  };
  int types[] = {AEM_EV_SOFT, AEM_EV_TIMER, AEM_EV_FD,  AEM_EV_ACCEPT,
                 AEM_EV_READ, AEM_EV_CLOSE, AEM_EV_SK, AEM_EV_SOCK};
  for (size_t i = 0; i < std::size(ids); ++i) {
    ASSERT_GT(ids[i], 0) << "family " << types[i];
    aem_event_info info{};
    ASSERT_EQ(evctl(ids[i], AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
    EXPECT_EQ(info.type, types[i]);
  }
  for (int id : ids) EXPECT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
  for (int id : ids) EXPECT_AEM_ERR(evctl(id, AEM_CTL_CLEAN, 0), ENOENT);
}

TEST_F(Registration, ManyRegistrationsAllDelivered) {
  AEM_REQ("AEM-3.3.1", "AEM-3.5.1");
  constexpr int kN = 20000;
  static std::vector<int> hits;
  hits.assign(kN + 1, 0);
  static std::vector<int> id_of;
  id_of.clear();
  static std::unordered_map<int, int> index;
  index.clear();
  for (int i = 0; i < kN; ++i) {
    int id = evsoft(0, [](int jid, uint64_t, uint64_t occ) { hits[index[jid]] += static_cast<int>(occ); });
    ASSERT_GT(id, 0);
    index[id] = i;
    id_of.push_back(id);
  }
  for (int id : id_of) ASSERT_EQ(evsoft_raise(id, 0), 0);
  long total = 0;
  ASSERT_TRUE(dispatch_until([&] {
    total = 0;
    for (int h : hits) total += h;
    return total >= kN;
  }));
  EXPECT_EQ(total, kN);
  for (int i = 0; i < kN; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)], 1) << i;
  for (int id : id_of) ASSERT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
}

}  // namespace
