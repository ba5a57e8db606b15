// Hopper warpgroup tensor-core (wgmma, sm_90a) building blocks shared by our wgmma attention
// kernels: fences, commit/wait and shared-memory matrix descriptors. Each kernel file is its
// own module, so each gets its own copy.

#pragma once

#include <stdint.h>

#include "mma_common.cuh"

// The 64 accumulator operands d[0] … d[63] of an n128 wgmma, each through C (one of the
// constraint macros below), and the placeholders that name them in the instruction.
#define STILLMOTION_D64(C)                                                                      \
    C(0), C(1), C(2), C(3), C(4), C(5), C(6), C(7), C(8), C(9), C(10), C(11), C(12), C(13), C(14), C(15),          \
    C(16), C(17), C(18), C(19), C(20), C(21), C(22), C(23), C(24), C(25), C(26), C(27), C(28), C(29), C(30), C(31),          \
    C(32), C(33), C(34), C(35), C(36), C(37), C(38), C(39), C(40), C(41), C(42), C(43), C(44), C(45), C(46), C(47),          \
    C(48), C(49), C(50), C(51), C(52), C(53), C(54), C(55), C(56), C(57), C(58), C(59), C(60), C(61), C(62), C(63)
#define STILLMOTION_D64_REGS                                                                    \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define STILLMOTION_F_OUT(i) "=f"(d[i])
#define STILLMOTION_F_ACC(i) "+f"(d[i])
#define STILLMOTION_R_OUT(i) "=r"(d[i])
#define STILLMOTION_R_ACC(i) "+r"(d[i])


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

// The turn order of two consumer warpgroups (kConsumers threads) on the tensor cores, with
// kPingPong: each issues its products in its turn, warpgroup 0 first, through named barriers 1
// and 2. Without kPingPong (lockstep) both calls are no-ops.
template <bool kPingPong, int kConsumers>
struct TurnOrder {
    int warpgroup;

    // Waits until the other warpgroup has handed the tensor cores over.
    __device__ __forceinline__ void my_turn() const {
        if constexpr (kPingPong) {
            if (warpgroup == 0) {
                named_barrier_sync<1, kConsumers>();
            } else {
                named_barrier_sync<2, kConsumers>();
            }
        }
    }

    // Hands them over to the other warpgroup.
    __device__ __forceinline__ void their_turn() const {
        if constexpr (kPingPong) {
            if (warpgroup == 0) {
                named_barrier_arrive<2, kConsumers>();
            } else {
                named_barrier_arrive<1, kConsumers>();
            }
        }
    }
};

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

// The descriptor of the matrix `bytes` (a multiple of 16) past `desc`'s start: one 32-bit add
// on the address field, which cannot carry out (shared memory ends below 256 KB). Cheaper in
// a hot loop than building each descriptor from its address.
__device__ __forceinline__ uint64_t descriptor_plus(uint64_t desc, uint32_t bytes) {
    const uint32_t address_field = static_cast<uint32_t>(desc) + (bytes >> 4);
    return (desc & 0xFFFFFFFF00000000ull) | address_field;
}

#endif
