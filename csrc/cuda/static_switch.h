// Run-time values -> compile-time template arguments, in the style of flash-attention's
// BOOL_SWITCH / FP16_SWITCH: the macro expands to an immediately-invoked lambda in which the named
// constant is a constexpr, so one line replaces a hand-written switch ladder per kernel launch.
//
//   NORM_SWITCH(norm, N, [&] { kernel<T, N><<<...>>>(p); });
//   CAPACITY_SWITCH(capacity, K, [&] { ... TopK<T, K> ... });
//   BOOL_SWITCH(cross, CROSS, [&] { ... });
#pragma once

#include "../core/kl_math.h"

#define NORM_SWITCH(NORM_VALUE, CONST_NAME, ...)        \
  [&] {                                                 \
    switch (NORM_VALUE) {                               \
      case ::eae::Norm::L1: {                           \
        constexpr ::eae::Norm CONST_NAME = ::eae::Norm::L1; \
        return __VA_ARGS__();                           \
      }                                                 \
      case ::eae::Norm::L2: {                           \
        constexpr ::eae::Norm CONST_NAME = ::eae::Norm::L2; \
        return __VA_ARGS__();                           \
      }                                                 \
      case ::eae::Norm::Linf:                           \
      default: {                                        \
        constexpr ::eae::Norm CONST_NAME = ::eae::Norm::Linf; \
        return __VA_ARGS__();                           \
      }                                                 \
    }                                                   \
  }()

// The register list capacities (plan.cuh, list_capacity): 1, 4 or 16.
#define CAPACITY_SWITCH(CAPACITY, CONST_NAME, ...) \
  [&] {                                            \
    if ((CAPACITY) == 1) {                         \
      constexpr int CONST_NAME = 1;                \
      return __VA_ARGS__();                        \
    } else if ((CAPACITY) == 4) {                  \
      constexpr int CONST_NAME = 4;                \
      return __VA_ARGS__();                        \
    } else {                                       \
      constexpr int CONST_NAME = 16;               \
      return __VA_ARGS__();                        \
    }                                              \
  }()

#define BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                    \
    if (COND) {                            \
      constexpr bool CONST_NAME = true;    \
      return __VA_ARGS__();                \
    } else {                               \
      constexpr bool CONST_NAME = false;   \
      return __VA_ARGS__();                \
    }                                      \
  }()
