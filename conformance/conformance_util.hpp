// Shared helpers of the conformance suite (aem_conformance).
//
// Builds on the library tests' helpers (reference/lib/tests/test_util.hpp:
// pipes, loopback TCP, dispatch_until, Counter, run_in_child, EXPECT_AEM_ERR)
// and adds what certification needs: the backend in use, measurements
// recorded as "measure.<name>" properties, latency percentiles, an
// allocation counter, /proc helpers and a busy-loop load generator.
//
// Rules of the suite (see conformance/CMakeLists.txt):
//  - a test is named after its requirement and criterion
//    (AEM_3_5_1.c2_ExactCountsFromManyThreads) and tagged AEM_REQ("AEM-3.5.1")
//    as its first statement;
//  - synchronisation is deterministic (pipes, counters, joins); dispatch and
//    poll timeouts are upper bounds only; nothing sleeps to synchronise;
//  - where a criterion cannot hold on the backend in use, the test calls
//    GTEST_SKIP() with the reason: a skip is never a pass;
//  - every test starts and ends without a context (aem_shutdown()); policy
//    from the environment is set in a forked child only.
#pragma once

#include <fcntl.h>
#include <inttypes.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "aem/aem.hpp"
#include "kmod_param.hpp"
#include "test_util.hpp"

namespace conf {
using namespace aemtest;

// evctl() pointer arguments.
inline unsigned long ptr(const void* p) { return reinterpret_cast<unsigned long>(p); }

// The backend the context runs on ("user", "kmod"), or "" when none starts.
// Asked once, before the first test (behavior_test.cc's environment), with
// the context released again: asking inside a test would start a context
// that a forked child then inherits with the parent's policy.
inline std::string& backend_cache() {
  static std::string b;
  return b;
}
inline std::string backend() {
  if (backend_cache().empty()) {
    const char* b = aem_backend();
    backend_cache() = b ? b : "";
  }
  return backend_cache();
}
inline bool on_user_backend() { return backend() == "user"; }
inline bool on_kmod_backend() { return backend() == "kmod"; }

// Records a measurement: property "measure.<name>" in the XML and JSON.
inline void measure(const std::string& name, const std::string& value) {
  ::testing::Test::RecordProperty("measure." + name, value);
}
inline void measure(const std::string& name, uint64_t value) { measure(name, std::to_string(value)); }
inline void measure(const std::string& name, int64_t value) { measure(name, std::to_string(value)); }
inline void measure(const std::string& name, int value) { measure(name, std::to_string(value)); }
inline void measure(const std::string& name, double value) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.6g", value);
  measure(name, std::string(buf));
}

// Percentiles of a sample set (nearest rank).
struct Percentiles {
  size_t samples = 0;
  uint64_t p50 = 0, p99 = 0, p999 = 0, max = 0;
};

inline Percentiles percentiles(std::vector<uint64_t> v) {
  Percentiles p;
  p.samples = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    size_t i = static_cast<size_t>(q * static_cast<double>(v.size()));
    return v[std::min(i, v.size() - 1)];
  };
  p.p50 = at(0.50);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  p.max = v.back();
  return p;
}

// Records samples, p50, p99, p99.9 and max of a latency set as
// measure.<prefix>_{samples,p50,p99,p999,max} (ns).
inline void measure_latency(const std::string& prefix, const Percentiles& p) {
  measure(prefix + "_samples", static_cast<uint64_t>(p.samples));
  measure(prefix + "_p50", p.p50);
  measure(prefix + "_p99", p.p99);
  measure(prefix + "_p999", p.p999);
  measure(prefix + "_max", p.max);
}

// ---------------------------------------------------------------------------
// Allocation counting. behavior_test.cc replaces the global operator new,
// which libaem (linked statically, written in C++) uses for every
// allocation; counting is per thread and only while enabled.

struct AllocCount {
  static uint64_t& count();   // allocations made by this thread while counting
  static bool& enabled();     // this thread counts
  static std::atomic<uint64_t>& global();   // all threads while global counting is on
  static std::atomic<bool>& global_enabled();
};

class CountAllocations {
 public:
  CountAllocations() {
    AllocCount::count() = 0;
    AllocCount::enabled() = true;
  }
  ~CountAllocations() { AllocCount::enabled() = false; }
  uint64_t count() const { return AllocCount::count(); }
};

class CountAllAllocations {
 public:
  CountAllAllocations() {
    AllocCount::global() = 0;
    AllocCount::global_enabled() = true;
  }
  ~CountAllAllocations() { AllocCount::global_enabled() = false; }
  uint64_t count() const { return AllocCount::global().load(); }
};

// ---------------------------------------------------------------------------
// /proc and scheduling helpers.

inline long rss_bytes() {
  std::ifstream f("/proc/self/statm");
  long size = 0, rss = 0;
  f >> size >> rss;
  return rss * sysconf(_SC_PAGESIZE);
}

inline long voluntary_switches() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return ru.ru_nvcsw;
}

inline int nice_of(pid_t t) {
  errno = 0;
  return getpriority(PRIO_PROCESS, static_cast<id_t>(t));
}

// Fields of /proc/self/task/<tid>/stat: priority (18) and nice (19), policy (41).
struct TaskSched {
  long priority = 0, nice = 0, rt_priority = 0, policy = -1;
  bool ok = false;
};

inline TaskSched task_sched(pid_t t) {
  TaskSched s;
  std::ifstream f("/proc/self/task/" + std::to_string(t) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return s;
  auto close = line.rfind(')');
  if (close == std::string::npos) return s;
  std::istringstream in(line.substr(close + 2));
  std::vector<std::string> fields;
  std::string x;
  while (in >> x) fields.push_back(x);
  // fields[0] is field 3 (state).
  auto field = [&](size_t n) { return n - 3 < fields.size() ? std::stol(fields[n - 3]) : 0L; };
  if (fields.size() < 39) return s;
  s.priority = field(18);
  s.nice = field(19);
  s.rt_priority = field(40);
  s.policy = field(41);
  s.ok = true;
  return s;
}

// True when this thread may lower its nice value (CAP_SYS_NICE or RLIMIT_NICE).
inline bool can_lower_nice() {
  const int base = nice_of(tid());
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(tid()), base - 1) != 0) return false;
  setpriority(PRIO_PROCESS, static_cast<id_t>(tid()), base);
  return true;
}

// Restores this thread's nice value on destruction.
struct KeepNice {
  int saved = nice_of(tid());
  ~KeepNice() { setpriority(PRIO_PROCESS, static_cast<id_t>(tid()), saved); }
};

// One thread per CPU spinning until destroyed (a CPU hog per CPU).
class BusyLoops {
 public:
  explicit BusyLoops(unsigned n = std::max(1u, std::thread::hardware_concurrency())) {
    for (unsigned i = 0; i < n; ++i)
      threads_.emplace_back([this] {
        ready_.fetch_add(1);
        while (!stop_.load(std::memory_order_relaxed)) {
          asm volatile("" ::: "memory");
        }
      });
    while (ready_.load() < n) std::this_thread::yield();
  }
  ~BusyLoops() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }
  unsigned count() const { return static_cast<unsigned>(threads_.size()); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<unsigned> ready_{0};
  std::vector<std::thread> threads_;
};

// ---------------------------------------------------------------------------
// Data helpers.

inline uint64_t fnv(const void* d, size_t len, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(d);
  for (size_t i = 0; i < len; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

inline unsigned char pattern(uint64_t i) {
  return static_cast<unsigned char>((i * 131 + (i >> 9)) & 0xff);
}

inline std::string pattern_bytes(uint64_t offset, size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(pattern(offset + i));
  return s;
}

// The mapping of /proc/self/maps holding address a: [lo, hi) and whether it
// is shared ('s'). lo == hi == 0 when none does.
struct Mapping {
  uintptr_t lo = 0, hi = 0;
  bool shared = false;
};

inline Mapping mapping_of(const void* p) {
  Mapping m;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  auto a = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    uintptr_t lo = 0, hi = 0;
    char perms[5] = {};
    if (sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " %4s", &lo, &hi, perms) != 3) continue;
    if (a >= lo && a < hi) {
      m.lo = lo;
      m.hi = hi;
      m.shared = perms[3] == 's';
      return m;
    }
  }
  return m;
}

// Runs fn in a forked child; the child's measurements come back through a
// pipe as "name=value" lines and are recorded in the parent. Returns the
// child's status as run_in_child does.
class ChildReport {
 public:
  ChildReport() = default;
  // In the child: one measurement.
  void put(const std::string& name, const std::string& value) {
    std::string line = name + "=" + value + "\n";
    write_all(pipe_.wr.get(), line.data(), line.size());
  }
  void put(const std::string& name, uint64_t v) { put(name, std::to_string(v)); }
  void put(const std::string& name, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.6g", v);
    put(name, std::string(buf));
  }
  // In the parent, after the child ended: record every line; returns them.
  std::vector<std::pair<std::string, std::string>> collect() {
    pipe_.wr.reset();
    std::string all;
    char buf[4096];
    for (;;) {
      pollfd p{pipe_.rd.get(), POLLIN, 0};
      if (poll(&p, 1, 0) <= 0) break;
      ssize_t n = read(pipe_.rd.get(), buf, sizeof buf);
      if (n <= 0) break;
      all.append(buf, static_cast<size_t>(n));
    }
    std::vector<std::pair<std::string, std::string>> out;
    std::istringstream in(all);
    std::string line;
    while (std::getline(in, line)) {
      auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      out.emplace_back(line.substr(0, eq), line.substr(eq + 1));
      measure(line.substr(0, eq), line.substr(eq + 1));
    }
    return out;
  }
  static std::string get(const std::vector<std::pair<std::string, std::string>>& kv,
                         const std::string& name) {
    for (auto& [k, v] : kv)
      if (k == name) return v;
    return "";
  }

 private:
  Pipe pipe_;
};

// ---------------------------------------------------------------------------
// Kernel policy of the kmod backend. The administrator's policy and limits
// are the module parameters of aem.ko (/sys/module/aem/parameters/<name>,
// root-only); the user backend reads its policy from the environment
// instead (set in a forked child). KmodPolicy (kmod_param.hpp's KmodParam)
// restores each value in the parent: a child that crashes cannot leave the
// policy changed for later tests.

// Several parameters, each restored when the policy goes out of scope.
class KmodPolicy {
 public:
  bool set(const std::string& name, const std::string& value) {
    params_.push_back(std::make_unique<KmodParam>(name, value));
    if (!params_.back()->ok()) return false;
    ::testing::Test::RecordProperty("policy." + name, value);
    return true;
  }
  ~KmodPolicy() { reset(); }
  // Restores every parameter now, the last set first.
  void reset() {
    while (!params_.empty()) params_.pop_back();
  }

 private:
  std::vector<std::unique_ptr<KmodParam>> params_;
};

// What the loaded modules offer (AEM_IOC_INFO on a context of its own, not
// the library's). Zeroed when /dev/aem cannot be opened.
inline aem_info kmod_info() {
  aem_info info{};
  info.size = sizeof info;
  int fd = open("/dev/aem", O_RDWR | O_CLOEXEC);
  if (fd < 0) return aem_info{};
  if (ioctl(fd, AEM_IOC_INFO, &info) != 0) info = aem_info{};
  close(fd);
  return info;
}

// Kernel memory held in slab caches (/proc/meminfo Slab), bytes.
inline long slab_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  long kb = 0;
  std::string unit;
  while (f >> key >> kb) {
    std::getline(f, unit);
    if (key == "Slab:") return kb * 1024;
  }
  return -1;
}

// The fixture of every conformance test: no context before, none after.
class ConformanceTest : public AemTest {};

// A disabled periodic timer's count, bracketed by the clock (AEM-3.6.3 c4,
// PRF.1.4 c4). An expiration is counted when the kernel or the poller gets
// to it, which a loaded machine delays: the count lags, it must not lose.
// So STATS is read at t, then again until the count moves (the timer fired
// after t) or kWaitMs pass: the last count covers at least the periods
// elapsed by t and at most those elapsed by read_hi. ok is false when a
// STATS call failed.
struct TimerCount {
  aem_event_stats st{};  // the last STATS read
  uint64_t t = 0, read_hi = 0;
  bool ok = false;
};

inline TimerCount read_timer_count(int id) {
  TimerCount c;
  c.t = mono_ns();
  if (evctl(id, AEM_CTL_STATS, ptr(&c.st)) != 0) return c;
  const uint64_t seen = c.st.activations, give_up = mono_ns() + kWaitMs * 1000000ull;
  c.read_hi = mono_ns();
  while (c.st.activations == seen && c.read_hi < give_up) {
    std::this_thread::yield();
    if (evctl(id, AEM_CTL_STATS, ptr(&c.st)) != 0) return c;
    c.read_hi = mono_ns();
  }
  c.ok = true;
  return c;
}

}  // namespace conf

// A test that needs the kernel backend for a criterion the user backend
// cannot meet by design.
#define CONF_SKIP_ON_USER_BACKEND(why)                                        \
  do {                                                                        \
    if (::conf::on_user_backend()) GTEST_SKIP() << "user backend: " << why;   \
  } while (0)

// On the kmod backend: sets module parameter `name` of aem.ko to `value`
// in `policy` (a KmodPolicy: restored when it goes out of scope); skips
// the test when the policy cannot be set (not root, no module parameters):
// a policy that is not in force must not pass.
#define CONF_KMOD_SET(policy, name, value)                                                    \
  do {                                                                                        \
    if (!(policy).set(name, value))                                                           \
      GTEST_SKIP() << "kmod backend: the policy is aem.ko's module parameter " << (name)     \
                   << ", which this process cannot set (needs root in the guest)";            \
  } while (0)

// The boost policy. User backend: AEM_BOOST_CEILING (nice steps) in the
// child's environment, set by the child. kmod backend: the administrator's
// policy, aem.ko's boost_prio (pending at or above it boosts) and
// boost_ceiling (the nice value of a boosted thread), set here in the
// parent and restored when `policy` goes out of scope. Both boost for a
// priority above AEM_PRIO_DEFAULT, by at most `steps` nice steps from this
// thread's nice value (which the child inherits).
#define CONF_BOOST_POLICY(policy, steps)                                                  \
  ::conf::KmodPolicy policy;                                                              \
  if (::conf::on_kmod_backend()) {                                                        \
    CONF_KMOD_SET(policy, "boost_prio", std::to_string(AEM_PRIO_DEFAULT + 1));           \
    CONF_KMOD_SET(policy, "boost_ceiling", std::to_string(::conf::nice_of(::aemtest::tid()) - (steps)));     \
  }
