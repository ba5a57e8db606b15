// The elementwise glue between the transformer's GEMMs, fused so each tensor is read once.
//
// Every kernel has a CPU reference in src/glue/reference.rs that defines what it computes.
// Rows are tokens (batch · sequence), columns the model width. A per-row parameter table
// (`shift`, `scale`, `gate`: the adaLN modulation) holds one row per `rows_per_entry` rows of
// x: the sequence length when every token of a sample shares its timestep, 1 for per-token
// timesteps (TI2V's pinned first frame).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
    return __float2half_rn(v);
}

constexpr int kRowThreads = 256;

// The rotated pair, each product rounded before the sum: without contraction into an FMA
// (which nvcc may form either way round), so every kernel that rotates gets the same bits,
// and the CPU reference's separate multiplies and add.
__device__ __forceinline__ float rotate_re(float re, float im, float c, float s) {
    return __fsub_rn(__fmul_rn(re, c), __fmul_rn(im, s));
}
__device__ __forceinline__ float rotate_im(float re, float im, float c, float s) {
    return __fadd_rn(__fmul_rn(re, s), __fmul_rn(im, c));
}

// Rows are read and written in packs of kPack consecutive columns: thread t takes packs t,
// t + 256, …, each in column order. kPack is 8 where the row length allows (one 16-byte load
// of bf16/f16, two of float32) and 1 otherwise; the summation order depends only on the row
// length, so every kernel that sums a row (the norms and their fused forms) adds in the same
// order and the fused kernels agree with the unfused ones bit for bit. A pack whose address is
// not 16-byte aligned is read one value at a time: the same values, in the same order.
constexpr int kPack = 8;

__device__ __forceinline__ bool aligned16(const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

template <int N, typename T>
__device__ __forceinline__ void load_pack(const T *p, float (&v)[N]) {
    if constexpr (N == 8 && sizeof(T) == 2) {
        if (aligned16(p)) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(p);
            const T *h = reinterpret_cast<const T *>(&raw);
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = to_float(h[k]);
            return;
        }
    } else if constexpr (N == 8 && sizeof(T) == 4) {
        if (aligned16(p)) {
            const float4 a = *reinterpret_cast<const float4 *>(p);
            const float4 b = *reinterpret_cast<const float4 *>(p + 4);
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = to_float(p[k]);
}

// Stores N floats rounded to T (one rounding each, as a value-by-value store).
template <int N, typename T>
__device__ __forceinline__ void store_pack(T *p, const float (&v)[N]) {
    if constexpr (N == 8 && sizeof(T) == 2) {
        if (aligned16(p)) {
            uint4 raw;
            T *h = reinterpret_cast<T *>(&raw);
#pragma unroll
            for (int k = 0; k < N; ++k) h[k] = from_float<T>(v[k]);
            *reinterpret_cast<uint4 *>(p) = raw;
            return;
        }
    } else if constexpr (N == 8 && sizeof(T) == 4) {
        if (aligned16(p)) {
            *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
            *reinterpret_cast<float4 *>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < N; ++k) p[k] = from_float<T>(v[k]);
}

// Sum over the block; every thread gets the total.
__device__ __forceinline__ float block_sum(float value, float *scratch) {
    for (int offset = 16; offset > 0; offset /= 2) {
        value += __shfl_xor_sync(0xffffffff, value, offset);
    }
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    __syncthreads();  // scratch may still be read from the previous call
    if (lane == 0) {
        scratch[warp] = value;
    }
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < kRowThreads / 32; ++w) {
        total += scratch[w];
    }
    return total;
}

// A normalised value of column c through the norm's affine and the adaLN modulation (row entry
// `entry`), any of the four optional: (v · ln_weight + ln_bias) · (1 + scale) + shift.
__device__ __forceinline__ float affine_modulate(float v, int c, int64_t entry,
                                                 const float *ln_weight, const float *ln_bias,
                                                 const float *shift, const float *scale) {
    if (ln_weight != nullptr) v *= ln_weight[c];
    if (ln_bias != nullptr) v += ln_bias[c];
    if (scale != nullptr) v *= 1.f + scale[entry + c];
    if (shift != nullptr) v += shift[entry + c];
    return v;
}

// y = (LayerNorm(x) · ln_weight + ln_bias) · (1 + scale) + shift, any of the four optional.
// Mean first, then the variance of (x − mean): the two-pass order PyTorch's float32 layer
// norm agrees with to rounding.
template <int N, typename In, typename Out>
__device__ __forceinline__ void layer_norm_modulate(const In *x, const float *ln_weight,
                                                    const float *ln_bias, const float *shift,
                                                    const float *scale, Out *y, int cols,
                                                    int rows_per_entry, float eps) {
    __shared__ float scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    const In *xr = x + row * cols;
    Out *yr = y + row * cols;
    const int64_t entry = (row / rows_per_entry) * cols;
    const int packs = cols / N;
    float v[N];
    float sum = 0.f;
    for (int p = threadIdx.x; p < packs; p += kRowThreads) {
        load_pack<N>(xr + p * N, v);
#pragma unroll
        for (int k = 0; k < N; ++k) sum += v[k];
    }
    const float mean = block_sum(sum, scratch) / cols;
    float squares = 0.f;
    for (int p = threadIdx.x; p < packs; p += kRowThreads) {
        load_pack<N>(xr + p * N, v);
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float d = v[k] - mean;
            squares += d * d;
        }
    }
    const float inv_std = rsqrtf(block_sum(squares, scratch) / cols + eps);
    for (int p = threadIdx.x; p < packs; p += kRowThreads) {
        load_pack<N>(xr + p * N, v);
#pragma unroll
        for (int k = 0; k < N; ++k) {
            v[k] = affine_modulate((v[k] - mean) * inv_std, p * N + k, entry, ln_weight,
                                   ln_bias, shift, scale);
        }
        store_pack<N>(yr + p * N, v);
    }
}

// 1 / RMS of a row, the squares summed in the packed order: rms_norm and rms_norm_rope share
// it, and so agree bit for bit (both take packs of 8, or of 2 for rows of an even length that
// is not a multiple of 8: rope needs whole pairs).
template <int N, typename T>
__device__ __forceinline__ float row_inv_rms(const T *xr, int cols, float eps, float *scratch) {
    float squares = 0.f;
    float v[N];
    for (int p = threadIdx.x; p < cols / N; p += kRowThreads) {
        load_pack<N>(xr + p * N, v);
#pragma unroll
        for (int k = 0; k < N; ++k) squares += v[k] * v[k];
    }
    return rsqrtf(block_sum(squares, scratch) / cols + eps);
}

// One RMS-normed value as Wan rounds it: normalised in float32, cast to T, times the weight
// (the product is rounded to T where it is stored).
template <typename T>
__device__ __forceinline__ float rms_normed(float x, float inv_rms, float weight) {
    return to_float(from_float<T>(x * inv_rms)) * weight;
}

// y = round_to_T(x · rsqrt(mean(x²) + eps)) · weight: Wan's q/k RMSNorm, which normalises in
// float32, casts back to the activation type, then multiplies by the weight.
template <int N, typename T>
__device__ __forceinline__ void rms_norm(const T *x, const float *weight, T *y, int cols, float eps) {
    __shared__ float scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    const T *xr = x + row * cols;
    T *yr = y + row * cols;
    const float inv_rms = row_inv_rms<N>(xr, cols, eps, scratch);
    float v[N];
    for (int p = threadIdx.x; p < cols / N; p += kRowThreads) {
        load_pack<N>(xr + p * N, v);
#pragma unroll
        for (int k = 0; k < N; ++k) v[k] = rms_normed<T>(v[k], inv_rms, weight[p * N + k]);
        store_pack<N>(yr + p * N, v);
    }
}

// out = x + y · gate (gate optional: plain residual add), x and out float32. The product and
// the sum are rounded separately (no FMA), here and in residual_norm: nvcc contracts them
// differently in different kernels otherwise, and the two must agree bit for bit.
template <typename T>
__device__ __forceinline__ void gated_residual(const float *x, const T *y, const float *gate,
                                               float *out, int64_t n, int cols,
                                               int rows_per_entry) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        float v = to_float(y[i]);
        if (gate != nullptr) {
            const int64_t row = i / cols;
            v = __fmul_rn(v, gate[(row / rows_per_entry) * cols + i % cols]);
        }
        out[i] = __fadd_rn(x[i], v);
    }
}

}  // namespace

#define STILLMOTION_LN_MODULATE(NAME, In, Out)                                                  \
    extern "C" __global__ void __launch_bounds__(kRowThreads)                                   \
        NAME(const In *x, const float *ln_weight, const float *ln_bias, const float *shift,     \
             const float *scale, Out *y, int cols, int rows_per_entry, float eps) {             \
        if (cols % kPack == 0) {                                                                \
            layer_norm_modulate<kPack, In, Out>(x, ln_weight, ln_bias, shift, scale, y, cols,   \
                                                rows_per_entry, eps);                           \
        } else {                                                                                \
            layer_norm_modulate<1, In, Out>(x, ln_weight, ln_bias, shift, scale, y, cols,       \
                                            rows_per_entry, eps);                               \
        }                                                                                       \
    }
STILLMOTION_LN_MODULATE(stillmotion_layer_norm_modulate_f32_bf16, float, __nv_bfloat16)
STILLMOTION_LN_MODULATE(stillmotion_layer_norm_modulate_f32_f16, float, __half)
STILLMOTION_LN_MODULATE(stillmotion_layer_norm_modulate_f32_f32, float, float)

#define STILLMOTION_RMS_NORM(NAME, T)                                                           \
    extern "C" __global__ void __launch_bounds__(kRowThreads)                                   \
        NAME(const T *x, const float *weight, T *y, int cols, float eps) {                          \
        if (cols % kPack == 0) {                                                                \
            rms_norm<kPack, T>(x, weight, y, cols, eps);                                        \
        } else if (cols % 2 == 0) {                                                             \
            rms_norm<2, T>(x, weight, y, cols, eps);                                            \
        } else {                                                                                \
            rms_norm<1, T>(x, weight, y, cols, eps);                                            \
        }                                                                                       \
    }
STILLMOTION_RMS_NORM(stillmotion_rms_norm_bf16, __nv_bfloat16)
STILLMOTION_RMS_NORM(stillmotion_rms_norm_f16, __half)
STILLMOTION_RMS_NORM(stillmotion_rms_norm_f32, float)

#define STILLMOTION_GATED_RESIDUAL(NAME, T)                                                     \
    extern "C" __global__ void NAME(const float *x, const T *y, const float *gate, float *out,  \
                                    int64_t n, int cols, int rows_per_entry) {                  \
        gated_residual<T>(x, y, gate, out, n, cols, rows_per_entry);                            \
    }
STILLMOTION_GATED_RESIDUAL(stillmotion_gated_residual_bf16, __nv_bfloat16)
STILLMOTION_GATED_RESIDUAL(stillmotion_gated_residual_f16, __half)
STILLMOTION_GATED_RESIDUAL(stillmotion_gated_residual_f32, float)

namespace {

// rope(rms_norm(x)) in one pass, each value rounded where the two kernels round it: Wan's q/k
// RMSNorm over a token's whole row (every head), then its RoPE. x [rows, cols] with rows =
// tokens of `seq` per sample, cols = heads · 2·half_dim. It shares rms_norm's row_inv_rms and
// rms_normed, and rope's rotation, so the result is the two kernels' bit for bit.
template <int N, typename T>
__device__ __forceinline__ void rms_norm_rope(const T *x, const float *weight,
                                              const float *cos_table, const float *sin_table,
                                              T *y, int cols, int seq, int half_dim, float eps) {
    static_assert(N % 2 == 0, "a pack holds whole (re, im) pairs");
    __shared__ float scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    const T *xr = x + row * cols;
    T *yr = y + row * cols;
    const float inv_rms = row_inv_rms<N>(xr, cols, eps, scratch);
    const int64_t table = (row % seq) * half_dim;
    float v[N];
    for (int p = threadIdx.x; p < cols / N; p += kRowThreads) {
        load_pack<N>(xr + p * N, v);
#pragma unroll
        for (int k = 0; k < N; k += 2) {
            const int c = p * N + k;
            const float re = to_float(from_float<T>(rms_normed<T>(v[k], inv_rms, weight[c])));
            const float im =
                to_float(from_float<T>(rms_normed<T>(v[k + 1], inv_rms, weight[c + 1])));
            const int j = (c / 2) % half_dim;
            const float cs = cos_table[table + j];
            const float sn = sin_table[table + j];
            v[k] = rotate_re(re, im, cs, sn);
            v[k + 1] = rotate_im(re, im, cs, sn);
        }
        store_pack<N>(yr + p * N, v);
    }
}

// The residual add and the next norm in one pass: x_out = x + y · gate (as gated_residual), then
// h = layer_norm_modulate(x_out) (as that kernel), the row held in registers between them
// (kPerThread columns a thread: cols ≤ 256 · kPerThread). The sums run in layer_norm_modulate's
// order, so both outputs are the two kernels' bit for bit.
template <int N, typename T, typename Out, int kPerThread>
__device__ __forceinline__ void residual_norm(const float *x, const T *y, const float *gate,
                                              const float *ln_weight, const float *ln_bias,
                                              const float *shift, const float *scale,
                                              float *x_out, Out *h, int cols,
                                              int rows_per_entry, float eps) {
    constexpr int kPacks = kPerThread / N;
    __shared__ float scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    const int64_t entry = (row / rows_per_entry) * cols;
    const float *xr = x + row * cols;
    const T *yr = y + row * cols;
    float *xo = x_out + row * cols;
    Out *hr = h + row * cols;
    const int packs = cols / N;
    float v[kPacks][N];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
        const int p = threadIdx.x + i * kRowThreads;
        if (p < packs) {
            float added[N];
            load_pack<N>(yr + p * N, added);
            load_pack<N>(xr + p * N, v[i]);
#pragma unroll
            for (int k = 0; k < N; ++k) {
                if (gate != nullptr) {
                    added[k] = __fmul_rn(added[k], gate[entry + p * N + k]);
                }
                v[i][k] = __fadd_rn(v[i][k], added[k]);
            }
            store_pack<N>(xo + p * N, v[i]);
#pragma unroll
            for (int k = 0; k < N; ++k) sum += v[i][k];
        }
    }
    const float mean = block_sum(sum, scratch) / cols;
    float squares = 0.f;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
        const int p = threadIdx.x + i * kRowThreads;
        if (p < packs) {
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float d = v[i][k] - mean;
                squares += d * d;
            }
        }
    }
    const float inv_std = rsqrtf(block_sum(squares, scratch) / cols + eps);
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
        const int p = threadIdx.x + i * kRowThreads;
        if (p < packs) {
            float out[N];
#pragma unroll
            for (int k = 0; k < N; ++k) {
                out[k] = affine_modulate((v[i][k] - mean) * inv_std, p * N + k, entry, ln_weight,
                                         ln_bias, shift, scale);
            }
            store_pack<N>(hr + p * N, out);
        }
    }
}

}  // namespace

#define STILLMOTION_RMS_NORM_ROPE(NAME, T)                                                      \
    extern "C" __global__ void __launch_bounds__(kRowThreads)                                   \
        NAME(const T *x, const float *weight, const float *cos_table, const float *sin_table,   \
             T *y, int cols, int seq, int half_dim, float eps) {                                 \
        if (cols % kPack == 0) {                                                                \
            rms_norm_rope<kPack, T>(x, weight, cos_table, sin_table, y, cols, seq, half_dim, eps); \
        } else {                                                                                \
            rms_norm_rope<2, T>(x, weight, cos_table, sin_table, y, cols, seq, half_dim, eps);  \
        }                                                                                       \
    }
STILLMOTION_RMS_NORM_ROPE(stillmotion_rms_norm_rope_bf16, __nv_bfloat16)
STILLMOTION_RMS_NORM_ROPE(stillmotion_rms_norm_rope_f16, __half)
STILLMOTION_RMS_NORM_ROPE(stillmotion_rms_norm_rope_f32, float)

// Columns a thread holds in the fused residual + norm: up to 256 · 24 = 6144 (the A14B's 5120,
// the 5B's 3072); wider rows take the two kernels.
#define STILLMOTION_RESIDUAL_NORM(NAME, T, Out)                                                 \
    extern "C" __global__ void __launch_bounds__(kRowThreads)                                   \
        NAME(const float *x, const T *y, const float *gate, const float *ln_weight,             \
             const float *ln_bias, const float *shift, const float *scale, float *x_out,        \
             Out *h, int cols, int rows_per_entry, float eps) {                                  \
        if (cols % kPack == 0) {                                                                \
            residual_norm<kPack, T, Out, 24>(x, y, gate, ln_weight, ln_bias, shift, scale, x_out, \
                                             h, cols, rows_per_entry, eps);                      \
        } else {                                                                                \
            residual_norm<1, T, Out, 24>(x, y, gate, ln_weight, ln_bias, shift, scale, x_out, h, \
                                         cols, rows_per_entry, eps);                             \
        }                                                                                       \
    }
STILLMOTION_RESIDUAL_NORM(stillmotion_residual_norm_bf16_bf16, __nv_bfloat16, __nv_bfloat16)
STILLMOTION_RESIDUAL_NORM(stillmotion_residual_norm_f16_f16, __half, __half)
STILLMOTION_RESIDUAL_NORM(stillmotion_residual_norm_f32_f32, float, float)

namespace {

// 3-axis RoPE on x [B, S, H, D]: each (even, odd) pair is a complex number rotated by the
// token's angle, cos/sin tables [S, D/2] float32. The result is rounded to T, as the official
// code casts the rotated float64 values back to the activation type.
template <typename T>
__device__ __forceinline__ void rope(const T *x, const float *cos_table, const float *sin_table,
                                     T *y, int64_t pairs, int seq, int heads, int half_dim) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
         p += stride) {
        const int j = static_cast<int>(p % half_dim);
        const int64_t token = (p / half_dim / heads) % seq;
        const float c = cos_table[token * half_dim + j];
        const float s = sin_table[token * half_dim + j];
        const float re = to_float(x[2 * p]);
        const float im = to_float(x[2 * p + 1]);
        y[2 * p] = from_float<T>(rotate_re(re, im, c, s));
        y[2 * p + 1] = from_float<T>(rotate_im(re, im, c, s));
    }
}

}  // namespace

#define STILLMOTION_ROPE(NAME, T)                                                               \
    extern "C" __global__ void NAME(const T *x, const float *cos_table, const float *sin_table, \
                                    T *y, int64_t pairs, int seq, int heads, int half_dim) {    \
        rope<T>(x, cos_table, sin_table, y, pairs, seq, heads, half_dim);                       \
    }
STILLMOTION_ROPE(stillmotion_rope_bf16, __nv_bfloat16)
STILLMOTION_ROPE(stillmotion_rope_f16, __half)
STILLMOTION_ROPE(stillmotion_rope_f32, float)

// float8 e4m3 weights (ComfyUI's fp8_scaled files) to the compute dtype, times the per-tensor
// scale: value = float(w) * scale, rounded once. candle 0.11's own fp8 casts on CUDA ask for
// kernels under names its PTX does not have.
#define FP8_DEQUANTIZE(NAME, T)                                                              \
    extern "C" __global__ void NAME(const uint8_t *w, T *out, float scale, long long n) {    \
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;           \
             i += (long long)gridDim.x * blockDim.x) {                                        \
            __nv_fp8_e4m3 v;                                                                  \
            v.__x = w[i];                                                                     \
            out[i] = from_float<T>(static_cast<float>(v) * scale);                            \
        }                                                                                     \
    }

FP8_DEQUANTIZE(stillmotion_fp8_dequantize_f32, float)
FP8_DEQUANTIZE(stillmotion_fp8_dequantize_bf16, __nv_bfloat16)
FP8_DEQUANTIZE(stillmotion_fp8_dequantize_f16, __half)

namespace {

// The Wan VAE's channel-wise RMS norm of frames (t, c, h·w): y = x / max(‖x‖₂, 1e-12) · scale · γ
// over the c channels of each pixel, then SiLU when asked. One thread per pixel: neighbouring
// threads read neighbouring pixels of a channel plane, so every read is coalesced; float32
// throughout, one rounding at the store.
template <typename T>
__device__ __forceinline__ void channel_norm(const T *x, const float *gamma, T *y, int64_t pixels,
                                             int channels, int64_t plane, float scale, int silu) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels;
         p += stride) {
        const int64_t offset = (p / plane) * channels * plane + p % plane;
        const T *xp = x + offset;
        T *yp = y + offset;
        float squares = 0.f;
        for (int c = 0; c < channels; ++c) {
            const float v = to_float(xp[c * plane]);
            squares += v * v;
        }
        const float factor = scale / fmaxf(sqrtf(squares), 1e-12f);
        for (int c = 0; c < channels; ++c) {
            float v = to_float(xp[c * plane]) * factor * gamma[c];
            if (silu) {
                v = v / (1.f + expf(-v));
            }
            yp[c * plane] = from_float<T>(v);
        }
    }
}

constexpr int kTile = 32;
constexpr int kTileRows = 8;

// out[b][j][i] = in[b][i][j] (+ bias[j]): (batch, rows, cols) to (batch, cols, rows) through a
// 32×32 shared-memory tile, so reads and writes are both coalesced (a strided copy is not).
// The convolutions' channels-last round trip: frames (t, c, h·w) to (t, h·w, c) before cuDNN,
// and its output back with the bias added in the same pass.
template <typename T>
__device__ __forceinline__ void transpose(const T *in, T *out, const T *bias, int rows, int cols) {
    __shared__ float tile[kTile][kTile + 1];
    const int64_t matrix = static_cast<int64_t>(rows) * cols;
    in += blockIdx.z * matrix;
    out += blockIdx.z * matrix;
    const int row_tiles = (rows + kTile - 1) / kTile;
    const int c0 = blockIdx.x * kTile;
    for (int tile_row = blockIdx.y; tile_row < row_tiles; tile_row += gridDim.y) {
        const int r0 = tile_row * kTile;
        __syncthreads();  // the previous tile has been written out
        for (int k = threadIdx.y; k < kTile; k += kTileRows) {
            const int r = r0 + k, c = c0 + threadIdx.x;
            if (r < rows && c < cols) {
                tile[k][threadIdx.x] = to_float(in[static_cast<int64_t>(r) * cols + c]);
            }
        }
        __syncthreads();
        for (int k = threadIdx.y; k < kTile; k += kTileRows) {
            const int c = c0 + k, r = r0 + threadIdx.x;
            if (r < rows && c < cols) {
                float v = tile[threadIdx.x][k];
                if (bias != nullptr) {
                    v += to_float(bias[c]);
                }
                out[static_cast<int64_t>(c) * rows + r] = from_float<T>(v);
            }
        }
    }
}

}  // namespace

#define STILLMOTION_CHANNEL_NORM(NAME, T)                                                       \
    extern "C" __global__ void NAME(const T *x, const float *gamma, T *y, int64_t pixels,       \
                                    int channels, int64_t plane, float scale, int silu) {       \
        channel_norm<T>(x, gamma, y, pixels, channels, plane, scale, silu);                     \
    }
STILLMOTION_CHANNEL_NORM(stillmotion_channel_norm_bf16, __nv_bfloat16)
STILLMOTION_CHANNEL_NORM(stillmotion_channel_norm_f16, __half)
STILLMOTION_CHANNEL_NORM(stillmotion_channel_norm_f32, float)

#define STILLMOTION_TRANSPOSE(NAME, T)                                                          \
    extern "C" __global__ void __launch_bounds__(kTile * kTileRows)                             \
        NAME(const T *in, T *out, const T *bias, int rows, int cols) {                          \
        transpose<T>(in, out, bias, rows, cols);                                                \
    }
STILLMOTION_TRANSPOSE(stillmotion_transpose_bf16, __nv_bfloat16)
STILLMOTION_TRANSPOSE(stillmotion_transpose_f16, __half)
STILLMOTION_TRANSPOSE(stillmotion_transpose_f32, float)
