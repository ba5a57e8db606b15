// RIFE's backward warp: grid_sample(input, grid + flow, bilinear, border, align_corners=True).
//
// Bit-exact with the CPU reference (src/warp/reference.rs), which follows PyTorch's float32
// arithmetic step by step: every operation uses the round-to-nearest intrinsics so nvcc
// cannot contract a multiply and an add into an FMA or approximate a division. f16 and bf16
// tensors are read into float, warped with the same float arithmetic, and rounded once to
// nearest (ties to even) on store, as the reference's upcast-warp-downcast does.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ float linspace_minus1_to_1(int index, int steps) {
    const float step = __fdiv_rn(2.0f, static_cast<float>(steps - 1));
    if (index < steps / 2) {
        return __fadd_rn(-1.0f, __fmul_rn(step, static_cast<float>(index)));
    }
    return __fsub_rn(1.0f, __fmul_rn(step, static_cast<float>(steps - index - 1)));
}

__device__ __forceinline__ float source_coordinate(int index, float flow, int size) {
    const float half_extent = __fdiv_rn(__fsub_rn(static_cast<float>(size), 1.0f), 2.0f);
    const float normalised =
        __fadd_rn(linspace_minus1_to_1(index, size), __fdiv_rn(flow, half_extent));
    const float unnormalised = __fmul_rn(__fadd_rn(normalised, 1.0f), half_extent);
    return fminf(fmaxf(unnormalised, 0.0f), static_cast<float>(size - 1));
}

__device__ __forceinline__ float load(const float *p) { return *p; }
__device__ __forceinline__ float load(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16 *p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store(float *p, float v) { *p = v; }
__device__ __forceinline__ void store(__half *p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

// One thread per output pixel of one batch item; it loops over channels.
template <typename T>
__device__ __forceinline__ void backward_warp(const T *input, const T *flow, T *out, int batch,
                                              int channels, int height, int width) {
    const int64_t plane = static_cast<int64_t>(height) * width;
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index >= plane * batch) {
        return;
    }
    const int b = static_cast<int>(index / plane);
    const int64_t p = index % plane;
    const int y = static_cast<int>(p / width);
    const int x = static_cast<int>(p % width);
    const T *flow_b = flow + static_cast<int64_t>(b) * 2 * plane;
    const float ix = source_coordinate(x, load(flow_b + p), width);
    const float iy = source_coordinate(y, load(flow_b + plane + p), height);
    const float x_west = floorf(ix);
    const float y_north = floorf(iy);
    const float east_delta = __fsub_rn(ix, x_west);
    const float south_delta = __fsub_rn(iy, y_north);
    const float west_delta = __fsub_rn(1.0f, east_delta);
    const float north_delta = __fsub_rn(1.0f, south_delta);
    const float nw = __fmul_rn(north_delta, west_delta);
    const float ne = __fmul_rn(north_delta, east_delta);
    const float sw = __fmul_rn(south_delta, west_delta);
    const float se = __fmul_rn(south_delta, east_delta);
    const int xw = static_cast<int>(x_west);
    const int yn = static_cast<int>(y_north);
    const bool has_east = xw + 1 < width;
    const bool has_south = yn + 1 < height;
    const T *image = input + static_cast<int64_t>(b) * channels * plane;
    T *result = out + static_cast<int64_t>(b) * channels * plane;
    const int64_t north = static_cast<int64_t>(yn) * width + xw;
    for (int c = 0; c < channels; ++c) {
        const T *src = image + c * plane;
        const float v_nw = load(src + north);
        const float v_ne = has_east ? load(src + north + 1) : 0.0f;
        const float v_sw = has_south ? load(src + north + width) : 0.0f;
        const float v_se = has_east && has_south ? load(src + north + width + 1) : 0.0f;
        float sum = __fmul_rn(v_nw, nw);
        sum = __fadd_rn(sum, __fmul_rn(v_ne, ne));
        sum = __fadd_rn(sum, __fmul_rn(v_sw, sw));
        sum = __fadd_rn(sum, __fmul_rn(v_se, se));
        store(result + c * plane + p, sum);
    }
}

}  // namespace

extern "C" __global__ void stillmotion_backward_warp_f32(const float *input, const float *flow,
                                                          float *out, int batch, int channels,
                                                          int height, int width) {
    backward_warp(input, flow, out, batch, channels, height, width);
}

extern "C" __global__ void stillmotion_backward_warp_f16(const __half *input, const __half *flow,
                                                          __half *out, int batch, int channels,
                                                          int height, int width) {
    backward_warp(input, flow, out, batch, channels, height, width);
}

extern "C" __global__ void stillmotion_backward_warp_bf16(const __nv_bfloat16 *input,
                                                           const __nv_bfloat16 *flow,
                                                           __nv_bfloat16 *out, int batch,
                                                           int channels, int height, int width) {
    backward_warp(input, flow, out, batch, channels, height, width);
}
