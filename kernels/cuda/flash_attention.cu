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

#include "mma_common.cuh"

namespace {

constexpr int kBlockN = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;  // elements of padding per shared row: spreads ldmatrix rows over banks

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

        float scales[kMTiles];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
            scales[m] = scale_log2;
        }
        online_softmax(score, out, row_max, row_sum, scales, key_start, sk);
        uint32_t p_frag[kMTiles][kBlockN / 16][4];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
            for (int t = 0; t < kScoreTiles; ++t) {
                // Score tile t covers keys 8t…8t+7: tile 2j is the low half of k-step j.
                const int step = t / 2;
                const int half = (t % 2) * 2;
                p_frag[m][step][half] = Mma<T>::pack(score[m][t][0], score[m][t][1]);
                p_frag[m][step][half + 1] = Mma<T>::pack(score[m][t][2], score[m][t][3]);
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
    store_rows<T>(o_base, row_stride, out, row_sum, q_start + warp * kMTiles * 16, sq, nullptr);
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
