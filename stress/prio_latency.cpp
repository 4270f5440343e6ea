// SPDX-License-Identifier: MIT
// aem_prio_latency - activation-to-handler latency per priority, unloaded
// and under load, with and without priority enforcement (AEM-3.2.1 c3,
// AEM-3.2.2 c4). Everything in one run:
//
//   for enforcement in (on: the default AEM_BOOST_CEILING, off: 0; on the
//                       kmod backend aem.ko's boost_prio/boost_ceiling,
//                       set per phase when this process may, see KmodBoost):
//     unloaded    no other activity
//     hogs        one busy loop per CPU at the process's base priority
//     hogs+flood  the same, plus a thread flooding low-priority events
//                 (handlers busy for --flood-handler-us) into the context
//
// A producer thread wakes every --period-us (default 250: under the KVM
// halt-polling window, so an idle vCPU's wake-up does not dominate the
// unloaded calibration; the value is in the JSON) and raises one event carrying
// CLOCK_MONOTONIC; the sequence of priorities is 63,0,63,32,63,48 (the
// highest priority gets half the samples). All registrations run on the
// worker (AEM_EXEC_THREAD): one execution context. The handler records
// now - value per priority. Each phase starts a fresh AEM context
// (aem_shutdown) so the policy is read again.
//
// Every loaded phase proves its load ran: stress-ng's bogo-ops and wall
// time (load.hpp), or the busy loops' iteration count. A phase whose load
// did not run makes the program exit 3 (no verdict) after its JSON.
#include <aem.h>

#include <array>
#include <map>
#include <memory>
#include <thread>

#include "common.hpp"
#include "kmod_param.hpp"
#include "load.hpp"

using namespace stress;

namespace {

constexpr std::array<int, 6> kSeq = {63, 0, 63, 32, 63, 48};
constexpr std::array<int, 4> kPrios = {0, 32, 48, 63};

struct PhaseData {
  std::map<int, std::vector<uint64_t>> lat;  // only the worker writes (one context)
  std::map<int, int> prio_of;                // jid -> priority
  Counter handled;
};
PhaseData* g_pd = nullptr;
uint64_t g_flood_handler_ns = 2000;
std::atomic<uint64_t> g_flood_handled{0};
std::string g_ceiling;   // AEM_BOOST_CEILING as given, empty: the default
bool g_kmod = false;     // the kmod backend: enforcement is aem.ko's policy
bool g_kmod_set = true;  // every phase could set it (root in the guest)

// On the kmod backend, priority enforcement is the administrator's: aem.ko's
// boost_prio (a pending registration at or above it boosts) and
// boost_ceiling (the boosted nice value). A phase with enforcement sets what
// the user backend does by default (above the default priority, 10 nice
// steps better than the process's); one without sets boost_prio 0. Both are
// put back when the phase ends.
struct KmodBoost {
  std::unique_ptr<aemtest::KmodParam> prio, ceiling;
  explicit KmodBoost(bool enforce) {
    if (!g_kmod) return;
    if (!aemtest::kmod_policy_writable()) {
      g_kmod_set = false;
      return;
    }
    prio = std::make_unique<aemtest::KmodParam>("boost_prio",
                                                std::to_string(enforce ? AEM_PRIO_DEFAULT + 1 : 0));
    if (enforce)
      ceiling = std::make_unique<aemtest::KmodParam>(
          "boost_ceiling", std::to_string(getpriority(PRIO_PROCESS, 0) - 10));
    g_kmod_set = g_kmod_set && prio->ok() && (!ceiling || ceiling->ok());
  }
};

void on_event(int jid, uint64_t value, uint64_t) {
  const uint64_t t = now_ns();
  g_pd->lat[g_pd->prio_of[jid]].push_back(t - value);
  g_pd->handled.add(1);
}
void on_flood(int, uint64_t, uint64_t) {
  spin_ns(g_flood_handler_ns);
  g_flood_handled.fetch_add(1, std::memory_order_relaxed);
}

struct PhaseResult {
  std::string name;
  bool enforcement;
  std::map<int, Dist> by_prio;
  uint64_t flood_handled = 0;
  uint64_t missing = 0;
  bool hogs = false;
  bool load_ran = true;  // the phase has no load, or its load proved it ran
  std::string load_kind;
  LoadProof proof;          // stress-ng's, when it ran the hogs
  uint64_t busy_loops = 0;  // the busy threads', when they did
};

PhaseResult run_phase(const std::string& name, bool enforce, bool hogs, bool flood, int n,
                      uint64_t period_ns, bool use_stress_ng) {
  PhaseResult res;
  res.name = name;
  res.enforcement = enforce;
  aem_shutdown();
  if (enforce && !g_ceiling.empty())
    setenv("AEM_BOOST_CEILING", g_ceiling.c_str(), 1);
  else if (enforce)
    unsetenv("AEM_BOOST_CEILING");
  else
    setenv("AEM_BOOST_CEILING", "0", 1);
  KmodBoost kmod_boost(enforce);
  PhaseData pd;
  g_pd = &pd;
  for (int p : kPrios) {
    // One handler call per raise: a merged raise would hide its latency.
    int jid = evsoft(AEM_EXEC_THREAD | AEM_PER_OCCURRENCE | AEM_PRIO(p), on_event);
    if (jid <= 0) {
      fprintf(stderr, "evsoft: %s\n", strerror(-jid));
      exit(3);
    }
    pd.prio_of[jid] = p;
    pd.lat[p].reserve(n);
  }
  std::map<int, int> jid_of;
  for (auto& [j, p] : pd.prio_of) jid_of[p] = j;
  std::vector<int> flood_ids;
  if (flood)
    for (int p = 0; p < 8; ++p)
      flood_ids.push_back(evsoft(AEM_EXEC_THREAD | AEM_PRIO(p * 2), on_flood));

  std::atomic<bool> stop{false};
  std::vector<std::thread> load;
  std::atomic<uint64_t> busy_loops{0};
  StressNg sng;
  res.hogs = hogs;
  if (hogs) {
    res.load_kind = "stress-ng --cpu";
    if (!use_stress_ng || !sng.start({"--cpu", std::to_string(ncpus())}, 600)) {
      res.load_kind = use_stress_ng
                          ? "busy threads (stress-ng did not start: " + sng.stop().why + ")"
                          : "busy threads";
      for (int c = 0; c < ncpus(); ++c)
        load.emplace_back([&, c] {
          pin_to_cpu(c);
          volatile uint64_t x = 0;
          while (!stop.load(std::memory_order_relaxed)) x = x + 1;
          busy_loops.fetch_add(x);
        });
    }
    sleep_ns(50000000);  // let the load settle
  }
  g_flood_handled = 0;
  if (flood)
    load.emplace_back([&] {
      uint64_t k = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        evsoft_raise(flood_ids[k % flood_ids.size()], k);
        if ((++k & 15) == 0) sched_yield();
      }
    });

  // Producer: one event per period; warm-up of 50 events not recorded.
  const int warm = 60;
  uint64_t next = now_ns() + period_ns;
  for (int i = 0; i < n + warm; ++i) {
    sleep_until_ns(next);
    next += period_ns;
    const int p = kSeq[i % kSeq.size()];
    if (i == warm) {
      pd.handled.wait_ge(static_cast<uint64_t>(warm), now_ns() + 5000000000ull);
      for (auto& [pp, v] : pd.lat) v.clear();
    }
    evsoft_raise(jid_of[p], now_ns());
  }
  const bool all = pd.handled.wait_ge(static_cast<uint64_t>(n + warm), now_ns() + 10000000000ull);
  res.missing = all ? 0 : static_cast<uint64_t>(n + warm) - pd.handled.get();
  stop.store(true);
  for (auto& t : load) t.join();
  if (sng.running()) {
    res.proof = sng.stop();
    res.load_ran = res.proof.ran;
  } else if (hogs) {
    res.busy_loops = busy_loops.load();
    res.load_ran = res.busy_loops > 0;
  }
  res.flood_handled = g_flood_handled.load();
  aem_shutdown();  // the worker is idle: the samples are stable now
  for (auto& [p, v] : pd.lat) res.by_prio[p] = distribution(v, true);
  g_pd = nullptr;
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  Args a{argc, argv};
  const int n = static_cast<int>(a.num("--samples", 4000));
  const uint64_t period_ns = static_cast<uint64_t>(a.num("--period-us", 250) * 1000);
  g_flood_handler_ns = static_cast<uint64_t>(a.num("--flood-handler-us", 2) * 1000);
  const bool use_sng = a.has("--stress-ng");
  if (!aem_backend()) {
    fprintf(stderr, "aem_prio_latency: no AEM backend: %s\n", strerror(errno));
    return 3;
  }
  const std::string backend = aem_backend();
  g_kmod = backend == "kmod";
  const char* ceiling_env = getenv("AEM_BOOST_CEILING");
  const std::string default_ceiling = ceiling_env ? ceiling_env : "default";
  if (ceiling_env) g_ceiling = ceiling_env;
  const uint64_t t0 = now_ns();
  std::vector<PhaseResult> phases;
  // Warm-up phase, not reported: the first phase of a process runs slower
  // (page faults, frequency, the VM's vCPUs waking up).
  run_phase("warmup", true, false, false, std::min(n, 1000), period_ns, false);
  for (bool enforce : {true, false}) {
    const std::string sfx = enforce ? "" : "_no_enforcement";
    fprintf(stderr, "aem_prio_latency: enforcement %s\n", enforce ? "on" : "off");
    phases.push_back(run_phase("unloaded" + sfx, enforce, false, false, n, period_ns, use_sng));
    phases.push_back(run_phase("hogs" + sfx, enforce, true, false, n, period_ns, use_sng));
    phases.push_back(run_phase("hogs_flood" + sfx, enforce, true, true, n, period_ns, use_sng));
  }
  if (ceiling_env)
    setenv("AEM_BOOST_CEILING", ceiling_env, 1);
  else
    unsetenv("AEM_BOOST_CEILING");

  auto p99 = [&](const std::string& ph, int prio) -> uint64_t {
    for (auto& r : phases)
      if (r.name == ph) return r.by_prio[prio].p99;
    return 0;
  };
  Json j;
  j.begin_obj().kv("program", "aem_prio_latency").kv("backend", backend);
  j.key("config")
      .begin_obj()
      .kv("samples_per_phase", n)
      .kv("period_us", period_ns / 1000.0)
      .kv("flood_handler_us", g_flood_handler_ns / 1000.0)
      .kv("cpus", ncpus())
      .kv("hogs", use_sng ? "stress-ng --cpu (busy threads if it cannot start)"
                          : "busy threads, nice 0, one per CPU")
      .kv("boost_ceiling_enforced", default_ceiling);
  if (g_kmod) {
    // Whether the phases could set aem.ko's boost policy; if not, every
    // phase ran under the administrator's, enforcement or not.
    j.kv("kmod_enforcement_set", g_kmod_set)
        .kv("kmod_boost_prio_enforced", AEM_PRIO_DEFAULT + 1)
        .kv("kmod_boost_ceiling_enforced", "process nice - 10");
  }
  j.end_obj();
  j.key("phases").begin_arr();
  uint64_t missing = 0;
  std::string no_load;
  for (auto& r : phases) {
    missing += r.missing;
    j.begin_obj()
        .kv("name", r.name)
        .kv("enforcement", r.enforcement)
        .kv("flood_handled", r.flood_handled)
        .kv("missing", r.missing);
    if (r.hogs) {
      j.kv("load_kind", r.load_kind).kv("load_ran", r.load_ran);
      if (r.proof.started)
        r.proof.to_json(j, "load");
      else
        j.kv("busy_loops", r.busy_loops);
    }
    if (!r.load_ran) no_load += " " + r.name + (r.proof.why.empty() ? "" : ": " + r.proof.why);
    j.key("latency_ns_by_priority").begin_obj();
    for (auto& [p, d] : r.by_prio) j.dist(std::to_string(p), d);
    j.end_obj().end_obj();
  }
  j.end_arr();
  j.key("metrics").begin_obj();
  j.kv("high_prio_latency_p99_unloaded", p99("unloaded", 63));
  j.kv("high_prio_latency_p99_loaded", p99("hogs_flood", 63));
  j.kv("boosted_latency_p99_unloaded", p99("unloaded", 63));
  j.kv("boosted_latency_p99_loaded", p99("hogs", 63));
  j.kv("high_prio_latency_p99_unloaded_no_enforcement", p99("unloaded_no_enforcement", 63));
  j.kv("high_prio_latency_p99_loaded_no_enforcement", p99("hogs_flood_no_enforcement", 63));
  j.kv("boosted_latency_p99_loaded_no_enforcement", p99("hogs_no_enforcement", 63));
  j.kv("low_prio_latency_p99_loaded", p99("hogs_flood", 0));
  j.end_obj();
  j.kv("missing", missing).kv("elapsed_s", (now_ns() - t0) / 1e9).end_obj();
  printf("%s\n", j.s.c_str());
  fflush(stdout);
  if (!no_load.empty()) {
    fprintf(stderr, "aem_prio_latency: the load did not run in phase%s: no verdict\n",
            no_load.c_str());
    return 3;
  }
  return missing ? 1 : 0;
}
