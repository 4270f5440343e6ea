// Policy from the environment, each case in a forked child with a fresh
// context: security (AEM-3.5.3), resource limits (AEM-3.5.4), and the error
// notifications they lead to (AEM-3.5.2).
#include <algorithm>
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Policy : public AemTest {};

TEST_F(Policy, AllowedTypes) {
  AEM_REQ("AEM-3.5.3");
  EXPECT_CHILD_OK([] {
              setenv("AEM_ALLOWED_TYPES", "soft,read", 1);
              Pipe p;
              TcpPair tp;
              CHILD_CHECK(tp.ok());
              Fd l = tcp_listener();
              timespec v{1, 0};
              errno = 0;
              CHILD_CHECK(evtimer(&v, nullptr, 0, noop_timer) == -EPERM && errno == EPERM);
              errno = 0;
              CHILD_CHECK(evfd(p.rd.get(), POLLIN, 0, noop_fd) == -EPERM && errno == EPERM);
              CHILD_CHECK(sockasync_accept(l.get(), nullptr, nullptr, 0, [](int, int, int) {}) == -EPERM);
              CHILD_CHECK(sockasync_close(tp.server.get(), 0, [](int, int) {}) == -EPERM);
              CHILD_CHECK(sockasync_sk(tp.server.get(), 0, [](int, int, int, int) {}) == -EPERM);
              CHILD_CHECK(sockasync_sock(tp.server.get(), 0, [](int, int, unsigned) {}) == -EPERM);
              CHILD_CHECK(evsoft(0, noop_soft) > 0);
              CHILD_CHECK(sockasync_read(tp.server.get(), 0, noop_read) > 0);
              return 0;
            });
}

TEST_F(Policy, AllowedExecutors) {
  AEM_REQ("AEM-3.5.3", "AEM-3.1.6");
  EXPECT_CHILD_OK([] {
              setenv("AEM_ALLOWED_EXECUTORS", "same,thread", 1);
              errno = 0;
              CHILD_CHECK(evsoft(AEM_EXEC_PROCESS, noop_soft) == -EPERM && errno == EPERM);
              CHILD_CHECK(evsoft(AEM_EXEC_THREAD, noop_soft) > 0);
              CHILD_CHECK(evsoft(AEM_EXEC_SAME, noop_soft) > 0);
              // A new context reads the policy again.
              CHILD_CHECK(aem_shutdown() == 0);
              setenv("AEM_ALLOWED_EXECUTORS", "process", 1);
              CHILD_CHECK(evsoft(AEM_EXEC_SAME, noop_soft) == -EPERM);
              CHILD_CHECK(evsoft(AEM_EXEC_THREAD, noop_soft) == -EPERM);
              CHILD_CHECK(evsoft(AEM_EXEC_PROCESS, noop_soft) > 0);
              // Bad flags are -EINVAL before any policy check.
              CHILD_CHECK(evsoft(AEM_EXEC_MASK, noop_soft) == -EINVAL);
              return 0;
            });
}

TEST_F(Policy, MinimumTimerPeriod) {
  AEM_REQ("AEM-3.5.3", "AEM-3.5.4", "AEM-3.6.3");
  EXPECT_CHILD_OK([] {
              setenv("AEM_MIN_TIMER_PERIOD_NS", "1000000", 1);
              timespec v{1, 0}, fast{0, 999999}, ok{0, 1000000}, zero{0, 0};
              errno = 0;
              CHILD_CHECK(evtimer(&v, &fast, 0, noop_timer) == -EPERM && errno == EPERM);
              CHILD_CHECK(evtimer(&v, &ok, 0, noop_timer) > 0);
              CHILD_CHECK(evtimer(&v, &zero, 0, noop_timer) > 0);  // one-shot: no period
              CHILD_CHECK(evtimer(&fast, nullptr, 0, noop_timer) > 0);
              return 0;
            });
}

TEST_F(Policy, RegistrationLimitIsEnospc) {
  AEM_REQ("AEM-3.5.4", "AEM-3.1.4");
  EXPECT_CHILD_OK([] {
              setenv("AEM_MAX_REGISTRATIONS", "3", 1);
              int a = evsoft(0, noop_soft), b = evsoft(0, noop_soft), c = evsoft(0, noop_soft);
              CHILD_CHECK(a > 0 && b > 0 && c > 0);
              errno = 0;
              CHILD_CHECK(evsoft(0, noop_soft) == -ENOSPC && errno == ENOSPC);
              timespec v{1, 0};
              CHILD_CHECK(evtimer(&v, nullptr, 0, noop_timer) == -ENOSPC);
              CHILD_CHECK(evctl(b, AEM_CTL_CLEAN, 0) == 0);
              int d = evsoft(0, noop_soft);
              CHILD_CHECK(d > 0 && d != a && d != c);
              CHILD_CHECK(evsoft(0, noop_soft) == -ENOSPC);
              // A one-shot frees its slot after its delivery.
              CHILD_CHECK(evctl(d, AEM_CTL_CLEAN, 0) == 0);
              int e = evsoft(AEM_ONESHOT, noop_soft);
              CHILD_CHECK(e > 0);
              CHILD_CHECK(evsoft_raise(e, 0) == 0);
              CHILD_CHECK(aem_dispatch(0) == 1);
              CHILD_CHECK(evsoft(0, noop_soft) > 0);
              return 0;
            });
}

std::vector<std::pair<int, int>> g_errs;
void rec_err(int jid, int e) { g_errs.emplace_back(jid, e); }

TEST_F(Policy, PendingLimitCountsEverythingAndReportsEoverflow) {
  AEM_REQ("AEM-3.5.4", "AEM-3.5.2", "AEM-3.5.1");
  EXPECT_CHILD_OK([] {
              setenv("AEM_MAX_PENDING", "2", 1);
              static uint64_t total;
              static int calls;
              total = 0;
              calls = 0;
              g_errs.clear();
              CHILD_CHECK(aem_on_error(rec_err) == 0);
              std::vector<int> ids;
              for (int i = 0; i < 5; ++i) {
                int id = evsoft(0, [](int, uint64_t, uint64_t occ) {
                  total += occ;
                  ++calls;
                });
                CHILD_CHECK(id > 0);
                ids.push_back(id);
              }
              for (int round = 0; round < 3; ++round)
                for (int id : ids) CHILD_CHECK(evsoft_raise(id, 0) == 0);  // never refused
              CHILD_CHECK(dispatch_until([] { return total >= 15; }));
              CHILD_CHECK(aem_dispatch(0) == 0);
              CHILD_CHECK(total == 15);
              CHILD_CHECK(calls == 5);  // one merged delivery per registration
              bool overflow = false;
              for (auto& [jid, e] : g_errs) overflow |= e == -EOVERFLOW;
              CHILD_CHECK(overflow);
              for (int id : ids) {
                aem_event_stats st{};
                CHILD_CHECK(evctl(id, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)) == 0);
                CHILD_CHECK(st.activations == 3 && st.pending == 0);
              }
              return 0;
            });
}

// Control operations on a registration held back by the pending limit must
// not lose its occurrences.
TEST_F(Policy, ControlOfARegistrationHeldByThePendingLimit) {
  AEM_REQ("AEM-3.5.4", "AEM-3.5.1", "AEM-3.1.5", "AEM-3.1.7");
  EXPECT_CHILD_OK([] {
              setenv("AEM_MAX_PENDING", "1", 1);
              static std::vector<int> order;
              order.clear();
              auto h = [](int jid, uint64_t, uint64_t) { order.push_back(jid); };
              int a = evsoft(0, h), b = evsoft(0, h), c = evsoft(0, h);
              CHILD_CHECK(a > 0 && b > 0 && c > 0);
              CHILD_CHECK(evsoft_raise(a, 0) == 0);  // queued
              CHILD_CHECK(evsoft_raise(b, 0) == 0);  // held: over the limit
              CHILD_CHECK(evsoft_raise(c, 0) == 0);  // held
              CHILD_CHECK(evctl(b, AEM_CTL_SET_PRIO, 40) == 0);
              CHILD_CHECK(evctl(c, AEM_CTL_DISABLE, 0) == 0);
              CHILD_CHECK(evctl(c, AEM_CTL_ENABLE, 0) == 0);
              aem_event_info info{};
              CHILD_CHECK(evctl(b, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)) == 0);
              CHILD_CHECK(info.pending == 1 && info.prio == 40);
              dispatch_until([] { return order.size() >= 3; }, 5000);
              fprintf(stderr, "delivered %zu of 3\n", order.size());
              CHILD_CHECK(order.size() == 3);
              return 0;
            });
}

// A read never waits for more room than the arena has: a message larger
// than a 4 KiB arena arrives whole, in chunks of at most the arena's size.
TEST_F(Policy, TinyArenaDeliversABigReadInArenaSizedChunks) {
  AEM_REQ("AEM-3.5.2", "AEM-3.4.1");
  EXPECT_CHILD_OK([] {
              setenv("AEM_ARENA_BYTES", "4096", 1);
              TcpPair tp;
              CHILD_CHECK(tp.ok());
              static size_t got, biggest;
              got = biggest = 0;
              int id = sockasync_read(tp.server.get(), 0, [](int, int, const void*, size_t len) {
                got += len;
                biggest = std::max(biggest, len);
              });
              CHILD_CHECK(id > 0);
              std::vector<char> big(256 * 1024, 'x');
              CHILD_CHECK(write_all(tp.client.get(), big.data(), big.size()));
              CHILD_CHECK(dispatch_until([] { return got == 256 * 1024; }));
              CHILD_CHECK(biggest <= 4096);
              return 0;
            });
}

TEST_F(Policy, InvalidPolicyValuesAreRefused) {
  AEM_REQ("AEM-3.5.3", "AEM-3.5.4");
  for (const char* kv : {"AEM_MAX_REGISTRATIONS=abc", "AEM_MAX_PENDING=0", "AEM_ARENA_BYTES=100",
                         "AEM_ALLOWED_TYPES=soft,bogus", "AEM_ALLOWED_EXECUTORS=everything",
                         "AEM_BOOST_CEILING=-1", "AEM_BACKEND=nonsense", "AEM_KMOD_RING=3",
                         "AEM_KMOD_RING=1", "AEM_KMOD_RING=8192", "AEM_KMOD_SPIN_US=10001"}) {
    SCOPED_TRACE(kv);
    EXPECT_CHILD_OK([kv] {
                std::string s(kv);
                auto eq = s.find('=');
                setenv(s.substr(0, eq).c_str(), s.substr(eq + 1).c_str(), 1);
                errno = 0;
                int r = evsoft(0, noop_soft);
                CHILD_CHECK(r < 0);
                CHILD_CHECK(errno == -r);
                CHILD_CHECK(aem_backend() == nullptr);
                // Fixed environment: the next call starts a context.
                unsetenv(s.substr(0, eq).c_str());
                CHILD_CHECK(evsoft(0, noop_soft) > 0);
                return 0;
              });
  }
}

}  // namespace
