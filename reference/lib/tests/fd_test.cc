// evfd(): any pollable fd; errors; level versus edge triggers (PRF.5.0).
#include <sys/eventfd.h>
#include <sys/stat.h>

#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class FdEvents : public AemTest {};

TEST_F(FdEvents, Errors) {
  AEM_REQ("PRF.5.0", "AEM-3.1.3");
  Pipe p;
  EXPECT_AEM_ERR(evfd(-1, POLLIN, 0, noop_fd), EBADF);
  const int closed = 1 << 20;  // above RLIMIT_NOFILE: never an open fd
  EXPECT_AEM_ERR(evfd(closed, POLLIN, 0, noop_fd), EBADF);
  EXPECT_AEM_ERR(evfd(p.rd.get(), 0, 0, noop_fd), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), 0x40000000u, 0, noop_fd), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN | 0x100000u, 0, noop_fd), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, AEM_EDGE | AEM_LEVEL, noop_fd), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, 0x800u, noop_fd), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, 3u, noop_fd), EINVAL);
  // A regular file does not support poll.
  char path[] = "/tmp/aem_fd_test_XXXXXX";
  Fd f(mkstemp(path));
  ASSERT_TRUE(f);
  unlink(path);
  EXPECT_AEM_ERR(evfd(f.get(), POLLIN, 0, noop_fd), EPERM);
  // Explicit AEM_LEVEL and AEM_EDGE alone are fine.
  EXPECT_GT(evfd(p.rd.get(), POLLIN, AEM_LEVEL, noop_fd), 0);
  EXPECT_GT(evfd(p.rd.get(), POLLIN, AEM_EDGE, noop_fd), 0);
}

std::vector<unsigned> g_rev;

TEST_F(FdEvents, LevelCalledAgainWhileStillReadable) {
  AEM_REQ("PRF.5.0", "AEM-3.1.2");
  g_rev.clear();
  Pipe p;
  // The first call does not drain; the second does.
  int id = evfd(p.rd.get(), POLLIN, 0, [](int, int fd, unsigned rev) {
    g_rev.push_back(rev);
    if (g_rev.size() >= 2) {
      char buf[64];
      while (read(fd, buf, sizeof buf) == static_cast<ssize_t>(sizeof buf)) {
      }
    }
  });
  ASSERT_GT(id, 0);
  ASSERT_TRUE(write_all(p.wr.get(), "abc", 3));
  ASSERT_TRUE(dispatch_until([] { return g_rev.size() >= 2; }));
  EXPECT_EQ(aem_dispatch(30), 0) << "called again after the fd was drained";
  ASSERT_EQ(g_rev.size(), 2u);
  EXPECT_TRUE(g_rev[0] & POLLIN);
  EXPECT_TRUE(g_rev[1] & POLLIN);
  // New data: called again.
  ASSERT_TRUE(write_all(p.wr.get(), "d", 1));
  ASSERT_TRUE(dispatch_until([] { return g_rev.size() >= 3; }));
}

TEST_F(FdEvents, LevelWritableUntilTheHandlerDisablesItself) {
  AEM_REQ("PRF.5.0", "AEM-3.1.7");
  static int calls;
  calls = 0;
  Pipe p;
  int id = evfd(p.wr.get(), POLLOUT, AEM_LEVEL, [](int jid, int, unsigned rev) {
    if (rev & POLLOUT) ++calls;
    if (calls == 5) evctl(jid, AEM_CTL_DISABLE, 0);
  });
  ASSERT_GT(id, 0);
  ASSERT_TRUE(dispatch_until([] { return calls >= 5; }));
  EXPECT_EQ(aem_dispatch(30), 0);
  EXPECT_EQ(calls, 5);
}

TEST_F(FdEvents, EdgeOncePerNewWrite) {
  AEM_REQ("PRF.5.0");
  g_rev.clear();
  Pipe p;
  // The handler never reads: edge-triggered, it hears of each new arrival once.
  int id = evfd(p.rd.get(), POLLIN, AEM_EDGE, [](int, int, unsigned rev) { g_rev.push_back(rev); });
  ASSERT_GT(id, 0);
  ASSERT_TRUE(write_all(p.wr.get(), "a", 1));
  ASSERT_TRUE(dispatch_until([] { return g_rev.size() >= 1; }));
  EXPECT_EQ(aem_dispatch(30), 0) << "edge-triggered called again without a new write";
  EXPECT_EQ(g_rev.size(), 1u);
  ASSERT_TRUE(write_all(p.wr.get(), "b", 1));
  ASSERT_TRUE(dispatch_until([] { return g_rev.size() >= 2; }));
  EXPECT_EQ(aem_dispatch(30), 0);
  EXPECT_EQ(g_rev.size(), 2u);
  for (unsigned r : g_rev) EXPECT_TRUE(r & POLLIN);
}

TEST_F(FdEvents, EventfdAndHangup) {
  AEM_REQ("PRF.5.0", "AEM-3.1.2");
  // An eventfd: the handler reads the counter.
  static uint64_t total;
  total = 0;
  Fd efd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  ASSERT_TRUE(efd);
  int id = evfd(efd.get(), POLLIN, 0, [](int, int fd, unsigned) {
    uint64_t v;
    if (read(fd, &v, sizeof v) == sizeof v) total += v;
  });
  ASSERT_GT(id, 0);
  for (uint64_t v : {3ull, 4ull}) ASSERT_EQ(write(efd.get(), &v, sizeof v), 8);
  ASSERT_TRUE(dispatch_until([] { return total >= 7; }));
  EXPECT_EQ(total, 7u);
  // A pipe whose writer closes: POLLHUP reaches the handler (never filtered
  // out), which cleans its registration.
  static unsigned hup;
  hup = 0;
  Pipe p;
  int h = evfd(p.rd.get(), POLLIN, 0, [](int jid, int, unsigned rev) {
    if (rev & POLLHUP) {
      hup = rev;
      evctl(jid, AEM_CTL_CLEAN, 0);
    }
  });
  ASSERT_GT(h, 0);
  p.wr.reset();
  ASSERT_TRUE(dispatch_until([] { return hup != 0; }));
  EXPECT_TRUE(hup & POLLHUP);
  EXPECT_EQ(aem_dispatch(30), 0);
}

TEST_F(FdEvents, ApplicationMayCloseItsFdAfterCleaning) {
  AEM_REQ("PRF.5.0", "AEM-3.1.7");
  static int calls;
  calls = 0;
  Pipe p;
  int id = evfd(p.rd.get(), POLLIN, 0, [](int, int, unsigned) { ++calls; });
  ASSERT_GT(id, 0);
  ASSERT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
  EXPECT_EQ(aem_dispatch(30), 0);
  EXPECT_EQ(calls, 0);
}

}  // namespace
