// SPDX-License-Identifier: MIT
// The library's own threads (the user backend's poller, the worker that runs
// AEM_EXEC_THREAD handlers) start through start_running(): it returns once
// the new thread runs its function, never while it is still starting.
//
// Why: an application may fork() right after the call that made the thread
// (AEM-3.6.4 lets it). A thread still starting may hold a lock of the memory
// allocator: glibc's malloc takes its locks over fork, but GCC 12's ASan
// runtime does not, and allocates while a thread starts (AsanThread::Init).
// A child forked in that window deadlocks at its first new thread. Seen as
// Fork.InheritedKeptOthersGoneInTheChild failing 1 run in 15 under ASan with
// the CPUs busy; waiting for the thread costs one wake-up per thread started.
#pragma once

#include <future>
#include <memory>
#include <thread>
#include <utility>

namespace aem::detail {

// Starts fn on a new thread. Throws std::system_error as std::thread does.
template <class F>
std::unique_ptr<std::thread> start_running(F&& fn) {
  // The promise's shared state is reference counted: the thread may still be
  // inside set_value() when this function returns and the future is gone.
  std::promise<void> up;
  std::future<void> running = up.get_future();
  auto t = std::make_unique<std::thread>([up = std::move(up), f = std::forward<F>(fn)]() mutable {
    up.set_value();
    f();
  });
  running.wait();
  return t;
}

}  // namespace aem::detail
