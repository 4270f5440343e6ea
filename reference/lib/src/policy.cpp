// SPDX-License-Identifier: MIT
// Policy from the environment, backend selection and the implicit context.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>

#include "backend.hpp"

namespace aem::detail {
namespace {

bool parse_u64(const char* s, uint64_t& out) {
  if (!s || !*s) return false;
  errno = 0;
  char* end = nullptr;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || s[0] == '-') return false;
  out = v;
  return true;
}

int env_u64(const char* name, uint64_t& out, uint64_t lo, uint64_t hi, std::string& why) {
  const char* s = getenv(name);
  if (!s) return 0;
  uint64_t v = 0;
  if (!parse_u64(s, v) || v < lo || v > hi) {
    why = std::string(name) + "='" + s + "': expected a whole number from " + std::to_string(lo) +
          " to " + std::to_string(hi);
    return -EINVAL;
  }
  out = v;
  return 0;
}

// "a,b,c" of names -> bit mask; each name maps to a bit number.
template <size_t N>
int env_set(const char* name, uint32_t& out, const std::pair<std::string_view, int> (&names)[N],
            std::string& why) {
  const char* s = getenv(name);
  if (!s) return 0;
  uint32_t mask = 0;
  std::string_view rest(s);
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    bool found = false;
    for (const auto& [n, bit] : names) {
      if (n == item) {
        mask |= 1u << bit;
        found = true;
      }
    }
    if (!found) {
      why = std::string(name) + "='" + s + "': unknown name '" + std::string(item) +
            "'; expected a comma-separated list of:";
      // Appended in place: " " + std::string(...) trips GCC 12's -Wrestrict
      // false positive at -O3 (a Release build with AEM_WERROR failed here).
      for (const auto& n : names) why.append(" ").append(n.first);
      return -EINVAL;
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  out = mask;
  return 0;
}

constexpr uint64_t kMaxRingEntries = 4096;  // struct aem_ring_setup.entries: 2..4096

constexpr std::pair<std::string_view, int> kTypes[] = {
    {"accept", AEM_EV_ACCEPT}, {"read", AEM_EV_READ}, {"close", AEM_EV_CLOSE},
    {"sk", AEM_EV_SK},         {"sock", AEM_EV_SOCK}, {"timer", AEM_EV_TIMER},
    {"fd", AEM_EV_FD},         {"soft", AEM_EV_SOFT},
};
constexpr std::pair<std::string_view, int> kExecs[] = {
    {"same", AEM_EXEC_SAME}, {"thread", AEM_EXEC_THREAD}, {"process", AEM_EXEC_PROCESS}};

std::mutex g_mu;
// Deliberately never destroyed at exit: its threads may still run handlers
// while the process exits. aem_shutdown() releases it explicitly.
Backend* g_backend = nullptr;

}  // namespace

uint64_t Backend::next_serial() {
  static std::atomic<uint64_t> serial{0};
  return ++serial;
}

int Policy::from_env(Policy& p, std::string& why) {
  uint64_t v = 0;
  int r;
  v = p.max_registrations;
  if ((r = env_u64("AEM_MAX_REGISTRATIONS", v, 1, 1u << 30, why))) return r;
  p.max_registrations = v;
  v = p.max_pending;
  if ((r = env_u64("AEM_MAX_PENDING", v, 1, 1u << 30, why))) return r;
  p.max_pending = v;
  v = static_cast<uint64_t>(p.boost_ceiling);
  if ((r = env_u64("AEM_BOOST_CEILING", v, 0, 39, why))) return r;
  p.boost_ceiling = static_cast<int>(v);
  if ((r = env_u64("AEM_MIN_TIMER_PERIOD_NS", p.min_timer_period_ns, 0, 3600ull * 1000000000ull,
                   why)))
    return r;
  v = p.arena_bytes;
  if ((r = env_u64("AEM_ARENA_BYTES", v, 4096, uint64_t{1} << 36, why))) return r;
  p.arena_bytes = v;
  v = p.kmod_ring_entries;
  if ((r = env_u64("AEM_KMOD_RING", v, 0, kMaxRingEntries, why))) return r;
  if (v == 1 || (v & (v - 1))) {
    why = "AEM_KMOD_RING='" + std::to_string(v) +
          "': expected 0 (no ring) or a power of two from 2 to " + std::to_string(kMaxRingEntries);
    return -EINVAL;
  }
  p.kmod_ring_entries = static_cast<uint32_t>(v);
  v = p.kmod_spin_ns / 1000;
  if ((r = env_u64("AEM_KMOD_SPIN_US", v, 0, 10000, why))) return r;
  // One CPU: the producer would wait for the spin to end.
  p.kmod_spin_ns = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? v * 1000 : 0;
  if ((r = env_set("AEM_ALLOWED_TYPES", p.allowed_types, kTypes, why))) return r;
  if ((r = env_set("AEM_ALLOWED_EXECUTORS", p.allowed_executors, kExecs, why))) return r;
  return 0;
}

std::unique_ptr<Backend> make_backend(const Policy& policy, int& err, std::string& why) {
  const char* want = getenv("AEM_BACKEND");
  std::string_view w = want ? want : "";
  if (!w.empty() && w != "user" && w != "kmod") {
    why = "AEM_BACKEND='" + std::string(w) + "': expected 'kmod' or 'user'";
    err = -EINVAL;
    return nullptr;
  }
  const bool have_dev = access("/dev/aem", F_OK) == 0;
  if (w == "kmod" && !have_dev) {
    why =
        "AEM_BACKEND=kmod, but /dev/aem does not exist: load the aem kernel module "
        "(reference/kmod) or set AEM_BACKEND=user";
    err = -ENODEV;
    return nullptr;
  }
  // Asked for, or by default when /dev/aem exists. A default that cannot
  // open it (permissions, API version) falls back to the user backend.
  if (w == "kmod" || (w.empty() && have_dev)) {
    std::string kwhy;
    auto b = make_kmod_backend(policy, err, kwhy);
    if (b || w == "kmod") {
      why = kwhy;
      return b;
    }
  }
  return make_user_backend(policy, err);
}

Backend* implicit_backend(int& err) {
  std::lock_guard lock(g_mu);
  if (g_backend) return g_backend;
  Policy policy;
  std::string why;
  err = Policy::from_env(policy, why);
  std::unique_ptr<Backend> b;
  if (err == 0) b = make_backend(policy, err, why);
  if (!b) {
    if (!why.empty()) fprintf(stderr, "libaem: %s\n", why.c_str());
    if (err == 0) err = -ENOMEM;
    return nullptr;
  }
  g_backend = b.release();
  return g_backend;
}

int shutdown_implicit() {
  if (in_handler()) return -EBUSY;
  std::unique_ptr<Backend> b;
  {
    std::lock_guard lock(g_mu);
    b.reset(g_backend);
    g_backend = nullptr;
  }
  if (b) b->shutdown();
  return 0;
}

}  // namespace aem::detail
