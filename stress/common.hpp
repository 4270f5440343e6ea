// SPDX-License-Identifier: MIT
// Shared helpers of the stress harnesses and benchmarks: clocks, futex
// waits, latency distributions, a tiny JSON writer, argument parsing.
#pragma once

#include <linux/futex.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace stress {

inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

inline void sleep_ns(uint64_t ns) {
  timespec ts{static_cast<time_t>(ns / 1000000000ull), static_cast<long>(ns % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
  }
}

inline void sleep_until_ns(uint64_t at) {
  timespec ts{static_cast<time_t>(at / 1000000000ull), static_cast<long>(at % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

inline void spin_ns(uint64_t ns) {
  const uint64_t end = now_ns() + ns;
  while (now_ns() < end) {
  }
}

// Futex on a 32-bit atomic: wait while *a == expected (bounded by timeout_ns,
// 0 = forever), wake all waiters.
inline void futex_wait(std::atomic<uint32_t>& a, uint32_t expected, uint64_t timeout_ns = 0) {
  timespec ts{static_cast<time_t>(timeout_ns / 1000000000ull),
              static_cast<long>(timeout_ns % 1000000000ull)};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAIT_PRIVATE, expected,
          timeout_ns ? &ts : nullptr, nullptr, 0);
}
inline void futex_wake(std::atomic<uint32_t>& a) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr,
          nullptr, 0);
}

// A one-shot "done" flag with futex wake-up: set() once, wait() until set.
struct Flag {
  std::atomic<uint32_t> v{0};
  void set() {
    v.store(1, std::memory_order_release);
    futex_wake(v);
  }
  bool is_set() const { return v.load(std::memory_order_acquire) != 0; }
  // true if set before the deadline (absolute, now_ns()).
  bool wait_until(uint64_t deadline) {
    while (!is_set()) {
      uint64_t n = now_ns();
      if (n >= deadline) return false;
      futex_wait(v, 0, deadline - n);
    }
    return true;
  }
  void reset() { v.store(0); }
};

// Counter that a waiter can sleep on until it reaches a target.
struct Counter {
  std::atomic<uint64_t> v{0};
  std::atomic<uint32_t> seq{0};
  void add(uint64_t n) {
    v.fetch_add(n, std::memory_order_acq_rel);
    seq.fetch_add(1, std::memory_order_release);
    futex_wake(seq);
  }
  uint64_t get() const { return v.load(std::memory_order_acquire); }
  // true if v >= target before the deadline.
  bool wait_ge(uint64_t target, uint64_t deadline) {
    for (;;) {
      uint32_t s = seq.load(std::memory_order_acquire);
      if (get() >= target) return true;
      uint64_t n = now_ns();
      if (n >= deadline) return false;
      uint64_t left = deadline - n;
      futex_wait(seq, s, std::min<uint64_t>(left, 20000000ull));
    }
  }
};

// Latency samples -> distribution.
struct Dist {
  uint64_t n = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0, min = 0;
  double mean = 0;
  std::vector<std::pair<uint64_t, uint64_t>> hist;  // (upper bound ns, count), log2 buckets
};

inline Dist distribution(std::vector<uint64_t> v, bool with_hist = false) {
  Dist d;
  d.n = v.size();
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  auto q = [&](double p) {
    size_t i = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size()))) ;
    if (i > 0) --i;
    return v[std::min(i, v.size() - 1)];
  };
  d.min = v.front();
  d.p50 = q(0.50);
  d.p90 = q(0.90);
  d.p99 = q(0.99);
  d.p999 = q(0.999);
  d.max = v.back();
  long double s = 0;
  for (auto x : v) s += x;
  d.mean = static_cast<double>(s / v.size());
  if (with_hist) {
    uint64_t bound = 1024;  // 1 us
    size_t i = 0;
    while (i < v.size()) {
      uint64_t c = 0;
      while (i < v.size() && v[i] < bound) ++c, ++i;
      if (c || !d.hist.empty()) d.hist.emplace_back(bound, c);
      bound *= 2;
    }
  }
  return d;
}

// Minimal streaming JSON writer (objects, arrays, numbers, strings, bools).
class Json {
 public:
  std::string s;
  // A pre-built JSON value (after key() or in an array).
  Json& raw(std::string_view t) {
    sep();
    s.append(t);
    return *this;
  }
  Json& begin_obj() { sep(); s += '{'; first_ = true; return *this; }
  Json& end_obj() { s += '}'; first_ = false; return *this; }
  Json& begin_arr() { sep(); s += '['; first_ = true; return *this; }
  Json& end_arr() { s += ']'; first_ = false; return *this; }
  Json& key(std::string_view k) {
    sep();
    str_(k);
    s += ':';
    first_ = true;  // the value follows without a comma
    return *this;
  }
  Json& val(std::string_view v) { sep(); str_(v); return *this; }
  Json& val(const char* v) { return v ? val(std::string_view(v)) : null(); }
  Json& val(bool b) { sep(); s += b ? "true" : "false"; return *this; }
  Json& val(double d) {
    sep();
    if (!std::isfinite(d)) {
      s += "null";
    } else {
      char b[64];
      snprintf(b, sizeof b, "%.6g", d);
      s += b;
    }
    return *this;
  }
  Json& val(unsigned long long v) { sep(); s += std::to_string(v); return *this; }
  Json& val(long long v) { sep(); s += std::to_string(v); return *this; }
  Json& val(unsigned long v) { return val(static_cast<unsigned long long>(v)); }
  Json& val(long v) { return val(static_cast<long long>(v)); }
  Json& val(int v) { return val(static_cast<long long>(v)); }
  Json& val(unsigned v) { return val(static_cast<unsigned long long>(v)); }
  Json& null() { sep(); s += "null"; return *this; }
  template <class T>
  Json& kv(std::string_view k, T v) {
    key(k);
    return val(v);
  }
  Json& dist(std::string_view k, const Dist& d) {
    key(k).begin_obj();
    kv("n", d.n).kv("min", d.min).kv("p50", d.p50).kv("p90", d.p90).kv("p99", d.p99);
    kv("p99_9", d.p999).kv("max", d.max).kv("mean", d.mean);
    if (!d.hist.empty()) {
      key("hist_log2_ns").begin_arr();
      for (auto& [b, c] : d.hist) begin_arr().val(b).val(c).end_arr();
      end_arr();
    }
    return end_obj();
  }

 private:
  bool first_ = true;
  void sep() {
    if (!first_) s += ',';
    first_ = false;
  }
  void str_(std::string_view v) {
    s += '"';
    for (char c : v) {
      if (c == '"' || c == '\\') {
        s += '\\';
        s += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char b[8];
        snprintf(b, sizeof b, "\\u%04x", c);
        s += b;
      } else {
        s += c;
      }
    }
    s += '"';
  }
};

// --name=value / --name value / --flag.
struct Args {
  int argc;
  char** argv;
  const char* get(const char* name) const {
    size_t l = strlen(name);
    for (int i = 1; i < argc; ++i) {
      if (strncmp(argv[i], name, l) == 0) {
        if (argv[i][l] == '=') return argv[i] + l + 1;
        if (argv[i][l] == 0) return (i + 1 < argc && argv[i + 1][0] != '-') ? argv[i + 1] : "";
      }
    }
    return nullptr;
  }
  bool has(const char* name) const { return get(name) != nullptr; }
  double num(const char* name, double def) const {
    const char* v = get(name);
    return (v && *v) ? atof(v) : def;
  }
};

inline int ncpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

inline void pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % CPU_SETSIZE, &set);
  sched_setaffinity(0, sizeof set, &set);
}

inline long rss_kib() {
  FILE* f = fopen("/proc/self/statm", "r");
  long pages = 0, res = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
    fclose(f);
  }
  return res * (sysconf(_SC_PAGESIZE) / 1024);
}

// The first line of a file (a /proc or /sys value), without its newline.
inline bool read_line(const char* path, std::string& out) {
  FILE* f = fopen(path, "r");
  if (!f) return false;
  char buf[256];
  const bool ok = fgets(buf, sizeof buf, f) != nullptr;
  fclose(f);
  if (!ok) return false;
  out = buf;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return true;
}

// Kernel slab memory (kB) from /proc/meminfo: approximates kernel-side
// memory of registrations (epoll items, eventfd files).
inline long slab_kib() {
  FILE* f = fopen("/proc/meminfo", "r");
  long v = 0;
  char line[256];
  if (!f) return 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Slab: %ld kB", &v) == 1) break;
  fclose(f);
  return v;
}

inline void raise_nofile(rlim_t want) {
  rlimit r;
  getrlimit(RLIMIT_NOFILE, &r);
  if (r.rlim_cur >= want) return;
  rlimit n{want, std::max(want, r.rlim_max)};
  if (setrlimit(RLIMIT_NOFILE, &n) != 0) {
    n.rlim_cur = r.rlim_max;
    n.rlim_max = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &n);
  }
}

inline rlim_t nofile_limit() {
  rlimit r;
  getrlimit(RLIMIT_NOFILE, &r);
  return r.rlim_cur;
}

// CPU hogs: one spinning thread per CPU until stop is set.
}  // namespace stress
