// Inheritance over fork() (AEM-3.6.4): registrations with AEM_INHERIT go on
// in the child, the others are gone there (-ENOENT); the parent keeps all.
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "test_util.hpp"

// The library's threads exist when a test forks; the child then starts its
// own. ThreadSanitizer refuses new threads after a multi-threaded fork unless
// told otherwise; the child here is a well-defined program (the library
// rebuilds its context from scratch), so allow it.
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_options() { return "die_after_fork=0"; }
#endif

namespace {
using namespace aemtest;

class Fork : public AemTest {};

uint64_t g_occ;
pid_t g_ran_in;
void soft_h(int, uint64_t, uint64_t occ) {
  g_occ += occ;
  g_ran_in = getpid();
}
uint64_t g_exp;
void timer_h(int, uint64_t exp) { g_exp += exp; }

TEST_F(Fork, InheritedKeptOthersGoneInTheChild) {
  AEM_REQ("AEM-3.6.4");
  g_occ = 0;
  int inh = evsoft(AEM_INHERIT, soft_h);
  int gone = evsoft(0, soft_h);
  timespec v = ts_of(1000000), p = ts_of(1000000);
  int inh_timer = evtimer(&v, &p, AEM_INHERIT, timer_h);
  int gone_timer = evtimer(&v, &p, 0, timer_h);
  ASSERT_GT(inh, 0);
  ASSERT_GT(gone, 0);
  ASSERT_GT(inh_timer, 0);
  ASSERT_GT(gone_timer, 0);
  // Pending occurrences stay with the parent.
  ASSERT_EQ(evsoft_raise(inh, 0), 0);
  int rc = run_in_child([=] {
    aem_event_info info{};
    errno = 0;
    CHILD_CHECK(evctl(gone, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)) == -ENOENT);
    CHILD_CHECK(errno == ENOENT);
    CHILD_CHECK(evsoft_raise(gone, 0) == -ENOENT);
    CHILD_CHECK(evctl(gone_timer, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)) == -ENOENT);
    CHILD_CHECK(evctl(inh, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)) == 0);
    CHILD_CHECK(info.jid == inh && info.type == AEM_EV_SOFT);
    CHILD_CHECK((info.flags & AEM_INHERIT) != 0);
    CHILD_CHECK(evctl(inh_timer, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)) == 0);
    CHILD_CHECK(info.type == AEM_EV_TIMER);
    // The inherited software event works in the child, and runs here.
    g_occ = 0;
    g_ran_in = 0;
    CHILD_CHECK(evsoft_raise(inh, 5) == 0);
    CHILD_CHECK(dispatch_until([] { return g_occ >= 1; }));
    CHILD_CHECK(g_occ == 1);  // the parent's pending one did not come along
    CHILD_CHECK(g_ran_in == getpid());
    // The inherited timer keeps firing in the child.
    g_exp = 0;
    CHILD_CHECK(dispatch_until([] { return g_exp >= 3; }));
    // New registrations work and do not collide with inherited ids.
    int fresh = evsoft(0, soft_h);
    CHILD_CHECK(fresh > 0 && fresh != inh && fresh != inh_timer);
    return 0;
  });
  EXPECT_EQ(rc, 0);
  // The parent still has everything, and its pending occurrence.
  aem_event_info info{};
  EXPECT_EQ(evctl(gone, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  EXPECT_EQ(evctl(gone_timer, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  ASSERT_EQ(evctl(inh, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  ASSERT_TRUE(dispatch_until([] { return g_occ >= 1; }));
  EXPECT_EQ(g_ran_in, getpid());
  g_exp = 0;
  EXPECT_TRUE(dispatch_until([] { return g_exp >= 2; }));
}

TEST_F(Fork, InheritedFdAndReaderWorkInTheChild) {
  AEM_REQ("AEM-3.6.4", "AEM-3.6.5");
  static std::string got;
  static int eof;
  got.clear();
  eof = 0;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Pipe pp;
  int rd = sockasync_read(tp.server.get(), AEM_INHERIT, [](int, int, const void* d, size_t len) {
    if (len == 0)
      ++eof;
    else
      got.append(static_cast<const char*>(d), len);
  });
  int fdev = evfd(pp.rd.get(), POLLIN, 0, [](int, int, unsigned) {});
  ASSERT_GT(rd, 0);
  ASSERT_GT(fdev, 0);
  int client = tp.client.get();
  // Parent and child share the socket: once the child runs, the parent
  // cleans its reader so that only the child reads what comes next.
  Pipe ready, go, started;
  std::thread parent_side([&] {
    write_all(started.wr.get(), "s", 1);
    char c;
    if (read_exact(ready.rd.get(), &c, 1)) {
      evctl(rd, AEM_CTL_CLEAN, 0);
      write_all(go.wr.get(), "g", 1);
    }
  });
  // Fork once that thread runs: a thread still starting may hold the
  // allocator's lock (GCC 12's ASan runtime is not fork-safe there).
  char s0;
  ASSERT_TRUE(read_exact(started.rd.get(), &s0, 1));
  int rc = run_in_child([=, &ready, &go] {
    aem_event_info info{};
    CHILD_CHECK(evctl(fdev, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)) == -ENOENT);
    CHILD_CHECK(evctl(rd, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)) == 0);
    CHILD_CHECK(write_all(ready.wr.get(), "r", 1));
    char c;
    CHILD_CHECK(read_exact(go.rd.get(), &c, 1));
    // The child reads what the peer sends now.
    CHILD_CHECK(write_all(client, "child-data", 10));
    const bool arrived = dispatch_until([] { return got.size() >= 10; });
    if (!arrived) {
      aem_event_stats st{};
      evctl(rd, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st));
      int avail = -1;
      ioctl(client, FIONREAD, &avail);
      fprintf(stderr, "child: reader activations %llu pending %llu errors %llu; got %zu bytes\n",
              static_cast<unsigned long long>(st.activations),
              static_cast<unsigned long long>(st.pending),
              static_cast<unsigned long long>(st.errors), got.size());
    }
    CHILD_CHECK(arrived);
    CHILD_CHECK(got == "child-data");
    return 0;
  });
  ready.wr.reset();  // the helper ends even if the child failed early
  parent_side.join();
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(evctl(fdev, AEM_CTL_LOOKUP, 0), -EINVAL);  // exists (NULL pointer refused)
}

// aem_shutdown() in a freshly forked child (before any other call) must
// release the copy of the parent's context without waiting for the parent's
// threads, which do not exist in the child.
TEST_F(Fork, ShutdownFirstThingInAForkedChild) {
  AEM_REQ("AEM-3.6.4");
  ASSERT_GT(evsoft(0, soft_h), 0);
  int rc = run_in_child(
      [] {
        CHILD_CHECK(aem_shutdown() == 0);
        CHILD_CHECK(evsoft(0, soft_h) > 0);
        return 0;
      },
      10000);
  EXPECT_EQ(rc, 0) << "-1: the child hung in aem_shutdown()";
}

// Asynchronous delivery in a forked child: the doorbell must reach the
// child's own thread.
TEST_F(Fork, AsyncDeliveryInAForkedChild) {
  AEM_REQ("AEM-3.6.4", "AEM-3.2.3");
  ASSERT_GT(evsoft(0, soft_h), 0);  // the library is in use on this thread
  ASSERT_EQ(aem_shutdown(), 0);
  static Pipe p;
  p = Pipe();
  int rc = run_in_child([] {
    static pid_t ran_on;
    ran_on = 0;
    int id = evsoft(0, [](int, uint64_t, uint64_t) {
      ran_on = tid();
      write_all(p.wr.get(), "a", 1);
    });
    CHILD_CHECK(id > 0);
    CHILD_CHECK(aem_set_async(1) == 0);
    std::thread t([id] { evsoft_raise(id, 0); });
    // Never dispatches: waits for the pipe, which only the handler writes.
    bool readable = wait_readable(p.rd.get(), 10000);
    t.join();
    CHILD_CHECK(readable);
    CHILD_CHECK(ran_on == tid());
    return 0;
  });
  EXPECT_EQ(rc, 0);
}

// The RT signal whose SA_SIGINFO handler the library installed for its
// doorbell (aem_set_async(1)); no test installs one. 0: none.
int installed_doorbell() {
  for (int s = SIGRTMAX; s >= SIGRTMIN; --s) {
    struct sigaction sa {};
    if (sigaction(s, nullptr, &sa) == 0 && (sa.sa_flags & SA_SIGINFO) && sa.sa_sigaction)
      return s;
  }
  return 0;
}

// An async thread that forks while its doorbell keeps ringing: the doorbell
// handler must not run between fork's prepare (which holds the library's
// locks) and its parent handler. glibc delivers a signal that came during
// the fork system call as soon as fork() unblocks signals, before the
// parent handlers, and the handler would wait for a lock its own thread
// holds. A doorbell comes at any moment (the kernel backend's from the
// kernel, the user backend's from another thread's raise), so a thread
// here sends the installed doorbell signal itself, paced, with raises,
// while this one forks. Without the guard in the user backend's
// atfork_prepare() this hung at once.
TEST_F(Fork, AsyncThreadForksWhileItsDoorbellRings) {
  AEM_REQ("AEM-3.6.4", "AEM-3.2.3");
  ASSERT_GT(evsoft(0, soft_h), 0);  // the library is in use on this thread
  ASSERT_EQ(aem_shutdown(), 0);
  int rc = run_in_child(
      [] {
        static std::atomic<uint64_t> ran;
        ran = 0;
        int id = evsoft(0, [](int, uint64_t, uint64_t) { ran.fetch_add(1); });
        CHILD_CHECK(id > 0);
        CHILD_CHECK(aem_set_async(1) == 0);
        const int bell_sig = installed_doorbell();
        CHILD_CHECK(bell_sig > 0);
        const pid_t me = tid();
        std::atomic<bool> stop{false};
        std::thread bell([&stop, id, me, bell_sig] {
          while (!stop.load()) {
            syscall(SYS_tgkill, getpid(), me, bell_sig);
            evsoft_raise(id, 0);
            usleep(50);
          }
        });
        int forked = 0;
        for (; forked < 1000; ++forked) {
          const pid_t pid = fork();
          if (pid == 0) _exit(0);
          if (pid < 0) break;
          int st;
          while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
          }
        }
        stop = true;
        bell.join();
        CHILD_CHECK(forked == 1000);
        CHILD_CHECK(ran.load() > 0);
        return 0;
      },
      60000);
  EXPECT_EQ(rc, 0) << "-1: the forking thread hung (its doorbell handler waited for a lock "
                      "it held)";
}

}  // namespace
