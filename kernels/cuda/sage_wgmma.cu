// The 8-bit attention path's main kernel on Hopper (wgmma and TMA, sm_90a): INT8 q·kᵀ, FP8
// e4m3 P·V, float32 accumulation, in the spirit of SageAttention2 and of FlashAttention-3's
// warp specialisation.
//
// It reads what sage_attention.cu's pre-pass writes: Q and smoothed K as INT8 [B, H, S_padded, D]
// with one scale per 16 query rows (the softmax scale in log2 units folded in) and per 64 keys,
// and V as e4m3 [B, H, D, Sk_padded], per-channel scaled, each 16-key group permuted so that the
// score accumulator's registers are P·V's A operand as they are (see key_position there). D = 128.
//
// A block is 128 query rows: two consumer warpgroups of 64 rows and a producer warpgroup.
// - One producer thread loads with the Tensor Memory Accelerator (TMA) into a ring of kPipeStages
//   K and V tiles, each stage guarded by "full" and "empty" mbarriers, so loads run whole tiles
//   ahead. The TMA writes each 128-byte row in the 128-byte swizzle wgmma reads. Maps (built by
//   the launcher): Q and K as rows of 128 bytes, [B·H·S_padded, 128], V as [B·H·128, Sk_padded];
//   all with boxes of 128 × 128 bytes.
// - Keys come in tiles of 128 (K's two 64-key scale groups side by side). 8-bit wgmma reads B only
//   K-major, hence the pre-pass's transposed V.
// - P·V accumulates in two levels: FP8 wgmma adds with fewer mantissa bits than float32, so each
//   tile's product goes to a zeroed partial that is then added to the float32 output (as
//   SageAttention2 does).
// - The consumers issue P·V of one tile and Q·Kᵀ of the next together and, with ping-pong, take
//   turns: one's softmax runs while the other's products do.
//
// Other GPUs compile this file to nothing: the launcher uses it on compute capability 9.0 only.

#include <cuda_fp8.h>

#include <climits>
#include <type_traits>

#include "wgmma_common.cuh"

namespace {

constexpr int kHeadDim = 128;
constexpr int kRows = 128;  // query rows per block: 64 per consumer warpgroup
constexpr int kKeys = 64;   // keys per K scale
constexpr int kQRows = 16;  // query rows per Q scale: one warp's rows
constexpr int kQkRowBytes = 128;
constexpr int kQkAtomBytes = 1024;
constexpr float kFp8Max = 448.f;

}  // namespace

namespace {

constexpr int kPipeKeys = 128;
constexpr int kPipeStages = 4;
constexpr int kPipeConsumers = 256;               // two warpgroups
constexpr int kPipeThreads = kPipeConsumers + 128;  // and a producer warpgroup
[[maybe_unused]] constexpr uint32_t kPipeTileBytes = 128 * 128;

struct PipeBarriers {
    uint64_t q_full;
    uint64_t k_full[kPipeStages];
    uint64_t v_full[kPipeStages];
    uint64_t empty[kPipeStages];
};

#if defined(STILLMOTION_HAS_WGMMA)

// d (+)= A·Bᵀ, m64 n128 k32, s8 × s8 → s32, both from shared memory (K-major); and
// d (+)= A·B, m64 n128 k32, e4m3 × e4m3 → f32, A from registers. As the n64 forms above.
template <bool kAccumulate>
__device__ __forceinline__ void wgmma_s8_n128(int (&d)[64], uint64_t a, uint64_t b) {
    if constexpr (kAccumulate) {
        asm volatile(
            "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
            STILLMOTION_D64_REGS ", "
            "%64, %65, 1;\n"
            : STILLMOTION_D64(STILLMOTION_R_ACC)
            : "l"(a), "l"(b));
    } else {
        asm volatile(
            "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
            STILLMOTION_D64_REGS ", "
            "%64, %65, 0;\n"
            : STILLMOTION_D64(STILLMOTION_R_OUT)
            : "l"(a), "l"(b));
    }
}

template <bool kAccumulate>
__device__ __forceinline__ void wgmma_e4m3_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    if constexpr (kAccumulate) {
        asm volatile(
            "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
            STILLMOTION_D64_REGS ", "
            "{%64, %65, %66, %67}, %68, 1, 1, 1;\n"
            : STILLMOTION_D64(STILLMOTION_F_ACC)
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
    } else {
        asm volatile(
            "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
            STILLMOTION_D64_REGS ", "
            "{%64, %65, %66, %67}, %68, 0, 1, 1;\n"
            : STILLMOTION_D64(STILLMOTION_F_OUT)
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
    }
}


// S = Q·Kᵀ for a warpgroup's 64 rows and a 128-key tile: 4 steps of 32 bytes along the rows.
// q_desc and k_desc: descriptors of the warpgroup's Q rows and of the K tile.
__device__ __forceinline__ void issue_qk(int (&score)[64], uint64_t q_desc, uint64_t k_desc) {
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < kHeadDim / 32; ++step) {
        const uint64_t a = descriptor_plus(q_desc, step * 32);
        const uint64_t b = descriptor_plus(k_desc, step * 32);
        if (step == 0) {
            wgmma_s8_n128<false>(score, a, b);
        } else {
            wgmma_s8_n128<true>(score, a, b);
        }
    }
    wgmma_commit();
}

// partial = P·V for a 128-key tile (V's 128 channel rows of 128 keys), into a zeroed
// accumulator: FP8 wgmma adds with fewer mantissa bits than float32, so each tile's product is
// added to the float32 output by the caller.
// v_desc: the descriptor of the V tile.
__device__ __forceinline__ void issue_pv(float (&partial)[64], const uint32_t (&p)[4][4],
                                        uint64_t v_desc) {
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kPipeKeys / 32; ++k) {
        const uint64_t b = descriptor_plus(v_desc, k * 32);
        if (k == 0) {
            wgmma_e4m3_n128<false>(partial, p[k], b);
        } else {
            wgmma_e4m3_n128<true>(partial, p[k], b);
        }
    }
    wgmma_commit();
}

// One 128-key tile of the online softmax in log2 units, from the INT8 scores. Register 4t + e
// holds key 8t + 2·(lane % 4) + e % 2 of row lane / 4 + 8·(e / 2); keys 0–63 and 64–127 have
// their own scale. P leaves as e4m3 pairs scaled by 448 (log2 448 added to the exponent), so
// the row sums are 448 times Σp. kMasked: keys at or past `sk` are in the tile; that path keeps
// its scaled scores (as float bits) in `score_i`, which the softmax consumes either way.
template <bool kMasked>
__device__ __forceinline__ void softmax_128(int (&score_i)[64], const float (&scale)[2],
                                            int key_start, int sk, float (&row_max)[2],
                                            float (&row_sum)[2], float (&rescale)[2],
                                            uint32_t (&p)[kPipeKeys / 32][4]) {
    constexpr float kLog2Fp8Max = 8.807354922057604f;  // log2(448)
    const int lane = threadIdx.x % 32;
    float tile_max[2] = {-INFINITY, -INFINITY};
    if constexpr (kMasked) {
#pragma unroll
        for (int i = 0; i < 64; ++i) {
            const int key = key_start + (i / 4) * 8 + (lane % 4) * 2 + (i % 2);
            const float scaled =
                key < sk ? int_sum_to_float(score_i[i]) * scale[i / 32] : -INFINITY;
            tile_max[(i / 2) % 2] = fmaxf(tile_max[(i / 2) % 2], scaled);
            score_i[i] = __float_as_int(scaled);
        }
    } else {
        // The scales are positive, so each scale group's maximum is its largest raw sum's.
        int group_max[2][2] = {{INT_MIN, INT_MIN}, {INT_MIN, INT_MIN}};
#pragma unroll
        for (int i = 0; i < 64; ++i) {
            group_max[(i / 2) % 2][i / 32] = max(group_max[(i / 2) % 2][i / 32], score_i[i]);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_max[r] = fmaxf(int_sum_to_float(group_max[r][0]) * scale[0],
                                int_sum_to_float(group_max[r][1]) * scale[1]);
        }
    }
    float offset[2][2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 2));
        const float new_max = fmaxf(row_max[r], tile_max[r]);
        // A row whose keys so far are all masked keeps max -inf: subtract 0 instead.
        const float base = new_max == -INFINITY ? 0.f : new_max;
        rescale[r] = exp2f(row_max[r] - base);
        row_max[r] = new_max;
        row_sum[r] *= rescale[r];
        // The exponent of p·448 from the biased sum 1.5·2²³ + s (int_sum_to_float without its
        // subtraction): s·scale − base + log2 448 = biased·scale + (log2 448 − base − 1.5·2²³·
        // scale). That constant's rounding moves a whole scale group's exponents by at most
        // 0.75·scale, three quarters of one unit of the INT8 sum.
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            offset[r][g] = kMasked ? kLog2Fp8Max - base
                                   : fmaf(-12582912.f, scale[g], kLog2Fp8Max - base);
        }
    }
    // Each k-step's P is packed as soon as its 16 exponentials exist: the float32 values die
    // early, and ptxas schedules this faster than packing after all 64 (1-3%, runs 58 and
    // 59 of bench/RESULTS.md). Register j of k-step k holds score tiles
    // 4k + 2·(j / 2) and the next, row lane / 4 (j even) or lane / 4 + 8 (j odd), as the n64
    // kernel's: elements 16k … 16k + 15.
#pragma unroll
    for (int k = 0; k < kPipeKeys / 32; ++k) {
        float prob[16];
#pragma unroll
        for (int n = 0; n < 16; ++n) {
            const int i = 16 * k + n;
            const int r = (i / 2) % 2;
            const int g = i / 32;
            // Masked scores are already scaled (and -inf past the end, whose exp2 is 0).
            const float x = kMasked ? __int_as_float(score_i[i]) + offset[r][g]
                                    : fmaf(__int_as_float(score_i[i] + 0x4B400000), scale[g],
                                           offset[r][g]);
            // All on the special-function unit: moving a quarter of them to a polynomial on
            // the FMA pipe paid (run 48) until the softmax lost its conversions, then cost
            // 1.5% (run 54).
            prob[n] = exp2f(x);
            row_sum[r] += prob[n];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = 8 * (j / 2) + 2 * (j % 2);
            p[k][j] = pack_e4m3(prob[n], prob[n + 1], prob[n + 4], prob[n + 5]);
        }
    }
}
#endif

template <typename T, bool kPingPong>
__device__ __forceinline__ void sage_pipelined_forward(
    const TensorMap *q_map, const TensorMap *k_map, const TensorMap *v_map,
    const float *__restrict__ q_scale, const float *__restrict__ k_scale,
    const float *__restrict__ col_scale, T *__restrict__ o, int sq, int sk, int sq_padded,
    int sk_padded, int heads) {
#if defined(STILLMOTION_HAS_WGMMA)
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    unsigned char *shared = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(shared_raw) + kQkAtomBytes - 1) &
        ~uintptr_t(kQkAtomBytes - 1));
    unsigned char *q_tile = shared;
    unsigned char *k_tiles = q_tile + kPipeTileBytes;
    unsigned char *v_tiles = k_tiles + kPipeStages * kPipeTileBytes;
    PipeBarriers *bars = reinterpret_cast<PipeBarriers *>(v_tiles + kPipeStages * kPipeTileBytes);

    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int q_start = blockIdx.x * kRows;
    const int bh = batch * heads + head;
    const int key_tiles = (sk + kPipeKeys - 1) / kPipeKeys;

    if (threadIdx.x == 0) {
        mbarrier_init(&bars->q_full, 1);
        for (int s = 0; s < kPipeStages; ++s) {
            mbarrier_init(&bars->k_full[s], 1);
            mbarrier_init(&bars->v_full[s], 1);
            mbarrier_init(&bars->empty[s], kPipeConsumers);
        }
        fence_mbarrier_init();
    }
    __syncthreads();

    if (threadIdx.x >= kPipeConsumers) {
        // The producer warpgroup hands most of its registers to the consumers (an SM
        // sub-partition's 16384 registers hold one producer warp at 24 and two consumer warps
        // at 240); one thread issues every load, a stage as soon as it is free.
        setmaxnreg_dec<24>();
        if (threadIdx.x == kPipeConsumers) {
            mbarrier_expect_bytes(&bars->q_full, kPipeTileBytes);
            tma_load_2d(q_tile, q_map, 0, bh * sq_padded + q_start, &bars->q_full);
            for (int tile = 0; tile < key_tiles; ++tile) {
                const int s = tile % kPipeStages;
                const int use = tile / kPipeStages;
                if (use > 0) {
                    mbarrier_wait(&bars->empty[s], (use - 1) & 1);
                }
                mbarrier_expect_bytes(&bars->k_full[s], kPipeTileBytes);
                tma_load_2d(k_tiles + s * kPipeTileBytes, k_map, 0, bh * sk_padded + tile * kPipeKeys,
                         &bars->k_full[s]);
                mbarrier_expect_bytes(&bars->v_full[s], kPipeTileBytes);
                tma_load_2d(v_tiles + s * kPipeTileBytes, v_map, tile * kPipeKeys, bh * kHeadDim,
                         &bars->v_full[s]);
            }
        }
        return;
    }

    setmaxnreg_inc<240>();
    const int warpgroup = threadIdx.x / 128;
    const int warp = (threadIdx.x / 32) % 4;
    const int first_row = q_start + warpgroup * 64 + warp * 16;
    const float q_scale_warp =
        q_scale[static_cast<int64_t>(bh) * (sq_padded / kQRows) + first_row / kQRows];
    const float *k_scales = k_scale + static_cast<int64_t>(bh) * (sk_padded / kKeys);

    float out[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        out[i] = 0.f;
    }
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};
    // Shared-memory descriptors of the warpgroup's Q rows and of stage 0's K and V tiles; a
    // stage's are kPipeTileBytes apart.
    const uint64_t q_desc = descriptor(q_tile + warpgroup * 64 * kQkRowBytes, 16, kQkAtomBytes);
    const uint64_t k_desc = descriptor(k_tiles, 16, kQkAtomBytes);
    const uint64_t v_desc = descriptor(v_tiles, 16, kQkAtomBytes);
    // With kPingPong the warpgroups take turns on the tensor cores: each issues P·V of one
    // tile and Q·Kᵀ of the next while the other runs its softmax, warpgroup 0 first.
    const TurnOrder<kPingPong, kPipeConsumers> turns{warpgroup};

    int score[64];
    mbarrier_wait(&bars->q_full, 0);
    if (warpgroup == 1) {
        turns.my_turn();
    }
    mbarrier_wait(&bars->k_full[0], 0);
    issue_qk(score, q_desc, k_desc);
    turns.their_turn();
    wgmma_wait_all();

    // One key tile: its softmax, then (on the tensor cores) its P·V and the next tile's Q·Kᵀ.
    // The last tile is peeled (kMore false) so that no wgmma sits in a branch.
    const auto step = [&](int tile, auto more) {
        constexpr bool kMore = decltype(more)::value;
        const int s = tile % kPipeStages;
        const uint32_t parity = (tile / kPipeStages) & 1;
        const int key_start = tile * kPipeKeys;
        const float scale[2] = {q_scale_warp * k_scales[2 * tile],
                                q_scale_warp * k_scales[2 * tile + 1]};
        float rescale[2];
        uint32_t p[kPipeKeys / 32][4];
        if (key_start + kPipeKeys > sk) {
            softmax_128<true>(score, scale, key_start, sk, row_max, row_sum, rescale, p);
        } else {
            softmax_128<false>(score, scale, key_start, sk, row_max, row_sum, rescale, p);
        }

        mbarrier_wait(&bars->v_full[s], parity);
        turns.my_turn();
        float partial[64];
        issue_pv(partial, p, descriptor_plus(v_desc, s * kPipeTileBytes));
        if constexpr (kMore) {
            // The next Q·Kᵀ queues behind P·V; groups complete in order.
            const int next = (tile + 1) % kPipeStages;
            mbarrier_wait(&bars->k_full[next], ((tile + 1) / kPipeStages) & 1);
            issue_qk(score, q_desc, descriptor_plus(k_desc, next * kPipeTileBytes));
            turns.their_turn();
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        } else {
            wgmma_wait_all();
        }
        mbarrier_arrive(&bars->empty[s]);
#pragma unroll
        for (int i = 0; i < 64; ++i) {
            out[i] = fmaf(out[i], rescale[(i / 2) % 2], partial[i]);
        }
        if constexpr (kMore) {
            wgmma_wait_all();
        } else if (warpgroup == 0) {
            // Warpgroup 1's last turn has no one to hand over to: warpgroup 0 took its last.
            turns.their_turn();
        }
    };
    for (int tile = 0; tile + 1 < key_tiles; ++tile) {
        step(tile, std::true_type{});
    }
    step(key_tiles - 1, std::false_type{});

    T *o_base = o + (static_cast<int64_t>(batch) * sq * heads + head) * kHeadDim;
    const float sums[1][2] = {{row_sum[0] / kFp8Max, row_sum[1] / kFp8Max}};
    store_rows<T>(o_base, static_cast<int64_t>(heads) * kHeadDim,
                  *reinterpret_cast<float(*)[1][kHeadDim / 8][4]>(out), sums, first_row, sq,
                  col_scale + static_cast<int64_t>(bh) * kHeadDim);
#else
    __trap();  // the launcher uses this kernel on compute capability 9.0 only
#endif
}

}  // namespace

// Shared memory: Q, kPipeStages K and V tiles of 128 × 128 bytes, the barriers, and 1024 for
// alignment.
#define STILLMOTION_SAGE_PIPELINED(NAME, T, PING_PONG)                                                   \
    extern "C" __global__ void __launch_bounds__(kPipeThreads, 1)                              \
        NAME(const __grid_constant__ TensorMap q_map, const __grid_constant__ TensorMap k_map, \
             const __grid_constant__ TensorMap v_map, const float *q_scale,                    \
             const float *k_scale, const float *col_scale, T *o, int sq, int sk,               \
             int sq_padded, int sk_padded, int heads) {                                        \
        sage_pipelined_forward<T, PING_PONG>(&q_map, &k_map, &v_map, q_scale, k_scale,        \
                                             col_scale, o, sq, sk, sq_padded, sk_padded,       \
                                             heads);                                           \
    }

STILLMOTION_SAGE_PIPELINED(stillmotion_sage_pipelined_bf16_d128, __nv_bfloat16, true)
STILLMOTION_SAGE_PIPELINED(stillmotion_sage_pipelined_f16_d128, __half, true)
STILLMOTION_SAGE_PIPELINED(stillmotion_sage_pipelined_bf16_d128_lockstep, __nv_bfloat16, false)
STILLMOTION_SAGE_PIPELINED(stillmotion_sage_pipelined_f16_d128_lockstep, __half, false)
