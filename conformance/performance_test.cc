// Conformance: the performance requirements AEM-3.4.1 (event data
// completion: the mechanism manages event memory, or uses the
// application's) and AEM-3.4.2 (direct data copy to a new process).
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "conformance_util.hpp"

namespace {
using namespace conf;

// ===========================================================================
// AEM-3.4.1 Event data completion

class AEM_3_4_1 : public ConformanceTest {};

struct StableRound {
  int client = -1;
  int id = 0;
  int rounds = 0;
  int changed = 0;       // chunks whose bytes changed before the handler returned
  int not_read = 0;      // rounds where the next data was not read in time
  std::vector<uintptr_t> ptrs;
  std::string data;
} g_st;

TEST_F(AEM_3_4_1, c1_DataStableUntilTheHandlerReturnsThenReused) {
  AEM_REQ("AEM-3.4.1");
  g_st = StableRound{};
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  g_st.client = tp.client.get();
  constexpr int kRounds = 60;
  g_st.id = sockasync_read(tp.server.get(), 0, [](int jid, int, const void* d, size_t len) {
    if (!len) return;
    const uint64_t h = fnv(d, len);
    const std::string copy(static_cast<const char*>(d), len);
    g_st.ptrs.push_back(reinterpret_cast<uintptr_t>(d));
    g_st.data += copy;
    ++g_st.rounds;
    if (g_st.rounds < kRounds) {
      // New data arrives and is read by the mechanism while this handler
      // still holds the previous chunk.
      aem_event_stats st{};
      evctl(jid, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st));
      const uint64_t before = st.activations;
      std::string next = pattern_bytes(static_cast<uint64_t>(g_st.rounds) * 1000, 100);
      write_all(g_st.client, next.data(), next.size());
      const uint64_t end = mono_ns() + 5000000000ull;
      while (evctl(jid, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)) == 0 &&
             st.activations == before && mono_ns() < end)
        std::this_thread::yield();
      if (st.activations == before) ++g_st.not_read;
    }
    if (fnv(d, len) != h || memcmp(d, copy.data(), len) != 0) ++g_st.changed;
  });
  ASSERT_GT(g_st.id, 0);
  std::string first = pattern_bytes(0, 100);
  ASSERT_TRUE(write_all(tp.client.get(), first.data(), first.size()));
  ASSERT_TRUE(dispatch_until([] { return g_st.rounds >= kRounds; }, 60000));
  EXPECT_EQ(g_st.changed, 0) << "event data changed while its handler ran";
  EXPECT_EQ(g_st.not_read, 0) << "the mechanism did not read new data during the handler";
  std::set<uintptr_t> distinct(g_st.ptrs.begin(), g_st.ptrs.end());
  EXPECT_LT(distinct.size(), g_st.ptrs.size()) << "event memory was never reused";
  measure("deliveries", static_cast<uint64_t>(g_st.ptrs.size()));
  measure("distinct_data_pointers", static_cast<uint64_t>(distinct.size()));
}

uint64_t g_delivered;
void count_read(int, int fd, const void*, size_t len) {
  if (len) ++g_delivered;
  (void)fd;
}

TEST_F(AEM_3_4_1, c2_ResidentMemoryBoundedOverAMillionDeliveries) {
  AEM_REQ("AEM-3.4.1");
  g_delivered = 0;
  constexpr int kPairs = 100;
  std::vector<TcpPair> pairs(kPairs);
  for (auto& p : pairs) {
    ASSERT_TRUE(p.ok());
    ASSERT_GT(sockasync_read(p.server.get(), 0, count_read), 0);
  }
  // Rounds: one small message per connection, then dispatch them all.
  auto run_until = [&](uint64_t target) {
    while (g_delivered < target) {
      const uint64_t want = g_delivered + kPairs;
      for (auto& p : pairs)
        if (!write_all(p.client.get(), "m", 1)) return false;
      if (!dispatch_until([want] { return g_delivered >= want; })) return false;
    }
    return true;
  };
  ASSERT_TRUE(run_until(10000));
  const long rss_1e4 = rss_bytes();
  const uint64_t t0 = mono_ns();
  ASSERT_TRUE(run_until(1000000));
  const uint64_t dt = mono_ns() - t0;
  const long rss_1e6 = rss_bytes();
  measure("rss_after_1e4_deliveries", static_cast<int64_t>(rss_1e4));
  measure("rss_after_1e6_deliveries", static_cast<int64_t>(rss_1e6));
  measure("rss_growth_bytes", static_cast<int64_t>(rss_1e6 - rss_1e4));
  measure("deliveries", g_delivered);
  measure("ns_per_delivery", static_cast<double>(dt) / static_cast<double>(g_delivered - 10000));
  EXPECT_LT(rss_1e6 - rss_1e4, 4l << 20) << "resident memory grew by " << (rss_1e6 - rss_1e4) << " bytes";
}

// The application's memory: 16 blocks of 256 KiB in one static buffer.
struct AppPool {
  static constexpr size_t kBlock = 256 * 1024, kBlocks = 16;
  alignas(64) static inline unsigned char buf[kBlock * kBlocks];
  std::mutex mu;
  std::vector<size_t> free_blocks;
  size_t allocs = 0, releases = 0, too_big = 0;
  void reset() {
    std::lock_guard lk(mu);
    free_blocks.clear();
    for (size_t i = 0; i < kBlocks; ++i) free_blocks.push_back(i);
    allocs = releases = too_big = 0;
  }
  bool contains(const void* p, size_t len) const {
    auto a = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(buf);
    return a >= lo && a + len <= lo + sizeof buf;
  }
} g_pool;

void* pool_alloc(size_t len, void* opaque) {
  auto* pool = static_cast<AppPool*>(opaque);
  std::lock_guard lk(pool->mu);
  if (len > AppPool::kBlock) {
    ++pool->too_big;
    return nullptr;
  }
  if (pool->free_blocks.empty()) return nullptr;
  size_t b = pool->free_blocks.back();
  pool->free_blocks.pop_back();
  ++pool->allocs;
  return AppPool::buf + b * AppPool::kBlock;
}

void pool_release(void* p, size_t, void* opaque) {
  auto* pool = static_cast<AppPool*>(opaque);
  std::lock_guard lk(pool->mu);
  pool->free_blocks.push_back(static_cast<size_t>(static_cast<unsigned char*>(p) - AppPool::buf) /
                              AppPool::kBlock);
  ++pool->releases;
}

TEST_F(AEM_3_4_1, c3_ApplicationSuppliedMemoryHoldsTheData) {
  AEM_REQ("AEM-3.4.1");
  g_pool.reset();
  static int outside, eof;
  static std::string got;
  outside = eof = 0;
  got.clear();
  ASSERT_EQ(aem_set_allocator(pool_alloc, pool_release, &g_pool), 0);
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  ASSERT_GT(sockasync_read(tp.server.get(), 0,
                           [](int, int, const void* d, size_t len) {
                             if (!len) {
                               ++eof;
                               return;
                             }
                             if (!g_pool.contains(d, len)) ++outside;
                             got.append(static_cast<const char*>(d), len);
                           }),
            0);
  const std::string msg = pattern_bytes(11, 300000);
  std::thread w([&] {
    write_all(tp.client.get(), msg.data(), msg.size());
    tp.client.reset();
  });
  ASSERT_TRUE(dispatch_until([] { return eof > 0; }));
  w.join();
  EXPECT_TRUE(got == msg);
  EXPECT_EQ(outside, 0) << "data pointers outside the application's memory";
  std::lock_guard lk(g_pool.mu);
  EXPECT_GT(g_pool.allocs, 0u);
  EXPECT_EQ(g_pool.releases, g_pool.allocs) << "the mechanism did not give every block back";
  measure("application_blocks_used", static_cast<uint64_t>(g_pool.allocs));
}

// ===========================================================================
// AEM-3.4.2 Direct data copy

class AEM_3_4_2 : public ConformanceTest {};

struct ChildChunk {
  pid_t pid;
  uintptr_t ptr;
  size_t len;
  uint64_t hash;
  uintptr_t map_lo, map_hi;
  int shared;
};

struct LocalChunk {
  uintptr_t ptr;
  size_t len;
  uint64_t hash;
};

struct DirectCopyRun {
  std::vector<ChildChunk> child;
  std::vector<LocalChunk> here;
  std::string here_data;
  std::vector<std::string> messages;
};

Pipe g_rep;
std::vector<LocalChunk>* g_here;
std::string* g_here_data;

// A PROCESS reader and, as the reference for chunk order, a SAME reader on
// the same socket (dispatching gives both the same chunks).
void direct_copy_run(DirectCopyRun& run) {
  g_rep = Pipe();
  g_here = &run.here;
  g_here_data = &run.here_data;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int child_reader = sockasync_read(tp.server.get(), AEM_EXEC_PROCESS, [](int, int, const void* d, size_t len) {
    if (!len) return;
    ChildChunk c{};
    c.pid = getpid();
    c.ptr = reinterpret_cast<uintptr_t>(d);
    c.len = len;
    c.hash = fnv(d, len);
    Mapping m = mapping_of(d);
    c.map_lo = m.lo;
    c.map_hi = m.hi;
    c.shared = m.shared;
    write_all(g_rep.wr.get(), &c, sizeof c);
  });
  int local_reader = sockasync_read(tp.server.get(), 0, [](int, int, const void* d, size_t len) {
    if (!len) return;
    g_here->push_back({reinterpret_cast<uintptr_t>(d), len, fnv(d, len)});
    g_here_data->append(static_cast<const char*>(d), len);
  });
  ASSERT_GT(child_reader, 0);
  ASSERT_GT(local_reader, 0);
  size_t total = 0, child_bytes = 0;
  for (size_t size : {size_t{1}, size_t{1000}, size_t{4096}, size_t{65536}}) {
    run.messages.push_back(pattern_bytes(size * 3, size));
    const std::string& msg = run.messages.back();
    ASSERT_TRUE(write_all(tp.client.get(), msg.data(), msg.size()));
    total += size;
    ASSERT_TRUE(dispatch_until([&] { return run.here_data.size() >= total; }));
    while (child_bytes < total) {
      ChildChunk c{};
      ASSERT_TRUE(read_exact(g_rep.rd.get(), &c, sizeof c)) << "the child's report did not come";
      run.child.push_back(c);
      child_bytes += c.len;
    }
  }
}

TEST_F(AEM_3_4_2, c1_ChildHandlerGetsExactlyTheBytesInOrder) {
  AEM_REQ("AEM-3.4.2");
  DirectCopyRun run;
  direct_copy_run(run);
  if (HasFatalFailure()) return;
  std::string sent;
  for (auto& m : run.messages) sent += m;
  EXPECT_TRUE(run.here_data == sent);
  // Every chunk the children got is one of the reference chunks (same
  // length and contents), each once: so the child handlers, in the order of
  // the chunks, got exactly the bytes sent.
  std::multiset<std::tuple<uintptr_t, size_t, uint64_t>> ref, kid;
  for (auto& h : run.here) ref.emplace(h.ptr, h.len, h.hash);
  size_t kid_bytes = 0;
  for (auto& c : run.child) {
    kid.emplace(c.ptr, c.len, c.hash);
    kid_bytes += c.len;
    EXPECT_NE(c.pid, getpid());
  }
  EXPECT_EQ(kid_bytes, sent.size());
  EXPECT_EQ(kid, ref) << "the children's chunks differ from what was sent";
  measure("chunks", static_cast<uint64_t>(run.child.size()));
}

TEST_F(AEM_3_4_2, c2_ChildDataPointerLiesInTheSharedArena) {
  AEM_REQ("AEM-3.4.2");
  DirectCopyRun run;
  direct_copy_run(run);
  if (HasFatalFailure()) return;
  ASSERT_FALSE(run.child.empty());
  for (auto& c : run.child) {
    EXPECT_EQ(c.shared, 1) << "the child's data is not in a shared mapping";
    EXPECT_NE(c.map_lo, 0u);
    Mapping here = mapping_of(reinterpret_cast<const void*>(c.ptr));
    EXPECT_TRUE(here.shared) << "the parent does not map the child's data address shared";
    EXPECT_EQ(here.lo, c.map_lo) << "not the same mapping in parent and child";
    EXPECT_EQ(here.hi, c.map_hi);
  }
  measure("arena_mapping_bytes", static_cast<uint64_t>(run.child[0].map_hi - run.child[0].map_lo));
}

}  // namespace
