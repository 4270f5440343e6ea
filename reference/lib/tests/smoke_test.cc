#include <gtest/gtest.h>

#include "aem.h"

namespace {
int g_hits;
void on_soft(int, uint64_t, uint64_t occ) { g_hits += static_cast<int>(occ); }
}  // namespace

TEST(Smoke, SoftRaiseDispatch) {
  int id = evsoft(0, on_soft);
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 7), 0);
  ASSERT_EQ(evsoft_raise(id, 8), 0);
  EXPECT_EQ(aem_dispatch(1000), 1);
  EXPECT_EQ(g_hits, 2);
  EXPECT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
  EXPECT_STREQ(aem_backend(), "user");
}
