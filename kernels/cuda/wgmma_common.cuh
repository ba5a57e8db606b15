// Hopper warpgroup tensor-core (wgmma, sm_90a) building blocks shared by our wgmma attention
// kernels: fences, commit/wait and shared-memory matrix descriptors. Each kernel file is its
// own module, so each gets its own copy.

#pragma once

#include <stdint.h>

#include "mma_common.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define STILLMOTION_HAS_WGMMA 1
#endif

#if defined(STILLMOTION_HAS_WGMMA)

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit_and_wait() {
    asm volatile("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;\n" ::
                     : "memory");
}
// Orders this thread's (generic-proxy) shared-memory writes before wgmma's (async-proxy) reads.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The swizzle of a shared tile, as the descriptor's layout type (bits 62–63) names it: rows of
// 128 bytes in 1024-byte atoms of 8 rows, or rows of 64 bytes in 512-byte atoms.
enum class Swizzle : uint64_t { k128 = 1, k64 = 2 };

// A shared-memory matrix descriptor: start address, leading and stride byte offsets, swizzle.
// Atoms are aligned to their size, so the base offset is 0.
__device__ __forceinline__ uint64_t descriptor(const void *start, uint32_t leading_bytes,
                                               uint32_t stride_bytes,
                                               Swizzle swizzle = Swizzle::k128) {
    const uint64_t address = smem_address(start);
    return ((address & 0x3FFFF) >> 4) | (static_cast<uint64_t>(leading_bytes >> 4) << 16) |
           (static_cast<uint64_t>(stride_bytes >> 4) << 32) |
           (static_cast<uint64_t>(swizzle) << 62);
}

#endif
