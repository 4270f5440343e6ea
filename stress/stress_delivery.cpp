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
// Delivered occurrences must equal activations exactly.
//
// Late is not lost. After the run the harness drains while deliveries
// progress: it stops when every family caught up, when no handler ran for
// --stall-s, or at a cap scaled to the backlog (--drain-s sets a fixed
// cap instead). Then it reads AEM_CTL_STATS of every registration, and for
// each one reports raised, activations, delivered and pending (for
// eventfds, the count still in the eventfd; for sockets, the bytes still
// queued): lost = raised - delivered - pending. A lost occurrence fails,
// and so does one still pending at the end ("not delivered"), each with
// its figures. A sampler records every registration's raised and delivered
// counts each --sample-ms; from them follow the longest time an occurrence
// of each priority waited (to within one sample) and the time to drain.
//
// --stress-ng runs stress-ng during the run and proves it ran (load.hpp);
// if it did not, the harness exits 3: a phase whose load did not run has
// no verdict. Prints one JSON object on stdout; progress on stderr at every
// checkpoint.
#include <aem.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "common.hpp"
#include "load.hpp"

using namespace stress;

namespace {

// One sampler reading of a registration: raised (written) and delivered.
struct Sample {
  uint64_t t_ns, raised, delivered;
};

struct SoftReg {
  int jid = 0;
  int prio = AEM_PRIO_DEFAULT;
  bool same = false;
  bool per_occ = false;
  std::vector<Sample> samples;
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
  std::vector<Sample> samples;
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
// Soft, eventfd and socket handlers running now, and how many have ended:
// the final accounting reads its counts while neither moves.
std::atomic<int> g_inflight{0};
std::atomic<uint64_t> g_ended{0};
struct InHandler {
  InHandler() { g_inflight.fetch_add(1); }
  ~InHandler() {
    g_ended.fetch_add(1);
    g_inflight.fetch_sub(1);
  }
};

template <class T>
T* lookup(int jid) {
  std::lock_guard l(g_map_mu);
  auto it = g_by_jid.find(jid);
  return it == g_by_jid.end() ? nullptr : static_cast<T*>(it->second);
}

void on_soft(int jid, uint64_t, uint64_t occ) {
  InHandler in;
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
  InHandler in;
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
  InHandler in;
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

// The count an eventfd holds, read without consuming it.
uint64_t eventfd_count(int efd) {
  std::ifstream f("/proc/self/fdinfo/" + std::to_string(efd));
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("eventfd-count:", 0) == 0) return std::stoull(line.substr(14), nullptr, 16);
  return 0;
}

// Bytes queued in a socket that no one has read yet.
uint64_t socket_inq(int fd) {
  int n = 0;
  return ioctl(fd, FIONREAD, &n) == 0 && n > 0 ? static_cast<uint64_t>(n) : 0;
}

// The longest an occurrence waited, to within one sampling interval: for
// each sample, the time until a later sample shows everything raised by
// then delivered (to the end of the samples when it never was).
uint64_t longest_wait_ns(const std::vector<Sample>& v) {
  uint64_t worst = 0;
  size_t j = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].delivered >= v[i].raised) continue;
    j = std::max(j, i);
    while (j < v.size() && v[j].delivered < v[i].raised) ++j;
    const uint64_t until = j < v.size() ? v[j].t_ns : v.back().t_ns;
    worst = std::max(worst, until - v[i].t_ns);
  }
  return worst;
}

// One registration's accounting at the end.
struct Account {
  const char* family;
  int jid, prio;
  uint64_t raised, activations, delivered, handler_calls, pending, lost, duplicated;
};

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
      unsigned long fl =
          AEM_EXEC_SAME | AEM_PRIO(AEM_PRIO_DEFAULT) | (r->per_occ ? AEM_PER_OCCURRENCE : 0);
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
    r->prio = prio;
    r->jid =
        evsoft(AEM_EXEC_THREAD | AEM_PRIO(prio) | (r->per_occ ? AEM_PER_OCCURRENCE : 0), on_soft);
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

  StressNg sng;
  if (load && !sng.start({"--cpu", std::to_string(ncpus()), "--vm", "1", "--vm-bytes", "128M"},
                         duration + 60)) {
    fprintf(stderr, "aem_stress_delivery: the load did not start: %s\n", sng.stop().why.c_str());
    return 3;
  }

  // The sampler: every registration's raised and delivered counts, from
  // the start of the run to the end of the drain.
  const uint64_t sample_ns = static_cast<uint64_t>(a.num("--sample-ms", 10) * 1e6);
  Flag sampler_stop;
  std::thread sampler([&] {
    for (uint64_t t = now_ns();; t += sample_ns) {
      for (auto& r : g_soft) r->samples.push_back({t, r->raised.load(), r->delivered.load()});
      for (auto& r : g_fds) r->samples.push_back({t, r->written.load(), r->drained.load()});
      if (sampler_stop.is_set()) break;
      sleep_until_ns(t + sample_ns);
    }
  });

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
    cps.begin_obj()
        .kv("t_s", el)
        .kv("activated", act)
        .kv("delivered", del)
        .kv("in_flight", act >= del ? act - del : 0)
        .kv("errors", g_errors.load())
        .end_obj();
    fprintf(stderr, "aem_stress_delivery: t=%.1fs activated=%llu delivered=%llu\n", el,
            (unsigned long long)act, (unsigned long long)del);
  }
  sleep_until_ns(t_end);
  stop.store(true);
  for (auto& t : threads) t.join();
  LoadProof proof;
  if (load) proof = sng.stop();

  // Drain while deliveries progress. The cap scales with the backlog at
  // the stop and the rate the run delivered at; --drain-s fixes it.
  auto caught_up = [&] {
    for (auto& r : g_soft)
      if (r->delivered.load() < r->raised.load()) return false;
    for (auto& r : g_fds)
      if (r->drained.load() < r->written.load()) return false;
    for (auto& r : g_socks)
      if (r->received.load() < r->written.load() || r->eofs.load() < 1) return false;
    return true;
  };
  const uint64_t t_stop = now_ns();
  uint64_t stop_act, stop_del;
  totals(stop_act, stop_del);
  const uint64_t backlog = stop_act > stop_del ? stop_act - stop_del : 0;
  const double rate = stop_del / std::max(1e-3, (t_stop - t_run) / 1e9);
  const double fixed_cap = a.num("--drain-s", -1);
  const double stall_s = a.num("--stall-s", 10);
  const double cap_s =
      fixed_cap >= 0 ? fixed_cap : std::min(900.0, 20.0 + 3.0 * backlog / std::max(rate, 1.0));
  const uint64_t cap_at = t_stop + static_cast<uint64_t>(cap_s * 1e9);
  const char* drain_end = "caught_up";
  uint64_t last_progress = now_ns();
  uint64_t last_ended = g_ended.load();
  while (!caught_up()) {
    const uint64_t now = now_ns();
    if (g_ended.load() != last_ended) last_ended = g_ended.load(), last_progress = now;
    if (now >= cap_at) {
      drain_end = "cap";
      break;
    }
    if (fixed_cap < 0 && now - last_progress >= static_cast<uint64_t>(stall_s * 1e9)) {
      drain_end = "stalled";
      break;
    }
    uint32_t s = g_progress.seq.load();
    if (caught_up()) break;
    futex_wait(g_progress.seq, s, std::min<uint64_t>(20000000ull, cap_at - now));
  }
  const double drain_s = (now_ns() - t_stop) / 1e9;
  // A short grace period shows duplicates that would arrive late.
  sleep_ns(50000000ull);

  // The accounting of every soft, eventfd and socket registration, read
  // while no handler runs or ends, so that a handler between its read and
  // its count cannot show up as lost (tried a few times while the drain
  // stopped short and handlers still run).
  std::vector<Account> accts;
  bool consistent = false;
  for (int attempt = 0; attempt < 50 && !consistent; ++attempt) {
    if (attempt) sleep_ns(2000000ull);
    accts.clear();
    const uint64_t ended = g_ended.load();
    const bool idle = g_inflight.load() == 0;
    auto stats = [](int jid) {
      aem_event_stats st{};
      if (evctl(jid, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)) != 0)
        st.pending = 0, st.activations = 0, st.deliveries = 0;
      return st;
    };
    for (auto& r : g_soft) {
      const aem_event_stats st = stats(r->jid);
      Account ac{"soft",
                 r->jid,
                 r->prio,
                 r->raised.load(),
                 st.activations,
                 r->delivered.load(),
                 r->calls.load(),
                 st.pending,
                 0,
                 0};
      accts.push_back(ac);
    }
    for (auto& r : g_fds) {
      const aem_event_stats st = stats(r->jid);
      // The writes not drained yet are in the eventfd; they are pending
      // if an activation is, else nothing will ever deliver them.
      const uint64_t in_fd = eventfd_count(r->efd);
      accts.push_back({"evfd_edge", r->jid, AEM_PRIO_DEFAULT, r->written.load(), st.activations,
                       r->drained.load(), r->calls.load(), st.pending ? in_fd : 0, 0, 0});
    }
    for (auto& r : g_socks) {
      const aem_event_stats st = stats(r->jid);
      // Bytes in the socket, or read into chunks not delivered yet.
      const uint64_t written = r->written.load(), received = r->received.load();
      const bool queued = st.pending || socket_inq(r->rfd) || r->eofs.load() == 0;
      accts.push_back({"socket_bytes", r->jid, AEM_PRIO_DEFAULT, written, st.activations, received,
                       r->calls.load(), queued && written > received ? written - received : 0, 0,
                       0});
    }
    consistent = idle && !g_inflight.load() && g_ended.load() == ended;
  }
  std::map<int, uint64_t> wait_by_prio;
  for (auto& ac : accts) {
    ac.lost = ac.raised > ac.delivered + ac.pending ? ac.raised - ac.delivered - ac.pending : 0;
    ac.duplicated =
        ac.delivered + ac.pending > ac.raised ? ac.delivered + ac.pending - ac.raised : 0;
  }

  // Per family: the soft, eventfd and socket ones from the registrations'
  // accounts (below), the timers from their expected counts.
  struct Fam {
    uint64_t act = 0, del = 0, pend = 0, lost = 0, dup = 0, calls = 0;
  };
  std::map<std::string, Fam> fams = {
      {"soft", {}}, {"evfd_edge", {}}, {"socket_bytes", {}}, {"timer", {}}};
  Json timers;
  timers.begin_arr();
  auto expected_timer = [](const TimerReg& r, uint64_t at) -> uint64_t {
    return at < r.first_ns ? 0 : (at - r.first_ns) / r.period_ns + 1;
  };
  // Timers keep running: wait until every expiration due at tb has been
  // delivered, then clean at once; the expected count lies between the
  // expirations due at tb and those due when the clean returned. What is
  // short of it and still pending (STATS, just before the clean) is late,
  // not lost.
  for (auto& r : g_timers) {
    const uint64_t tb = now_ns();
    const uint64_t lo = expected_timer(*r, tb);
    const uint64_t dl = tb + 5000000000ull;
    while (r->delivered.load() < lo && now_ns() < dl) {
      uint32_t s = g_progress.seq.load();
      if (r->delivered.load() >= lo) break;
      futex_wait(g_progress.seq, s, 10000000ull);
    }
    aem_event_stats st{};
    evctl(r->jid, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st));
    evctl(r->jid, AEM_CTL_CLEAN, 0);
    const uint64_t hi = expected_timer(*r, now_ns());
    uint64_t d = r->delivered.load();
    const uint64_t short_by = d < lo ? lo - d : 0;
    const uint64_t pend = std::min<uint64_t>(short_by, st.pending);
    Fam& f = fams["timer"];
    f.act += d < lo ? lo : (d > hi ? hi : d);
    f.del += d;
    f.pend += pend;
    f.lost += short_by - pend;
    f.dup += d > hi ? d - hi : 0;
    f.calls += r->calls.load();
    timers.begin_obj()
        .kv("period_us", r->period_ns / 1000)
        .kv("expected_min", lo)
        .kv("expected_max", hi)
        .kv("delivered", d)
        .kv("pending", pend)
        .kv("handler_calls", r->calls.load())
        .end_obj();
  }
  timers.end_arr();
  sampler_stop.set();
  sampler.join();
  dispatcher_stop.set();
  dispatcher.join();
  for (auto& r : g_soft) {
    uint64_t& w = wait_by_prio[r->prio];
    w = std::max(w, longest_wait_ns(r->samples));
  }
  for (auto& r : g_fds) {
    uint64_t& w = wait_by_prio[AEM_PRIO_DEFAULT];
    w = std::max(w, longest_wait_ns(r->samples));
  }

  for (auto& ac : accts) {
    Fam& f = fams[ac.family];
    f.act += ac.raised, f.del += ac.delivered, f.pend += ac.pending;
    f.lost += ac.lost, f.dup += ac.duplicated, f.calls += ac.handler_calls;
  }
  uint64_t eof_bad = 0;
  for (auto& r : g_socks)
    if (r->eofs.load() != 1) ++eof_bad;
  uint64_t act = 0, del = 0, lost = 0, dup = 0, pending = 0;
  for (auto& [n, f] : fams)
    act += f.act, del += f.del, lost += f.lost, dup += f.dup, pending += f.pend;

  Json j;
  j.begin_obj().kv("program", "aem_stress_delivery").kv("backend", backend);
  j.key("config")
      .begin_obj()
      .kv("duration_s", duration)
      .kv("producers", producers)
      .kv("soft_registrations", nsoft)
      .kv("sockets", nsock)
      .kv("evfds", nfd)
      .kv("timers", static_cast<uint64_t>(g_timers.size()))
      .kv("stress_ng", load)
      .kv("stress_ng_started", proof.started)
      .kv("cpus", ncpus())
      .end_obj();
  if (load) proof.to_json(j, "load");
  j.key("families").begin_obj();
  for (auto& [n, f] : fams) {
    j.key(n)
        .begin_obj()
        .kv("activated", f.act)
        .kv("delivered", f.del)
        .kv("pending", f.pend)
        .kv("lost", f.lost)
        .kv("duplicated", f.dup)
        .kv("handler_calls", f.calls);
    if (n == "timer") j.key("timers").raw(timers.s);
    j.end_obj();
  }
  j.end_obj();
  j.key("registrations").begin_arr();
  for (auto& ac : accts)
    j.begin_obj()
        .kv("family", ac.family)
        .kv("jid", ac.jid)
        .kv("prio", ac.prio)
        .kv("raised", ac.raised)
        .kv("activations", ac.activations)
        .kv("delivered", ac.delivered)
        .kv("handler_calls", ac.handler_calls)
        .kv("pending", ac.pending)
        .kv("lost", ac.lost)
        .kv("duplicated", ac.duplicated)
        .end_obj();
  j.end_arr();
  j.kv("accounting_consistent", consistent);
  j.key("drain")
      .begin_obj()
      .kv("backlog_at_stop", backlog)
      .kv("cap_s", cap_s)
      .kv("cap_fixed", fixed_cap >= 0)
      .kv("ended", drain_end)
      .kv("drain_s", drain_s)
      .end_obj();
  j.kv("sample_ms", sample_ns / 1e6);
  j.key("longest_wait_ms_by_priority").begin_obj();
  for (auto& [p, w] : wait_by_prio) j.kv(std::to_string(p), w / 1e6);
  j.end_obj();
  j.kv("socket_eof_not_exactly_once", eof_bad);
  j.kv("occurrences_activated", act).kv("occurrences_delivered", del);
  j.kv("lost", lost).kv("duplicated", dup).kv("not_delivered", pending);
  j.kv("raise_errors", raise_errors.load())
      .kv("error_notifications", g_errors.load())
      .kv("overflow_notifications", g_overflow.load())
      .kv("unknown_ids", g_unknown.load());
  j.kv("elapsed_s", (now_ns() - t_start) / 1e9);
  j.key("checkpoints").raw(cps.end_arr().s);
  const bool ok =
      lost == 0 && dup == 0 && pending == 0 && eof_bad == 0 && consistent && g_unknown.load() == 0;
  j.kv("ok", ok);
  j.end_obj();
  printf("%s\n", j.s.c_str());
  fflush(stdout);
  // Sockets and eventfds stay registered until exit; aem_shutdown cleans.
  aem_shutdown();
  if (load && !proof.ran) {
    fprintf(stderr, "aem_stress_delivery: the load did not run (%s): no verdict\n",
            proof.why.c_str());
    return 3;
  }
  if (pending)
    fprintf(stderr,
            "aem_stress_delivery: %llu occurrences not delivered %.1f s after the run "
            "(drain %s)\n",
            (unsigned long long)pending, drain_s, drain_end);
  return ok ? 0 : 1;
}
