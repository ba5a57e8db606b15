// The 8-bit attention path on Hopper's warpgroup instruction (wgmma, sm_90a): the main kernel of
// sage_attention.cu (INT8 q·kᵀ, FP8 e4m3 P·V, float32 accumulation) with each warp's mma.sync
// tiles replaced by one 64-row wgmma per warpgroup, as wgmma_attention.cu does for 16-bit inputs.
// On Hopper, 8-bit mma.sync runs at the 16-bit wgmma rate at best; 8-bit wgmma runs at twice it.
//
// It reads what sage_attention.cu's pre-pass writes: Q and smoothed K as INT8 [B, H, S_padded, D]
// with one scale per 16 query rows (the softmax scale in log2 units folded in) and per 64 keys,
// and V as e4m3 [B, H, D, Sk_padded], per-channel scaled, each 16-key group permuted so that the
// score accumulator's registers are P·V's A operand as they are (see key_position there). D = 128.
//
// A block is two warpgroups (256 threads) and 128 query rows; keys stream in tiles of 64.
// - Q and K tiles are rows of 128 bytes (a whole head) in the 128-byte swizzle; both K-major.
// - The V tile is 128 channel rows of 64 keys (64 bytes) in the 64-byte swizzle: 8-bit wgmma
//   reads B only K-major, hence the pre-pass's transposed V.
// - P·V accumulates in two levels: FP8 wgmma adds with fewer mantissa bits than float32, so each
//   tile's product goes to a zeroed partial that is then added to the float32 output (as
//   SageAttention2 does). The partial covers one 64-channel half at a time to stay within the
//   128 registers that let two blocks share an SM.
//
// Other GPUs compile this file to nothing: the launcher uses it on compute capability 9.0 only.

#include <cuda_fp8.h>

#include "wgmma_common.cuh"

namespace {

constexpr int kHeadDim = 128;
constexpr int kRows = 128;     // query rows per block: 64 per warpgroup
constexpr int kKeys = 64;      // keys per tile: K's scale group
constexpr int kThreads = 256;  // two warpgroups
constexpr int kQRows = 16;     // query rows per Q scale: one warp's rows
constexpr int kQkRowBytes = 128;
constexpr int kQkAtomBytes = 1024;
constexpr int kVRowBytes = 64;
constexpr int kVAtomBytes = 512;
constexpr float kFp8Max = 448.f;

#if defined(STILLMOTION_HAS_WGMMA)

// d (+)= A·Bᵀ, m64 n64 k32, s8 × s8 → s32, A and B from shared memory (K-major). The first
// step only writes d ("=r"), so the scores are dead between tiles instead of held in registers.
template <bool kAccumulate>
__device__ __forceinline__ void wgmma_s8(int (&d)[32], uint64_t a, uint64_t b) {
    if constexpr (kAccumulate) {
        asm volatile(
            "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
            "%32, %33, 1;\n"
            : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]),
          "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
          "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]),
          "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
          "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]),
          "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
          "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]),
          "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
            : "l"(a), "l"(b));
    } else {
        asm volatile(
            "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
            "%32, %33, 0;\n"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]),
          "=r"(d[4]), "=r"(d[5]), "=r"(d[6]), "=r"(d[7]),
          "=r"(d[8]), "=r"(d[9]), "=r"(d[10]), "=r"(d[11]),
          "=r"(d[12]), "=r"(d[13]), "=r"(d[14]), "=r"(d[15]),
          "=r"(d[16]), "=r"(d[17]), "=r"(d[18]), "=r"(d[19]),
          "=r"(d[20]), "=r"(d[21]), "=r"(d[22]), "=r"(d[23]),
          "=r"(d[24]), "=r"(d[25]), "=r"(d[26]), "=r"(d[27]),
          "=r"(d[28]), "=r"(d[29]), "=r"(d[30]), "=r"(d[31])
            : "l"(a), "l"(b));
    }
}

// d (+)= A·B, m64 n64 k32, e4m3 × e4m3 → f32, A from registers, B from shared memory (K-major).
template <bool kAccumulate>
__device__ __forceinline__ void wgmma_e4m3(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    if constexpr (kAccumulate) {
        asm volatile(
            "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
            "{%32, %33, %34, %35}, %36, 1, 1, 1;\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
          "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
          "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
    } else {
        asm volatile(
            "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
            "{%32, %33, %34, %35}, %36, 0, 1, 1;\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]),
          "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]),
          "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]),
          "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]),
          "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]),
          "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]),
          "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]),
          "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
    }
}

// `rows` INT8 rows of 128 bytes (row stride 128, every row present: the pre-pass pads) into a
// tile in the 128-byte swizzle: chunk c of row r at chunk c ^ (r % 8).
__device__ __forceinline__ void load_qk_tile(unsigned char *tile, const unsigned char *src,
                                             int rows) {
    constexpr int kChunks = kQkRowBytes / 16;
    for (int i = threadIdx.x; i < rows * kChunks; i += kThreads) {
        const int r = i / kChunks;
        const int c = i % kChunks;
        cp_async_16(tile + r * kQkRowBytes + ((c ^ (r % 8)) << 4), src + r * kQkRowBytes + c * 16,
                    true);
    }
}

// The 64 keys from `first_key` of each of the 128 channel rows of transposed V (row stride
// `sk_padded`) into a tile in the 64-byte swizzle: chunk c of row r at chunk c ^ ((r / 2) % 4).
__device__ __forceinline__ void load_v_tile(unsigned char *tile, const unsigned char *vt,
                                            int first_key, int sk_padded) {
    constexpr int kChunks = kVRowBytes / 16;
    for (int i = threadIdx.x; i < kHeadDim * kChunks; i += kThreads) {
        const int r = i / kChunks;
        const int c = i % kChunks;
        cp_async_16(tile + r * kVRowBytes + ((c ^ ((r / 2) % 4)) << 4),
                    vt + static_cast<int64_t>(r) * sk_padded + first_key + c * 16, true);
    }
}

#endif

template <typename T>
__device__ __forceinline__ void sage_wgmma_forward(
    const int8_t *__restrict__ q8, const float *__restrict__ q_scale,
    const int8_t *__restrict__ k8, const float *__restrict__ k_scale,
    const uint8_t *__restrict__ vt, const float *__restrict__ col_scale, T *__restrict__ o,
    int sq, int sk, int sq_padded, int sk_padded, int heads) {
#if defined(STILLMOTION_HAS_WGMMA)
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    // Dynamic shared memory is only 16-byte aligned by contract: align the atoms by hand.
    unsigned char *shared = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(shared_raw) + kQkAtomBytes - 1) &
        ~uintptr_t(kQkAtomBytes - 1));
    unsigned char *q_tile = shared;
    unsigned char *k_tile = q_tile + kRows * kQkRowBytes;
    unsigned char *v_tile = k_tile + kKeys * kQkRowBytes;

    const int warpgroup = threadIdx.x / 128;
    const int warp = (threadIdx.x / 32) % 4;
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int q_start = blockIdx.x * kRows;
    const int64_t bh = static_cast<int64_t>(batch) * heads + head;
    const unsigned char *q_base =
        reinterpret_cast<const unsigned char *>(q8) + (bh * sq_padded + q_start) * kHeadDim;
    const unsigned char *k_base =
        reinterpret_cast<const unsigned char *>(k8) + bh * sk_padded * kHeadDim;
    const unsigned char *vt_base = vt + bh * kHeadDim * sk_padded;
    const float *k_scales = k_scale + bh * (sk_padded / kKeys);
    const int first_row = q_start + warpgroup * 64 + warp * 16;
    const float q_scale_warp = q_scale[bh * (sq_padded / kQRows) + first_row / kQRows];

    load_qk_tile(q_tile, q_base, kRows);
    load_qk_tile(k_tile, k_base, kKeys);
    cp_async_commit();

    constexpr int kScoreTiles = kKeys / 8;
    constexpr int kOutTiles = kHeadDim / 8;
    float score[1][kScoreTiles][4];
    float out[1][kOutTiles][4];
    float row_max[1][2] = {{-INFINITY, -INFINITY}};
    float row_sum[1][2] = {{0.f, 0.f}};
    float rescale[1][2];
    uint32_t p[kKeys / 32][4];
#pragma unroll
    for (int t = 0; t < kOutTiles; ++t) {
        out[0][t][0] = out[0][t][1] = out[0][t][2] = out[0][t][3] = 0.f;
    }
    float(&o_flat)[kOutTiles * 4] = *reinterpret_cast<float(*)[kOutTiles * 4]>(&out[0][0][0]);

    const int key_tiles = (sk + kKeys - 1) / kKeys;
    for (int tile = 0; tile < key_tiles; ++tile) {
        const int key_start = tile * kKeys;
        cp_async_wait_all();
        fence_proxy_async();
        __syncthreads();  // K (and Q) landed; every warpgroup is done with the previous V
        load_v_tile(v_tile, vt_base, key_start, sk_padded);
        cp_async_commit();

        // S = Q·Kᵀ over the head dimension: 4 steps of 32 bytes along the 128-byte rows.
        int score_i[kScoreTiles * 4];
        wgmma_fence();
#pragma unroll
        for (int step = 0; step < kHeadDim / 32; ++step) {
            const uint64_t a = descriptor(q_tile + warpgroup * 64 * kQkRowBytes + step * 32, 16,
                                          kQkAtomBytes);
            const uint64_t b = descriptor(k_tile + step * 32, 16, kQkAtomBytes);
            if (step == 0) {
                wgmma_s8<false>(score_i, a, b);
            } else {
                wgmma_s8<true>(score_i, a, b);
            }
        }
        wgmma_commit_and_wait();

#pragma unroll
        for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                score[0][t][e] = int_sum_to_float(score_i[t * 4 + e]);
            }
        }
        const float scales[1] = {q_scale_warp * k_scales[tile]};
        softmax_tile(score, row_max, row_sum, scales, key_start, sk, rescale,
                     [&](int, int t, int e, float value) { score[0][t][e] = value; });
        rescale_rows(out, rescale);
        // P in e4m3: register j of k-step s holds score tiles 4s + 2·(j / 2) and the next, rows
        // lane/4 (j even) or lane/4 + 8 (j odd), as sage_attention.cu's FP8 product.
#pragma unroll
        for (int s = 0; s < kKeys / 32; ++s) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int t = 4 * s + 2 * (j / 2);
                const int e = 2 * (j % 2);
                p[s][j] = pack_e4m3(score[0][t][e] * kFp8Max, score[0][t][e + 1] * kFp8Max,
                                    score[0][t + 1][e] * kFp8Max,
                                    score[0][t + 1][e + 1] * kFp8Max);
            }
        }

        cp_async_wait_all();
        fence_proxy_async();
        __syncthreads();  // V landed; every warpgroup is done with K
        if (tile + 1 < key_tiles) {
            load_qk_tile(k_tile, k_base + static_cast<int64_t>(key_start + kKeys) * kQkRowBytes,
                         kKeys);
            cp_async_commit();
        }

        // O += P·V, one 64-channel half at a time, each through a zeroed partial.
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float partial[32];
            wgmma_fence();
#pragma unroll
            for (int s = 0; s < kKeys / 32; ++s) {
                const uint64_t b = descriptor(v_tile + half * 64 * kVRowBytes + s * 32, 16,
                                              kVAtomBytes, Swizzle::k64);
                if (s == 0) {
                    wgmma_e4m3<false>(partial, p[s], b);
                } else {
                    wgmma_e4m3<true>(partial, p[s], b);
                }
            }
            wgmma_commit_and_wait();
#pragma unroll
            for (int i = 0; i < 32; ++i) {
                o_flat[half * 32 + i] += partial[i];
            }
        }
    }

    T *o_base = o + (static_cast<int64_t>(batch) * sq * heads + head) * kHeadDim;
    store_rows<T>(o_base, static_cast<int64_t>(heads) * kHeadDim, out, row_sum, first_row, sq,
                  col_scale + bh * kHeadDim);
#else
    __trap();  // the launcher uses this kernel on compute capability 9.0 only
#endif
}

}  // namespace

// Entry points by output type and blocks an SM (2: registers capped at 128; 1: uncapped, for
// the benchmark's comparison). Shared memory: 128·128 + 64·128 + 128·64 bytes + 1024 for
// alignment. The arguments are sage_attention.cu's main kernel's.
#define STILLMOTION_SAGE_WGMMA(NAME, T, BLOCKS)                                                \
    extern "C" __global__ void __launch_bounds__(kThreads, BLOCKS)                             \
        NAME(const int8_t *q8, const float *q_scale, const int8_t *k8, const float *k_scale,   \
             const uint8_t *vt, const float *col_scale, T *o, int sq, int sk, int sq_padded,    \
             int sk_padded, int heads) {                                                       \
        sage_wgmma_forward<T>(q8, q_scale, k8, k_scale, vt, col_scale, o, sq, sk, sq_padded,   \
                              sk_padded, heads);                                               \
    }

STILLMOTION_SAGE_WGMMA(stillmotion_sage_wgmma_bf16_d128_x2, __nv_bfloat16, 2)
STILLMOTION_SAGE_WGMMA(stillmotion_sage_wgmma_f16_d128_x2, __half, 2)
STILLMOTION_SAGE_WGMMA(stillmotion_sage_wgmma_bf16_d128_x1, __nv_bfloat16, 1)
STILLMOTION_SAGE_WGMMA(stillmotion_sage_wgmma_f16_d128_x1, __half, 1)
