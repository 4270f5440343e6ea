// Requirement tagging for GoogleTest tests.
//
// Inside a TEST body, AEM_REQ("AEM-3.1.1", "PRF.5.0") records the IDs the
// test verifies as the XML/JSON property "requirement" (space-separated).
// `cglcert coverage` finds the same tags statically, before anything runs,
// by scanning test sources for AEM_REQ( inside TEST/TEST_F/TEST_P bodies,
// so the string literals must be written out, not computed.
#pragma once

#include <gtest/gtest.h>

#include <string>

namespace aem_req_detail {
template <typename... Ids>
inline std::string join(const Ids&... ids) {
  std::string out;
  ((out += (out.empty() ? "" : " "), out += ids), ...);
  return out;
}
}  // namespace aem_req_detail

#define AEM_REQ(...) \
  ::testing::Test::RecordProperty("requirement", ::aem_req_detail::join(__VA_ARGS__))
