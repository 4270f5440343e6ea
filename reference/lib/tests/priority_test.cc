// Priorities: delivery order (AEM-3.2.1, AEM-3.6.1) and process priority
// enforcement (AEM-3.2.2).
#include <linux/capability.h>
#include <sys/resource.h>

#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Priority : public AemTest {};

std::vector<int> g_order;
void rec(int jid, uint64_t, uint64_t) { g_order.push_back(jid); }

TEST_F(Priority, HigherFirstThenFifoWithinALevel) {
  AEM_REQ("AEM-3.2.1", "AEM-3.6.1", "AEM-3.1.5");
  g_order.clear();
  int low = evsoft(AEM_PRIO(1), rec);
  int mid_a = evsoft(0, rec);
  int mid_b = evsoft(AEM_PRIO(AEM_PRIO_DEFAULT), rec);
  int mid_c = evsoft(0, rec);
  int high = evsoft(AEM_PRIO(62), rec);
  int top = evsoft(AEM_PRIO(AEM_PRIO_MAX), rec);
  int bottom = evsoft(AEM_PRIO(AEM_PRIO_MIN), rec);
  for (int id : {low, mid_a, mid_b, mid_c, high, top, bottom}) ASSERT_GT(id, 0);
  // Raised in an order unrelated to priority; within the default level,
  // c then a then b (and a again, which merges and keeps a's place).
  for (int id : {bottom, mid_c, low, mid_a, high, mid_b, mid_a, top}) ASSERT_EQ(evsoft_raise(id, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 7);
  EXPECT_EQ(g_order, (std::vector<int>{top, high, mid_c, mid_a, mid_b, low, bottom}));
}

TEST_F(Priority, LowAndHighRaisedBeforeDispatchHighRunsFirst) {
  AEM_REQ("AEM-3.2.1");
  g_order.clear();
  int low = evsoft(AEM_PRIO(3), rec);
  int high = evsoft(AEM_PRIO(50), rec);
  ASSERT_GT(low, 0);
  ASSERT_GT(high, 0);
  ASSERT_EQ(evsoft_raise(low, 0), 0);
  ASSERT_EQ(evsoft_raise(high, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 2);
  EXPECT_EQ(g_order, (std::vector<int>{high, low}));
}

TEST_F(Priority, HighRaisedByAHandlerOvertakesPendingLows) {
  AEM_REQ("AEM-3.2.1", "AEM-3.6.1");
  g_order.clear();
  static int high;
  high = evsoft(AEM_PRIO(60), rec);
  ASSERT_GT(high, 0);
  std::vector<int> lows;
  for (int i = 0; i < 100; ++i) {
    int id = evsoft(AEM_PRIO(10), [](int jid, uint64_t, uint64_t) {
      g_order.push_back(jid);
      if (g_order.size() == 1) evsoft_raise(high, 0);
    });
    ASSERT_GT(id, 0);
    lows.push_back(id);
  }
  for (int id : lows) ASSERT_EQ(evsoft_raise(id, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return g_order.size() >= 101; }));
  ASSERT_EQ(g_order.size(), 101u);
  EXPECT_EQ(g_order[0], lows[0]);
  EXPECT_EQ(g_order[1], high) << "the high-priority event waited behind pending low ones";
  for (size_t i = 1; i < lows.size(); ++i) EXPECT_EQ(g_order[i + 1], lows[i]);
}

TEST_F(Priority, OrderHoldsInTheThreadExecutor) {
  AEM_REQ("AEM-3.2.1", "AEM-3.1.6");
  static std::mutex mu;
  static std::vector<int> order;
  static Pipe started, release;
  static Counter done;
  order.clear();
  started = Pipe();
  release = Pipe();
  done.reset();
  // A blocker holds the worker while low, mid and high become pending.
  int blocker = evsoft(AEM_EXEC_THREAD | AEM_PRIO(AEM_PRIO_MAX), [](int, uint64_t, uint64_t) {
    char c = 's';
    write_all(started.wr.get(), &c, 1);
    read_exact(release.rd.get(), &c, 1);
  });
  auto h = [](int jid, uint64_t, uint64_t) {
    {
      std::lock_guard lk(mu);
      order.push_back(jid);
    }
    done.add();
  };
  int low = evsoft(AEM_EXEC_THREAD | AEM_PRIO(2), h);
  int mid = evsoft(AEM_EXEC_THREAD | AEM_PRIO(30), h);
  int high = evsoft(AEM_EXEC_THREAD | AEM_PRIO(61), h);
  for (int id : {blocker, low, mid, high}) ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(blocker, 0), 0);
  char c;
  ASSERT_TRUE(read_exact(started.rd.get(), &c, 1));
  ASSERT_EQ(evsoft_raise(low, 0), 0);
  ASSERT_EQ(evsoft_raise(mid, 0), 0);
  ASSERT_EQ(evsoft_raise(high, 0), 0);
  ASSERT_TRUE(write_all(release.wr.get(), "r", 1));
  ASSERT_TRUE(done.wait_for(3));
  std::lock_guard lk(mu);
  EXPECT_EQ(order, (std::vector<int>{high, mid, low}));
}

// --- AEM-3.2.2: the nice value of the thread that will run a pending
// high-priority event is lowered, and restored after its handler ran.

int nice_of_self() {
  errno = 0;
  return getpriority(PRIO_PROCESS, static_cast<id_t>(tid()));
}

bool can_lower_nice() {
  int base = nice_of_self();
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(tid()), base - 1) != 0) return false;
  setpriority(PRIO_PROCESS, static_cast<id_t>(tid()), base);
  return true;
}

int g_nice_in_handler;
void nice_probe(int, uint64_t, uint64_t) { g_nice_in_handler = nice_of_self(); }

constexpr int kCannot = 77;

// Raises a registration with flags; returns (nice while pending, in handler).
int boost_child(unsigned long flags, int max_steps, bool expect_boost) {
  if (expect_boost && !can_lower_nice()) return kCannot;
  const int base = nice_of_self();
  // The parent's thread (gtest runs tests on the main thread: tid == pid)
  // must not be touched by the child's boost.
  const pid_t parent = getppid();
  errno = 0;
  const int parent_nice = getpriority(PRIO_PROCESS, static_cast<id_t>(parent));
  int id = evsoft(flags, nice_probe);
  CHILD_CHECK(id > 0);
  CHILD_CHECK(nice_of_self() == base);  // registering alone changes nothing
  CHILD_CHECK(evsoft_raise(id, 0) == 0);
  const int pending_nice = nice_of_self();
  CHILD_CHECK(getpriority(PRIO_PROCESS, static_cast<id_t>(parent)) == parent_nice);
  g_nice_in_handler = 1000;
  CHILD_CHECK(aem_dispatch(0) == 1);
  fprintf(stderr, "boost: base %d pending %d handler %d after %d\n", base, pending_nice,
          g_nice_in_handler, nice_of_self());
  if (expect_boost) {
    CHILD_CHECK(pending_nice < base);
    CHILD_CHECK(base - pending_nice <= max_steps);
    CHILD_CHECK(g_nice_in_handler < base);
  } else {
    CHILD_CHECK(pending_nice == base);
    CHILD_CHECK(g_nice_in_handler == base);
  }
  CHILD_CHECK(nice_of_self() == base);  // restored
  CHILD_CHECK(sched_getscheduler(0) == SCHED_OTHER);
  CHILD_CHECK(evctl(id, AEM_CTL_CLEAN, 0) == 0);
  return 0;
}

// Real programs use the library before they fork: so does the parent here,
// on this thread, then releases the context so that the child starts afresh.
void use_library_here() {
  ASSERT_GT(evsoft(0, nice_probe), 0);
  ASSERT_EQ(aem_shutdown(), 0);
}

// Restores this thread's nice value: a child that boosts the wrong thread
// must not leave the test runner boosted.
struct KeepNice {
  int saved = nice_of_self();
  ~KeepNice() { setpriority(PRIO_PROCESS, static_cast<id_t>(tid()), saved); }
};

TEST_F(Priority, HighPriorityPendingLowersNiceThenRestores) {
  AEM_REQ("AEM-3.2.2");
  KeepNice keep;
  use_library_here();
  int rc = run_in_child([] { return boost_child(AEM_PRIO(AEM_PRIO_MAX), 10, true); });
  if (rc == kCannot) GTEST_SKIP() << "this process may not lower its nice value";
  EXPECT_EQ(rc, 0);
  // At or below the default priority: no boost.
  EXPECT_CHILD_OK([] { return boost_child(AEM_PRIO(AEM_PRIO_DEFAULT), 0, false); });
  EXPECT_CHILD_OK([] { return boost_child(AEM_PRIO(5), 0, false); });
}

TEST_F(Priority, BoostStaysWithinTheCeiling) {
  AEM_REQ("AEM-3.2.2", "AEM-3.5.4");
  KeepNice keep;
  use_library_here();
  int rc = run_in_child([] {
    setenv("AEM_BOOST_CEILING", "3", 1);
    return boost_child(AEM_PRIO(AEM_PRIO_MAX), 3, true);
  });
  if (rc == kCannot) GTEST_SKIP() << "this process may not lower its nice value";
  EXPECT_EQ(rc, 0);
  EXPECT_CHILD_OK([] {
              setenv("AEM_BOOST_CEILING", "0", 1);
              return boost_child(AEM_PRIO(AEM_PRIO_MAX), 0, false);
            });
}

// The boost ends when no boosting event is pending any more, also when the
// pending one is cleaned or disabled instead of delivered.
int boost_ends_child(unsigned op) {
  if (!can_lower_nice()) return kCannot;
  const int base = nice_of_self();
  int a = evsoft(AEM_PRIO(AEM_PRIO_MAX), nice_probe);
  CHILD_CHECK(a > 0);
  CHILD_CHECK(evsoft_raise(a, 0) == 0);
  CHILD_CHECK(nice_of_self() < base);
  CHILD_CHECK(evctl(a, op, 0) == 0);
  fprintf(stderr, "after evctl op %u: base %d now %d\n", op, base, nice_of_self());
  CHILD_CHECK(nice_of_self() == base);
  if (op == AEM_CTL_DISABLE) {
    CHILD_CHECK(evctl(a, AEM_CTL_ENABLE, 0) == 0);  // pending again: boosted again
    CHILD_CHECK(nice_of_self() < base);
    CHILD_CHECK(aem_dispatch(0) == 1);
    CHILD_CHECK(nice_of_self() == base);
  }
  return 0;
}

TEST_F(Priority, BoostEndsWhenThePendingEventIsCleanedOrDisabled) {
  AEM_REQ("AEM-3.2.2");
  KeepNice keep;
  use_library_here();
  int rc = run_in_child([] { return boost_ends_child(AEM_CTL_CLEAN); });
  if (rc == kCannot) GTEST_SKIP() << "this process may not lower its nice value";
  EXPECT_EQ(rc, 0) << "still boosted after AEM_CTL_CLEAN";
  rc = run_in_child([] { return boost_ends_child(AEM_CTL_DISABLE); });
  EXPECT_EQ(rc, 0) << "still boosted after AEM_CTL_DISABLE";
}

TEST_F(Priority, WithoutPermissionToLowerNiceNothingBreaks) {
  AEM_REQ("AEM-3.2.2", "AEM-3.5.1");
  EXPECT_CHILD_OK([] {
              // Give up the right to lower nice: RLIMIT_NICE 0 and no CAP_SYS_NICE.
              rlimit rl{0, 0};
              CHILD_CHECK(setrlimit(RLIMIT_NICE, &rl) == 0);
              __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
              __user_cap_data_struct data[2]{};
              CHILD_CHECK(syscall(SYS_capget, &hdr, data) == 0);
              data[0].effective &= ~(1u << CAP_SYS_NICE);
              data[0].permitted &= ~(1u << CAP_SYS_NICE);
              data[0].inheritable &= ~(1u << CAP_SYS_NICE);
              CHILD_CHECK(syscall(SYS_capset, &hdr, data) == 0);
              CHILD_CHECK(setpriority(PRIO_PROCESS, 0, 5) == 0);  // raising is always allowed
              CHILD_CHECK(!can_lower_nice());
              static int calls = 0;
              int id = evsoft(AEM_PRIO(AEM_PRIO_MAX), [](int, uint64_t, uint64_t occ) {
                calls += static_cast<int>(occ);
              });
              CHILD_CHECK(id > 0);
              for (int i = 0; i < 10; ++i) CHILD_CHECK(evsoft_raise(id, 0) == 0);
              CHILD_CHECK(nice_of_self() == 5);
              CHILD_CHECK(aem_dispatch(0) == 1);
              CHILD_CHECK(calls == 10);
              CHILD_CHECK(nice_of_self() == 5);
              return 0;
            });
}

}  // namespace
