// Kernel memory allocations made with an AEM module on the call chain, seen
// through tracefs: what lets the suite decide "activation allocates nothing"
// on the kmod backend by measurement instead of by inspection.
//
// A private trace instance (instances/aem-conformance-<pid>) records the
// kmem:kmalloc, kmem:kmem_cache_alloc, kmem:mm_page_alloc and
// percpu:percpu_alloc_percpu events with a kernel stack trace each
// (options/stacktrace). An allocation is the AEM modules' when its call site or
// a frame of its stack is a function of one of them (the symbols /proc/kallsyms
// lists with module [aem], [aem_timer], ...): that catches a kmalloc in a
// helper the module calls, not only a direct one. mark() splits the
// window: the test runs the activations, marks, then does something that must
// allocate (a registration) as a positive control proving the tracer sees the
// modules' allocations at all. Needs root and tracefs (the QEMU guest of
// cglcert has both); start() says why when it cannot run.
#pragma once

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "conformance_util.hpp"

namespace conf {

class KernelAllocTrace {
 public:
  struct Result {
    uint64_t events = 0;             // allocation events seen in the window
    uint64_t aem_before_mark = 0;    // with an AEM frame, before mark()
    uint64_t aem_after_mark = 0;     // with an AEM frame, after mark() (the control)
    bool lost = false;               // the ring overflowed: the window is incomplete
    std::vector<std::string> samples;  // the first AEM stacks before the mark
  };

  KernelAllocTrace() = default;
  KernelAllocTrace(const KernelAllocTrace&) = delete;
  KernelAllocTrace& operator=(const KernelAllocTrace&) = delete;
  ~KernelAllocTrace() {
    if (!dir_.empty()) {
      put("tracing_on", "0");
      rmdir(dir_.c_str());
    }
  }

  // Start recording; "" when running, else why it cannot (the test skips).
  std::string start() {
    if (geteuid() != 0) return "tracing kernel allocations needs root (tracefs)";
    std::string root = "/sys/kernel/tracing";
    if (access((root + "/instances").c_str(), F_OK) != 0 &&
        mount("nodev", root.c_str(), "tracefs", 0, nullptr) != 0) {
      root = "/sys/kernel/debug/tracing";
      if (access((root + "/instances").c_str(), F_OK) != 0)
        return "no tracefs (mount -t tracefs nodev /sys/kernel/tracing failed: " +
               std::string(strerror(errno)) + ")";
    }
    std::string dir = root + "/instances/aem-conformance-" + std::to_string(getpid());
    rmdir(dir.c_str());
    if (mkdir(dir.c_str(), 0700) != 0)
      return "cannot create the trace instance " + dir + ": " + strerror(errno);
    dir_ = dir;
    std::ifstream syms("/proc/kallsyms");
    std::string addr, type, name, mod;
    for (std::string l; std::getline(syms, l);) {
      std::istringstream w(l);
      if (w >> addr >> type >> name >> mod && mod.rfind("[aem", 0) == 0) aem_syms_.insert(name);
    }
    if (aem_syms_.empty()) return "/proc/kallsyms lists no symbol of an AEM module";
    if (!put("buffer_size_kb", "16384") || !put("options/stacktrace", "1"))
      return "cannot configure the trace instance " + dir_;
    bool any = false;
    for (const char* ev : {"kmem/kmalloc", "kmem/kmem_cache_alloc", "kmem/mm_page_alloc",
                           "percpu/percpu_alloc_percpu"})
      any |= put(std::string("events/") + ev + "/enable", "1");
    if (!any) return "the kernel has no kmem allocation tracepoints";
    if (!put("trace", "") || !put("tracing_on", "1")) return "cannot start tracing";
    return "";
  }

  void mark(const char* text) { put("trace_marker", text); }

  // With AEM_KTRACE_DUMP=FILE in the environment the raw trace is copied there.
  Result stop() {
    put("tracing_on", "0");
    Result r;
    if (const char* dump = getenv("AEM_KTRACE_DUMP")) {
      std::ifstream src(dir_ + "/trace");
      std::ofstream dst(dump);
      dst << src.rdbuf();
    }
    std::ifstream in(dir_ + "/trace");
    std::string line;
    bool after = false, in_event = false, aem = false;
    std::string stack;
    auto close_event = [&] {
      if (in_event && aem) {
        (after ? r.aem_after_mark : r.aem_before_mark)++;
        if (!after && r.samples.size() < 3) r.samples.push_back(stack);
      }
      in_event = aem = false;
      stack.clear();
    };
    while (std::getline(in, line)) {
      if (line.rfind(" => ", 0) == 0) {
        if (in_event) {
          stack += line + "\n";
          std::string fn = line.substr(4);
          fn = fn.substr(0, fn.find_first_of(" +"));
          if (aem_syms_.count(fn)) aem = true;
        }
        continue;
      }
      close_event();
      if (line.empty() || line[0] == '#' || line.find("<stack trace>") != std::string::npos)
        continue;
      if (line.find("LOST") != std::string::npos && line.find("EVENTS]") != std::string::npos)
        r.lost = true;
      if (line.find("tracing_mark_write: ") != std::string::npos) {
        after = true;
        continue;
      }
      for (const char* ev : {" kmalloc: ", " kmem_cache_alloc: ", " mm_page_alloc: ",
                             " percpu_alloc_percpu: "})
        if (line.find(ev) != std::string::npos) {
          in_event = true;
          ++r.events;
          stack = line + "\n";
          aem = line.find(" [aem") != std::string::npos;  // call_site=fn+off [module]
          break;
        }
    }
    close_event();
    return r;
  }

 private:
  bool put(const std::string& file, const std::string& value) {
    int fd = open((dir_ + "/" + file).c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) return false;
    const bool ok = value.empty() || write(fd, value.data(), value.size()) ==
                                         static_cast<ssize_t>(value.size());
    close(fd);
    return ok;
  }

  std::string dir_;
  std::set<std::string> aem_syms_;  // functions of the loaded AEM modules
};

// On the kmod backend: run `activate` under the tracer, mark, run `control`
// (something that must allocate in an AEM module, e.g. a registration), and
// fail when an allocation with an AEM frame happened during `activate`, or
// when the control was not seen (the tracer cannot decide then). Skips with
// the reason when the tracer cannot run. Records kernel_alloc_* measurements.
template <class Activate, class Control>
void expect_no_kernel_allocation(Activate&& activate, Control&& control) {
  KernelAllocTrace kt;
  const std::string why = kt.start();
  if (!why.empty()) GTEST_SKIP() << why;
  activate();
  kt.mark("aem-conformance: positive control");
  control();
  const KernelAllocTrace::Result r = kt.stop();
  measure("kernel_alloc_events", r.events);
  measure("kernel_alloc_aem_during_activation", r.aem_before_mark);
  measure("kernel_alloc_aem_control", r.aem_after_mark);
  ASSERT_FALSE(r.lost) << "the trace ring overflowed: the window is incomplete";
  ASSERT_GT(r.aem_after_mark, 0u)
      << "the tracer saw no allocation by the control registration: it cannot decide";
  std::string stacks;
  for (const auto& s : r.samples) stacks += s + "\n";
  EXPECT_EQ(r.aem_before_mark, 0u) << "activations allocated kernel memory:\n" << stacks;
}

}  // namespace conf

