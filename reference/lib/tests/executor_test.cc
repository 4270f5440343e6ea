// Executors: THREAD and PROCESS (AEM-3.1.6), atomicity of handlers in one
// execution context (AEM-3.6.2), direct data copy to a PROCESS child
// (AEM-3.4.2).
#include <inttypes.h>

#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Executor : public AemTest {};

TEST_F(Executor, ThreadExecutorRunsOnAnotherThread) {
  AEM_REQ("AEM-3.1.6", "AEM-3.2.3");
  static std::atomic<pid_t> ran_on;
  static std::atomic<uint64_t> value;
  static Counter calls;
  ran_on = 0;
  value = 0;
  calls.reset();
  int id = evsoft(AEM_EXEC_THREAD, [](int, uint64_t v, uint64_t) {
    ran_on = tid();
    value = v;
    calls.add();
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 42), 0);
  EXPECT_EQ(aem_dispatch(0), 0);  // not this thread's to run
  ASSERT_TRUE(calls.wait_for(1));
  EXPECT_NE(ran_on.load(), tid());
  EXPECT_NE(ran_on.load(), 0);
  EXPECT_EQ(value.load(), 42u);
  // Timers and fd events run there too.
  static std::atomic<pid_t> timer_on;
  timer_on = 0;
  static Counter tcalls;
  tcalls.reset();
  timespec v = ts_of(1000000);
  ASSERT_GT(evtimer(&v, nullptr, AEM_EXEC_THREAD, [](int, uint64_t) {
              timer_on = tid();
              tcalls.add();
            }),
            0);
  ASSERT_TRUE(tcalls.wait_for(1));
  EXPECT_NE(timer_on.load(), tid());
}

struct ChildReport {
  pid_t pid;
  pid_t ppid;
  uint64_t value;
  uint64_t occ;
};

TEST_F(Executor, ProcessExecutorRunsInANewProcess) {
  AEM_REQ("AEM-3.1.6", "AEM-3.2.3");
  static Pipe rep;
  rep = Pipe();
  int id = evsoft(AEM_EXEC_PROCESS, [](int, uint64_t v, uint64_t occ) {
    ChildReport r{getpid(), getppid(), v, occ};
    write_all(rep.wr.get(), &r, sizeof r);
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 7), 0);
  ChildReport r{};
  ASSERT_TRUE(read_exact(rep.rd.get(), &r, sizeof r));
  EXPECT_NE(r.pid, getpid());
  EXPECT_EQ(r.ppid, getpid());
  EXPECT_EQ(r.value, 7u);
  EXPECT_EQ(r.occ, 1u);
  // One process per activation.
  ASSERT_EQ(evsoft_raise(id, 8), 0);
  ChildReport r2{};
  ASSERT_TRUE(read_exact(rep.rd.get(), &r2, sizeof r2));
  EXPECT_NE(r2.pid, r.pid);
  EXPECT_EQ(r2.value, 8u);
}

TEST_F(Executor, ProcessExecutorAcceptedFdBelongsToTheChild) {
  AEM_REQ("AEM-3.1.6", "AEM-3.1.2");
  Fd l = tcp_listener();
  ASSERT_TRUE(l);
  int id = sockasync_accept(l.get(), nullptr, nullptr, AEM_EXEC_PROCESS, [](int, int, int nfd) {
    const char msg[] = "from-child";
    write_all(nfd, msg, sizeof msg - 1);
    close(nfd);
  });
  ASSERT_GT(id, 0);
  Fd c = tcp_connect(local_port(l.get()));
  ASSERT_TRUE(c);
  char buf[10];
  ASSERT_TRUE(read_exact(c.get(), buf, sizeof buf));
  EXPECT_EQ(std::string(buf, sizeof buf), "from-child");
  // The parent closed its copy, the child exited: EOF.
  char x;
  ASSERT_TRUE(wait_readable(c.get()));
  EXPECT_EQ(read(c.get(), &x, 1), 0);
}

// --- AEM-3.6.2: handlers of one execution context never overlap.

TEST_F(Executor, ThreadExecutorHandlersNeverOverlap) {
  AEM_REQ("AEM-3.6.2", "AEM-3.5.1");
  constexpr int kRegs = 3, kThreads = 4, kEach = 3000;
  static std::atomic<bool> inside;
  static std::atomic<int> overlaps;
  static Counter total;
  inside = false;
  overlaps = 0;
  total.reset();
  auto h = [](int, uint64_t, uint64_t occ) {
    if (inside.exchange(true)) ++overlaps;
    for (int i = 0; i < 50; ++i) {
      asm volatile("" ::: "memory");
    }
    inside = false;
    total.add(occ);
  };
  int ids[kRegs];
  ids[0] = evsoft(AEM_EXEC_THREAD | AEM_PER_OCCURRENCE, h);
  ids[1] = evsoft(AEM_EXEC_THREAD, h);
  ids[2] = evsoft(AEM_EXEC_THREAD | AEM_PRIO(60) | AEM_PER_OCCURRENCE, h);
  for (int id : ids) ASSERT_GT(id, 0);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&ids, t] {
      for (int i = 0; i < kEach; ++i) evsoft_raise(ids[(i + t) % kRegs], 0);
    });
  for (auto& t : ts) t.join();
  ASSERT_TRUE(total.wait_for(kThreads * kEach, 60000));
  EXPECT_EQ(total.get(), static_cast<uint64_t>(kThreads * kEach));
  EXPECT_EQ(overlaps.load(), 0);
}

TEST_F(Executor, SameExecutorHandlersNeverOverlapWithAsync) {
  AEM_REQ("AEM-3.6.2");
  // Asynchronous delivery interrupts the main flow, but never a handler.
  static std::atomic<bool> inside;
  static std::atomic<int> overlaps;
  static std::atomic<uint64_t> total;
  inside = false;
  overlaps = 0;
  total = 0;
  int id = evsoft(AEM_PER_OCCURRENCE, [](int, uint64_t, uint64_t occ) {
    if (inside.exchange(true)) ++overlaps;
    for (int i = 0; i < 200; ++i) {
      asm volatile("" ::: "memory");
    }
    inside = false;
    total += occ;
  });
  ASSERT_GT(id, 0);
  ASSERT_EQ(aem_set_async(1), 0);
  constexpr uint64_t kN = 2000;
  std::thread t([id] {
    for (uint64_t i = 0; i < kN; ++i) evsoft_raise(id, i);
  });
  // Meanwhile this thread also dispatches.
  dispatch_until([] { return total.load() >= kN; }, 60000);
  t.join();
  ASSERT_EQ(aem_set_async(0), 0);
  dispatch_until([] { return total.load() >= kN; });
  EXPECT_EQ(total.load(), kN);
  EXPECT_EQ(overlaps.load(), 0);
}

// --- AEM-3.4.2: direct data copy to a PROCESS child.

struct DataReport {
  pid_t pid;
  uintptr_t ptr;
  size_t len;
  uint64_t hash;  // FNV-1a of the chunk as the child sees it
  int shared;     // the pointer lies in a MAP_SHARED mapping of the child
};

uint64_t fnv(const void* d, size_t len) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = static_cast<const unsigned char*>(d);
  for (size_t i = 0; i < len; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

int in_shared_mapping(const void* p) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  auto a = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    uintptr_t lo = 0, hi = 0;
    char perms[5] = {};
    if (sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " %4s", &lo, &hi, perms) != 3) continue;
    if (a >= lo && a < hi) return perms[3] == 's' ? 1 : 0;
  }
  return -1;
}

struct LocalChunk {
  uintptr_t ptr;
  size_t len;
  uint64_t hash;
};

TEST_F(Executor, ProcessChildSeesReadDataInTheSharedArenaWithoutCopy) {
  AEM_REQ("AEM-3.4.2", "AEM-3.4.1", "AEM-3.1.6");
  static Pipe rep;
  static std::vector<LocalChunk> here;
  static std::string here_data;
  rep = Pipe();
  here.clear();
  here_data.clear();
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  // One reader in a new process, one here: dispatching gives both the same
  // chunk of event data.
  int child_reader = sockasync_read(tp.server.get(), AEM_EXEC_PROCESS, [](int, int, const void* d, size_t len) {
    if (len == 0) return;
    DataReport r{};
    r.pid = getpid();
    r.ptr = reinterpret_cast<uintptr_t>(d);
    r.len = len;
    r.hash = fnv(d, len);
    r.shared = in_shared_mapping(d);
    write_all(rep.wr.get(), &r, sizeof r);
  });
  int local_reader = sockasync_read(tp.server.get(), 0, [](int, int, const void* d, size_t len) {
    if (!len) return;
    here.push_back({reinterpret_cast<uintptr_t>(d), len, fnv(d, len)});
    here_data.append(static_cast<const char*>(d), len);
  });
  ASSERT_GT(child_reader, 0);
  ASSERT_GT(local_reader, 0);
  size_t total = 0;
  std::vector<DataReport> reports;
  for (size_t size : {size_t{1}, size_t{1000}, size_t{4096}, size_t{65536}}) {
    SCOPED_TRACE(size);
    std::string msg(size, '\0');
    for (size_t i = 0; i < size; ++i) msg[i] = static_cast<char>('a' + (i * 7 + size) % 26);
    ASSERT_TRUE(write_all(tp.client.get(), msg.data(), msg.size()));
    const size_t before = here_data.size();
    total += size;
    ASSERT_TRUE(dispatch_until([&] { return here_data.size() >= total; }));
    EXPECT_EQ(here_data.substr(before), msg);
    // The children saw as many bytes; wait for their reports.
    size_t child_bytes = 0;
    for (auto& r : reports) child_bytes += r.len;
    while (child_bytes < total) {
      DataReport r{};
      ASSERT_TRUE(read_exact(rep.rd.get(), &r, sizeof r));
      reports.push_back(r);
      child_bytes += r.len;
    }
    EXPECT_EQ(child_bytes, total);
  }
  for (const auto& r : reports) {
    EXPECT_NE(r.pid, getpid());
    EXPECT_EQ(r.shared, 1) << "the child's data pointer is not in a shared mapping";
    bool same = false;
    for (auto& h : here) same |= h.ptr == r.ptr && h.len == r.len && h.hash == r.hash;
    EXPECT_TRUE(same) << "the child's chunk (" << r.len
                      << " bytes) is not the parent's at the same address: a copy was made";
  }
  // The parent's pointer is in a shared mapping as well (the arena).
  ASSERT_FALSE(here.empty());
  EXPECT_EQ(in_shared_mapping(reinterpret_cast<const void*>(here[0].ptr)), 1);
}

}  // namespace
