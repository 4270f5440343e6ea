// SPDX-License-Identifier: MIT
// Costs that do not depend on the machine: the system calls and context
// switches of this process's threads over a section, counted per thread
// with perf_event_open(2). System calls are the raw_syscalls:sys_enter
// tracepoint, context switches a software event: neither needs a PMU, so
// they count the same under QEMU's TCG as on a lab machine. Needs
// perf_event_paranoid <= 1 for its own threads (or root) and tracefs (it
// mounts it at /sys/kernel/tracing when it may). The counting itself adds
// at most 4 system calls per thread to the calling thread's count (the
// resets after its counter started, the reads before it stopped).
// Shared by libaem's tests and the stress harnesses (stress/).
#pragma once

#include <dirent.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace aemtest {

class ThreadCosts {
 public:
  struct Counts {
    uint64_t syscalls = 0;
    uint64_t context_switches = 0;
    int threads = 0;
  };

  ThreadCosts() = default;
  ThreadCosts(const ThreadCosts&) = delete;
  ThreadCosts& operator=(const ThreadCosts&) = delete;
  ~ThreadCosts() { close_all(); }

  // Starts counting on every thread the process has now (only the caller
  // with @only_caller). Threads started later are not counted: start the
  // mechanism's threads first.
  bool start(std::string& why, bool only_caller = false) {
    close_all();
    const int tp = syscall_tracepoint(why);
    if (tp < 0) return false;
    DIR* d = opendir("/proc/self/task");
    if (!d) {
      why = std::string("/proc/self/task: ") + strerror(errno);
      return false;
    }
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const pid_t tid = static_cast<pid_t>(std::strtol(e->d_name, nullptr, 10));
      if (only_caller && tid != static_cast<pid_t>(syscall(SYS_gettid))) continue;
      Thread t;
      t.tid = tid;
      t.sys = open_counter(PERF_TYPE_TRACEPOINT, static_cast<uint64_t>(tp), tid);
      t.csw = open_counter(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CONTEXT_SWITCHES, tid);
      if (t.sys < 0 || t.csw < 0) {
        const int err = errno;
        if (t.sys >= 0) close(t.sys);
        if (t.csw >= 0) close(t.csw);
        if (err == ESRCH) continue;  // the thread exited meanwhile
        why = std::string("perf_event_open: ") + strerror(err) +
              (err == EACCES || err == EPERM ? " (perf_event_paranoid > 1 and not root)" : "");
        closedir(d);
        close_all();
        return false;
      }
      threads_.push_back(t);
    }
    closedir(d);
    for (const Thread& t : threads_) {
      ioctl(t.sys, PERF_EVENT_IOC_RESET, 0);
      ioctl(t.csw, PERF_EVENT_IOC_RESET, 0);
    }
    return true;
  }

  // Stops counting thread @tid (the caller, when it goes on to wait for
  // the others: its waiting is the harness's, not the mechanism's).
  void freeze(pid_t tid) {
    for (const Thread& t : threads_) {
      if (t.tid != tid) continue;
      ioctl(t.sys, PERF_EVENT_IOC_DISABLE, 0);
      ioctl(t.csw, PERF_EVENT_IOC_DISABLE, 0);
    }
  }

  // What the counted threads did since start(); stops counting.
  Counts stop() {
    Counts c;
    for (const Thread& t : threads_) {
      uint64_t v = 0;
      if (read(t.sys, &v, sizeof v) == sizeof v) c.syscalls += v;
      if (read(t.csw, &v, sizeof v) == sizeof v) c.context_switches += v;
      ++c.threads;
    }
    close_all();
    return c;
  }

 private:
  struct Thread {
    pid_t tid = 0;
    int sys = -1, csw = -1;
  };
  std::vector<Thread> threads_;

  void close_all() {
    for (const Thread& t : threads_) {
      close(t.sys);
      close(t.csw);
    }
    threads_.clear();
  }

  static int open_counter(uint32_t type, uint64_t config, pid_t tid) {
    perf_event_attr a{};
    a.size = sizeof a;
    a.type = type;
    a.config = config;
    a.sample_period = 0;
    a.exclude_hv = 1;
    return static_cast<int>(syscall(SYS_perf_event_open, &a, tid, -1, -1, PERF_FLAG_FD_CLOEXEC));
  }

  // The tracepoint id of raw_syscalls:sys_enter, from tracefs.
  static int syscall_tracepoint(std::string& why) {
    static const char* const dirs[] = {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"};
    for (int attempt = 0; attempt < 2; ++attempt) {
      for (const char* dir : dirs) {
        std::string path = std::string(dir) + "/events/raw_syscalls/sys_enter/id";
        if (FILE* f = fopen(path.c_str(), "re")) {
          int id = -1;
          if (fscanf(f, "%d", &id) != 1) id = -1;
          fclose(f);
          if (id >= 0) return id;
        }
      }
      // Not mounted: mount it where the kernel provides the directory.
      if (attempt == 0 && mount("tracefs", dirs[0], "tracefs", 0, nullptr) != 0) break;
    }
    why =
        "no raw_syscalls:sys_enter tracepoint (tracefs not mounted at /sys/kernel/tracing, "
        "and mounting it needs root)";
    return -1;
  }
};

}  // namespace aemtest
