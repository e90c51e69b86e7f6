// Shared by the attribution stage's tests.
#pragma once

#include <gtest/gtest.h>

#include "attribution.h"

namespace rstwatch::test {

// An address the test writes out; a typo fails the test that made it.
inline IpAddr ip(const char* text) {
    auto a = IpAddr::parse(text);
    EXPECT_TRUE(a) << text;
    return a.value_or(IpAddr{});
}

}  // namespace rstwatch::test
