// timer_cpp - the C++ API in a few lines: a periodic timer at 10 ms and two
// software events, a high-priority one and a low-priority one, raised from
// another thread. The timer handler stops the loop after a number of ticks.
//
//   usage: timer_cpp [ticks]     (default 5)
#include <aem/aem.hpp>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>

using namespace std::chrono_literals;

int main(int argc, char** argv) try {
  const std::uint64_t want = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 5;
  aem::Context ctx;  // a fresh context; aem::Context::process() is the C API's

  auto low = ctx.soft(
      [](const aem::SoftRaised& e) {
        std::printf("low  priority event %d: value %" PRIu64 " (%" PRIu64 " raise(s))\n", e.id,
                    e.value, e.occurrences);
      },
      {.priority = 10});
  auto high = ctx.soft(
      [](const aem::SoftRaised& e) {
        std::printf("high priority event %d: value %" PRIu64 " (%" PRIu64 " raise(s))\n", e.id,
                    e.value, e.occurrences);
      },
      {.priority = aem::priority_max});

  std::uint64_t ticks = 0;
  auto timer = ctx.timer(10ms, 10ms, [&](const aem::TimerEvent& e) {
    ticks += e.expirations;
    std::printf("tick %" PRIu64 " (%" PRIu64 " expiration(s))\n", ticks, e.expirations);
    if (ticks >= want) ctx.stop();
  });

  // Raised from another thread; when both are pending, the high one runs first.
  std::thread raiser([&] {
    low.raise(1);
    high.raise(2);
  });

  ctx.run();      // until the timer handler calls stop()
  raiser.join();
  ctx.poll();     // whatever the raiser left pending
  std::printf("done after %" PRIu64 " ticks on the %s backend\n", ticks,
              std::string(ctx.backend_name()).c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "timer_cpp: %s\n", e.what());
  return 1;
}
