// RIFE's backward warp: grid_sample(input, grid + flow, bilinear, border, align_corners=True).
//
// Bit-exact with the CPU reference (src/warp/reference.rs), which follows PyTorch's float32
// arithmetic step by step: every operation uses the round-to-nearest intrinsics so nvcc
// cannot contract a multiply and an add into an FMA or approximate a division.

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

}  // namespace

// One thread per output pixel of one batch item; it loops over channels.
extern "C" __global__ void stillmotion_backward_warp_f32(const float *input, const float *flow,
                                                          float *out, int batch, int channels,
                                                          int height, int width) {
    const int64_t plane = static_cast<int64_t>(height) * width;
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index >= plane * batch) {
        return;
    }
    const int b = static_cast<int>(index / plane);
    const int64_t p = index % plane;
    const int y = static_cast<int>(p / width);
    const int x = static_cast<int>(p % width);
    const float *flow_b = flow + static_cast<int64_t>(b) * 2 * plane;
    const float ix = source_coordinate(x, flow_b[p], width);
    const float iy = source_coordinate(y, flow_b[plane + p], height);
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
    const float *image = input + static_cast<int64_t>(b) * channels * plane;
    float *result = out + static_cast<int64_t>(b) * channels * plane;
    for (int c = 0; c < channels; ++c) {
        const float *src = image + c * plane;
        const float v_nw = src[static_cast<int64_t>(yn) * width + xw];
        const float v_ne = has_east ? src[static_cast<int64_t>(yn) * width + xw + 1] : 0.0f;
        const float v_sw = has_south ? src[static_cast<int64_t>(yn + 1) * width + xw] : 0.0f;
        const float v_se =
            has_east && has_south ? src[static_cast<int64_t>(yn + 1) * width + xw + 1] : 0.0f;
        float sum = __fmul_rn(v_nw, nw);
        sum = __fadd_rn(sum, __fmul_rn(v_ne, ne));
        sum = __fadd_rn(sum, __fmul_rn(v_sw, sw));
        sum = __fadd_rn(sum, __fmul_rn(v_se, se));
        result[c * plane + p] = sum;
    }
}
