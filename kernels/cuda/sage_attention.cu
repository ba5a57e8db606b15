// The 8-bit attention path, in the spirit of SageAttention2 (Zhang et al., 2025): q·kᵀ in INT8
// and P·V in FP8 e4m3 (sm_89 and later) or in the input's 16-bit type, accumulating in float32.
//
// A pre-pass quantizes the operands:
// - K is smoothed first: its per-channel mean over all keys is subtracted. softmax(q·kᵀ) does
//   not change (each query's scores move by the same q·mean), but the outliers that channel
//   means put into K no longer set the INT8 range.
// - Q is quantized per 16 query rows of a head and K per 64 keys (one scale per m16 tile and
//   per key tile, so a score needs one multiply); the softmax scale and log2(e) are folded
//   into Q's scales. Both go to [B, H, S_padded, D] int8, zero rows past the end.
// - V (FP8 path) is scaled per channel to e4m3's range and stored transposed,
//   [B, H, D, Sk_padded], with the keys of each 16-key group permuted so that the score
//   accumulator's registers are the A operand of the FP8 product as they are: no shuffles.
// The main kernel is our flash kernel (flash_attention.cu) with 8-bit products: mma.sync
// m16n8k32 s8 for the scores; P = exp2(s − max) ∈ (0, 1] scaled by 448 to e4m3 for P·V, whose
// partial sums over each 64-key tile are added to the float32 accumulator (two-level
// accumulation: the FP8 product's own accumulator is narrower than float32).

#include <cuda_fp8.h>

#include "mma_common.cuh"

namespace {

constexpr int kBlockN = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPad8 = 16;   // bytes of padding per 8-bit shared row (conflict-free ldmatrix)
constexpr int kPad16 = 8;   // elements of padding per 16-bit shared row
constexpr int kQRows = 16;  // query rows per Q scale
constexpr float kFp8Max = 448.f;

// ---------------------------------------------------------------------------------------
// Pre-pass.

// Per (batch, head, channel): Σ over this block's tokens into `sums`, max |x| into `absmax`
// (both zeroed by the caller; absmax compared as int bits, valid for non-negative floats).
// Grid (heads, batch, token chunks), block = D threads.
template <typename T>
__device__ __forceinline__ void channel_stats(const T *__restrict__ x, float *sums,
                                              float *absmax, int s, int heads, int d,
                                              int tokens_per_block) {
    const int c = threadIdx.x;
    const int head = blockIdx.x;
    const int batch = blockIdx.y;
    const int first = blockIdx.z * tokens_per_block;
    const int last = min(s, first + tokens_per_block);
    const int64_t stride = static_cast<int64_t>(heads) * d;
    const T *base = x + (static_cast<int64_t>(batch) * s * heads + head) * d + c;
    float sum = 0.f;
    float amax = 0.f;
    for (int t = first; t < last; ++t) {
        const float v = static_cast<float>(base[t * stride]);
        sum += v;
        amax = fmaxf(amax, fabsf(v));
    }
    const int slot = (batch * heads + head) * d + c;
    atomicAdd(&sums[slot], sum);
    atomicMax(reinterpret_cast<int *>(&absmax[slot]), __float_as_int(amax));
}

__device__ __forceinline__ float block_max(float value, float *scratch) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
        value = fmaxf(value, __shfl_xor_sync(0xffffffff, value, offset));
    }
    if (threadIdx.x % 32 == 0) {
        scratch[threadIdx.x / 32] = value;
    }
    __syncthreads();
    float result = scratch[0];
    for (int w = 1; w < kWarps; ++w) {
        result = fmaxf(result, scratch[w]);
    }
    return result;
}

// 8 consecutive elements from `p` as floats: one 16-byte load where the tensor's base is
// 16-byte aligned (every row and 8-channel offset then is), else eight.
template <typename T>
__device__ __forceinline__ void load8(const T *p, bool aligned, float (&out)[8]) {
    if (aligned) {
        const uint4 raw = *reinterpret_cast<const uint4 *>(p);
        const T *half = reinterpret_cast<const T *>(&raw);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            out[j] = static_cast<float>(half[j]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            out[j] = static_cast<float>(p[j]);
        }
    }
}

// INT8 quantization of `rows` rows (one scale) of one head, minus the channel mean when
// `sums` is set (mean = sums / s). Writes [B, H, s_padded, D] and one scale · extra_scale
// per group. Grid (s_padded / rows, heads, batch), block kThreads; rows · D a multiple of
// 8 · kThreads and at most 64 · kThreads (16 or 64 rows of 64 or 128 channels). Each thread
// holds 8 channels of up to 8 rows in registers between the maximum and the rounding.
template <typename T>
__device__ __forceinline__ void quantize_rows(const T *__restrict__ x,
                                              const float *__restrict__ sums,
                                              int8_t *__restrict__ out,
                                              float *__restrict__ scales, int s, int s_padded,
                                              int heads, int d, int rows, float extra_scale) {
    constexpr int kMaxVectors = 8;
    __shared__ float scratch[kWarps];
    const int group = blockIdx.x;
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int64_t stride = static_cast<int64_t>(heads) * d;
    const T *base = x + (static_cast<int64_t>(batch) * s * heads + head) * d;
    const float *mean = sums == nullptr ? nullptr : sums + (batch * heads + head) * d;
    const float inv_s = 1.f / static_cast<float>(s);
    const bool aligned = (reinterpret_cast<uintptr_t>(x) & 15) == 0;
    const int vectors = rows * d / (8 * kThreads);
    float values[kMaxVectors][8];
    float amax = 0.f;
#pragma unroll
    for (int v = 0; v < kMaxVectors; ++v) {
        if (v < vectors) {
            const int e = (v * kThreads + threadIdx.x) * 8;
            const int token = group * rows + e / d;
            const int c = e % d;
            if (token < s) {
                load8(base + token * stride + c, aligned, values[v]);
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    values[v][j] = 0.f;
                }
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                if (mean != nullptr && token < s) {
                    values[v][j] -= mean[c + j] * inv_s;
                }
                amax = fmaxf(amax, fabsf(values[v][j]));
            }
        }
    }
    amax = block_max(amax, scratch);
    const float scale = amax > 0.f ? amax / 127.f : 1.f;
    const float inv = 1.f / scale;
    int8_t *dst = out + ((static_cast<int64_t>(batch) * heads + head) * s_padded +
                         static_cast<int64_t>(group) * rows) * d;
#pragma unroll
    for (int v = 0; v < kMaxVectors; ++v) {
        if (v < vectors) {
            const int e = (v * kThreads + threadIdx.x) * 8;
            uint32_t packed[2] = {0, 0};
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int q = __float2int_rn(fminf(fmaxf(values[v][j] * inv, -127.f), 127.f));
                packed[j / 4] |= (static_cast<uint32_t>(q) & 0xFF) << (8 * (j % 4));
            }
            *reinterpret_cast<uint2 *>(dst + e) = make_uint2(packed[0], packed[1]);
        }
    }
    if (threadIdx.x == 0) {
        scales[(batch * heads + head) * (s_padded / rows) + group] = scale * extra_scale;
    }
}

// The storage position of key `kk` (0…15) within its 16-key group: the score accumulator of
// lane L holds keys 2·(L%4) + {0, 1} of each 8-key tile, and the FP8 A operand's register j
// of lane L covers k = 4·(L%4) + {0…3}; so key 2c + i + 8h sits at 4c + i + 2h.
__device__ __forceinline__ int key_position(int kk) {
    return 4 * ((kk % 8) / 2) + (kk % 2) + 2 * (kk / 8);
}

// V to e4m3, per channel scaled to ±448 by `absmax`, transposed to [B, H, D, sk_padded] with
// permuted 16-key groups; `col_scale` gets absmax / 448² per channel (the P and V scales the
// output multiplies back). Grid (sk_padded / 64, heads, batch), block kThreads, D ≤ 128.
// The 64-key tile is transposed in shared memory: reads of 8 channels of a key (consecutive
// threads, consecutive keys), writes of 16 bytes of a channel row.
template <typename T>
__device__ __forceinline__ void quantize_v_fp8(const T *__restrict__ v,
                                               const float *__restrict__ absmax,
                                               uint8_t *__restrict__ out,
                                               float *__restrict__ col_scale, int sk,
                                               int sk_padded, int heads, int d) {
    constexpr int kRowBytes = kBlockN + 16;  // 16-byte aligned rows, spread over the banks
    __shared__ __align__(16) uint8_t tile[128 * kRowBytes];
    const int first_key = blockIdx.x * kBlockN;
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int64_t stride = static_cast<int64_t>(heads) * d;
    const T *base = v + (static_cast<int64_t>(batch) * sk * heads + head) * d;
    const float *amax = absmax + (batch * heads + head) * d;
    uint8_t *dst = out + (static_cast<int64_t>(batch) * heads + head) * d * sk_padded;
    const bool aligned = (reinterpret_cast<uintptr_t>(v) & 15) == 0;
    for (int i = threadIdx.x; i < kBlockN * (d / 8); i += kThreads) {
        const int kk = i % kBlockN;
        const int c0 = (i / kBlockN) * 8;
        const int key = first_key + kk;
        float x[8];
        if (key < sk) {
            load8(base + key * stride + c0, aligned, x);
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                x[j] = 0.f;
            }
        }
        const int position = (kk / 16) * 16 + key_position(kk % 16);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float a = amax[c0 + j];
            const __nv_fp8_e4m3 q(a > 0.f ? x[j] * (kFp8Max / a) : 0.f);
            tile[(c0 + j) * kRowBytes + position] = *reinterpret_cast<const uint8_t *>(&q);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < d * (kBlockN / 16); i += kThreads) {
        const int c = i / (kBlockN / 16);
        const int chunk = i % (kBlockN / 16);
        *reinterpret_cast<uint4 *>(dst + static_cast<int64_t>(c) * sk_padded + first_key +
                                   chunk * 16) =
            *reinterpret_cast<const uint4 *>(&tile[c * kRowBytes + chunk * 16]);
    }
    if (blockIdx.x == 0) {
        for (int c = threadIdx.x; c < d; c += kThreads) {
            col_scale[(batch * heads + head) * d + c] = amax[c] / (kFp8Max * kFp8Max);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Main kernel.

__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define STILLMOTION_HAS_FP8_MMA 1
__device__ __forceinline__ void mma_e4m3(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#endif

// `bytes_per_row` bytes of each of `rows` rows (row stride `src_stride`) into shared rows of
// `bytes_per_row + kPad8`; every row exists (the pre-pass pads).
__device__ __forceinline__ void load_rows8(uint8_t *smem, const uint8_t *src, int rows,
                                           int bytes_per_row, int64_t src_stride) {
    const int chunks = bytes_per_row / 16;
    for (int i = threadIdx.x; i < rows * chunks; i += kThreads) {
        const int r = i / chunks;
        const int c = (i % chunks) * 16;
        cp_async_16(smem + r * (bytes_per_row + kPad8) + c, src + r * src_stride + c, true);
    }
}

// 16-bit V rows (tokens first…) of one head into [row][D + kPad16], zero past the end.
template <typename T, int D>
__device__ __forceinline__ void load_v16(T *smem, const T *base, int first, int sk,
                                         int64_t row_stride) {
    constexpr int kChunks = D / 8;
    for (int i = threadIdx.x; i < kBlockN * kChunks; i += kThreads) {
        const int r = i / kChunks;
        const int c = (i % kChunks) * 8;
        const int token = first + r;
        const bool valid = token < sk;
        const T *src = base + static_cast<int64_t>(valid ? token : 0) * row_stride + c;
        cp_async_16(smem + r * (D + kPad16) + c, src, valid);
    }
}

// kFp8Pv: P·V in e4m3 from the transposed V of the pre-pass; otherwise in T from V as it is.
template <typename T, int D, int kMTiles, bool kFp8Pv>
__device__ __forceinline__ void sage_forward(const int8_t *__restrict__ q8,
                                             const float *__restrict__ q_scale,
                                             const int8_t *__restrict__ k8,
                                             const float *__restrict__ k_scale,
                                             const void *__restrict__ v_any,
                                             const float *__restrict__ col_scale,
                                             T *__restrict__ o, int sq, int sk, int sq_padded,
                                             int sk_padded, int heads) {
#if !defined(STILLMOTION_HAS_FP8_MMA)
    if constexpr (kFp8Pv) {
        __trap();  // the launcher never picks the FP8 kernel below sm_89
        return;
    }
#endif
    constexpr int kBlockM = 16 * kMTiles * kWarps;
    constexpr int kQkStride = D + kPad8;  // bytes
    constexpr int kVtStride = kBlockN + kPad8;
    constexpr int kV16Stride = D + kPad16;  // elements
    constexpr int kSteps = D / 32;          // k-steps of the INT8 q·kᵀ
    constexpr int kScoreTiles = kBlockN / 8;
    constexpr int kOutTiles = D / 8;
    extern __shared__ __align__(16) unsigned char shared_raw[];
    uint8_t *q_smem = shared_raw;
    uint8_t *k_smem = q_smem + kBlockM * kQkStride;
    uint8_t *v_smem = k_smem + kBlockN * kQkStride;
    T *v16_smem = reinterpret_cast<T *>(v_smem);

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int q_start = blockIdx.x * kBlockM;
    const int64_t bh = static_cast<int64_t>(batch) * heads + head;
    const uint8_t *q_base = reinterpret_cast<const uint8_t *>(q8) + bh * sq_padded * D;
    const uint8_t *k_base = reinterpret_cast<const uint8_t *>(k8) + bh * sk_padded * D;
    const float *k_scales = k_scale + bh * (sk_padded / kBlockN);
    const int64_t row_stride = static_cast<int64_t>(heads) * D;
    const uint8_t *vt_base = static_cast<const uint8_t *>(v_any) + bh * D * sk_padded;
    const T *v16_base =
        static_cast<const T *>(v_any) + (static_cast<int64_t>(batch) * sk * heads + head) * D;

    float q_scales[kMTiles];
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
        q_scales[m] = q_scale[bh * (sq_padded / kQRows) + (q_start / kQRows) + warp * kMTiles + m];
    }

    load_rows8(q_smem, q_base + static_cast<int64_t>(q_start) * D, kBlockM, D, D);
    load_rows8(k_smem, k_base, kBlockN, D, D);
    cp_async_commit();

    float out[kMTiles][kOutTiles][4];
    float row_max[kMTiles][2];
    float row_sum[kMTiles][2];
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
        for (int t = 0; t < kOutTiles; ++t) {
            out[m][t][0] = out[m][t][1] = out[m][t][2] = out[m][t][3] = 0.f;
        }
        row_max[m][0] = row_max[m][1] = -INFINITY;
        row_sum[m][0] = row_sum[m][1] = 0.f;
    }

    const int key_tiles = (sk + kBlockN - 1) / kBlockN;
    for (int tile = 0; tile < key_tiles; ++tile) {
        const int key_start = tile * kBlockN;
        cp_async_wait_all();
        __syncthreads();  // K (and Q) landed; every warp is done with the previous V
        if constexpr (kFp8Pv) {
            load_rows8(v_smem, vt_base + key_start, D, kBlockN, sk_padded);
        } else {
            load_v16<T, D>(v16_smem, v16_base, key_start, sk, row_stride);
        }
        cp_async_commit();

        int score_i[kMTiles][kScoreTiles][4];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
            for (int t = 0; t < kScoreTiles; ++t) {
                score_i[m][t][0] = score_i[m][t][1] = score_i[m][t][2] = score_i[m][t][3] = 0;
            }
        }
#pragma unroll
        for (int s = 0; s < kSteps; ++s) {
            uint32_t a[kMTiles][4];
#pragma unroll
            for (int m = 0; m < kMTiles; ++m) {
                const int row = (warp * kMTiles + m) * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                const int col = s * 32 + (lane / 16) * 16;
                ldmatrix_x4(a[m], q_smem + row * kQkStride + col);
            }
#pragma unroll
            for (int t = 0; t < kScoreTiles; t += 2) {
                uint32_t b[4];
                const int key = t * 8 + (lane % 8) + (lane / 16) * 8;
                const int col = s * 32 + ((lane / 8) % 2) * 16;
                ldmatrix_x4(b, k_smem + key * kQkStride + col);
#pragma unroll
                for (int m = 0; m < kMTiles; ++m) {
                    mma_s8(score_i[m][t], a[m], b[0], b[1]);
                    mma_s8(score_i[m][t + 1], a[m], b[2], b[3]);
                }
            }
        }

        float score[kMTiles][kScoreTiles][4];
        float scales[kMTiles];
        const float ks = k_scales[tile];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
            scales[m] = q_scales[m] * ks;
#pragma unroll
            for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    score[m][t][e] = int_sum_to_float(score_i[m][t][e]);
                }
            }
        }
        online_softmax(score, out, row_max, row_sum, scales, key_start, sk);

        cp_async_wait_all();
        __syncthreads();  // V landed; every warp is done with K
        if (tile + 1 < key_tiles) {
            load_rows8(k_smem, k_base + static_cast<int64_t>(key_start + kBlockN) * D, kBlockN,
                       D, D);
            cp_async_commit();
        }

        if constexpr (kFp8Pv) {
#if defined(STILLMOTION_HAS_FP8_MMA)
            // P in e4m3: register j of k-step s holds score tiles 4s + 2·(j / 2) and the next,
            // rows lane/4 (j even) or lane/4 + 8 (j odd).
            uint32_t p_frag[kMTiles][kBlockN / 32][4];
#pragma unroll
            for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
                for (int s = 0; s < kBlockN / 32; ++s) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const int t = 4 * s + 2 * (j / 2);
                        const int e = 2 * (j % 2);
                        p_frag[m][s][j] =
                            pack_e4m3(score[m][t][e] * kFp8Max, score[m][t][e + 1] * kFp8Max,
                                      score[m][t + 1][e] * kFp8Max,
                                      score[m][t + 1][e + 1] * kFp8Max);
                    }
                }
            }
#pragma unroll
            for (int t = 0; t < kOutTiles; t += 2) {
                float partial[kMTiles][2][4];
#pragma unroll
                for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        partial[m][0][e] = partial[m][1][e] = 0.f;
                    }
                }
#pragma unroll
                for (int s = 0; s < kBlockN / 32; ++s) {
                    uint32_t b[4];
                    const int channel = t * 8 + (lane % 8) + (lane / 16) * 8;
                    const int col = s * 32 + ((lane / 8) % 2) * 16;
                    ldmatrix_x4(b, v_smem + channel * kVtStride + col);
#pragma unroll
                    for (int m = 0; m < kMTiles; ++m) {
                        mma_e4m3(partial[m][0], p_frag[m][s], b[0], b[1]);
                        mma_e4m3(partial[m][1], p_frag[m][s], b[2], b[3]);
                    }
                }
#pragma unroll
                for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        out[m][t][e] += partial[m][0][e];
                        out[m][t + 1][e] += partial[m][1][e];
                    }
                }
            }
#endif
        } else {
            uint32_t p_frag[kMTiles][kBlockN / 16][4];
#pragma unroll
            for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
                for (int t = 0; t < kScoreTiles; ++t) {
                    const int step = t / 2;
                    const int half = (t % 2) * 2;
                    p_frag[m][step][half] = Mma<T>::pack(score[m][t][0], score[m][t][1]);
                    p_frag[m][step][half + 1] = Mma<T>::pack(score[m][t][2], score[m][t][3]);
                }
            }
#pragma unroll
            for (int step = 0; step < kBlockN / 16; ++step) {
#pragma unroll
                for (int t = 0; t < kOutTiles; t += 2) {
                    uint32_t b[4];
                    const int key = step * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                    const int col = t * 8 + (lane / 16) * 8;
                    ldmatrix_x4_trans(b, v16_smem + key * kV16Stride + col);
#pragma unroll
                    for (int m = 0; m < kMTiles; ++m) {
                        Mma<T>::run(out[m][t], p_frag[m][step], b[0], b[1]);
                        Mma<T>::run(out[m][t + 1], p_frag[m][step], b[2], b[3]);
                    }
                }
            }
        }
    }

    T *o_base = o + (static_cast<int64_t>(batch) * sq * heads + head) * D;
    store_rows<T>(o_base, row_stride, out, row_sum, q_start + warp * kMTiles * 16, sq,
                  kFp8Pv ? col_scale + bh * D : nullptr);
}

}  // namespace

// Pre-pass entry points, by input type.
#define STILLMOTION_SAGE_PREPASS(SUFFIX, T)                                                   \
    extern "C" __global__ void stillmotion_sage_channel_stats_##SUFFIX(                        \
        const T *x, float *sums, float *absmax, int s, int heads, int d,                      \
        int tokens_per_block) {                                                                \
        channel_stats<T>(x, sums, absmax, s, heads, d, tokens_per_block);                     \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(kThreads) stillmotion_sage_quantize_##SUFFIX( \
        const T *x, const float *sums, int8_t *out, float *scales, int s, int s_padded,       \
        int heads, int d, int rows, float extra_scale) {                                       \
        quantize_rows<T>(x, sums, out, scales, s, s_padded, heads, d, rows, extra_scale);      \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(kThreads) stillmotion_sage_v_fp8_##SUFFIX(    \
        const T *v, const float *absmax, uint8_t *out, float *col_scale, int sk,              \
        int sk_padded, int heads, int d) {                                                     \
        quantize_v_fp8<T>(v, absmax, out, col_scale, sk, sk_padded, heads, d);                 \
    }

STILLMOTION_SAGE_PREPASS(bf16, __nv_bfloat16)
STILLMOTION_SAGE_PREPASS(f16, __half)

// Main entry points: type, head size, query rows per block, P·V precision. Shared memory:
// (rows + 64)·(D + 16) bytes for Q and K, plus D·80 bytes (FP8 V) or 64·(D + 8)·2 (16-bit V).
#define STILLMOTION_SAGE(NAME, T, D, MTILES, FP8)                                              \
    extern "C" __global__ void __launch_bounds__(kThreads)                                     \
        NAME(const int8_t *q8, const float *q_scale, const int8_t *k8, const float *k_scale,   \
             const void *v, const float *col_scale, T *o, int sq, int sk, int sq_padded,        \
             int sk_padded, int heads) {                                                       \
        sage_forward<T, D, MTILES, FP8>(q8, q_scale, k8, k_scale, v, col_scale, o, sq, sk,     \
                                        sq_padded, sk_padded, heads);                          \
    }

#define STILLMOTION_SAGE_ALL(T, SUFFIX)                                                        \
    STILLMOTION_SAGE(stillmotion_sage_##SUFFIX##_d64_m64_pv16, T, 64, 1, false)               \
    STILLMOTION_SAGE(stillmotion_sage_##SUFFIX##_d128_m64_pv16, T, 128, 1, false)             \
    STILLMOTION_SAGE(stillmotion_sage_##SUFFIX##_d64_m128_pv16, T, 64, 2, false)              \
    STILLMOTION_SAGE(stillmotion_sage_##SUFFIX##_d128_m128_pv16, T, 128, 2, false)            \
    STILLMOTION_SAGE(stillmotion_sage_##SUFFIX##_d64_m64_pv8, T, 64, 1, true)                 \
    STILLMOTION_SAGE(stillmotion_sage_##SUFFIX##_d128_m64_pv8, T, 128, 1, true)               \
    STILLMOTION_SAGE(stillmotion_sage_##SUFFIX##_d64_m128_pv8, T, 64, 2, true)                \
    STILLMOTION_SAGE(stillmotion_sage_##SUFFIX##_d128_m128_pv8, T, 128, 2, true)

STILLMOTION_SAGE_ALL(__nv_bfloat16, bf16)
STILLMOTION_SAGE_ALL(__half, f16)
