// QILIN_ASSERT: always-on invariant checks. A failure is a bug in Qilin, never bad input.
#pragma once

#include <cstdio>
#include <cstdlib>

#define QILIN_ASSERT(cond)                                                       \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                       \
      std::abort();                                                              \
    }                                                                            \
  } while (0)
