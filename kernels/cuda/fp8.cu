// The activation side of the FP8 GEMM (src/gpu/fp8_linear.rs): x quantized to float8 e4m3 with
// one per-tensor scale. src/fp8.rs defines the arithmetic, after ComfyUI's TensorCoreFP8Layout:
//   scale = input_scale (from the file) or amax(|x|) / 448 (1 when 0 or not finite),
//   q = e4m3(T(x · T(1 / scale))), T the input dtype, e4m3 rounded to nearest even, saturating.
// Two launches: the block maxima of |x| meet in one atomicMax (no host round trip), then the
// quantization reads that maximum. Both read 8 values per step (16-byte loads for 16-bit x).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// v rounded to T (to nearest even), back as float: torch multiplies x · (1 / scale) in x's dtype.
template <typename T> __device__ __forceinline__ float round_to(float v);
template <> __device__ __forceinline__ float round_to<float>(float v) { return v; }
template <> __device__ __forceinline__ float round_to<__nv_bfloat16>(float v) {
    return __bfloat162float(__float2bfloat16_rn(v));
}
template <> __device__ __forceinline__ float round_to<__half>(float v) {
    return __half2float(__float2half_rn(v));
}

constexpr int kThreads = 256;
constexpr int kPack = 8;

template <typename T> struct alignas(16) Pack {
    T v[kPack];
};

// The largest |x| over the grid into *amax_bits (zeroed by the caller). |x| ≥ 0, so the
// float's bits order like unsigned ints; fmaxf skips NaN, as the CPU reference does.
template <typename T, bool kVector>
__device__ __forceinline__ void amax(const T *x, long long n, unsigned int *amax_bits) {
    __shared__ float partial[kThreads / 32];
    float m = 0.f;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (kVector) {
        const Pack<T> *packs = reinterpret_cast<const Pack<T> *>(x);
        for (long long p = first; p < n / kPack; p += stride) {
            const Pack<T> pack = packs[p];
#pragma unroll
            for (int j = 0; j < kPack; ++j) m = fmaxf(m, fabsf(to_float(pack.v[j])));
        }
    } else {
        for (long long i = first; i < n; i += stride) m = fmaxf(m, fabsf(to_float(x[i])));
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, offset));
    }
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < kThreads / 32; ++w) m = fmaxf(m, partial[w]);
        atomicMax(amax_bits, __float_as_uint(m));
    }
}

__device__ __forceinline__ uint8_t to_e4m3(float v) {
    return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

// q = e4m3(T(x · T(1 / scale))); scales[0] = the activation scale, scales[4] = weight_scale
// (the GEMM's per-tensor scale pointers, 16 bytes apart so each is as aligned as cuBLASLt's
// other operands). input_scale ≤ 0: from the amax.
template <typename T, bool kVector>
__device__ __forceinline__ void quantize(const T *x, uint8_t *q, float *scales,
                                         const unsigned int *amax_bits, float input_scale,
                                         float weight_scale, long long n) {
    float scale = input_scale;
    if (!(scale > 0.f)) {
        scale = __uint_as_float(*amax_bits) / 448.f;
        if (!(scale > 0.f && isfinite(scale))) scale = 1.f;
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        scales[0] = scale;
        scales[4] = weight_scale;
    }
    const float inverse = round_to<T>(1.f / scale);
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (kVector) {
        const Pack<T> *packs = reinterpret_cast<const Pack<T> *>(x);
        uint2 *out = reinterpret_cast<uint2 *>(q);
        for (long long p = first; p < n / kPack; p += stride) {
            const Pack<T> pack = packs[p];
            uint8_t bytes[kPack];
#pragma unroll
            for (int j = 0; j < kPack; ++j) {
                bytes[j] = to_e4m3(round_to<T>(to_float(pack.v[j]) * inverse));
            }
            uint2 word;
            word.x = bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (static_cast<uint32_t>(bytes[3]) << 24);
            word.y = bytes[4] | (bytes[5] << 8) | (bytes[6] << 16) | (static_cast<uint32_t>(bytes[7]) << 24);
            out[p] = word;
        }
    } else {
        for (long long i = first; i < n; i += stride) {
            q[i] = to_e4m3(round_to<T>(to_float(x[i]) * inverse));
        }
    }
}

}  // namespace

#define STILLMOTION_FP8_QUANTIZE(SUFFIX, T)                                                       \
    extern "C" __global__ void __launch_bounds__(kThreads)                                        \
        stillmotion_fp8_amax_##SUFFIX(const T *x, long long n, unsigned int *amax_bits) {         \
        amax<T, false>(x, n, amax_bits);                                                          \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(kThreads)                                        \
        stillmotion_fp8_amax_vec_##SUFFIX(const T *x, long long n, unsigned int *amax_bits) {     \
        amax<T, true>(x, n, amax_bits);                                                           \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(kThreads) stillmotion_fp8_quantize_##SUFFIX(     \
        const T *x, uint8_t *q, float *scales, const unsigned int *amax_bits, float input_scale, \
        float weight_scale, long long n) {                                                        \
        quantize<T, false>(x, q, scales, amax_bits, input_scale, weight_scale, n);                \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(kThreads)                                        \
        stillmotion_fp8_quantize_vec_##SUFFIX(const T *x, uint8_t *q, float *scales,              \
                                              const unsigned int *amax_bits, float input_scale,   \
                                              float weight_scale, long long n) {                  \
        quantize<T, true>(x, q, scales, amax_bits, input_scale, weight_scale, n);                 \
    }

STILLMOTION_FP8_QUANTIZE(bf16, __nv_bfloat16)
STILLMOTION_FP8_QUANTIZE(f16, __half)
STILLMOTION_FP8_QUANTIZE(f32, float)

// Stochastic rounding of float32 to e4m3fn codes: the requantization of a LoRA-merged float8
// layer. src/fp8_stochastic.rs defines it (stochastic_e4m3_code, element_random); this kernel
// gives the same codes for the same float32 inputs. Every step is exact (a power-of-two scale, a
// floor, a fraction below 2^23, a 24-bit integer to float), written with explicit rounding
// intrinsics so that no contraction or fast-math rewrite can change a bit.
namespace {

// SplitMix64's output number index + 1 from seed.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long seed,
                                                         unsigned long long index) {
    unsigned long long z = seed + (index + 1ull) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ uint8_t stochastic_e4m3(float v, unsigned int random) {
    const uint8_t sign = (__float_as_uint(v) >> 31) ? 0x80 : 0x00;
    const unsigned int abs_bits = __float_as_uint(v) & 0x7fffffffu;
    const float a = __uint_as_float(abs_bits);
    if (abs_bits > 0x7f800000u) return sign | 0x7f;  // NaN
    if (a >= 448.f) return sign | 0x7e;
    float inv_step;
    unsigned int base;
    if (a < 0.015625f) {  // below 2^-6: the subnormal step 2^-9
        inv_step = 512.f;
        base = 0;
    } else {
        const int e = static_cast<int>((abs_bits >> 23) & 0xff) - 127;
        inv_step = __uint_as_float(static_cast<unsigned int>(3 - e + 127) << 23);
        base = static_cast<unsigned int>((e + 6) * 8);
    }
    const float steps = __fmul_rn(a, inv_step);
    const float n = floorf(steps);
    const float fraction = __fsub_rn(steps, n);
    const float u = __fmul_rn(__uint2float_rn(random), 1.f / 16777216.f);
    const unsigned int code = base + static_cast<unsigned int>(n) + (u < fraction ? 1u : 0u);
    return static_cast<uint8_t>(sign | code);
}

}  // namespace

// codes[i] = e4m3 code of values[i] rounded with element_random(seed, i) (the top 24 bits of
// SplitMix64's number i + 1). Grid-stride over n.
extern "C" __global__ void __launch_bounds__(kThreads)
    stillmotion_fp8_stochastic_round(const float *values, uint8_t *codes, long long n,
                                     unsigned long long seed) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const unsigned int random =
            static_cast<unsigned int>(splitmix64(seed, static_cast<unsigned long long>(i)) >> 40);
        codes[i] = stochastic_e4m3(values[i], random);
    }
}
