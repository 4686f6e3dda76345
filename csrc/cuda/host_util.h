// Host helpers shared by the launch code of kl_cuda.cu and sets_cuda.cu: the tuning knobs,
// the register list capacity, and the workspace alignment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace eae {
namespace cuda {
namespace detail {

// Register top-k lists hold 1, 4 or 16 entries (a power of two for the bitonic merge).
inline int list_capacity(int64_t k) { return k == 1 ? 1 : k <= 4 ? 4 : 16; }

// Tuning and test knobs, read on every call (so tests can switch them):
//   EAE_KERNELS_CUDA_TILE = small | large | list   forces the searcher (list works for any k,
//                                                   small and large for k <= 16)
//   EAE_KERNELS_CUDA_PATH = atomic | gather         forces the gradient path (atomic only when
//                                                   not deterministic); default: fused for
//                                                   n <= 1024 and d <= 256, else atomic, or
//                                                   gather when deterministic (the set ops,
//                                                   sets_cuda.cu: fused for sets <= 1024 rows,
//                                                   else gather)
inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// Workspace regions are 256-byte aligned.
constexpr size_t kAlign = 256;
inline size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

}  // namespace detail
}  // namespace cuda
}  // namespace eae
