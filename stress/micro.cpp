// SPDX-License-Identifier: MIT
// aem_micro - Google Benchmark micro-benchmarks of the AEM calls:
// register (evsoft + clean), activate (evsoft_raise), dispatch (raise +
// aem_dispatch(0) on the calling thread), and the eventfd write + epoll
// round trip as the same-run reference.
#include <aem.h>
#include <benchmark/benchmark.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace {

void nop_soft(int, uint64_t, uint64_t) {}

void BM_register_clean(benchmark::State& st) {
  for (auto _ : st) {
    int id = evsoft(AEM_EXEC_SAME, nop_soft);
    benchmark::DoNotOptimize(id);
    evctl(id, AEM_CTL_CLEAN, 0);
  }
}
BENCHMARK(BM_register_clean);

// Registering with many live registrations already in the context.
void BM_register_with_live(benchmark::State& st) {
  std::vector<int> live;
  for (int64_t i = 0; i < st.range(0); ++i) live.push_back(evsoft(AEM_EXEC_SAME, nop_soft));
  for (auto _ : st) {
    int id = evsoft(AEM_EXEC_SAME, nop_soft);
    benchmark::DoNotOptimize(id);
    evctl(id, AEM_CTL_CLEAN, 0);
  }
  aem_shutdown();
}
BENCHMARK(BM_register_with_live)->Arg(10)->Arg(100000);

// Raising an event that is already pending (merged): the activation path.
void BM_activate_merged(benchmark::State& st) {
  int id = evsoft(AEM_EXEC_SAME, nop_soft);
  for (auto _ : st) evsoft_raise(id, 1);
  aem_dispatch(0);
  evctl(id, AEM_CTL_CLEAN, 0);
}
BENCHMARK(BM_activate_merged);

// Raise then dispatch on the same thread: activation + queue + handler.
void BM_raise_dispatch(benchmark::State& st) {
  int id = evsoft(AEM_EXEC_SAME, nop_soft);
  for (auto _ : st) {
    evsoft_raise(id, 1);
    benchmark::DoNotOptimize(aem_dispatch(0));
  }
  evctl(id, AEM_CTL_CLEAN, 0);
}
BENCHMARK(BM_raise_dispatch);

// Dispatch of a batch of 64 pending registrations of mixed priorities.
void BM_dispatch_batch64(benchmark::State& st) {
  std::vector<int> ids;
  for (int i = 0; i < 64; ++i) ids.push_back(evsoft(AEM_EXEC_SAME | AEM_PRIO(i), nop_soft));
  for (auto _ : st) {
    st.PauseTiming();
    for (int id : ids) evsoft_raise(id, 1);
    st.ResumeTiming();
    benchmark::DoNotOptimize(aem_dispatch(0));
  }
  st.SetItemsProcessed(st.iterations() * 64);
  for (int id : ids) evctl(id, AEM_CTL_CLEAN, 0);
}
BENCHMARK(BM_dispatch_batch64);

// Reference: eventfd write + epoll_wait + read on one thread.
void BM_epoll_eventfd_roundtrip(benchmark::State& st) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_event e{};
  e.events = EPOLLIN;
  epoll_ctl(ep, EPOLL_CTL_ADD, efd, &e);
  uint64_t one = 1, v;
  for (auto _ : st) {
    if (write(efd, &one, sizeof one) != sizeof one) st.SkipWithError("write");
    epoll_event out;
    benchmark::DoNotOptimize(epoll_wait(ep, &out, 1, -1));
    if (read(efd, &v, sizeof v) != sizeof v) st.SkipWithError("read");
  }
  close(efd);
  close(ep);
}
BENCHMARK(BM_epoll_eventfd_roundtrip);

}  // namespace

BENCHMARK_MAIN();
