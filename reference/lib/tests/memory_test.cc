// Event data memory (AEM-3.4.1): managed by the library by default;
// aem_set_allocator() lets the application supply its own; running out of
// it is reported (AEM-3.5.2) and loses nothing (AEM-3.5.1).
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Memory : public AemTest {};

struct AllocLog {
  std::mutex mu;
  std::set<uintptr_t> live;
  size_t allocs = 0, releases = 0, bad_release = 0;
  bool fail = false;
  int opaque_tag = 0x5eed;
};
AllocLog g_log;

void* test_alloc(size_t len, void* opaque) {
  auto* log = static_cast<AllocLog*>(opaque);
  std::lock_guard lk(log->mu);
  if (log->fail || log->opaque_tag != 0x5eed) return nullptr;
  void* p = malloc(len ? len : 1);
  if (p) {
    log->live.insert(reinterpret_cast<uintptr_t>(p));
    ++log->allocs;
  }
  return p;
}

void test_release(void* p, size_t, void* opaque) {
  auto* log = static_cast<AllocLog*>(opaque);
  std::lock_guard lk(log->mu);
  if (!log->live.erase(reinterpret_cast<uintptr_t>(p))) ++log->bad_release;
  ++log->releases;
  free(p);
}

void reset_log() {
  std::lock_guard lk(g_log.mu);
  g_log.live.clear();
  g_log.allocs = g_log.releases = g_log.bad_release = 0;
  g_log.fail = false;
}

TEST_F(Memory, SetAllocatorArguments) {
  AEM_REQ("AEM-3.4.1");
  EXPECT_AEM_ERR(aem_set_allocator(test_alloc, nullptr, &g_log), EINVAL);
  EXPECT_AEM_ERR(aem_set_allocator(nullptr, test_release, &g_log), EINVAL);
  EXPECT_EQ(aem_set_allocator(test_alloc, test_release, &g_log), 0);
  EXPECT_EQ(aem_set_allocator(nullptr, nullptr, nullptr), 0);
}

struct Seen {
  std::string data;
  std::vector<uintptr_t> ptrs;
  int eof = 0;
  bool in_live = true;  // every pointer was a live allocation during its handler
};
Seen g_seen;

void read_rec(int, int, const void* d, size_t len) {
  if (len == 0) {
    ++g_seen.eof;
    return;
  }
  g_seen.data.append(static_cast<const char*>(d), len);
  g_seen.ptrs.push_back(reinterpret_cast<uintptr_t>(d));
}

void read_rec_checked(int jid, int fd, const void* d, size_t len) {
  if (len) {
    std::lock_guard lk(g_log.mu);
    if (!g_log.live.count(reinterpret_cast<uintptr_t>(d))) g_seen.in_live = false;
  }
  read_rec(jid, fd, d, len);
}

TEST_F(Memory, ApplicationAllocatorHoldsReadDataAndLibraryReleasesIt) {
  AEM_REQ("AEM-3.4.1");
  reset_log();
  g_seen = Seen{};
  ASSERT_EQ(aem_set_allocator(test_alloc, test_release, &g_log), 0);
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = sockasync_read(tp.server.get(), 0, read_rec_checked);
  ASSERT_GT(id, 0);
  std::string msg;
  for (int i = 0; i < 2000; ++i) msg += std::to_string(i) + ",";
  ASSERT_TRUE(write_all(tp.client.get(), msg.data(), msg.size()));
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return g_seen.eof > 0; }));
  EXPECT_EQ(g_seen.data, msg);
  EXPECT_TRUE(g_seen.in_live) << "data not in memory from the application's allocator";
  std::lock_guard lk(g_log.mu);
  EXPECT_GE(g_log.allocs, g_seen.ptrs.size());
  EXPECT_EQ(g_log.releases, g_log.allocs) << "the library did not release every block";
  EXPECT_EQ(g_log.bad_release, 0u);
  EXPECT_TRUE(g_log.live.empty());
}

TEST_F(Memory, DefaultArenaDataNotFromTheApplication) {
  AEM_REQ("AEM-3.4.1");
  reset_log();
  g_seen = Seen{};
  // Set, then restore the arena: the application's allocator is not used.
  ASSERT_EQ(aem_set_allocator(test_alloc, test_release, &g_log), 0);
  ASSERT_EQ(aem_set_allocator(nullptr, nullptr, nullptr), 0);
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  ASSERT_GT(sockasync_read(tp.server.get(), 0, read_rec), 0);
  ASSERT_TRUE(write_all(tp.client.get(), "arena", 5));
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return g_seen.eof > 0; }));
  EXPECT_EQ(g_seen.data, "arena");
  std::lock_guard lk(g_log.mu);
  EXPECT_EQ(g_log.allocs, 0u);
}

// No memory for event data: -ENOMEM through aem_on_error(), the data waits
// in the socket, and once memory is available again (here: the application
// restores the arena from its error handler) every byte is delivered.
TEST_F(Memory, AllocatorFailureReportedThenDataDeliveredWhenMemoryReturns) {
  AEM_REQ("AEM-3.5.2", "AEM-3.5.1", "AEM-3.4.1");
  reset_log();
  g_seen = Seen{};
  static std::vector<std::pair<int, int>> errs;
  static size_t bytes_before_error;
  errs.clear();
  bytes_before_error = 0;
  {
    std::lock_guard lk(g_log.mu);
    g_log.fail = true;
  }
  ASSERT_EQ(aem_on_error([](int jid, int e) {
              if (errs.empty()) bytes_before_error = g_seen.data.size();
              errs.emplace_back(jid, e);
              if (e == -ENOMEM) aem_set_allocator(nullptr, nullptr, nullptr);
            }),
            0);
  ASSERT_EQ(aem_set_allocator(test_alloc, test_release, &g_log), 0);
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = sockasync_read(tp.server.get(), 0, read_rec);
  ASSERT_GT(id, 0);
  ASSERT_TRUE(write_all(tp.client.get(), "waits-in-the-socket", 19));
  ASSERT_TRUE(dispatch_until([] { return !errs.empty(); }));
  EXPECT_EQ(errs[0].first, id);
  EXPECT_EQ(errs[0].second, -ENOMEM);
  EXPECT_EQ(bytes_before_error, 0u);  // nothing was delivered without memory
  tp.client.reset();
  EXPECT_TRUE(dispatch_until([] { return g_seen.eof > 0; }, 5000))
      << "data never delivered after memory became available again";
  EXPECT_EQ(g_seen.data, "waits-in-the-socket");
}

}  // namespace
