// Hopper warpgroup tensor-core (wgmma, sm_90a) building blocks shared by our wgmma attention
// kernels: fences, commit/wait and shared-memory matrix descriptors. Each kernel file is its
// own module, so each gets its own copy.

#pragma once

#include <stdint.h>

#include "mma_common.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define STILLMOTION_HAS_WGMMA 1
#endif

// A CUtensorMap: 128 opaque bytes the driver encodes, passed by value as a kernel parameter.
struct alignas(64) TensorMap {
    uint64_t words[16];
};

#if defined(STILLMOTION_HAS_WGMMA)

// Named barriers order a block's consumer warpgroups (0 is __syncthreads'): `sync` on an id
// waits until kThreads threads have arrived there, the other warpgroup's by `arrive`.
template <int kId, int kThreads>
__device__ __forceinline__ void named_barrier_sync() {
    asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
}
template <int kId, int kThreads>
__device__ __forceinline__ void named_barrier_arrive() {
    asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
}

// A warpgroup hands registers back (a producer) or takes them (its consumers): an SM
// sub-partition's 16384 registers hold one producer warp at 24 and two consumer warps at 240.
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters) : "memory");
}
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters) : "memory");
}

__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}

__device__ __forceinline__ void fence_mbarrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbarrier_init(uint64_t *bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)),
                 "r"(count)
                 : "memory");
}

// One arrival that also announces `bytes` of TMA traffic the phase must wait for.
__device__ __forceinline__ void mbarrier_expect_bytes(uint64_t *bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                     smem_address(bar)),
                 "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar))
                 : "memory");
}

// Waits until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t *bar, uint32_t parity) {
    const uint32_t address = smem_address(bar);
    uint32_t done = 0;
    while (!done) {
        asm volatile(
            "{\n"
            ".reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n"
            "}\n"
            : "=r"(done)
            : "r"(address), "r"(parity)
            : "memory");
    }
}

// A box of the 2-D map at (x, y) (x along the contiguous dimension) into shared memory,
// completing on `bar`.
__device__ __forceinline__ void tma_load_2d(void *dst, const TensorMap *map, int x, int y,
                                            uint64_t *bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_address(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(smem_address(bar))
        : "memory");
}

// A box of the 4-D map at (x, y, z, w) into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load_4d(void *dst, const TensorMap *map, int x, int y, int z,
                                            int w, uint64_t *bar) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_address(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(z), "r"(w),
        "r"(smem_address(bar))
        : "memory");
}

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
