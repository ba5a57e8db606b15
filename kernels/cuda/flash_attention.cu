// Our own fused attention forward (flash-attention style), for machines without cuDNN and as
// the base of the 8-bit path.
//
// softmax(q·kᵀ·scale)·v for q [B, Sq, H, D], k/v [B, Sk, H, D], o [B, Sq, H, D], all
// contiguous, bf16 or f16, D = 64 or 128, no mask, any lengths. Scores and the running
// softmax stay in float32; P is rounded to the input type for the P·V product (as every
// flash attention does), and O is accumulated in float32.
//
// One block = 4 warps = 64 or 128 query rows of one (batch, head); each warp owns 16 or 32. Keys and
// values stream through shared memory in tiles of 64, loaded with cp.async so the load of the
// next tile overlaps the tensor-core work on the current one. Products use mma.sync m16n8k16
// with operands fetched by ldmatrix; the score accumulator's register layout is exactly the A
// operand layout of the P·V product, so P never goes through shared memory.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

constexpr int kBlockN = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;  // elements of padding per shared row: spreads ldmatrix rows over banks

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

// Loads `rows` rows (tokens first_row…) of one head into shared memory [row][D + kPad].
template <typename T, int D>
__device__ __forceinline__ void load_tile(T *smem, const T *base, int first_row, int rows,
                                          int seq_len, int64_t row_stride) {
    constexpr int kChunks = D / 8;  // 16-byte chunks per row
    for (int i = threadIdx.x; i < rows * kChunks; i += kThreads) {
        int r = i / kChunks;
        int c = (i % kChunks) * 8;
        int token = first_row + r;
        bool valid = token < seq_len;
        const T *src = base + static_cast<int64_t>(valid ? token : 0) * row_stride + c;
        cp_async_16(smem + r * (D + kPad) + c, src, valid);
    }
}

// kMTiles: 16-row tiles of queries per warp. With 2, each K/V fragment read from shared
// memory feeds two tensor-core products, which halves the shared-memory traffic per FLOP
// (the limit of an mma.sync kernel); Q then stays in shared memory to leave registers for
// the two accumulators.
template <typename T, int D, int kMTiles>
__device__ __forceinline__ void flash_attention_forward(const T *__restrict__ q,
                                                        const T *__restrict__ k,
                                                        const T *__restrict__ v,
                                                        T *__restrict__ o, int sq, int sk,
                                                        int heads, float scale_log2) {
    constexpr int kBlockM = 16 * kMTiles * kWarps;
    constexpr int kStride = D + kPad;
    constexpr int kSteps = D / 16;  // k-steps of the q·kᵀ product
    constexpr int kScoreTiles = kBlockN / 8;
    constexpr int kOutTiles = D / 8;
    extern __shared__ __align__(16) unsigned char shared_raw[];
    T *q_smem = reinterpret_cast<T *>(shared_raw);
    T *k_smem = q_smem + kBlockM * kStride;
    T *v_smem = k_smem + kBlockN * kStride;

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int q_start = blockIdx.x * kBlockM;
    const int64_t row_stride = static_cast<int64_t>(heads) * D;
    const T *q_base = q + (static_cast<int64_t>(batch) * sq * heads + head) * D;
    const T *k_base = k + (static_cast<int64_t>(batch) * sk * heads + head) * D;
    const T *v_base = v + (static_cast<int64_t>(batch) * sk * heads + head) * D;

    load_tile<T, D>(q_smem, q_base, q_start, kBlockM, sq, row_stride);
    load_tile<T, D>(k_smem, k_base, 0, kBlockN, sk, row_stride);
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
        // Rows lane/4 and lane/4 + 8 of the warp's m-th 16-row tile.
        row_max[m][0] = row_max[m][1] = -INFINITY;
        row_sum[m][0] = row_sum[m][1] = 0.f;
    }

    const int key_tiles = (sk + kBlockN - 1) / kBlockN;
    for (int tile = 0; tile < key_tiles; ++tile) {
        const int key_start = tile * kBlockN;
        cp_async_wait_all();
        __syncthreads();  // K (and Q) landed; every warp is done with the previous V
        load_tile<T, D>(v_smem, v_base, key_start, kBlockN, sk, row_stride);
        cp_async_commit();

        float score[kMTiles][kScoreTiles][4];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
            for (int t = 0; t < kScoreTiles; ++t) {
                score[m][t][0] = score[m][t][1] = score[m][t][2] = score[m][t][3] = 0.f;
            }
        }
#pragma unroll
        for (int s = 0; s < kSteps; ++s) {
            uint32_t a[kMTiles][4];
#pragma unroll
            for (int m = 0; m < kMTiles; ++m) {
                const int row = (warp * kMTiles + m) * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                const int col = s * 16 + (lane / 16) * 8;
                ldmatrix_x4(a[m], q_smem + row * kStride + col);
            }
#pragma unroll
            for (int t = 0; t < kScoreTiles; t += 2) {
                uint32_t b[4];
                const int key = t * 8 + (lane % 8) + (lane / 16) * 8;
                const int col = s * 16 + ((lane / 8) % 2) * 8;
                ldmatrix_x4(b, k_smem + key * kStride + col);
#pragma unroll
                for (int m = 0; m < kMTiles; ++m) {
                    Mma<T>::run(score[m][t], a[m], b[0], b[1]);
                    Mma<T>::run(score[m][t + 1], a[m], b[2], b[3]);
                }
            }
        }

        // Online softmax in the log2 domain; keys past the end get -inf.
        uint32_t p_frag[kMTiles][kBlockN / 16][4];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
            float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int t = 0; t < kScoreTiles; ++t) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = key_start + t * 8 + (lane % 4) * 2 + (e % 2);
                    float value = key < sk ? score[m][t][e] * scale_log2 : -INFINITY;
                    score[m][t][e] = value;
                    tile_max[e / 2] = fmaxf(tile_max[e / 2], value);
                }
            }
            float rescale[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 1));
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 2));
                const float new_max = fmaxf(row_max[m][r], tile_max[r]);
                // A row whose keys so far are all masked keeps max -inf: subtract 0 instead.
                const float base = new_max == -INFINITY ? 0.f : new_max;
                rescale[r] = exp2f(row_max[m][r] - base);
                row_max[m][r] = new_max;
                row_sum[m][r] *= rescale[r];
                tile_max[r] = base;
            }
#pragma unroll
            for (int t = 0; t < kOutTiles; ++t) {
                out[m][t][0] *= rescale[0];
                out[m][t][1] *= rescale[0];
                out[m][t][2] *= rescale[1];
                out[m][t][3] *= rescale[1];
            }
#pragma unroll
            for (int t = 0; t < kScoreTiles; ++t) {
                float p[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    p[e] = exp2f(score[m][t][e] - tile_max[e / 2]);
                    row_sum[m][e / 2] += p[e];
                }
                // Score tile t covers keys 8t…8t+7: tile 2j is the low half of k-step j.
                const int step = t / 2;
                const int half = (t % 2) * 2;
                p_frag[m][step][half] = Mma<T>::pack(p[0], p[1]);
                p_frag[m][step][half + 1] = Mma<T>::pack(p[2], p[3]);
            }
        }

        cp_async_wait_all();
        __syncthreads();  // V landed; every warp is done with K
        if (tile + 1 < key_tiles) {
            load_tile<T, D>(k_smem, k_base, key_start + kBlockN, kBlockN, sk, row_stride);
            cp_async_commit();
        }

#pragma unroll
        for (int step = 0; step < kBlockN / 16; ++step) {
#pragma unroll
            for (int t = 0; t < kOutTiles; t += 2) {
                uint32_t b[4];
                const int key = step * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                const int col = t * 8 + (lane / 16) * 8;
                ldmatrix_x4_trans(b, v_smem + key * kStride + col);
#pragma unroll
                for (int m = 0; m < kMTiles; ++m) {
                    Mma<T>::run(out[m][t], p_frag[m][step], b[0], b[1]);
                    Mma<T>::run(out[m][t + 1], p_frag[m][step], b[2], b[3]);
                }
            }
        }
    }

    T *o_base = o + (static_cast<int64_t>(batch) * sq * heads + head) * D;
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float sum = row_sum[m][r];
            sum += __shfl_xor_sync(0xffffffff, sum, 1);
            sum += __shfl_xor_sync(0xffffffff, sum, 2);
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            const int token = q_start + (warp * kMTiles + m) * 16 + lane / 4 + r * 8;
            if (token >= sq) {
                continue;
            }
            T *row = o_base + static_cast<int64_t>(token) * row_stride;
#pragma unroll
            for (int t = 0; t < kOutTiles; ++t) {
                const int col = t * 8 + (lane % 4) * 2;
                *reinterpret_cast<uint32_t *>(row + col) =
                    Mma<T>::pack(out[m][t][r * 2] * inv, out[m][t][r * 2 + 1] * inv);
            }
        }
    }
}

}  // namespace

// Entry points by type, head size and query rows per block (64: one 16-row tile per warp;
// 128: two). Shared memory: (rows + 2·64)·(D + 8) elements, set by the launcher.
#define STILLMOTION_FLASH(NAME, T, D, MTILES)                                                  \
    extern "C" __global__ void __launch_bounds__(kThreads)                                     \
        NAME(const T *q, const T *k, const T *v, T *o, int sq, int sk, int heads,              \
             float scale_log2) {                                                               \
        flash_attention_forward<T, D, MTILES>(q, k, v, o, sq, sk, heads, scale_log2);          \
    }

STILLMOTION_FLASH(stillmotion_flash_attention_bf16_d64_m64, __nv_bfloat16, 64, 1)
STILLMOTION_FLASH(stillmotion_flash_attention_bf16_d128_m64, __nv_bfloat16, 128, 1)
STILLMOTION_FLASH(stillmotion_flash_attention_f16_d64_m64, __half, 64, 1)
STILLMOTION_FLASH(stillmotion_flash_attention_f16_d128_m64, __half, 128, 1)
STILLMOTION_FLASH(stillmotion_flash_attention_bf16_d64_m128, __nv_bfloat16, 64, 2)
STILLMOTION_FLASH(stillmotion_flash_attention_bf16_d128_m128, __nv_bfloat16, 128, 2)
STILLMOTION_FLASH(stillmotion_flash_attention_f16_d64_m128, __half, 64, 2)
STILLMOTION_FLASH(stillmotion_flash_attention_f16_d128_m128, __half, 128, 2)
