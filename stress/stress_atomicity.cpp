// SPDX-License-Identifier: MIT
// aem_stress_atomicity - one handler at a time per execution context
// (AEM-3.6.2 c1), and no lost or duplicated occurrence (AEM-3.5.1) while
// clean/disable/enable/set-priority race against raises.
//
// Two execution contexts: the worker (AEM_EXEC_THREAD registrations) and a
// dispatcher thread (AEM_EXEC_SAME registrations it made itself). Every
// round: fresh registrations; one raiser pinned to each CPU raises them at
// random; a chaos thread disables, enables, re-prioritises and cleans them;
// handlers are slow (busy for --handler-us, every 8th 10x longer) and set an
// atomic in-handler flag of their context: finding it already set is an
// overlap. At the end of a round everything still registered is enabled and
// must deliver exactly what was raised; a cleaned registration may drop
// what was pending (documented) but must never deliver more than was raised
// nor run after AEM_CTL_CLEAN returned.
#include <aem.h>

#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "common.hpp"

using namespace stress;

namespace {

struct Ctx {
  std::atomic<int> in{0};
  std::atomic<uint64_t> overlaps{0}, handlers{0};
};
Ctx g_ctx[2];  // 0: worker (THREAD), 1: dispatcher (SAME)

struct Reg {
  int jid = 0;
  int ctx = 0;
  bool per_occ = false;
  std::atomic<uint64_t> raised{0}, delivered{0};
  std::atomic<int> running{0};
  std::atomic<bool> cleaned{false};  // set after AEM_CTL_CLEAN returned
};

uint64_t g_handler_ns = 5000;
std::mutex g_mu;
std::unordered_map<int, Reg*> g_by_jid;
std::atomic<uint64_t> g_after_clean{0}, g_unknown{0}, g_self_overlap{0};
Counter g_progress;

Reg* lookup(int jid) {
  std::lock_guard l(g_mu);
  auto it = g_by_jid.find(jid);
  return it == g_by_jid.end() ? nullptr : it->second;
}

void on_soft(int jid, uint64_t, uint64_t occ) {
  Reg* r = lookup(jid);
  if (!r) {
    g_unknown.fetch_add(1);
    return;
  }
  Ctx& c = g_ctx[r->ctx];
  if (c.in.exchange(1, std::memory_order_acq_rel)) c.overlaps.fetch_add(1);
  if (r->running.exchange(1)) g_self_overlap.fetch_add(1);
  if (r->cleaned.load(std::memory_order_acquire)) g_after_clean.fetch_add(1);
  const uint64_t n = c.handlers.fetch_add(1);
  spin_ns((n & 7) == 0 ? g_handler_ns * 10 : g_handler_ns);
  r->delivered.fetch_add(occ, std::memory_order_acq_rel);
  r->running.store(0);
  c.in.store(0, std::memory_order_release);
  g_progress.add(0);
}

int reg_one(Reg& r, std::mt19937& rng) {
  unsigned long fl = (r.ctx == 0 ? AEM_EXEC_THREAD : AEM_EXEC_SAME) |
                     AEM_PRIO(static_cast<int>(rng() % AEM_PRIO_LEVELS)) |
                     (r.per_occ ? AEM_PER_OCCURRENCE : 0);
  std::lock_guard l(g_mu);
  r.jid = evsoft(fl, on_soft);
  if (r.jid > 0) g_by_jid[r.jid] = &r;
  return r.jid;
}

}  // namespace

int main(int argc, char** argv) {
  Args a{argc, argv};
  const int rounds = static_cast<int>(a.num("--rounds", 20));
  const double round_ms = a.num("--round-ms", 250);
  const int nregs = static_cast<int>(a.num("--regs", 64));
  g_handler_ns = static_cast<uint64_t>(a.num("--handler-us", 5) * 1000);
  const int cpus = ncpus();
  const char* backend = aem_backend();
  if (!backend) {
    fprintf(stderr, "aem_stress_atomicity: no AEM backend: %s\n", strerror(errno));
    return 3;
  }
  const uint64_t t0 = now_ns();

  // The dispatcher thread: registers the SAME half of each round on request
  // and serves its context until told to stop.
  std::vector<std::unique_ptr<Reg>> regs;
  std::atomic<uint32_t> req{0}, done{0};
  std::atomic<bool> quit{false};
  std::atomic<int> reg_errors{0};
  std::thread dispatcher([&] {
    std::mt19937 rng(12345);
    uint32_t served = 0;
    while (!quit.load()) {
      uint32_t want = req.load(std::memory_order_acquire);
      if (want != served) {
        for (auto& r : regs)
          if (r->ctx == 1 && reg_one(*r, rng) <= 0) reg_errors.fetch_add(1);
        served = want;
        done.store(want, std::memory_order_release);
        futex_wake(done);
      }
      aem_dispatch(5);
    }
    while (aem_dispatch(0) > 0) {
    }
  });

  uint64_t total_raised = 0, total_delivered = 0, lost = 0, dup = 0, cleaned_regs = 0;
  uint64_t dropped_by_clean = 0, ops[4] = {0, 0, 0, 0}, raise_enoent = 0;
  bool drain_timeout = false;
  std::mt19937 rng(777);
  for (int round = 1; round <= rounds; ++round) {
    regs.clear();
    {
      std::lock_guard l(g_mu);
      g_by_jid.clear();
    }
    for (int i = 0; i < nregs; ++i) {
      auto r = std::make_unique<Reg>();
      r->ctx = i % 2;
      r->per_occ = (i % 8) == 0 || (i % 8) == 5;
      regs.push_back(std::move(r));
    }
    for (auto& r : regs)
      if (r->ctx == 0 && reg_one(*r, rng) <= 0) reg_errors.fetch_add(1);
    req.store(static_cast<uint32_t>(round), std::memory_order_release);
    while (done.load(std::memory_order_acquire) != static_cast<uint32_t>(round))
      futex_wait(done, done.load(), 100000000ull);

    std::atomic<bool> stop{false};
    std::atomic<uint64_t> enoent{0};
    std::vector<std::thread> th;
    for (int c = 0; c < cpus; ++c) {
      th.emplace_back([&, c] {
        pin_to_cpu(c);
        std::mt19937 r2(static_cast<unsigned>(round * 131 + c));
        uint64_t k = 0;
        while (!stop.load(std::memory_order_relaxed)) {
          Reg& r = *regs[r2() % regs.size()];
          int rc = evsoft_raise(r.jid, k);
          if (rc == 0)
            r.raised.fetch_add(1, std::memory_order_acq_rel);
          else if (rc == -ENOENT)
            enoent.fetch_add(1);
          if ((++k & 31) == 0) sched_yield();
        }
      });
    }
    uint64_t local_ops[4] = {0, 0, 0, 0};
    th.emplace_back([&] {
      std::mt19937 r2(static_cast<unsigned>(round * 17));
      while (!stop.load(std::memory_order_relaxed)) {
        Reg& r = *regs[r2() % regs.size()];
        if (r.cleaned.load()) continue;
        unsigned op = r2() % 16;
        if (op < 5) {
          evctl(r.jid, AEM_CTL_DISABLE, 0);
          ++local_ops[0];
        } else if (op < 10) {
          evctl(r.jid, AEM_CTL_ENABLE, 0);
          ++local_ops[1];
        } else if (op < 15) {
          evctl(r.jid, AEM_CTL_SET_PRIO, r2() % AEM_PRIO_LEVELS);
          ++local_ops[2];
        } else if ((r2() % 256) == 0 && local_ops[3] < static_cast<uint64_t>(nregs / 8)) {
          if (evctl(r.jid, AEM_CTL_CLEAN, 0) == 0) {
            r.cleaned.store(true, std::memory_order_release);
            ++local_ops[3];
          }
        }
        if ((local_ops[0] & 15) == 0) sched_yield();
      }
    });
    sleep_ns(static_cast<uint64_t>(round_ms * 1e6));
    stop.store(true);
    for (auto& t : th) t.join();
    for (int i = 0; i < 4; ++i) ops[i] += local_ops[i];
    raise_enoent += enoent.load();

    // Settle: enable every live registration, wait for the deliveries.
    for (auto& r : regs)
      if (!r->cleaned.load()) evctl(r->jid, AEM_CTL_ENABLE, 0);
    const uint64_t deadline = now_ns() + 10000000000ull;
    auto settled = [&] {
      for (auto& r : regs)
        if (!r->cleaned.load() && r->delivered.load() < r->raised.load()) return false;
      return true;
    };
    while (!settled() && now_ns() < deadline) {
      uint32_t s = g_progress.seq.load();
      if (settled()) break;
      futex_wait(g_progress.seq, s, 10000000ull);
    }
    if (!settled()) drain_timeout = true;
    sleep_ns(2000000);  // late duplicates would show here
    for (auto& r : regs) {
      if (!r->cleaned.load()) {
        evctl(r->jid, AEM_CTL_CLEAN, 0);
        r->cleaned.store(true);
      } else {
        ++cleaned_regs;
        const uint64_t ra = r->raised.load(), de = r->delivered.load();
        if (de > ra) dup += de - ra;
        dropped_by_clean += ra > de ? ra - de : 0;
        total_raised += ra;
        total_delivered += de;
        continue;
      }
      const uint64_t ra = r->raised.load(), de = r->delivered.load();
      total_raised += ra;
      total_delivered += de;
      if (ra > de) lost += ra - de;
      if (de > ra) dup += de - ra;
    }
    fprintf(stderr, "aem_stress_atomicity: round %d/%d overlaps=%llu/%llu lost=%llu dup=%llu\n",
            round, rounds, (unsigned long long)g_ctx[0].overlaps.load(),
            (unsigned long long)g_ctx[1].overlaps.load(), (unsigned long long)lost,
            (unsigned long long)dup);
  }
  quit.store(true);
  dispatcher.join();

  const uint64_t overlaps = g_ctx[0].overlaps.load() + g_ctx[1].overlaps.load();
  Json j;
  j.begin_obj().kv("program", "aem_stress_atomicity").kv("backend", backend);
  j.key("config").begin_obj().kv("rounds", rounds).kv("round_ms", round_ms).kv("regs", nregs)
      .kv("raisers", cpus).kv("handler_us", g_handler_ns / 1000.0).end_obj();
  j.kv("handler_overlaps", overlaps);
  j.key("contexts").begin_obj();
  j.key("thread").begin_obj().kv("handlers", g_ctx[0].handlers.load())
      .kv("overlaps", g_ctx[0].overlaps.load()).end_obj();
  j.key("same").begin_obj().kv("handlers", g_ctx[1].handlers.load())
      .kv("overlaps", g_ctx[1].overlaps.load()).end_obj();
  j.end_obj();
  j.kv("same_registration_overlaps", g_self_overlap.load());
  j.kv("delivered_after_clean", g_after_clean.load());
  j.kv("occurrences_activated", total_raised - dropped_by_clean)
      .kv("occurrences_delivered", total_delivered);
  j.kv("lost", lost).kv("duplicated", dup);
  j.kv("dropped_by_clean", dropped_by_clean).kv("cleaned_mid_round", cleaned_regs);
  j.key("races").begin_obj().kv("disable", ops[0]).kv("enable", ops[1]).kv("set_prio", ops[2])
      .kv("clean", ops[3]).kv("raise_enoent_after_clean", raise_enoent).end_obj();
  j.kv("registration_errors", reg_errors.load()).kv("unknown_ids", g_unknown.load());
  j.kv("drain_timeout", drain_timeout);
  j.kv("elapsed_s", (now_ns() - t0) / 1e9);
  const bool ok = overlaps == 0 && lost == 0 && dup == 0 && g_after_clean.load() == 0 &&
                  g_self_overlap.load() == 0 && !drain_timeout && reg_errors.load() == 0;
  j.kv("ok", ok).end_obj();
  printf("%s\n", j.s.c_str());
  fflush(stdout);
  aem_shutdown();
  return ok ? 0 : 1;
}
