// Helpers shared by the C++ API tests.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <system_error>

#include "aem/aem.hpp"

namespace cxx_test {

using namespace std::chrono_literals;

constexpr auto kBound = 10s;  // an upper bound only: never a synchronisation

// Dispatches until pred() holds (or the bound passes).
template <class Pred>
bool dispatch_until(aem::Context& ctx, Pred pred, std::chrono::milliseconds bound = kBound) {
  const auto end = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left <= 0ms) return pred();
    ctx.dispatch(left);
  }
  return true;
}

template <class F>
std::error_code thrown_code(F&& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().category(), std::generic_category());
    return e.code();
  }
  ADD_FAILURE() << "no std::system_error thrown";
  return {};
}

}  // namespace cxx_test
