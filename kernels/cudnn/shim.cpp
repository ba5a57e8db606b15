// A C ABI over cuDNN's fused flash attention and its convolutions (the frontend's graph API),
// for Rust.
//
// Built by kernels/build.rs with the host C++ compiler: no nvcc, nothing links libcudnn or
// libcudart (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING), so a machine without cuDNN gets an error
// code at run time rather than a binary that cannot start. cuDNN picks (or compiles, through
// NVRTC) the kernel for the GPU at run time, so this file has no GPU architecture.
//
// Attention layout: q [B, Sq, H, D], k/v [B, Sk, H, D], o [B, Sq, H, D], contiguous; cuDNN's dims are
// (b, h, s, d) and the strides in elements are {S·H·D, D, H·D, 1}, so nothing is transposed.
//
// Convolutions are channels-last (NDHWC activations, KTRSC weights): the layout cuDNN's
// tensor-core kernels read without transposing; the Rust side permutes candle's NCDHW.
//
// Building a plan takes 60 ms (0.7–1 s the first time a kernel variant is compiled), so plans
// are cached per shape in the context. A context (and its cuDNN handle) must be used from one
// thread at a time; the Rust side holds it behind a mutex.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <array>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include <dlfcn.h>

#include <cudnn_frontend.h>

namespace fe = cudnn_frontend;

// The frontend resolves every cuDNN symbol through this handle (dynamic loading mode).
namespace cudnn_frontend {
void *cudnn_dlhandle = nullptr;
}

namespace {

enum Uid : int64_t { kQ = 1, kK = 2, kV = 3, kO = 4, kX = 11, kW = 12, kY = 13 };

using ShapeKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, float>;

// A convolution's shape, in the order the C ABI passes it:
// n, c, d, h, w (input), k, t, r, s (filter), pre-padding d/h/w, post-padding d/h/w, stride d/h/w.
constexpr size_t kConvShapeLen = 18;
using ConvShape = std::array<int64_t, kConvShapeLen>;
using ConvKey = std::pair<int, ConvShape>;

struct Context {
    cudnnHandle_t handle = nullptr;
    std::map<ShapeKey, std::shared_ptr<fe::graph::Graph>> plans;
    std::map<ConvKey, std::shared_ptr<fe::graph::Graph>> convs;
};

fe::DataType_t io_type(int dtype) {
    switch (dtype) {
        case 0:
            return fe::DataType_t::BFLOAT16;
        case 1:
            return fe::DataType_t::HALF;
        default:
            return fe::DataType_t::FLOAT;
    }
}

void write_error(char *error, size_t error_len, const std::string &message) {
    if (error == nullptr || error_len == 0) {
        return;
    }
    std::snprintf(error, error_len, "%s", message.c_str());
}

// `exact`: leave out tensor-core engines, so float32 stays float32 (no TF32 rounding).
bool finish_graph(Context &ctx, fe::graph::Graph &graph, std::string &problem,
                  bool exact = false) {
    auto check = [&](fe::error_t status, const char *what) {
        if (status.is_good()) {
            return true;
        }
        problem = std::string(what) + ": " + status.get_message();
        return false;
    };
    if (!check(graph.validate(), "validate") ||
        !check(graph.build_operation_graph(ctx.handle), "build_operation_graph") ||
        !check(graph.create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans")) {
        return false;
    }
    if (exact) {
        graph.deselect_numeric_notes({fe::NumericalNote_t::TENSOR_CORE});
    }
    return check(graph.check_support(ctx.handle), "check_support") &&
           check(graph.build_plans(ctx.handle), "build_plans");
}

std::shared_ptr<fe::graph::Graph> build_graph(Context &ctx, int dtype, int64_t b, int64_t h,
                                              int64_t sq, int64_t sk, int64_t d, float scale,
                                              std::string &problem) {
    auto graph = std::make_shared<fe::graph::Graph>();
    graph->set_io_data_type(io_type(dtype))
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto tensor = [&](const char *name, int64_t uid, int64_t s) {
        return graph->tensor(fe::graph::Tensor_attributes()
                                 .set_name(name)
                                 .set_uid(uid)
                                 .set_dim({b, h, s, d})
                                 .set_stride({s * h * d, d, h * d, 1}));
    };
    auto q = tensor("Q", kQ, sq);
    auto k = tensor("K", kK, sk);
    auto v = tensor("V", kV, sk);
    auto options = fe::graph::SDPA_attributes()
                       .set_name("stillmotion_attention")
                       .set_generate_stats(false)
                       .set_attn_scale(scale);
    auto outputs = graph->sdpa(q, k, v, options);
    outputs[0]
        ->set_output(true)
        .set_uid(kO)
        .set_dim({b, h, sq, d})
        .set_stride({sq * h * d, d, h * d, 1});

    if (!finish_graph(ctx, *graph, problem)) {
        return nullptr;
    }
    return graph;
}

// Output extent of one axis.
int64_t conv_out(int64_t in, int64_t pre, int64_t post, int64_t kernel, int64_t stride) {
    return (in + pre + post - kernel) / stride + 1;
}

std::shared_ptr<fe::graph::Graph> build_conv(Context &ctx, int dtype, const ConvShape &s,
                                             std::string &problem, bool exact) {
    const auto [n, c, d, h, w, k, t, r, q] = std::array<int64_t, 9>{s[0], s[1], s[2], s[3], s[4],
                                                                      s[5], s[6], s[7], s[8]};
    const int64_t od = conv_out(d, s[9], s[12], t, s[15]);
    const int64_t oh = conv_out(h, s[10], s[13], r, s[16]);
    const int64_t ow = conv_out(w, s[11], s[14], q, s[17]);
    if (od < 1 || oh < 1 || ow < 1) {
        problem = "the convolution has an empty output";
        return nullptr;
    }
    auto graph = std::make_shared<fe::graph::Graph>();
    graph->set_io_data_type(io_type(dtype))
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto x = graph->tensor(fe::graph::Tensor_attributes()
                               .set_name("X")
                               .set_uid(kX)
                               .set_dim({n, c, d, h, w})
                               .set_stride({d * h * w * c, 1, h * w * c, w * c, c}));
    auto filter = graph->tensor(fe::graph::Tensor_attributes()
                                    .set_name("W")
                                    .set_uid(kW)
                                    .set_dim({k, c, t, r, q})
                                    .set_stride({t * r * q * c, 1, r * q * c, q * c, c}));
    auto options = fe::graph::Conv_fprop_attributes()
                       .set_name("stillmotion_conv")
                       .set_pre_padding({s[9], s[10], s[11]})
                       .set_post_padding({s[12], s[13], s[14]})
                       .set_stride({s[15], s[16], s[17]})
                       .set_dilation({1, 1, 1});
    auto y = graph->conv_fprop(x, filter, options);
    y->set_output(true)
        .set_uid(kY)
        .set_dim({n, k, od, oh, ow})
        .set_stride({od * oh * ow * k, 1, oh * ow * k, ow * k, k});
    if (!finish_graph(ctx, *graph, problem, exact)) {
        return nullptr;
    }
    return graph;
}

// float32 convolutions run in true float32 (the references' CPU numbers; tensor cores would
// round to TF32, 1e-4 to 1e-2 off after a VAE), falling back to TF32 only where cuDNN has no
// float32 engine for the shape.
std::shared_ptr<fe::graph::Graph> build_conv(Context &ctx, int dtype, const ConvShape &s,
                                             std::string &problem) {
    if (dtype == 2) {
        auto exact = build_conv(ctx, dtype, s, problem, true);
        if (exact != nullptr) {
            return exact;
        }
    }
    return build_conv(ctx, dtype, s, problem, false);
}

// Finds the plan for `key` in `cache` or builds it with `build` (a graph, or null with the
// reason in its argument), then reports the workspace it needs: 0, or 3 with a sentence.
template <typename Key, typename Build>
int prepare_cached(std::map<Key, std::shared_ptr<fe::graph::Graph>> &cache, const Key &key,
                   Build build, const char *what, int64_t *workspace_bytes, char *error,
                   size_t error_len) {
    try {
        auto found = cache.find(key);
        std::shared_ptr<fe::graph::Graph> graph;
        if (found != cache.end()) {
            graph = found->second;
        } else {
            std::string problem;
            graph = build(problem);
            if (graph == nullptr) {
                write_error(error, error_len, problem);
                return 3;
            }
            cache.emplace(key, graph);
        }
        int64_t size = 0;
        fe::error_t status = graph->get_workspace_size(size);
        if (!status.is_good()) {
            write_error(error, error_len, "get_workspace_size: " + status.get_message());
            return 3;
        }
        *workspace_bytes = size;
    } catch (const std::exception &e) {
        write_error(error, error_len, std::string(what) + ": " + e.what());
        return 3;
    }
    return 0;
}

// Runs a built graph on `stream`: 0, or 4 with a sentence in `error`.
int execute_on(Context &ctx, fe::graph::Graph &graph, void *stream,
               std::unordered_map<int64_t, void *> &pack, void *workspace, const char *what,
               char *error, size_t error_len) {
    try {
        auto status = fe::detail::set_stream(ctx.handle, static_cast<cudaStream_t>(stream));
        if (status != CUDNN_STATUS_SUCCESS) {
            write_error(error, error_len,
                        "cudnnSetStream failed with status " + std::to_string(static_cast<int>(status)));
            return 4;
        }
        fe::error_t result = graph.execute(ctx.handle, pack, workspace);
        if (!result.is_good()) {
            write_error(error, error_len, "execute: " + result.get_message());
            return 4;
        }
    } catch (const std::exception &e) {
        write_error(error, error_len, std::string(what) + ": " + e.what());
        return 4;
    }
    return 0;
}

}  // namespace

extern "C" {

// Opens libcudnn at `library_path` (or by soname when null) and creates a handle.
// Returns 0 on success; otherwise writes a sentence into `error`.
int stillmotion_cudnn_open(const char *library_path, void **out_context, char *error,
                           size_t error_len) {
    *out_context = nullptr;
    // The frontend opens libcudart by itself; without a name it may pick a CUDA 12 copy.
    setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", "libcudart.so.13", 0);
    if (fe::cudnn_dlhandle == nullptr) {
        const char *name = library_path != nullptr ? library_path : "libcudnn.so.9";
        void *library = dlopen(name, RTLD_NOW | RTLD_LOCAL);
        if (library == nullptr) {
            const char *reason = dlerror();
            write_error(error, error_len,
                        std::string("cannot load ") + name + ": " + (reason ? reason : "unknown"));
            return 1;
        }
        fe::cudnn_dlhandle = library;
    }
    auto ctx = std::make_unique<Context>();
    try {
        auto status = fe::detail::create_handle(&ctx->handle);
        if (status != CUDNN_STATUS_SUCCESS) {
            write_error(error, error_len,
                        "cudnnCreate failed with status " + std::to_string(static_cast<int>(status)));
            return 2;
        }
    } catch (const std::exception &e) {
        write_error(error, error_len, std::string("cudnnCreate: ") + e.what());
        return 2;
    }
    *out_context = ctx.release();
    return 0;
}

// The cuDNN version the loaded library reports (e.g. 91900), or 0.
int64_t stillmotion_cudnn_version(void) {
    if (fe::cudnn_dlhandle == nullptr) {
        return 0;
    }
    try {
        return static_cast<int64_t>(fe::detail::get_backend_version());
    } catch (const std::exception &) {
        return 0;
    }
}

void stillmotion_cudnn_close(void *context) {
    auto *ctx = static_cast<Context *>(context);
    if (ctx == nullptr) {
        return;
    }
    if (ctx->handle != nullptr) {
        try {
            fe::detail::destroy_handle(ctx->handle);
        } catch (const std::exception &) {
        }
    }
    delete ctx;
}

// Builds (or finds) the plan for a shape and reports the workspace it needs, in bytes.
// dtype: 0 bfloat16, 1 float16.
int stillmotion_cudnn_sdpa_prepare(void *context, int dtype, int64_t b, int64_t h, int64_t sq,
                                   int64_t sk, int64_t d, float scale, int64_t *workspace_bytes,
                                   char *error, size_t error_len) {
    auto *ctx = static_cast<Context *>(context);
    ShapeKey key{dtype, b, h, sq, sk, d, scale};
    return prepare_cached(
        ctx->plans, key,
        [&](std::string &problem) {
            return build_graph(*ctx, dtype, b, h, sq, sk, d, scale, problem);
        },
        "building the attention plan", workspace_bytes, error, error_len);
}

// Runs attention on `stream` (a CUstream / cudaStream_t). The plan must have been prepared.
int stillmotion_cudnn_sdpa_run(void *context, void *stream, int dtype, int64_t b, int64_t h,
                               int64_t sq, int64_t sk, int64_t d, float scale, const void *q,
                               const void *k, const void *v, void *o, void *workspace,
                               char *error, size_t error_len) {
    auto *ctx = static_cast<Context *>(context);
    ShapeKey key{dtype, b, h, sq, sk, d, scale};
    auto found = ctx->plans.find(key);
    if (found == ctx->plans.end()) {
        write_error(error, error_len, "no plan prepared for this shape");
        return 4;
    }
    std::unordered_map<int64_t, void *> pack{{kQ, const_cast<void *>(q)},
                                             {kK, const_cast<void *>(k)},
                                             {kV, const_cast<void *>(v)},
                                             {kO, o}};
    return execute_on(*ctx, *found->second, stream, pack, workspace, "running attention", error,
                      error_len);
}

// Builds (or finds) the plan for a convolution and reports the workspace it needs, in bytes.
// dtype: 0 bfloat16, 1 float16, 2 float32; `shape` holds the 18 values of ConvShape.
int stillmotion_cudnn_conv_prepare(void *context, int dtype, const int64_t *shape,
                                   int64_t *workspace_bytes, char *error, size_t error_len) {
    auto *ctx = static_cast<Context *>(context);
    ConvKey key{dtype, {}};
    std::copy(shape, shape + kConvShapeLen, key.second.begin());
    return prepare_cached(
        ctx->convs, key,
        [&](std::string &problem) { return build_conv(*ctx, dtype, key.second, problem); },
        "building the convolution plan", workspace_bytes, error, error_len);
}

// Runs a prepared convolution on `stream`: x NDHWC, filter KTRSC, y NDHWC, all contiguous.
int stillmotion_cudnn_conv_run(void *context, void *stream, int dtype, const int64_t *shape,
                               const void *x, const void *filter, void *y, void *workspace,
                               char *error, size_t error_len) {
    auto *ctx = static_cast<Context *>(context);
    ConvKey key{dtype, {}};
    std::copy(shape, shape + kConvShapeLen, key.second.begin());
    auto found = ctx->convs.find(key);
    if (found == ctx->convs.end()) {
        write_error(error, error_len, "no plan prepared for this convolution");
        return 4;
    }
    std::unordered_map<int64_t, void *> pack{
        {kX, const_cast<void *>(x)}, {kW, const_cast<void *>(filter)}, {kY, y}};
    return execute_on(*ctx, *found->second, stream, pack, workspace, "running the convolution",
                      error, error_len);
}

}  // extern "C"
