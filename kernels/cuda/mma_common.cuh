// Tensor-core building blocks shared by our attention kernels: mma.sync wrappers by element
// type, ldmatrix, cp.async and the online softmax. Each kernel file is its own module, so each
// gets its own copy.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> struct Mma;

template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                               uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    }
};

template <> struct Mma<__half> {
    static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                               uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&v);
    }
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
// Four floats to four e4m3 bytes, x0 in the lowest byte (the lowest k): P for an FP8 product.
__device__ __forceinline__ uint32_t pack_e4m3(float x0, float x1, float x2, float x3) {
    unsigned short lo;
    unsigned short hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(lo) : "f"(x1), "f"(x0));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(hi) : "f"(x3), "f"(x2));
    return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}
#endif

// float(x) for an INT8 dot product's 32-bit sum without the conversion unit (a quarter-rate
// pipe that, with exp2, limits the softmax): for |x| < 2²², x + 0x4B400000 is the bit pattern
// of 1.5·2²³ + x, and subtracting 1.5·2²³ is exact. Scores of 128 INT8 products stay below
// 128·127² < 2²¹.
__device__ __forceinline__ float int_sum_to_float(int x) {
    return __int_as_float(x + 0x4B400000) - 12582912.f;
}

__device__ __forceinline__ uint32_t smem_address(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(p)));
}

// 16 bytes global → shared, zero-filled when `valid` is false (rows past the sequence end).
__device__ __forceinline__ void cp_async_16(void *dst, const void *src, bool valid) {
    int src_size = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)),
                 "l"(src), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// One key tile of the online softmax, in the log2 domain, for a warp's kMTiles 16-row query
// tiles. `score` holds q·kᵀ in the m16n8 accumulator layout (rows lane/4 and lane/4 + 8,
// keys 8t + 2·(lane % 4) + {0, 1}); `scale_log2[m]` turns tile m's scores into log2 units.
// Keys at or past `sk` are masked. Updates the running max and sum, hands each
// p = exp2(score − max) to `emit(m, t, e, p)`, and leaves the factor the output accumulators
// must be multiplied by in `rescale` (the caller applies it when they are its to touch).
// `score` is only read: a wgmma kernel's accumulators must not be written while another
// product is in flight.
template <int kMTiles, int kScoreTiles, typename Emit>
__device__ __forceinline__ void softmax_tile(const float (&score)[kMTiles][kScoreTiles][4],
                                             float (&row_max)[kMTiles][2],
                                             float (&row_sum)[kMTiles][2],
                                             const float (&scale_log2)[kMTiles], int key_start,
                                             int sk, float (&rescale)[kMTiles][2], Emit emit) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key_start + t * 8 + (lane % 4) * 2 + (e % 2);
                const float value = key < sk ? score[m][t][e] * scale_log2[m] : -INFINITY;
                tile_max[e / 2] = fmaxf(tile_max[e / 2], value);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 2));
            const float new_max = fmaxf(row_max[m][r], tile_max[r]);
            // A row whose keys so far are all masked keeps max -inf: subtract 0 instead.
            const float base = new_max == -INFINITY ? 0.f : new_max;
            rescale[m][r] = exp2f(row_max[m][r] - base);
            row_max[m][r] = new_max;
            row_sum[m][r] *= rescale[m][r];
            tile_max[r] = base;
        }
#pragma unroll
        for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key_start + t * 8 + (lane % 4) * 2 + (e % 2);
                const float p =
                    key < sk ? exp2f(score[m][t][e] * scale_log2[m] - tile_max[e / 2]) : 0.f;
                row_sum[m][e / 2] += p;
                emit(m, t, e, p);
            }
        }
    }
}

// Multiplies each thread's two rows of the output accumulators by `rescale`.
template <int kMTiles, int kOutTiles>
__device__ __forceinline__ void rescale_rows(float (&out)[kMTiles][kOutTiles][4],
                                             const float (&rescale)[kMTiles][2]) {
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
        for (int t = 0; t < kOutTiles; ++t) {
            out[m][t][0] *= rescale[m][0];
            out[m][t][1] *= rescale[m][0];
            out[m][t][2] *= rescale[m][1];
            out[m][t][3] *= rescale[m][1];
        }
    }
}

// softmax_tile with P written over the scores, then the output accumulators rescaled.
template <int kMTiles, int kScoreTiles, int kOutTiles>
__device__ __forceinline__ void online_softmax(float (&score)[kMTiles][kScoreTiles][4],
                                               float (&out)[kMTiles][kOutTiles][4],
                                               float (&row_max)[kMTiles][2],
                                               float (&row_sum)[kMTiles][2],
                                               const float (&scale_log2)[kMTiles],
                                               int key_start, int sk) {
    float rescale[kMTiles][2];
    softmax_tile(score, row_max, row_sum, scale_log2, key_start, sk, rescale,
                 [&](int m, int t, int e, float p) { score[m][t][e] = p; });
    rescale_rows(out, rescale);
}

// Writes a warp's kMTiles 16-row output tiles (rows first_row…, those below `sq`) as
// out · col_scale[col] / Σp, col_scale being 1 where it is null.
template <typename T, int kMTiles, int kOutTiles>
__device__ __forceinline__ void store_rows(T *o_base, int64_t row_stride,
                                           const float (&out)[kMTiles][kOutTiles][4],
                                           const float (&row_sum)[kMTiles][2], int first_row,
                                           int sq, const float *__restrict__ col_scale) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float sum = row_sum[m][r];
            sum += __shfl_xor_sync(0xffffffff, sum, 1);
            sum += __shfl_xor_sync(0xffffffff, sum, 2);
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            const int token = first_row + m * 16 + lane / 4 + r * 8;
            if (token >= sq) {
                continue;
            }
            T *row = o_base + static_cast<int64_t>(token) * row_stride;
#pragma unroll
            for (int t = 0; t < kOutTiles; ++t) {
                const int col = t * 8 + (lane % 4) * 2;
                const float s0 = col_scale == nullptr ? inv : inv * col_scale[col];
                const float s1 = col_scale == nullptr ? inv : inv * col_scale[col + 1];
                *reinterpret_cast<uint32_t *>(row + col) =
                    Mma<T>::pack(out[m][t][r * 2] * s0, out[m][t][r * 2 + 1] * s1);
            }
        }
    }
}
