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
template <typename In, typename Out>
__device__ __forceinline__ void layer_norm_modulate(const In *x, const float *ln_weight,
                                                    const float *ln_bias, const float *shift,
                                                    const float *scale, Out *y, int cols,
                                                    int rows_per_entry, float eps) {
    __shared__ float scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    const In *xr = x + row * cols;
    Out *yr = y + row * cols;
    const int64_t entry = (row / rows_per_entry) * cols;
    float sum = 0.f;
    for (int c = threadIdx.x; c < cols; c += kRowThreads) {
        sum += to_float(xr[c]);
    }
    const float mean = block_sum(sum, scratch) / cols;
    float squares = 0.f;
    for (int c = threadIdx.x; c < cols; c += kRowThreads) {
        const float d = to_float(xr[c]) - mean;
        squares += d * d;
    }
    const float inv_std = rsqrtf(block_sum(squares, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += kRowThreads) {
        yr[c] = from_float<Out>(
            affine_modulate((to_float(xr[c]) - mean) * inv_std, c, entry, ln_weight, ln_bias,
                            shift, scale));
    }
}

// 1 / RMS of a row, the squares summed in the row kernels' order (thread t: columns t, t + 256,
// …): rms_norm and rms_norm_rope share it, and so agree bit for bit.
template <typename T>
__device__ __forceinline__ float row_inv_rms(const T *xr, int cols, float eps, float *scratch) {
    float squares = 0.f;
    for (int c = threadIdx.x; c < cols; c += kRowThreads) {
        const float v = to_float(xr[c]);
        squares += v * v;
    }
    return rsqrtf(block_sum(squares, scratch) / cols + eps);
}

// One RMS-normed value as Wan rounds it: normalised in float32, cast to T, times the weight.
template <typename T>
__device__ __forceinline__ T rms_normed(T x, float inv_rms, float weight) {
    return from_float<T>(to_float(from_float<T>(to_float(x) * inv_rms)) * weight);
}

// y = round_to_T(x · rsqrt(mean(x²) + eps)) · weight: Wan's q/k RMSNorm, which normalises in
// float32, casts back to the activation type, then multiplies by the weight.
template <typename T>
__device__ __forceinline__ void rms_norm(const T *x, const float *weight, T *y, int cols, float eps) {
    __shared__ float scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    const T *xr = x + row * cols;
    T *yr = y + row * cols;
    const float inv_rms = row_inv_rms(xr, cols, eps, scratch);
    for (int c = threadIdx.x; c < cols; c += kRowThreads) {
        yr[c] = rms_normed(xr[c], inv_rms, weight[c]);
    }
}

// out = x + y · gate (gate optional: plain residual add), x and out float32.
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
            v *= gate[(row / rows_per_entry) * cols + i % cols];
        }
        out[i] = x[i] + v;
    }
}

}  // namespace

#define STILLMOTION_LN_MODULATE(NAME, In, Out)                                                  \
    extern "C" __global__ void __launch_bounds__(kRowThreads)                                   \
        NAME(const In *x, const float *ln_weight, const float *ln_bias, const float *shift,     \
             const float *scale, Out *y, int cols, int rows_per_entry, float eps) {             \
        layer_norm_modulate<In, Out>(x, ln_weight, ln_bias, shift, scale, y, cols,              \
                                     rows_per_entry, eps);                                      \
    }
STILLMOTION_LN_MODULATE(stillmotion_layer_norm_modulate_f32_bf16, float, __nv_bfloat16)
STILLMOTION_LN_MODULATE(stillmotion_layer_norm_modulate_f32_f16, float, __half)
STILLMOTION_LN_MODULATE(stillmotion_layer_norm_modulate_f32_f32, float, float)

#define STILLMOTION_RMS_NORM(NAME, T)                                                           \
    extern "C" __global__ void __launch_bounds__(kRowThreads)                                   \
        NAME(const T *x, const float *weight, T *y, int cols, float eps) {                          \
        rms_norm<T>(x, weight, y, cols, eps);                                                   \
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
template <typename T>
__device__ __forceinline__ void rms_norm_rope(const T *x, const float *weight,
                                              const float *cos_table, const float *sin_table,
                                              T *y, int cols, int seq, int half_dim, float eps) {
    __shared__ float scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    const T *xr = x + row * cols;
    T *yr = y + row * cols;
    const float inv_rms = row_inv_rms(xr, cols, eps, scratch);
    const int64_t table = (row % seq) * half_dim;
    for (int p = threadIdx.x; p < cols / 2; p += kRowThreads) {
        const int c = 2 * p;
        const float re = to_float(rms_normed(xr[c], inv_rms, weight[c]));
        const float im = to_float(rms_normed(xr[c + 1], inv_rms, weight[c + 1]));
        const int j = p % half_dim;
        const float cs = cos_table[table + j];
        const float sn = sin_table[table + j];
        yr[c] = from_float<T>(rotate_re(re, im, cs, sn));
        yr[c + 1] = from_float<T>(rotate_im(re, im, cs, sn));
    }
}

// The residual add and the next norm in one pass: x_out = x + y · gate (as gated_residual), then
// h = layer_norm_modulate(x_out) (as that kernel), the row held in registers between them
// (kPerThread columns a thread: cols ≤ 256 · kPerThread). The sums run in layer_norm_modulate's
// order, so both outputs are the two kernels' bit for bit.
template <typename T, typename Out, int kPerThread>
__device__ __forceinline__ void residual_norm(const float *x, const T *y, const float *gate,
                                              const float *ln_weight, const float *ln_bias,
                                              const float *shift, const float *scale,
                                              float *x_out, Out *h, int cols,
                                              int rows_per_entry, float eps) {
    __shared__ float scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    const int64_t entry = (row / rows_per_entry) * cols;
    const float *xr = x + row * cols;
    const T *yr = y + row * cols;
    float *xo = x_out + row * cols;
    Out *hr = h + row * cols;
    float v[kPerThread];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        const int c = threadIdx.x + i * kRowThreads;
        if (c < cols) {
            float added = to_float(yr[c]);
            if (gate != nullptr) {
                added *= gate[entry + c];
            }
            v[i] = xr[c] + added;
            xo[c] = v[i];
            sum += v[i];
        }
    }
    const float mean = block_sum(sum, scratch) / cols;
    float squares = 0.f;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        const int c = threadIdx.x + i * kRowThreads;
        if (c < cols) {
            const float d = v[i] - mean;
            squares += d * d;
        }
    }
    const float inv_std = rsqrtf(block_sum(squares, scratch) / cols + eps);
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        const int c = threadIdx.x + i * kRowThreads;
        if (c < cols) {
            hr[c] = from_float<Out>(affine_modulate((v[i] - mean) * inv_std, c, entry, ln_weight,
                                                    ln_bias, shift, scale));
        }
    }
}

}  // namespace

#define STILLMOTION_RMS_NORM_ROPE(NAME, T)                                                      \
    extern "C" __global__ void __launch_bounds__(kRowThreads)                                   \
        NAME(const T *x, const float *weight, const float *cos_table, const float *sin_table,   \
             T *y, int cols, int seq, int half_dim, float eps) {                                 \
        rms_norm_rope<T>(x, weight, cos_table, sin_table, y, cols, seq, half_dim, eps);         \
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
        residual_norm<T, Out, 24>(x, y, gate, ln_weight, ln_bias, shift, scale, x_out, h, cols, \
                                  rows_per_entry, eps);                                         \
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
