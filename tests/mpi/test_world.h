// The MPI world for the tests under tests/mpi/ (opened once per process; every test of a
// binary shares it).
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "dist/comm.h"

namespace qilin::test {

inline Communicator& mpi_test_world() {
  static std::unique_ptr<Communicator> w = [] {
    auto c = mpi_world();
    EXPECT_TRUE(c.is_ok()) << c.status().message();
    return std::move(*c);
  }();
  return *w;
}

}  // namespace qilin::test
