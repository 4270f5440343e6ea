// SPDX-License-Identifier: MIT
// aem_bench_compare - AEM side by side with its peers, in the same run
// (DESIGN §8): epoll+eventfd, io_uring (multishot poll on an eventfd), RT
// signals (sigwaitinfo), poll, select, libuv, and AEM (evsoft and evfd on
// an eventfd; the backend aem_backend() reports).
//
// Workloads
//   latency     one producer, one consumer thread, one event in flight: the
//               producer stores CLOCK_MONOTONIC in the event's value
//               (eventfd count, sigval, evsoft value) and waits (futex) for
//               the handler, which records now - value.
//   throughput  the producer activates --events times as fast as it can;
//               occurrences are counted as each mechanism delivers them
//               (an eventfd read returns the merged count); events/s and
//               handler calls are reported.
//   scaling     N idle registrations (10 .. 1e5, 1e6 with --full) plus 4
//               active eventfds in one context/set; one thread writes the
//               active eventfds and collects them; cost per event (median of
//               batches) and memory per registration (RSS, kernel Slab).
// Ratios are against epoll. The throughput phase also counts the system
// calls and context switches per delivered event (ThreadCosts, perf: no
// PMU needed), the application's own calls apart. Prints one JSON object.
#include <aem.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>

#include <functional>
#include <map>
#include <memory>
#include <thread>

#ifdef AEM_HAVE_URING
#include <liburing.h>
#endif
#ifdef AEM_HAVE_UV
#include <uv.h>
#endif

#include "common.hpp"
#include "kmod_param.hpp"
#include "thread_costs.hpp"

using namespace stress;

namespace {

constexpr uint64_t kQuit = ~0ull - 1;  // eventfd max is ~0 - 1
const int kSig = SIGRTMIN + 3;

// Where every handler reports.
struct Sink {
  bool latency = true;
  std::vector<uint64_t> lat;
  std::atomic<uint64_t> got{0};
  std::atomic<uint64_t> calls{0};
  std::atomic<uint32_t> seq{0};
  // The harness's own system calls (futex wake and wait), counted apart
  // from the mechanism's like the handlers' reads.
  std::atomic<uint64_t> harness_calls{0};
  void on(uint64_t value, uint64_t occ) {
    if (latency) lat.push_back(now_ns() - value);
    calls.fetch_add(1, std::memory_order_relaxed);
    got.fetch_add(occ, std::memory_order_release);
    seq.fetch_add(1, std::memory_order_release);
    if (latency) {
      harness_calls.fetch_add(1, std::memory_order_relaxed);
      futex_wake(seq);
    }
  }
  // eventfd: the value read is the timestamp (latency, one in flight) or
  // the number of writes of 1 merged (throughput).
  void on_efd(uint64_t v) {
    if (latency)
      on(v, 1);
    else
      on(0, v);
  }
  void wait_got(uint64_t target) {
    for (;;) {
      uint32_t s = seq.load(std::memory_order_acquire);
      if (got.load(std::memory_order_acquire) >= target) return;
      harness_calls.fetch_add(1, std::memory_order_relaxed);
      futex_wait(seq, s, latency ? 0 : 1000000ull);
    }
  }
};
Sink* g_sink = nullptr;
// The handlers' own system calls (eventfd reads), counted apart from the
// mechanism's: every peer's handler reads its eventfd the same way.
std::atomic<uint64_t> g_handler_reads{0};

bool drain_efd(int fd, uint64_t& v) {
  g_handler_reads.fetch_add(1, std::memory_order_relaxed);
  return read(fd, &v, sizeof v) == sizeof v;
}

// A mechanism under test: start() launches the consumer, activate() is the
// producer's side, stop() joins.
struct Mech {
  virtual ~Mech() = default;
  virtual const char* name() const = 0;
  virtual bool start() = 0;
  virtual void activate(uint64_t v) = 0;
  virtual void stop() = 0;
};

// Peers that watch one eventfd from a consumer thread.
struct EfdMech : Mech {
  int efd = -1, qfd = -1;
  std::thread th;
  bool start() override {
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    qfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0 || qfd < 0) return false;
    Flag ready;
    th = std::thread([this, &ready] { loop(ready); });
    ready.wait_until(now_ns() + 5000000000ull);
    return true;
  }
  void activate(uint64_t v) override {
    if (write(efd, &v, sizeof v) != sizeof v) perror("write eventfd");
  }
  void stop() override {
    uint64_t one = 1;
    if (write(qfd, &one, sizeof one) < 0) perror("write quit");
    th.join();
    close(efd);
    close(qfd);
  }
  virtual void loop(Flag& ready) = 0;
};

struct EpollMech : EfdMech {
  const char* name() const override { return "epoll"; }
  void loop(Flag& ready) override {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u32 = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &e);
    e.data.u32 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, qfd, &e);
    ready.set();
    for (;;) {
      epoll_event ev[4];
      int n = epoll_wait(ep, ev, 4, -1);
      for (int i = 0; i < n; ++i) {
        if (ev[i].data.u32 == 2) {
          close(ep);
          return;
        }
        uint64_t v;
        if (drain_efd(efd, v)) g_sink->on_efd(v);
      }
    }
  }
};

struct PollMech : EfdMech {
  const char* name() const override { return "poll"; }
  void loop(Flag& ready) override {
    pollfd p[2] = {{efd, POLLIN, 0}, {qfd, POLLIN, 0}};
    ready.set();
    for (;;) {
      if (poll(p, 2, -1) <= 0) continue;
      if (p[1].revents) return;
      uint64_t v;
      if ((p[0].revents & POLLIN) && drain_efd(efd, v)) g_sink->on_efd(v);
    }
  }
};

struct SelectMech : EfdMech {
  const char* name() const override { return "select"; }
  void loop(Flag& ready) override {
    ready.set();
    for (;;) {
      fd_set r;
      FD_ZERO(&r);
      FD_SET(efd, &r);
      FD_SET(qfd, &r);
      if (select(std::max(efd, qfd) + 1, &r, nullptr, nullptr, nullptr) <= 0) continue;
      if (FD_ISSET(qfd, &r)) return;
      uint64_t v;
      if (FD_ISSET(efd, &r) && drain_efd(efd, v)) g_sink->on_efd(v);
    }
  }
};

#ifdef AEM_HAVE_URING
struct UringMech : EfdMech {
  const char* name() const override { return "io_uring"; }
  bool ok = true;
  void loop(Flag& ready) override {
    io_uring ring;
    if (io_uring_queue_init(64, &ring, 0) < 0) {
      ok = false;
      ready.set();
      return;
    }
    auto arm = [&](int fd, uint64_t tag) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_poll_multishot(sqe, fd, POLLIN);
      io_uring_sqe_set_data64(sqe, tag);
    };
    arm(efd, 1);
    arm(qfd, 2);
    io_uring_submit(&ring);
    ready.set();
    for (;;) {
      io_uring_cqe* cqe;
      if (io_uring_wait_cqe(&ring, &cqe) < 0) continue;
      uint64_t tag = io_uring_cqe_get_data64(cqe);
      bool more = cqe->flags & IORING_CQE_F_MORE;
      int res = cqe->res;
      io_uring_cqe_seen(&ring, cqe);
      if (tag == 2) break;
      uint64_t v;
      if (res > 0 && drain_efd(efd, v)) g_sink->on_efd(v);
      if (!more) {
        arm(efd, 1);
        io_uring_submit(&ring);
      }
    }
    io_uring_queue_exit(&ring);
  }
};
#endif

#ifdef AEM_HAVE_UV
struct UvMech : EfdMech {
  const char* name() const override { return "libuv"; }
  void loop(Flag& ready) override {
    uv_loop_t lp;
    uv_loop_init(&lp);
    uv_poll_t pe, pq;
    uv_poll_init(&lp, &pe, efd);
    uv_poll_init(&lp, &pq, qfd);
    pe.data = this;
    uv_poll_start(&pe, UV_READABLE, [](uv_poll_t* h, int, int) {
      uint64_t v;
      if (drain_efd(static_cast<UvMech*>(h->data)->efd, v)) g_sink->on_efd(v);
    });
    uv_poll_start(&pq, UV_READABLE, [](uv_poll_t* h, int, int) { uv_stop(h->loop); });
    ready.set();
    uv_run(&lp, UV_RUN_DEFAULT);
    uv_close(reinterpret_cast<uv_handle_t*>(&pe), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&pq), nullptr);
    uv_run(&lp, UV_RUN_DEFAULT);
    uv_loop_close(&lp);
  }
};
#endif

// POSIX RT signals: queued to the consumer thread, taken with sigwaitinfo.
struct RtsigMech : Mech {
  std::thread th;
  pthread_t tid{};
  const char* name() const override { return "rtsig"; }
  bool start() override {
    Flag ready;
    th = std::thread([&] {
      tid = pthread_self();
      ready.set();
      sigset_t s;
      sigemptyset(&s);
      sigaddset(&s, kSig);
      for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&s, &si) != kSig) continue;
        uint64_t v = reinterpret_cast<uintptr_t>(si.si_value.sival_ptr);
        if (v == kQuit) return;
        g_sink->on(v, 1);
      }
    });
    ready.wait_until(now_ns() + 5000000000ull);
    return true;
  }
  void activate(uint64_t v) override {
    sigval sv;
    sv.sival_ptr = reinterpret_cast<void*>(static_cast<uintptr_t>(v));
    while (pthread_sigqueue(tid, kSig, sv) != 0) sched_yield();  // EAGAIN: queue full
  }
  void stop() override {
    activate(kQuit);
    th.join();
  }
};

// AEM: a software event raised with the value, run by the worker.
struct AemSoftMech : Mech {
  int jid = 0;
  const char* name() const override { return "aem_soft"; }
  bool start() override {
    jid = evsoft(AEM_EXEC_THREAD, [](int, uint64_t v, uint64_t occ) { g_sink->on(v, occ); });
    return jid > 0;
  }
  void activate(uint64_t v) override { evsoft_raise(jid, v); }
  void stop() override { evctl(jid, AEM_CTL_CLEAN, 0); }
};

// AEM: evfd (edge) on an eventfd, the same kernel object as the peers.
struct AemFdMech : Mech {
  int jid = 0, efd = -1;
  const char* name() const override { return "aem_evfd"; }
  bool start() override {
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    jid = evfd(efd, POLLIN, AEM_EDGE | AEM_EXEC_THREAD, [](int, int fd, unsigned) {
      uint64_t v;
      while (drain_efd(fd, v)) g_sink->on_efd(v);
    });
    return jid > 0;
  }
  void activate(uint64_t v) override {
    if (write(efd, &v, sizeof v) != sizeof v) perror("write eventfd");
  }
  void stop() override {
    evctl(jid, AEM_CTL_CLEAN, 0);
    close(efd);
  }
};

struct Result {
  std::string name;
  bool available = true;
  Dist lat;
  double events_per_s = 0, calls_per_s = 0;
  uint64_t tp_events = 0, tp_calls = 0;
  // The throughput phase's costs (ThreadCosts): every thread of the
  // process, the producer's only while it activates.
  bool costs = false;
  std::string costs_why;
  aemtest::ThreadCosts::Counts counts;
  uint64_t app_syscalls = 0;  // the activations and the handlers' reads
  // The latency phase's: one event in flight, each delivered alone.
  bool lat_costs = false;
  std::string lat_costs_why;
  aemtest::ThreadCosts::Counts lat_counts;
  uint64_t lat_app_syscalls = 0, lat_events = 0;  // and the harness's futex calls
};

// True when clock_gettime() is a system call here (a guest whose clock
// source the vDSO cannot read, as under QEMU's TCG): the latency phase's
// timestamps (two per event) are then the harness's system calls.
bool clock_is_syscall() {
  aemtest::ThreadCosts c;
  std::string why;
  if (!c.start(why, true)) return false;
  uint64_t sum = 0;
  for (int i = 0; i < 100; ++i) sum += now_ns();
  const bool slow = c.stop().syscalls >= 100;
  return slow && sum;
}

// stress.json's "costs" of one phase (see Result).
void costs_json(Json& j, const char* key, bool ok, const std::string& why,
                const aemtest::ThreadCosts::Counts& c, uint64_t app, uint64_t events) {
  j.key(key).begin_obj().kv("available", ok);
  if (!ok) {
    j.kv("why", why);
  } else {
    const double ev = static_cast<double>(std::max<uint64_t>(events, 1));
    const uint64_t own = std::min(app, c.syscalls);
    j.kv("events", events).kv("threads", c.threads).kv("syscalls", c.syscalls)
        .kv("app_syscalls", app)
        .kv("delivery_syscalls_per_event", static_cast<double>(c.syscalls - own) / ev)
        .kv("app_syscalls_per_event", static_cast<double>(app) / ev)
        .kv("context_switches_per_event", static_cast<double>(c.context_switches) / ev);
  }
  j.end_obj();
}

Result run_mech(Mech& m, uint64_t lat_n, uint64_t tp_n) {
  Result r;
  r.name = m.name();
  Sink sink;
  g_sink = &sink;
  if (!m.start()) {
    r.available = false;
    return r;
  }
#ifdef AEM_HAVE_URING
  if (auto* u = dynamic_cast<UringMech*>(&m); u && !u->ok) {
    r.available = false;
    u->stop();
    return r;
  }
#endif
  // Latency: warm-up, then one event in flight, counted like throughput
  // (the harness's futex calls are the application's).
  sink.latency = true;
  sink.lat.reserve(lat_n + 1000);
  aemtest::ThreadCosts lat_costs;
  uint64_t lat_app0 = 0;
  for (uint64_t i = 0; i < lat_n + 1000; ++i) {
    if (i == 1000) {
      r.lat_costs = lat_costs.start(r.lat_costs_why);
      lat_app0 = g_handler_reads.load() + sink.harness_calls.load();
    }
    m.activate(now_ns());
    sink.wait_got(i + 1);
  }
  if (r.lat_costs) {
    r.lat_counts = lat_costs.stop();
    r.lat_events = lat_n;
    r.lat_app_syscalls = lat_n + g_handler_reads.load() + sink.harness_calls.load() - lat_app0;
    static const bool clock_calls = clock_is_syscall();
    if (clock_calls) r.lat_app_syscalls += 2 * lat_n;  // the activation's and the handler's
  }
  std::vector<uint64_t> samples(sink.lat.begin() + 1000, sink.lat.end());
  r.lat = distribution(std::move(samples), true);
  // Throughput, with the system calls and context switches it costs.
  sink.latency = false;
  const uint64_t base = sink.got.load(), base_calls = sink.calls.load();
  aemtest::ThreadCosts costs;
  r.costs = costs.start(r.costs_why);
  const uint64_t reads0 = g_handler_reads.load();
  const uint64_t t0 = now_ns();
  for (uint64_t i = 0; i < tp_n; ++i) m.activate(1);
  costs.freeze(static_cast<pid_t>(syscall(SYS_gettid)));
  sink.wait_got(base + tp_n);
  const double s = (now_ns() - t0) / 1e9;
  if (r.costs) {
    r.counts = costs.stop();
    r.app_syscalls = tp_n + (g_handler_reads.load() - reads0);
  }
  r.tp_events = sink.got.load() - base;
  r.tp_calls = sink.calls.load() - base_calls;
  r.events_per_s = r.tp_events / s;
  r.calls_per_s = r.tp_calls / s;
  m.stop();
  g_sink = nullptr;
  return r;
}

// ---------------------------------------------------------------------------
// Scalability: N idle registrations + kActive active eventfds, one thread.

constexpr int kActive = 4;

struct ScalePoint {
  std::string mech;
  uint64_t n = 0;
  bool ok = false;
  std::string why;
  double cost_ns = 0;          // median over batches, per delivered event
  double setup_s = 0;
  double rss_b_per_reg = 0, slab_b_per_reg = 0;
  std::vector<double> batches;
};

int g_scale_handled = 0;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `round` (which must deliver kActive events) in batches of about
// batch_ns; returns the per-event cost of every batch.
std::vector<double> time_batches(const std::function<void()>& round, int batches,
                                 uint64_t batch_ns) {
  for (int i = 0; i < 20; ++i) round();  // warm-up
  // Calibrate rounds per batch.
  uint64_t t0 = now_ns();
  int k = 0;
  while (now_ns() - t0 < batch_ns / 4 || k < 3) round(), ++k;
  const double per_round = static_cast<double>(now_ns() - t0) / k;
  const int rounds = std::max(5, static_cast<int>(batch_ns / per_round));
  std::vector<double> out;
  for (int b = 0; b < batches; ++b) {
    uint64_t s = now_ns();
    for (int i = 0; i < rounds; ++i) round();
    out.push_back(static_cast<double>(now_ns() - s) / (rounds * kActive));
  }
  return out;
}

ScalePoint scale_one(const std::string& mech, uint64_t n, int batches, uint64_t batch_ns) {
  ScalePoint p;
  p.mech = mech;
  p.n = n;
  const long rss0 = rss_kib(), slab0 = slab_kib();
  const uint64_t t0 = now_ns();
  std::vector<int> idle, active;
  uint64_t one = 1;
  auto make_efds = [&](uint64_t k, std::vector<int>& v) {
    v.reserve(k);
    for (uint64_t i = 0; i < k; ++i) {
      int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (fd < 0) return false;
      v.push_back(fd);
    }
    return true;
  };
  auto cleanup = [&] {
    for (int fd : idle) close(fd);
    for (int fd : active) close(fd);
  };
  if (!make_efds(kActive, active)) {
    p.why = "eventfd: " + std::string(strerror(errno));
    cleanup();
    return p;
  }
  auto write_active = [&] {
    for (int fd : active)
      if (write(fd, &one, sizeof one) != sizeof one) perror("write");
  };
  if (mech == "aem" || mech == "aem_soft") {
    // Idle: software events (no fd each: 1e6 fit in one context). Active:
    // evfd on eventfds ("aem") or software events raised here ("aem_soft").
    // All AEM_EXEC_SAME: this thread dispatches.
    for (uint64_t i = 0; i < n; ++i) {
      int id = evsoft(AEM_EXEC_SAME, [](int, uint64_t, uint64_t) {});
      if (id <= 0) {
        p.why = "evsoft #" + std::to_string(i) + ": " + strerror(-id);
        std::string lim;
        if (id == -EMFILE && aemtest::read_kmod_param("max_regs", lim))
          p.why += " (aem.ko max_regs=" + lim + "; root raises it for the sweep)";
        cleanup();
        aem_shutdown();
        return p;
      }
    }
    std::vector<int> jids;
    for (int fd : active) {
      int id = mech == "aem"
                   ? evfd(fd, POLLIN, AEM_EDGE | AEM_EXEC_SAME,
                          [](int, int f, unsigned) {
                            uint64_t v;
                            while (read(f, &v, sizeof v) == sizeof v) ++g_scale_handled;
                          })
                   : evsoft(AEM_EXEC_SAME, [](int, uint64_t, uint64_t) { ++g_scale_handled; });
      jids.push_back(id);
    }
    p.setup_s = (now_ns() - t0) / 1e9;
    p.rss_b_per_reg = (rss_kib() - rss0) * 1024.0 / static_cast<double>(n + kActive);
    p.slab_b_per_reg = (slab_kib() - slab0) * 1024.0 / static_cast<double>(n + kActive);
    auto round = [&] {
      g_scale_handled = 0;
      if (mech == "aem")
        write_active();
      else
        for (int id : jids) evsoft_raise(id, 1);
      while (g_scale_handled < kActive) aem_dispatch(mech == "aem" ? 1000 : 0);
    };
    p.batches = time_batches(round, batches, batch_ns);
    p.ok = true;
    aem_shutdown();  // cleans every registration of the context at once
    cleanup();
  } else {
    if (!make_efds(n, idle)) {
      p.why = "eventfd #" + std::to_string(idle.size()) + ": " + strerror(errno);
      cleanup();
      return p;
    }
    if (mech == "epoll") {
      int ep = epoll_create1(EPOLL_CLOEXEC);
      epoll_event e{};
      e.events = EPOLLIN;
      // Every ADD is checked: past fs.epoll.max_user_watches (about 4% of
      // low memory over the size of an epitem: under 10^6 in a 4 GiB guest)
      // they fail with ENOSPC, and a round whose active fds were not added
      // would wait forever.
      uint64_t added = 0;
      for (const auto* set : {&active, &idle})
        for (int fd : *set) {
          e.data.fd = fd;
          if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
            p.why = "epoll_ctl #" + std::to_string(added) + ": " + strerror(errno);
            std::string lim;
            if (errno == ENOSPC && read_line("/proc/sys/fs/epoll/max_user_watches", lim))
              p.why += " (fs.epoll.max_user_watches=" + lim + ")";
            close(ep);
            cleanup();
            return p;
          }
          ++added;
        }
      p.setup_s = (now_ns() - t0) / 1e9;
      p.rss_b_per_reg = (rss_kib() - rss0) * 1024.0 / static_cast<double>(n + kActive);
      p.slab_b_per_reg = (slab_kib() - slab0) * 1024.0 / static_cast<double>(n + kActive);
      auto round = [&] {
        write_active();
        int got = 0;
        epoll_event ev[kActive];
        while (got < kActive) {
          int k = epoll_wait(ep, ev, kActive, -1);
          for (int i = 0; i < k; ++i) {
            uint64_t v;
            if (read(ev[i].data.fd, &v, sizeof v) == sizeof v) ++got;
          }
        }
      };
      p.batches = time_batches(round, batches, batch_ns);
      close(ep);
    } else if (mech == "poll") {
      std::vector<pollfd> pf;
      pf.reserve(n + kActive);
      for (int fd : idle) pf.push_back({fd, POLLIN, 0});
      for (int fd : active) pf.push_back({fd, POLLIN, 0});
      p.setup_s = (now_ns() - t0) / 1e9;
      p.rss_b_per_reg = (rss_kib() - rss0) * 1024.0 / static_cast<double>(n + kActive);
      p.slab_b_per_reg = (slab_kib() - slab0) * 1024.0 / static_cast<double>(n + kActive);
      auto round = [&] {
        write_active();
        int got = 0;
        while (got < kActive) {
          if (poll(pf.data(), pf.size(), -1) <= 0) continue;
          for (auto& x : pf)  // the application scans too: that is poll's cost
            if (x.revents & POLLIN) {
              uint64_t v;
              if (read(x.fd, &v, sizeof v) == sizeof v) ++got;
            }
        }
      };
      p.batches = time_batches(round, batches, batch_ns);
    } else {  // select
      int maxfd = 0;
      for (int fd : idle) maxfd = std::max(maxfd, fd);
      for (int fd : active) maxfd = std::max(maxfd, fd);
      if (maxfd >= FD_SETSIZE) {
        p.why = "beyond FD_SETSIZE";
        cleanup();
        return p;
      }
      fd_set all;
      FD_ZERO(&all);
      for (int fd : idle) FD_SET(fd, &all);
      for (int fd : active) FD_SET(fd, &all);
      p.setup_s = (now_ns() - t0) / 1e9;
      auto round = [&] {
        write_active();
        int got = 0;
        while (got < kActive) {
          fd_set r = all;
          if (select(maxfd + 1, &r, nullptr, nullptr, nullptr) <= 0) continue;
          for (int fd = 0; fd <= maxfd; ++fd)
            if (FD_ISSET(fd, &r)) {
              uint64_t v;
              if (read(fd, &v, sizeof v) == sizeof v) ++got;
            }
        }
      };
      p.batches = time_batches(round, batches, batch_ns);
    }
    p.ok = true;
    cleanup();
  }
  p.cost_ns = median(p.batches);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  Args a{argc, argv};
  const bool full = a.has("--full");
  const uint64_t lat_n = static_cast<uint64_t>(a.num("--latency-samples", full ? 100000 : 20000));
  const uint64_t tp_n = static_cast<uint64_t>(a.num("--events", full ? 2000000 : 200000));
  const int batches = static_cast<int>(a.num("--batches", 7));
  const uint64_t batch_ns = static_cast<uint64_t>(a.num("--batch-ms", full ? 100 : 40) * 1e6);
  const uint64_t peer_max = static_cast<uint64_t>(a.num("--peer-max-n", full ? 1e6 : 1e5));
  const uint64_t aem_max = static_cast<uint64_t>(a.num("--aem-max-n", 1e6));
  const bool no_scale = a.has("--no-scale");
  const bool no_mech = a.has("--no-mechanisms");

  // RT signals: blocked in every thread (inherited), taken with sigwaitinfo.
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, kSig);
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
  raise_nofile(static_cast<rlim_t>(std::max(peer_max, uint64_t{1000}) + 1000));

  const char* backend = aem_backend();
  if (!backend) {
    fprintf(stderr, "aem_bench_compare: no AEM backend: %s\n", strerror(errno));
    return 3;
  }
  // aem.ko's max_regs (65536 by default) is the administrator's limit per
  // context. When this process may set it (root in the guest), the sweep
  // raises it to what it needs for its run, and stress.json says so; the
  // destructor puts the old value back.
  std::unique_ptr<aemtest::KmodParam> max_regs;
  std::string max_regs_now;
  if (!no_scale && std::string_view(backend) == "kmod" &&
      aemtest::read_kmod_param("max_regs", max_regs_now) &&
      std::strtoull(max_regs_now.c_str(), nullptr, 10) < aem_max + kActive) {
    max_regs = std::make_unique<aemtest::KmodParam>("max_regs", std::to_string(aem_max + kActive));
    if (!max_regs->ok() || !aemtest::read_kmod_param("max_regs", max_regs_now)) max_regs.reset();
  }
  const uint64_t t_start = now_ns();
  std::vector<Result> results;
  if (!no_mech) {
    std::vector<std::unique_ptr<Mech>> mechs;
    mechs.push_back(std::make_unique<EpollMech>());
    mechs.push_back(std::make_unique<AemSoftMech>());
    mechs.push_back(std::make_unique<AemFdMech>());
#ifdef AEM_HAVE_URING
    mechs.push_back(std::make_unique<UringMech>());
#endif
    mechs.push_back(std::make_unique<RtsigMech>());
    mechs.push_back(std::make_unique<PollMech>());
    mechs.push_back(std::make_unique<SelectMech>());
#ifdef AEM_HAVE_UV
    mechs.push_back(std::make_unique<UvMech>());
#endif
    for (auto& m : mechs) {
      fprintf(stderr, "aem_bench_compare: %s\n", m->name());
      results.push_back(run_mech(*m, lat_n, tp_n));
    }
  }
  std::vector<ScalePoint> points;
  if (!no_scale) {
    std::vector<uint64_t> ns = {10, 100, 1000, 10000, 100000, 1000000};
    for (uint64_t n : ns) {
      for (const char* m : {"aem", "aem_soft", "epoll", "poll", "select"}) {
        const bool is_aem = m[0] == 'a';
        if (n > (is_aem ? aem_max : peer_max)) continue;
        if (std::string(m) == "select" && n + kActive + 16 > FD_SETSIZE) continue;
        if (!is_aem && n + kActive + 64 > nofile_limit()) {
          ScalePoint p;
          p.mech = m;
          p.n = n;
          p.why = "RLIMIT_NOFILE " + std::to_string(nofile_limit()) +
                  " (raising it needs CAP_SYS_RESOURCE)";
          points.push_back(p);
          continue;
        }
        fprintf(stderr, "aem_bench_compare: scaling %s N=%llu\n", m, (unsigned long long)n);
        points.push_back(scale_one(m, n, batches, batch_ns));
      }
    }
  }

  Json j;
  j.begin_obj().kv("program", "aem_bench_compare").kv("backend", backend);
  j.key("config").begin_obj().kv("latency_samples", lat_n).kv("throughput_events", tp_n)
      .kv("cpus", ncpus()).kv("full", full);
  if (!max_regs_now.empty()) {
    // The kmod backend's limit during the sweep, and what it was before.
    j.kv("kmod_max_regs", static_cast<uint64_t>(std::strtoull(max_regs_now.c_str(), nullptr, 10)));
    if (max_regs)
      j.kv("kmod_max_regs_raised_from",
           static_cast<uint64_t>(std::strtoull(max_regs->saved().c_str(), nullptr, 10)));
  }
  j.end_obj();
  const Result* epoll = nullptr;
  for (auto& r : results)
    if (r.name == "epoll") epoll = &r;
  j.key("mechanisms").begin_obj();
  for (auto& r : results) {
    j.key(r.name == "aem_soft" || r.name == "aem_evfd"
              ? (std::string(r.name).insert(3, std::string("_") + backend))
              : r.name)
        .begin_obj();
    j.kv("available", r.available);
    if (r.available) {
      j.dist("latency_ns", r.lat);
      j.kv("throughput_events_per_s", r.events_per_s).kv("throughput_calls_per_s", r.calls_per_s)
          .kv("throughput_events", r.tp_events).kv("throughput_handler_calls", r.tp_calls);
      costs_json(j, "costs", r.costs, r.costs_why, r.counts, r.app_syscalls, r.tp_events);
      costs_json(j, "latency_costs", r.lat_costs, r.lat_costs_why, r.lat_counts,
                 r.lat_app_syscalls, r.lat_events);
      if (epoll && epoll->available) {
        j.key("vs_epoll").begin_obj()
            .kv("throughput_ratio", r.events_per_s / epoll->events_per_s)
            .kv("latency_p50_ratio", static_cast<double>(r.lat.p50) / epoll->lat.p50)
            .kv("latency_p99_ratio", static_cast<double>(r.lat.p99) / epoll->lat.p99)
            .kv("latency_p99_9_ratio", static_cast<double>(r.lat.p999) / epoll->lat.p999)
            .end_obj();
      }
    }
    j.end_obj();
  }
  j.end_obj();
  j.key("scaling").begin_arr();
  std::map<std::string, double> base;
  for (auto& p : points)
    if (p.ok && p.n == 10) base[p.mech] = p.cost_ns;
  for (auto& p : points) {
    j.begin_obj().kv("mechanism", p.mech).kv("n", p.n).kv("ok", p.ok);
    if (!p.ok) {
      j.kv("why", p.why).end_obj();
      continue;
    }
    j.kv("cost_per_event_ns", p.cost_ns);
    if (base.count(p.mech)) j.kv("cost_ratio_vs_10", p.cost_ns / base[p.mech]);
    j.kv("setup_s", p.setup_s).kv("rss_bytes_per_registration", p.rss_b_per_reg)
        .kv("slab_bytes_per_registration", p.slab_b_per_reg);
    j.key("batches_ns").begin_arr();
    for (double b : p.batches) j.val(b);
    j.end_arr().end_obj();
  }
  j.end_arr();
  // The catalog's metrics (AEM-3.3.1): AEM with evfd-active events.
  j.key("metrics").begin_obj();
  for (auto& p : points) {
    if (p.mech != "aem" || !p.ok) continue;
    if (p.n == 10) j.kv("cost_per_event_10_registrations", p.cost_ns);
    if (p.n == 1000000) j.kv("cost_per_event_1e6_registrations", p.cost_ns);
  }
  j.end_obj();
  j.kv("elapsed_s", (now_ns() - t_start) / 1e9);
  j.end_obj();
  printf("%s\n", j.s.c_str());
  fflush(stdout);
  return 0;
}
