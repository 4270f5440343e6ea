// SPDX-License-Identifier: MIT
// aem_stress_delivery - guaranteed delivery under stress (AEM-3.5.1 c1).
//
// Activations are counted by the producers, independently of the mechanism:
//   soft     evsoft_raise() calls that returned 0 (per registration), from
//            --producers threads; half of the registrations run on the
//            worker (AEM_EXEC_THREAD), half on a dispatcher thread that
//            registered them (AEM_EXEC_SAME); every fourth is
//            AEM_PER_OCCURRENCE.
//   timer    periodic timers (--timer-periods-us), first expiry absolute:
//            the expected number of expirations follows from the clock.
//   socket   bytes written into loopback TCP connections (sockasync_read)
//            plus one EOF per connection.
//   evfd     eventfd writes of 1 (evfd, AEM_EDGE); the handler drains.
// Delivered occurrences must equal activations exactly. Prints one JSON
// object on stdout; progress on stderr at every checkpoint.
#include <aem.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "common.hpp"

extern char** environ;
using namespace stress;

namespace {

struct SoftReg {
  int jid = 0;
  bool same = false;
  bool per_occ = false;
  std::atomic<uint64_t> raised{0};
  std::atomic<uint64_t> delivered{0};
  std::atomic<uint64_t> calls{0};
};
struct TimerReg {
  int jid = 0;
  uint64_t period_ns = 0, first_ns = 0;
  std::atomic<uint64_t> delivered{0};
  std::atomic<uint64_t> calls{0};
};
struct SockReg {
  int jid = 0, rfd = -1, wfd = -1;
  std::atomic<uint64_t> written{0};
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> eofs{0};
  std::atomic<uint64_t> calls{0};
};
struct FdReg {
  int jid = 0, efd = -1;
  std::atomic<uint64_t> written{0};
  std::atomic<uint64_t> drained{0};
  std::atomic<uint64_t> calls{0};
};

std::vector<std::unique_ptr<SoftReg>> g_soft;
std::vector<std::unique_ptr<TimerReg>> g_timers;
std::vector<std::unique_ptr<SockReg>> g_socks;
std::vector<std::unique_ptr<FdReg>> g_fds;
std::mutex g_map_mu;
std::unordered_map<int, void*> g_by_jid;  // filled before the activations start
std::atomic<uint64_t> g_errors{0}, g_overflow{0}, g_unknown{0};
Counter g_progress;  // bumped by every handler: the end waits sleep on it

template <class T>
T* lookup(int jid) {
  std::lock_guard l(g_map_mu);
  auto it = g_by_jid.find(jid);
  return it == g_by_jid.end() ? nullptr : static_cast<T*>(it->second);
}

void on_soft(int jid, uint64_t, uint64_t occ) {
  auto* r = lookup<SoftReg>(jid);
  if (!r) {
    g_unknown.fetch_add(1);
    return;
  }
  r->delivered.fetch_add(occ);
  r->calls.fetch_add(1);
  g_progress.add(0);
}
void on_timer(int jid, uint64_t exp) {
  auto* r = lookup<TimerReg>(jid);
  if (!r) {
    g_unknown.fetch_add(1);
    return;
  }
  r->delivered.fetch_add(exp);
  r->calls.fetch_add(1);
  g_progress.add(0);
}
void on_read(int jid, int, const void*, size_t len) {
  auto* r = lookup<SockReg>(jid);
  if (!r) {
    g_unknown.fetch_add(1);
    return;
  }
  if (len == 0)
    r->eofs.fetch_add(1);
  else
    r->received.fetch_add(len);
  r->calls.fetch_add(1);
  g_progress.add(0);
}
void on_fd(int jid, int fd, unsigned) {
  auto* r = lookup<FdReg>(jid);
  if (!r) {
    g_unknown.fetch_add(1);
    return;
  }
  uint64_t v;
  while (read(fd, &v, sizeof v) == sizeof v) r->drained.fetch_add(v);
  r->calls.fetch_add(1);
  g_progress.add(0);
}
void on_error(int, int err) {
  g_errors.fetch_add(1);
  if (err == -EOVERFLOW) g_overflow.fetch_add(1);
}

void tcp_pair(int& a, int& b) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof sa;
  if (l < 0 || bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof sa) || listen(l, 4) ||
      getsockname(l, reinterpret_cast<sockaddr*>(&sa), &sl)) {
    perror("listen");
    exit(3);
  }
  a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(a, reinterpret_cast<sockaddr*>(&sa), sizeof sa)) {
    perror("connect");
    exit(3);
  }
  b = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
  close(l);
  if (b < 0) {
    perror("accept");
    exit(3);
  }
}

pid_t spawn_stress_ng(int cpus, double seconds) {
  std::string c = std::to_string(cpus), t = std::to_string(static_cast<int>(seconds) + 2) + "s";
  const char* argv[] = {"stress-ng", "--cpu", c.c_str(), "--vm", "1", "--vm-bytes", "128M",
                        "--timeout", t.c_str(), "--quiet", nullptr};
  pid_t pid = -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  if (posix_spawnp(&pid, "stress-ng", &fa, nullptr, const_cast<char**>(argv), environ) != 0)
    pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

}  // namespace

int main(int argc, char** argv) {
  Args a{argc, argv};
  const double duration = a.num("--duration", 10);
  const double checkpoint = a.num("--checkpoint", 1);
  const int producers = static_cast<int>(a.num("--producers", 4));
  const int nsoft = static_cast<int>(a.num("--soft", 32));
  const int nsock = static_cast<int>(a.num("--sockets", 2));
  const int nfd = static_cast<int>(a.num("--evfds", 4));
  const bool load = a.has("--stress-ng");
  std::vector<uint64_t> periods_us = {100, 250, 1000};
  signal(SIGPIPE, SIG_IGN);

  const char* backend = aem_backend();
  if (!backend) {
    fprintf(stderr, "aem_stress_delivery: no AEM backend: %s\n", strerror(errno));
    return 3;
  }
  aem_on_error(on_error);
  const uint64_t t_start = now_ns();

  // Software events: worker-run ones registered here, SAME ones by the
  // dispatcher thread (which then serves them).
  for (int i = 0; i < nsoft; ++i) {
    auto r = std::make_unique<SoftReg>();
    r->same = (i % 2) == 1;
    r->per_occ = (i % 4) == 0 || (i % 4) == 3;
    g_soft.push_back(std::move(r));
  }
  Flag dispatcher_ready, dispatcher_stop;
  std::thread dispatcher([&] {
    for (auto& r : g_soft) {
      if (!r->same) continue;
      unsigned long fl = AEM_EXEC_SAME | AEM_PRIO(AEM_PRIO_DEFAULT) |
                         (r->per_occ ? AEM_PER_OCCURRENCE : 0);
      r->jid = evsoft(fl, on_soft);
      if (r->jid <= 0) {
        fprintf(stderr, "evsoft SAME: %s\n", strerror(-r->jid));
        exit(3);
      }
      std::lock_guard l(g_map_mu);
      g_by_jid[r->jid] = r.get();
    }
    dispatcher_ready.set();
    while (!dispatcher_stop.is_set()) aem_dispatch(20);
    while (aem_dispatch(0) > 0) {
    }
  });
  dispatcher_ready.wait_until(now_ns() + 10000000000ull);
  for (size_t i = 0; i < g_soft.size(); ++i) {
    auto& r = g_soft[i];
    if (r->same) continue;
    int prio = AEM_PRIO_MIN + static_cast<int>(i * 7 % AEM_PRIO_LEVELS);
    r->jid = evsoft(AEM_EXEC_THREAD | AEM_PRIO(prio) | (r->per_occ ? AEM_PER_OCCURRENCE : 0),
                    on_soft);
    if (r->jid <= 0) {
      fprintf(stderr, "evsoft: %s\n", strerror(-r->jid));
      return 3;
    }
    std::lock_guard l(g_map_mu);
    g_by_jid[r->jid] = r.get();
  }
  // Timers.
  for (auto p : periods_us) {
    auto r = std::make_unique<TimerReg>();
    r->period_ns = p * 1000;
    r->first_ns = now_ns() + 20000000ull;
    timespec v{static_cast<time_t>(r->first_ns / 1000000000ull),
               static_cast<long>(r->first_ns % 1000000000ull)};
    timespec per{0, static_cast<long>(r->period_ns)};
    {
      std::lock_guard l(g_map_mu);  // the handler must find it
      r->jid = evtimer(&v, &per, AEM_EXEC_THREAD | AEM_ABSTIME, on_timer);
      if (r->jid <= 0) {
        fprintf(stderr, "evtimer: %s\n", strerror(-r->jid));
        return 3;
      }
      g_by_jid[r->jid] = r.get();
    }
    g_timers.push_back(std::move(r));
  }
  // Sockets.
  for (int i = 0; i < nsock; ++i) {
    auto r = std::make_unique<SockReg>();
    tcp_pair(r->wfd, r->rfd);
    std::lock_guard l(g_map_mu);
    r->jid = sockasync_read(r->rfd, AEM_EXEC_THREAD, on_read);
    if (r->jid <= 0) {
      fprintf(stderr, "sockasync_read: %s\n", strerror(-r->jid));
      return 3;
    }
    g_by_jid[r->jid] = r.get();
    g_socks.push_back(std::move(r));
  }
  // eventfds, edge triggered.
  for (int i = 0; i < nfd; ++i) {
    auto r = std::make_unique<FdReg>();
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    std::lock_guard l(g_map_mu);
    r->jid = evfd(r->efd, POLLIN, AEM_EDGE | AEM_EXEC_THREAD, on_fd);
    if (r->jid <= 0) {
      fprintf(stderr, "evfd: %s\n", strerror(-r->jid));
      return 3;
    }
    g_by_jid[r->jid] = r.get();
    g_fds.push_back(std::move(r));
  }

  pid_t load_pid = load ? spawn_stress_ng(ncpus(), duration) : -1;

  // Producers.
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::atomic<uint64_t> raise_errors{0};
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      std::mt19937_64 rng(p * 7919 + 1);
      uint64_t k = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        auto& r = g_soft[rng() % g_soft.size()];
        int rc = evsoft_raise(r->jid, k);
        if (rc == 0)
          r->raised.fetch_add(1, std::memory_order_relaxed);
        else
          raise_errors.fetch_add(1);
        if ((++k & 255) == 0) sched_yield();
      }
    });
  }
  for (auto& s : g_socks) {
    threads.emplace_back([&, s = s.get()] {
      std::mt19937 rng(s->wfd);
      std::vector<char> buf(16384, 'x');
      while (!stop.load(std::memory_order_relaxed)) {
        size_t n = 1 + rng() % buf.size();
        ssize_t w = write(s->wfd, buf.data(), n);
        if (w > 0) s->written.fetch_add(static_cast<uint64_t>(w));
      }
      shutdown(s->wfd, SHUT_WR);
    });
  }
  threads.emplace_back([&] {
    uint64_t k = 0;
    uint64_t one = 1;
    while (!stop.load(std::memory_order_relaxed)) {
      auto& f = g_fds[k++ % g_fds.size()];
      if (write(f->efd, &one, sizeof one) == sizeof one) f->written.fetch_add(1);
      if ((k & 63) == 0) sched_yield();
    }
  });

  auto totals = [&](uint64_t& act, uint64_t& del) {
    act = del = 0;
    for (auto& r : g_soft) act += r->raised.load(), del += r->delivered.load();
    for (auto& r : g_fds) act += r->written.load(), del += r->drained.load();
    for (auto& r : g_socks) act += r->written.load(), del += r->received.load();
  };
  Json cps;
  cps.begin_arr();
  const uint64_t t_run = now_ns();
  const uint64_t t_end = t_run + static_cast<uint64_t>(duration * 1e9);
  for (uint64_t t = t_run + static_cast<uint64_t>(checkpoint * 1e9); t < t_end;
       t += static_cast<uint64_t>(checkpoint * 1e9)) {
    sleep_until_ns(t);
    uint64_t act, del;
    totals(act, del);
    double el = (now_ns() - t_run) / 1e9;
    cps.begin_obj().kv("t_s", el).kv("activated", act).kv("delivered", del)
        .kv("in_flight", act >= del ? act - del : 0).kv("errors", g_errors.load()).end_obj();
    fprintf(stderr, "aem_stress_delivery: t=%.1fs activated=%llu delivered=%llu\n", el,
            (unsigned long long)act, (unsigned long long)del);
  }
  sleep_until_ns(t_end);
  stop.store(true);
  for (auto& t : threads) t.join();

  // Drain: wait (bounded) until every family has caught up.
  auto expected_timer = [](const TimerReg& r, uint64_t at) -> uint64_t {
    return at < r.first_ns ? 0 : (at - r.first_ns) / r.period_ns + 1;
  };
  const uint64_t deadline = now_ns() + 20000000000ull;
  auto caught_up = [&] {
    for (auto& r : g_soft)
      if (r->delivered.load() < r->raised.load()) return false;
    for (auto& r : g_fds)
      if (r->drained.load() < r->written.load()) return false;
    for (auto& r : g_socks)
      if (r->received.load() < r->written.load() || r->eofs.load() < 1) return false;
    return true;
  };
  while (!caught_up() && now_ns() < deadline) {
    uint32_t s = g_progress.seq.load();
    if (caught_up()) break;
    futex_wait(g_progress.seq, s, 20000000ull);
  }
  // A short grace period shows duplicates that would arrive late.
  sleep_ns(50000000ull);
  Json timers;
  timers.begin_arr();
  uint64_t t_act = 0, t_del = 0, t_lost = 0, t_dup = 0;
  // Timers keep running: wait until every expiration due at tb has been
  // delivered, then clean at once; the expected count lies between the
  // expirations due at tb and those due when the clean returned.
  for (auto& r : g_timers) {
    const uint64_t tb = now_ns();
    const uint64_t lo = expected_timer(*r, tb);
    const uint64_t dl = tb + 5000000000ull;
    while (r->delivered.load() < lo && now_ns() < dl) {
      uint32_t s = g_progress.seq.load();
      if (r->delivered.load() >= lo) break;
      futex_wait(g_progress.seq, s, 10000000ull);
    }
    evctl(r->jid, AEM_CTL_CLEAN, 0);
    const uint64_t hi = expected_timer(*r, now_ns());
    uint64_t d = r->delivered.load();
    uint64_t act = d < lo ? lo : (d > hi ? hi : d);
    t_act += act;
    t_del += d;
    t_lost += d < lo ? lo - d : 0;
    t_dup += d > hi ? d - hi : 0;
    timers.begin_obj().kv("period_us", r->period_ns / 1000).kv("expected_min", lo)
        .kv("expected_max", hi).kv("delivered", d).kv("handler_calls", r->calls.load()).end_obj();
  }
  timers.end_arr();
  dispatcher_stop.set();
  dispatcher.join();
  if (load_pid > 0) {
    kill(load_pid, SIGTERM);
    waitpid(load_pid, nullptr, 0);
  }

  auto fam = [](Json& j, const char* name, uint64_t act, uint64_t del, uint64_t calls) {
    j.key(name).begin_obj().kv("activated", act).kv("delivered", del)
        .kv("lost", act > del ? act - del : 0).kv("duplicated", del > act ? del - act : 0)
        .kv("handler_calls", calls).end_obj();
  };
  uint64_t s_act = 0, s_del = 0, s_calls = 0, f_act = 0, f_del = 0, f_calls = 0;
  uint64_t k_act = 0, k_del = 0, k_calls = 0, eof_bad = 0;
  for (auto& r : g_soft) s_act += r->raised, s_del += r->delivered, s_calls += r->calls;
  for (auto& r : g_fds) f_act += r->written, f_del += r->drained, f_calls += r->calls;
  for (auto& r : g_socks) {
    k_act += r->written, k_del += r->received, k_calls += r->calls;
    if (r->eofs.load() != 1) ++eof_bad;
  }
  const uint64_t act = s_act + f_act + k_act + t_act, del = s_del + f_del + k_del + t_del;
  const uint64_t lost = (s_act > s_del ? s_act - s_del : 0) + (f_act > f_del ? f_act - f_del : 0) +
                        (k_act > k_del ? k_act - k_del : 0) + t_lost;
  const uint64_t dup = (s_del > s_act ? s_del - s_act : 0) + (f_del > f_act ? f_del - f_act : 0) +
                       (k_del > k_act ? k_del - k_act : 0) + t_dup;

  Json j;
  j.begin_obj().kv("program", "aem_stress_delivery").kv("backend", backend);
  j.key("config").begin_obj().kv("duration_s", duration).kv("producers", producers)
      .kv("soft_registrations", nsoft).kv("sockets", nsock).kv("evfds", nfd)
      .kv("timers", static_cast<uint64_t>(g_timers.size())).kv("stress_ng", load)
      .kv("stress_ng_started", load_pid > 0).kv("cpus", ncpus()).end_obj();
  j.key("families").begin_obj();
  fam(j, "soft", s_act, s_del, s_calls);
  fam(j, "evfd_edge", f_act, f_del, f_calls);
  fam(j, "socket_bytes", k_act, k_del, k_calls);
  j.key("timer").begin_obj().kv("activated", t_act).kv("delivered", t_del).kv("lost", t_lost)
      .kv("duplicated", t_dup).key("timers").raw(timers.s).end_obj();
  j.end_obj();
  j.kv("socket_eof_not_exactly_once", eof_bad);
  j.kv("occurrences_activated", act).kv("occurrences_delivered", del);
  j.kv("lost", lost).kv("duplicated", dup);
  j.kv("raise_errors", raise_errors.load()).kv("error_notifications", g_errors.load())
      .kv("overflow_notifications", g_overflow.load()).kv("unknown_ids", g_unknown.load());
  j.kv("elapsed_s", (now_ns() - t_start) / 1e9);
  j.key("checkpoints").raw(cps.end_arr().s);
  j.kv("ok", lost == 0 && dup == 0 && eof_bad == 0 && g_unknown.load() == 0);
  j.end_obj();
  printf("%s\n", j.s.c_str());
  fflush(stdout);
  // Sockets and eventfds stay registered until exit; aem_shutdown cleans.
  aem_shutdown();
  return (lost || dup || eof_bad) ? 1 : 0;
}
