#include "gtest/gtest.h"
#include "hugemm/backing.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

TEST(PageSize, ParsesNames) {
  EXPECT_EQ(*ParsePageSize("2M"), kPageSize2M);
}

}  // namespace
}  // namespace hugemm
