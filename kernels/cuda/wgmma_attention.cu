// Our attention forward on Hopper's warpgroup tensor-core instruction (wgmma, sm_90a): the
// flash kernel of flash_attention.cu with each 16-row mma.sync tile replaced by one 64-row
// wgmma per warpgroup. mma.sync tops out near half of Hopper's tensor throughput; wgmma reads
// both operands of q·kᵀ and the V operand of P·V straight from shared memory.
//
// q [B, Sq, H, D], k/v [B, Sk, H, D], o [B, Sq, H, D], bf16 or f16, D = 128, no mask, any lengths.
// A block is two warpgroups (256 threads) and 128 query rows; keys stream in tiles of 64. Tiles
// are small enough (128 registers a thread, 65 KiB of shared memory) for two blocks to share an
// SM, so one block's softmax runs while the other's products use the tensor cores. (A single
// block overlapping its own softmax with its P·V needed a second P buffer and spilled: 70 ms
// against 62.5 ms for 32,760² tokens on the H200.)
//
// Shared tiles are stored in the canonical 128-byte-swizzled layout wgmma reads: a tile of R rows
// × 128 elements is two column halves of R rows × 64 elements (128 bytes a row), and within each
// 8-row, 1024-byte atom the 16-byte chunk c of row r sits at chunk c ^ (r % 8). Q and K are read
// K-major (the reduction runs along a row); V is read MN-major (transposed): the same bytes, other
// descriptor strides (checked on the H200: the other reading of the MN-major fields gives noise).
// P stays in registers: the score accumulator's layout is the register A operand of P·V (as in
// the mma.sync kernel).
//
// Other GPUs compile this file to nothing: the launcher uses it on compute capability 9.0 only.

#include <type_traits>

#include "wgmma_common.cuh"

namespace {

constexpr int kHeadDim = 128;
constexpr int kRows = 128;      // query rows per block: 64 per warpgroup
constexpr int kKeys = 64;       // keys per tile
constexpr int kThreads = 256;   // two warpgroups
constexpr int kRowBytes = 128;  // one swizzled row: 64 elements
constexpr int kAtomBytes = 1024;

#if defined(STILLMOTION_HAS_WGMMA)

// d = A·Bᵀ (the accumulator only written: the first step), as wgmma_ss64_bf16.
__device__ __forceinline__ void wgmma_ss64_first_bf16(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]),
          "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]),
          "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]),
          "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]),
          "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]),
          "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]),
          "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]),
          "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
        : "l"(a), "l"(b));
}

// d (+)= A·Bᵀ, A and B from shared memory (both K-major), m64 n64 k16, bf16.
__device__ __forceinline__ void wgmma_ss64_bf16(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
          "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
          "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b));
}

// d += A·B, A from registers, B from shared memory MN-major (transposed), m64 n128 k16, bf16.
__device__ __forceinline__ void wgmma_rs_bf16(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        STILLMOTION_D64_REGS ", "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : STILLMOTION_D64(STILLMOTION_F_ACC)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// d = A·Bᵀ (the accumulator only written: the first step), as wgmma_ss64_f16.
__device__ __forceinline__ void wgmma_ss64_first_f16(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]),
          "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]),
          "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]),
          "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]),
          "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]),
          "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]),
          "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]),
          "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
        : "l"(a), "l"(b));
}

// d (+)= A·Bᵀ, A and B from shared memory (both K-major), m64 n64 k16, f16.
__device__ __forceinline__ void wgmma_ss64_f16(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
          "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
          "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b));
}

// d += A·B, A from registers, B from shared memory MN-major (transposed), m64 n128 k16, f16.
__device__ __forceinline__ void wgmma_rs_f16(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        STILLMOTION_D64_REGS ", "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : STILLMOTION_D64(STILLMOTION_F_ACC)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

template <typename T> struct Wgmma;
template <> struct Wgmma<__nv_bfloat16> {
    static __device__ __forceinline__ void scores(float (&d)[32], uint64_t a, uint64_t b,
                                                  bool accumulate) {
        if (accumulate) {
            wgmma_ss64_bf16(d, a, b);
        } else {
            wgmma_ss64_first_bf16(d, a, b);
        }
    }
    static __device__ __forceinline__ void values(float (&d)[64], const uint32_t (&a)[4],
                                                  uint64_t b) {
        wgmma_rs_bf16(d, a, b);
    }
};
template <> struct Wgmma<__half> {
    static __device__ __forceinline__ void scores(float (&d)[32], uint64_t a, uint64_t b,
                                                  bool accumulate) {
        if (accumulate) {
            wgmma_ss64_f16(d, a, b);
        } else {
            wgmma_ss64_first_f16(d, a, b);
        }
    }
    static __device__ __forceinline__ void values(float (&d)[64], const uint32_t (&a)[4],
                                                  uint64_t b) {
        wgmma_rs_f16(d, a, b);
    }
};

// `rows` rows (tokens first…, zero past seq_len) of one head into a swizzled tile.
template <typename T>
__device__ __forceinline__ void load_swizzled(unsigned char *tile, const T *base, int first,
                                              int rows, int seq_len, int64_t row_stride) {
    constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
    for (int i = threadIdx.x; i < rows * kChunks; i += kThreads) {
        const int r = i / kChunks;
        const int c = i % kChunks;
        const int token = first + r;
        const bool valid = token < seq_len;
        const T *src = base + static_cast<int64_t>(valid ? token : 0) * row_stride + c * 8;
        unsigned char *dst = tile + (c / 8) * rows * kRowBytes + r * kRowBytes +
                             (((c % 8) ^ (r % 8)) << 4);
        cp_async_16(dst, src, valid);
    }
}

#endif

template <typename T>
__device__ __forceinline__ void wgmma_forward(const T *__restrict__ q, const T *__restrict__ k,
                                              const T *__restrict__ v, T *__restrict__ o,
                                              int sq, int sk, int heads, float scale_log2) {
#if defined(STILLMOTION_HAS_WGMMA)
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    // Dynamic shared memory is only 16-byte aligned by contract: align the atoms by hand.
    unsigned char *shared = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(shared_raw) + kAtomBytes - 1) & ~uintptr_t(kAtomBytes - 1));
    unsigned char *q_tile = shared;
    unsigned char *k_tile = q_tile + kRows * kHeadDim * 2;
    unsigned char *v_tile = k_tile + kKeys * kHeadDim * 2;

    const int warpgroup = threadIdx.x / 128;
    const int warp = (threadIdx.x / 32) % 4;
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int q_start = blockIdx.x * kRows;
    const int64_t row_stride = static_cast<int64_t>(heads) * kHeadDim;
    const T *q_base = q + (static_cast<int64_t>(batch) * sq * heads + head) * kHeadDim;
    const T *k_base = k + (static_cast<int64_t>(batch) * sk * heads + head) * kHeadDim;
    const T *v_base = v + (static_cast<int64_t>(batch) * sk * heads + head) * kHeadDim;

    load_swizzled(q_tile, q_base, q_start, kRows, sq, row_stride);
    load_swizzled(k_tile, k_base, 0, kKeys, sk, row_stride);
    cp_async_commit();

    constexpr int kTiles = kKeys / 8;  // 8-key score tiles
    constexpr int kOutTiles = kHeadDim / 8;
    float score[1][kTiles][4];
    float out[1][kOutTiles][4];
    float row_max[1][2] = {{-INFINITY, -INFINITY}};
    float row_sum[1][2] = {{0.f, 0.f}};
    float rescale[1][2];
    uint32_t p[kKeys / 16][4];
#pragma unroll
    for (int t = 0; t < kOutTiles; ++t) {
        out[0][t][0] = out[0][t][1] = out[0][t][2] = out[0][t][3] = 0.f;
    }
    float(&s_flat)[kTiles * 4] = *reinterpret_cast<float(*)[kTiles * 4]>(&score[0][0][0]);
    float(&o_flat)[kOutTiles * 4] = *reinterpret_cast<float(*)[kOutTiles * 4]>(&out[0][0][0]);
    const float scales[1] = {scale_log2};

    const int key_tiles = (sk + kKeys - 1) / kKeys;
    for (int tile = 0; tile < key_tiles; ++tile) {
        const int key_start = tile * kKeys;
        cp_async_wait_all();
        fence_proxy_async();
        __syncthreads();  // K (and Q) landed; every warpgroup is done with the previous V
        load_swizzled(v_tile, v_base, key_start, kKeys, sk, row_stride);
        cp_async_commit();

        // S = Q·Kᵀ over the head dimension: 8 steps of 16, 4 in each column half.
        wgmma_fence();
#pragma unroll
        for (int step = 0; step < kHeadDim / 16; ++step) {
            const int half = step / 4;
            const int within = (step % 4) * 32;
            const uint64_t a = descriptor(
                q_tile + half * kRows * kRowBytes + warpgroup * 64 * kRowBytes + within, 16,
                kAtomBytes);
            const uint64_t b =
                descriptor(k_tile + half * kKeys * kRowBytes + within, 16, kAtomBytes);
            Wgmma<T>::scores(s_flat, a, b, step > 0);
        }
        wgmma_commit_and_wait();

        // P packed straight into the register A operand of P·V: step s covers score tiles 2s
        // and 2s + 1; registers 0 and 2 hold row lane/4, 1 and 3 row lane/4 + 8.
        float low = 0.f;  // the first of each pair of adjacent keys
        softmax_tile(score, row_max, row_sum, scales, key_start, sk, rescale,
                     [&](int, int t, int e, float value) {
                         if (e % 2 == 0) {
                             low = value;
                         } else {
                             p[t / 2][(e / 2) + 2 * (t % 2)] = Mma<T>::pack(low, value);
                         }
                     });
        rescale_rows(out, rescale);

        cp_async_wait_all();
        fence_proxy_async();
        __syncthreads();  // V landed; every warpgroup is done with K
        if (tile + 1 < key_tiles) {
            load_swizzled(k_tile, k_base, key_start + kKeys, kKeys, sk, row_stride);
            cp_async_commit();
        }

        // O += P·V over the tile's keys: 4 steps of 16 keys (two 8-key atoms each); V is read
        // MN-major: the leading offset is one 64-column half, the stride one 8-key atom.
        wgmma_fence();
#pragma unroll
        for (int step = 0; step < kKeys / 16; ++step) {
            const uint64_t b =
                descriptor(v_tile + step * 2 * kAtomBytes, kKeys * kRowBytes, kAtomBytes);
            Wgmma<T>::values(o_flat, p[step], b);
        }
        wgmma_commit_and_wait();
    }

    T *o_base = o + (static_cast<int64_t>(batch) * sq * heads + head) * kHeadDim;
    store_rows<T>(o_base, row_stride, out, row_sum, q_start + warpgroup * 64 + warp * 16, sq,
                  nullptr);
#else
    __trap();  // the launcher uses this kernel on compute capability 9.0 only
#endif
}

}  // namespace

// Entry points by type and blocks an SM (2: registers capped at 128; 1: uncapped, for the
// benchmark's comparison). Shared memory: (128 + 2·64)·128·2 bytes + 1024 for alignment.
#define STILLMOTION_WGMMA(NAME, T, BLOCKS)                                                     \
    extern "C" __global__ void __launch_bounds__(kThreads, BLOCKS)                             \
        NAME(const T *q, const T *k, const T *v, T *o, int sq, int sk, int heads,              \
             float scale_log2) {                                                               \
        wgmma_forward<T>(q, k, v, o, sq, sk, heads, scale_log2);                              \
    }

STILLMOTION_WGMMA(stillmotion_wgmma_attention_bf16_d128_x2, __nv_bfloat16, 2)
STILLMOTION_WGMMA(stillmotion_wgmma_attention_f16_d128_x2, __half, 2)
STILLMOTION_WGMMA(stillmotion_wgmma_attention_bf16_d128_x1, __nv_bfloat16, 1)
STILLMOTION_WGMMA(stillmotion_wgmma_attention_f16_d128_x1, __half, 1)

// ---------------------------------------------------------------------------------------
// The pipelined kernel: the same products, fed as sage_wgmma.cu's pipelined 8-bit kernel is.
// A producer warpgroup's one thread loads Q, K and V with TMA straight from the [B, S, H, D]
// tensors (4-D maps, boxes of 64 channels × 128 tokens of one head: one column half of a tile,
// written in the 128-byte swizzle) into a ring of kFlashStages K and V tiles of 128 keys; rows
// past a sequence's end arrive as zeros. Two consumer warpgroups of 64 query rows each run
// Q·Kᵀ, the softmax and P·V (accumulated straight into the float32 output: 16-bit wgmma adds
// in float32), issuing P·V of one tile with Q·Kᵀ of the next.

namespace {

constexpr int kFlashKeys = 128;
constexpr int kFlashStages = 3;  // with Q 224 KiB, under the 227 KiB a block may have
constexpr int kFlashConsumers = 256;
constexpr int kFlashThreads = kFlashConsumers + 128;
constexpr uint32_t kHalfTile = 128 * kRowBytes;     // 128 rows of one 64-column half
constexpr uint32_t kFlashTile = 2 * kHalfTile;      // 128 rows × 128 columns of 16 bits

struct FlashBarriers {
    uint64_t q_full;
    uint64_t k_full[kFlashStages];
    uint64_t v_full[kFlashStages];
    uint64_t empty[kFlashStages];
};

#if defined(STILLMOTION_HAS_WGMMA)

// d (+)= A·Bᵀ, m64 n128 k16, A and B from shared memory (K-major); "first" only writes d.
__device__ __forceinline__ void wgmma_ss128_first_bf16(float (&d)[64], uint64_t a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        STILLMOTION_D64_REGS ", "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : STILLMOTION_D64(STILLMOTION_F_OUT)
        : "l"(a), "l"(b));
}

__device__ __forceinline__ void wgmma_ss128_acc_bf16(float (&d)[64], uint64_t a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        STILLMOTION_D64_REGS ", "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : STILLMOTION_D64(STILLMOTION_F_ACC)
        : "l"(a), "l"(b));
}

__device__ __forceinline__ void wgmma_ss128_first_f16(float (&d)[64], uint64_t a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        STILLMOTION_D64_REGS ", "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : STILLMOTION_D64(STILLMOTION_F_OUT)
        : "l"(a), "l"(b));
}

__device__ __forceinline__ void wgmma_ss128_acc_f16(float (&d)[64], uint64_t a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        STILLMOTION_D64_REGS ", "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : STILLMOTION_D64(STILLMOTION_F_ACC)
        : "l"(a), "l"(b));
}

template <typename T>
__device__ __forceinline__ void wgmma_ss128(float (&d)[64], uint64_t a, uint64_t b, bool first) {
    if constexpr (std::is_same_v<T, __half>) {
        if (first) {
            wgmma_ss128_first_f16(d, a, b);
        } else {
            wgmma_ss128_acc_f16(d, a, b);
        }
    } else {
        if (first) {
            wgmma_ss128_first_bf16(d, a, b);
        } else {
            wgmma_ss128_acc_bf16(d, a, b);
        }
    }
}

// One tile (128 tokens of one head, both column halves) by two TMA boxes, completing on `bar`.
__device__ __forceinline__ void load_tile(unsigned char *dst, const TensorMap *map, int head,
                                          int first_token, int batch, uint64_t *bar) {
    mbarrier_expect_bytes(bar, kFlashTile);
    tma_load_4d(dst, map, 0, head, first_token, batch, bar);
    tma_load_4d(dst + kHalfTile, map, 64, head, first_token, batch, bar);
}

// S = Q·Kᵀ for a warpgroup's 64 rows and a 128-key tile: 8 steps of 16, 4 in each column half.
template <typename T>
__device__ __forceinline__ void issue_scores(float (&score)[64], const unsigned char *q_rows,
                                             const unsigned char *k_tile) {
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < kHeadDim / 16; ++step) {
        const int half = step / 4;
        const int within = (step % 4) * 32;
        const uint64_t a = descriptor(q_rows + half * kHalfTile + within, 16, kAtomBytes);
        const uint64_t b = descriptor(k_tile + half * kHalfTile + within, 16, kAtomBytes);
        wgmma_ss128<T>(score, a, b, step == 0);
    }
    wgmma_commit();
}

// O += P·V over a 128-key tile: 8 steps of 16 keys; V is read MN-major (leading offset one
// column half, stride one 8-key atom).
template <typename T>
__device__ __forceinline__ void issue_values(float (&out)[64], const uint32_t (&p)[8][4],
                                             const unsigned char *v_tile) {
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < kFlashKeys / 16; ++step) {
        const uint64_t b = descriptor(v_tile + step * 2 * kAtomBytes, kHalfTile, kAtomBytes);
        Wgmma<T>::values(out, p[step], b);
    }
    wgmma_commit();
}

// One 128-key tile of the online softmax. Register 4t + e holds key 8t + 2·(lane % 4) + e % 2
// of row lane / 4 + 8·(e / 2). P leaves packed as P·V's register A operand: step s covers
// score tiles 2s and 2s + 1; registers 0 and 2 hold row lane/4, 1 and 3 row lane/4 + 8.
template <typename T, bool kMasked>
__device__ __forceinline__ void softmax_flash(float (&score)[64], float scale_log2,
                                              int key_start, int sk, float (&row_max)[2],
                                              float (&row_sum)[2], float (&rescale)[2],
                                              uint32_t (&p)[8][4]) {
    const int lane = threadIdx.x % 32;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        if constexpr (kMasked) {
            const int key = key_start + (i / 4) * 8 + (lane % 4) * 2 + (i % 2);
            score[i] = key < sk ? score[i] : -INFINITY;
        }
        tile_max[(i / 2) % 2] = fmaxf(tile_max[(i / 2) % 2], score[i]);
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 2));
        // In log2 units (the scale is positive, so the raw maximum scales to the maximum).
        const float new_max = fmaxf(row_max[r], tile_max[r] * scale_log2);
        // A row whose keys so far are all masked keeps max -inf: subtract 0 instead.
        base[r] = new_max == -INFINITY ? 0.f : new_max;
        rescale[r] = exp2f(row_max[r] - base[r]);
        row_max[r] = new_max;
        row_sum[r] *= rescale[r];
    }
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        score[i] = exp2f(fmaf(score[i], scale_log2, -base[(i / 2) % 2]));
        row_sum[(i / 2) % 2] += score[i];
    }
#pragma unroll
    for (int t = 0; t < 16; ++t) {
#pragma unroll
        for (int e = 1; e < 4; e += 2) {
            p[t / 2][(e / 2) + 2 * (t % 2)] = Mma<T>::pack(score[4 * t + e - 1], score[4 * t + e]);
        }
    }
}

#endif

template <typename T, bool kPingPong>
__device__ __forceinline__ void flash_pipelined_forward(const TensorMap *q_map,
                                                        const TensorMap *k_map,
                                                        const TensorMap *v_map, T *o, int sq,
                                                        int sk, int heads, float scale_log2) {
#if defined(STILLMOTION_HAS_WGMMA)
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    unsigned char *shared = reinterpret_cast<unsigned char *>(
        (reinterpret_cast<uintptr_t>(shared_raw) + kAtomBytes - 1) & ~uintptr_t(kAtomBytes - 1));
    unsigned char *q_tile = shared;
    unsigned char *k_tiles = q_tile + kFlashTile;
    unsigned char *v_tiles = k_tiles + kFlashStages * kFlashTile;
    FlashBarriers *bars =
        reinterpret_cast<FlashBarriers *>(v_tiles + kFlashStages * kFlashTile);

    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int q_start = blockIdx.x * kRows;
    const int key_tiles = (sk + kFlashKeys - 1) / kFlashKeys;

    if (threadIdx.x == 0) {
        mbarrier_init(&bars->q_full, 1);
        for (int s = 0; s < kFlashStages; ++s) {
            mbarrier_init(&bars->k_full[s], 1);
            mbarrier_init(&bars->v_full[s], 1);
            mbarrier_init(&bars->empty[s], kFlashConsumers);
        }
        fence_mbarrier_init();
    }
    __syncthreads();

    if (threadIdx.x >= kFlashConsumers) {
        // The producer warpgroup gives its registers to the consumers; one thread loads.
        setmaxnreg_dec<24>();
        if (threadIdx.x == kFlashConsumers) {
            load_tile(q_tile, q_map, head, q_start, batch, &bars->q_full);
            for (int tile = 0; tile < key_tiles; ++tile) {
                const int s = tile % kFlashStages;
                const int use = tile / kFlashStages;
                if (use > 0) {
                    mbarrier_wait(&bars->empty[s], (use - 1) & 1);
                }
                load_tile(k_tiles + s * kFlashTile, k_map, head, tile * kFlashKeys, batch,
                          &bars->k_full[s]);
                load_tile(v_tiles + s * kFlashTile, v_map, head, tile * kFlashKeys, batch,
                          &bars->v_full[s]);
            }
        }
        return;
    }

    setmaxnreg_inc<240>();
    const int warpgroup = threadIdx.x / 128;
    const int warp = (threadIdx.x / 32) % 4;
    const unsigned char *q_rows = q_tile + warpgroup * 64 * kRowBytes;
    float out[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        out[i] = 0.f;
    }
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};
    const TurnOrder<kPingPong, kFlashConsumers> turns{warpgroup};

    float score[64];
    mbarrier_wait(&bars->q_full, 0);
    if (warpgroup == 1) {
        turns.my_turn();
    }
    mbarrier_wait(&bars->k_full[0], 0);
    issue_scores<T>(score, q_rows, k_tiles);
    turns.their_turn();
    wgmma_wait_all();

    // One key tile: its softmax, then P·V and the next tile's Q·Kᵀ together. The last tile is
    // peeled (kMore false) so that no wgmma sits in a branch.
    const auto step = [&](int tile, auto more) {
        constexpr bool kMore = decltype(more)::value;
        const int s = tile % kFlashStages;
        const uint32_t parity = (tile / kFlashStages) & 1;
        const int key_start = tile * kFlashKeys;
        float rescale[2];
        uint32_t p[8][4];
        if (key_start + kFlashKeys > sk) {
            softmax_flash<T, true>(score, scale_log2, key_start, sk, row_max, row_sum, rescale,
                                   p);
        } else {
            softmax_flash<T, false>(score, scale_log2, key_start, sk, row_max, row_sum,
                                    rescale, p);
        }
#pragma unroll
        for (int i = 0; i < 64; ++i) {
            out[i] *= rescale[(i / 2) % 2];
        }
        mbarrier_wait(&bars->v_full[s], parity);
        turns.my_turn();
        issue_values<T>(out, p, v_tiles + s * kFlashTile);
        if constexpr (kMore) {
            const int next = (tile + 1) % kFlashStages;
            mbarrier_wait(&bars->k_full[next], ((tile + 1) / kFlashStages) & 1);
            issue_scores<T>(score, q_rows, k_tiles + next * kFlashTile);
            turns.their_turn();
        } else if (warpgroup == 0) {
            // Warpgroup 1's last turn has no one to hand over to: warpgroup 0 took its last.
            turns.their_turn();
        }
        wgmma_wait_all();
        mbarrier_arrive(&bars->empty[s]);
    };
    for (int tile = 0; tile + 1 < key_tiles; ++tile) {
        step(tile, std::true_type{});
    }
    step(key_tiles - 1, std::false_type{});

    const int64_t row_stride = static_cast<int64_t>(heads) * kHeadDim;
    T *o_base = o + (static_cast<int64_t>(batch) * sq * heads + head) * kHeadDim;
    const float sums[1][2] = {{row_sum[0], row_sum[1]}};
    store_rows<T>(o_base, row_stride, *reinterpret_cast<float(*)[1][kHeadDim / 8][4]>(out), sums,
                  q_start + warpgroup * 64 + warp * 16, sq, nullptr);
#else
    __trap();  // the launcher uses this kernel on compute capability 9.0 only
#endif
}

}  // namespace

// Shared memory: Q, kFlashStages K and V tiles of 128 × 128 16-bit values, the barriers, and
// 1024 for alignment.
#define STILLMOTION_FLASH_PIPELINED(NAME, T, PING_PONG)                                          \
    extern "C" __global__ void __launch_bounds__(kFlashThreads, 1)                              \
        NAME(const __grid_constant__ TensorMap q_map, const __grid_constant__ TensorMap k_map,  \
             const __grid_constant__ TensorMap v_map, T *o, int sq, int sk, int heads,          \
             float scale_log2) {                                                                \
        flash_pipelined_forward<T, PING_PONG>(&q_map, &k_map, &v_map, o, sq, sk, heads,         \
                                              scale_log2);                                      \
    }

STILLMOTION_FLASH_PIPELINED(stillmotion_flash_pipelined_bf16_d128, __nv_bfloat16, false)
STILLMOTION_FLASH_PIPELINED(stillmotion_flash_pipelined_f16_d128, __half, false)
STILLMOTION_FLASH_PIPELINED(stillmotion_flash_pipelined_bf16_d128_pingpong, __nv_bfloat16, true)
STILLMOTION_FLASH_PIPELINED(stillmotion_flash_pipelined_f16_d128_pingpong, __half, true)
