// Attention forward and backward through cuDNN's fused flash attention (SDPA), and the VAE's convolutions, built
// with the header-only cuDNN frontend (fetched by scripts/fetch-cudnn-frontend.sh; llm.c's cudnn_att.cpp is the
// pattern, research/gpu-components.md §1.1-1.3). The only translation unit that includes the frontend.
//  - Loading: the frontend's dynamic-loading mode dlopens libcudnn.so.9 on first use, so binaries start (and run
//    the own kernels) on machines without cuDNN.
//  - Layout: q, k, v, out, dout and the gradients are [B, T, row] buffers read in place as cuDNN's
//    {B, H, T, D} with strides {T*row, D, row, 1} (fused QKV buffers need no copy); lse [B, H, Tq] f32 is cuDNN's
//    Stats {B, H, Tq, 1}, the natural log-sum-exp of the scaled (+bias) scores, the convention of our kernels.
//  - The backward uses the deterministic algorithm (reruns are bit-identical, tests/gpu) unless the Exec turns it
//    off: the other one sums dQ with atomics instead of writing dP to the workspace and multiplying it out in a
//    pass of its own, 1.75x faster at 1024² (docs/cuda.md).
//  - Graphs cost milliseconds (more with runtime-compiled engines) to build: cached per shape, strides, dtype
//    and scale, failures too. When a graph's workspace exceeds the scratch, it runs over chunks of batch and
//    heads (the same strides, offset pointers): every (batch, head) pair is independent.
#include "ops/cuda/attention_cudnn.h"

#include <cstdlib>
#include <cstring>

#include "core/check.h"

#if SD3_HAVE_CUDNN
#include <dlfcn.h>

#include <cudnn_frontend.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

// The dynamic-loading frontend reads the library handle from here (it is ours to define and open).
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}
#endif

namespace sd3::cuda::detail {

namespace {

constexpr size_t kMiB = size_t{1} << 20;

#if SD3_HAVE_CUDNN
// cuDNN's SDPA: head dims that are multiples of 8 up to 128 (the backward's limit on Ampere; research §1.3).
bool cudnn_shape_ok(const AttentionShape& s, DType dt) {
    return (dt == DType::BF16 || dt == DType::F16) && s.head_dim % 8 == 0 && s.head_dim <= 128 && s.q_len > 0 &&
           s.kv_len > 0;
}

int64_t ceil64(int64_t x) { return (x + 63) / 64 * 64; }
#endif

}  // namespace

size_t cudnn_workspace_cap() {
    static const size_t cap = [] {
        const char* env = std::getenv("SD3_CUDNN_WORKSPACE_MB");
        const long mb = env != nullptr ? std::strtol(env, nullptr, 10) : 0;
        return mb > 0 ? static_cast<size_t>(mb) * kMiB : 512 * kMiB;
    }();
    return cap;
}

size_t cudnn_attention_workspace(bool backward, bool deterministic, const AttentionShape& s, DType dt) {
#if SD3_HAVE_CUDNN
    if (!cudnn_shape_ok(s, dt)) return 0;
    const int64_t bh = s.batch * s.heads;
    // Backward: an f32 dQ accumulator, and for the deterministic algorithm a dP buffer in 16 bits over 64-padded
    // rows and columns (the frontend's own bound in scaled_dot_product_flash_attention.h); forward: small per-row
    // statistics.
    const int64_t dp = deterministic ? ceil64(s.q_len) * ceil64(s.kv_len) * 2 : 0;
    const int64_t est = backward ? bh * (dp + s.q_len * s.head_dim * 4) : bh * s.q_len * 8;
    return std::min(static_cast<size_t>(est) + kMiB, cudnn_workspace_cap());
#else
    (void)backward, (void)deterministic, (void)s, (void)dt;
    return 0;
#endif
}

#if SD3_HAVE_CUDNN

namespace fe = cudnn_frontend;

namespace {

// Tensor uids of the variant pack.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kBias, kdO, kdQ, kdK, kdV, kConvX, kConvW, kConvY };

// One convolution graph: its dtype and shape.
struct ConvKey {
    int64_t dt;
    ConvShape shape;
    auto operator<=>(const ConvKey&) const = default;
};
// Plans whose workspace exceeds this are not considered (the im2col path's scratch cap).
constexpr int64_t kConvWorkspaceCap = int64_t{256} << 20;

// One graph: direction, dtype, the (chunk) shape, the full head count (strides of lse), row strides, options.
struct GraphKey {
    int64_t backward, dt, b, h, heads, tq, tk, d, q_row, k_row, v_row, o_row, causal, bias, stats, scale_bits,
        deterministic;
    auto operator<=>(const GraphKey&) const = default;
};

struct GraphEntry {
    std::shared_ptr<fe::graph::Graph> graph;  // null: cuDNN does not support this one
    int64_t workspace = 0;
};

const char* dlopen_cudnn() {
    static const char* error = [] {
        for (const char* name : {"libcudnn.so.9", "libcudnn.so"}) {
            cudnn_frontend::cudnn_dlhandle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
            if (cudnn_frontend::cudnn_dlhandle != nullptr) return static_cast<const char*>(nullptr);
        }
        return "libcudnn.so.9 not found (LD_LIBRARY_PATH): attention uses the own kernels";
    }();
    return error;
}

bool env_forces_own() {
    const char* env = std::getenv("SD3_ATTENTION");
    return env != nullptr && std::strcmp(env, "own") == 0;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

struct CudnnState {
    int device = 0, sm = 0;
    cudaStream_t stream = nullptr;  // the Context's
    std::mutex mutex;
    bool initialized = false;
    cudnnHandle_t handle = nullptr;  // null after initialization: cuDNN unusable, `info` says why
    cudaStream_t handle_stream = nullptr;
    std::string info = "cuDNN not initialized yet";
    std::map<GraphKey, GraphEntry> graphs;
    std::map<ConvKey, GraphEntry> conv_graphs;
    CudnnAttentionStats stats;

    // Under `mutex`. Loads cuDNN and makes the handle once; true when usable.
    bool ready() {
        if (initialized) return handle != nullptr;
        initialized = true;
        if (const char* err = dlopen_cudnn()) {
            info = err;
            return false;
        }
        try {
            const size_t version = fe::detail::get_backend_version();
            if (version < 90000) {
                info = "cuDNN " + fe::detail::convert_version_to_str(version) + " is older than 9.0: own kernels";
                return false;
            }
            // The dynamic-loading frontend opens the CUDA runtime itself for its support checks: a failure there
            // would decline every shape silently, so it is found here, once.
            int dev = 0;
            cudaDeviceProp prop{};
            if (fe::detail::cuda_get_device(&dev) != cudaSuccess ||
                fe::detail::cuda_get_device_properties(&prop, dev) != cudaSuccess) {
                info = "cuDNN unusable: the frontend cannot query the device through the CUDA runtime it loads";
                return false;
            }
            cudnnHandle_t h = nullptr;
            const cudnnStatus_t st = fe::detail::create_handle(&h);
            if (st != CUDNN_STATUS_SUCCESS) {
                info = "cudnnCreate failed with status " + std::to_string(static_cast<int>(st));
                return false;
            }
            if (fe::detail::set_stream(h, stream) != CUDNN_STATUS_SUCCESS) {
                info = "cudnnSetStream failed";
                return false;
            }
            handle = h;
            handle_stream = stream;
            info = "cuDNN " + fe::detail::convert_version_to_str(version) + " (frontend " +
                   std::to_string(CUDNN_FRONTEND_MAJOR_VERSION) + "." + std::to_string(CUDNN_FRONTEND_MINOR_VERSION) +
                   "." + std::to_string(CUDNN_FRONTEND_PATCH_VERSION) + ")";
        } catch (const std::exception& e) {  // the dynamic-loading frontend throws when a symbol is missing
            info = std::string("cuDNN unusable: ") + e.what();
        }
        return handle != nullptr;
    }
};

namespace {

fe::DataType_t fe_type(DType dt) { return dt == DType::F16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16; }

// Puts the handle on `stream` where it is not already (under the state's mutex).
void bind_stream(CudnnState& st, cudaStream_t stream) {
    if (st.handle_stream == stream) return;
    SD3_ASSERT(fe::detail::set_stream(st.handle, stream) == CUDNN_STATUS_SUCCESS, "cudnnSetStream failed");
    st.handle_stream = stream;
}

// Runs a built graph on `pack` with `workspace`. A failure here is a broken installation or a bug, not a shape
// cuDNN declined: it ends the process, saying which `what` (attention forward, convolution, ...) failed.
void execute(CudnnState& st, const GraphEntry& entry, std::unordered_map<int64_t, void*>& pack, void* workspace,
             const char* what) {
    fe::error_t status;
    try {
        status = entry.graph->execute(st.handle, pack, workspace);
    } catch (const std::exception& e) {  // the dynamic-loading frontend throws for a missing symbol
        status = fe::error_t{fe::error_code_t::GRAPH_EXECUTION_FAILED, e.what()};
    }
    SD3_ASSERT(status.is_good(), "cuDNN ", what, " failed: ", status.get_message());
}

// Validates `g`, picks its engine among the heuristics' `modes` (plans with more than `max_workspace` bytes of
// workspace left out, where that is positive) and stores it in `entry`; on failure `entry` stays empty and the
// state's stats say why.
void finish_graph(CudnnState& st, std::shared_ptr<fe::graph::Graph> g, const std::vector<fe::HeurMode_t>& modes,
                  int64_t max_workspace, GraphEntry& entry) {
    int64_t ws = 0;
    fe::error_t err = g->validate();
    if (err.is_good()) err = g->build_operation_graph(st.handle);
    if (err.is_good()) err = g->create_execution_plans(modes);
    if (err.is_good()) {
        if (max_workspace > 0) g->deselect_workspace_greater_than(max_workspace);
        err = g->check_support();
    }
    if (err.is_good()) err = g->build_plans();
    if (err.is_good()) err = g->get_workspace_size(ws);
    if (err.is_good()) {
        entry.graph = std::move(g);
        entry.workspace = ws;
    } else {
        st.stats.declined = err.get_message();
    }
}

// Builds the graph of `key`; on failure `entry.graph` stays null and `st.stats.declined` says why. `composite`
// pins the frontend's composite SDPA (the unified one, which AUTO picks on newer cuDNN, may decline a layout the
// composite one takes).
void build_graph(CudnnState& st, const GraphKey& key, float scale, bool composite, GraphEntry& entry) {
    try {
        auto g = std::make_shared<fe::graph::Graph>();
        g->set_io_data_type(fe_type(static_cast<DType>(key.dt)))
            .set_intermediate_data_type(fe::DataType_t::FLOAT)
            .set_compute_data_type(fe::DataType_t::FLOAT);
        const int64_t b = key.b, h = key.h, d = key.d, tq = key.tq, tk = key.tk;
        auto bhtd = [&](const char* name, Uid uid, int64_t t, int64_t row) {
            return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim({b, h, t, d}).set_stride(
                {t * row, d, row, 1}));
        };
        // lse [B, H_full, Tq]; a chunk of heads keeps the full tensor's batch stride.
        const std::vector<int64_t> stats_dim{b, h, tq, 1}, stats_stride{key.heads * tq, tq, 1, 1};
        // bias [H, Tq, Tk], the same for every batch element (broadcast dimension 1).
        auto bias_tensor = [&] {
            return g->tensor(fe::graph::Tensor_attributes()
                                 .set_name("bias")
                                 .set_uid(kBias)
                                 .set_dim({1, h, tq, tk})
                                 .set_stride({h * tq * tk, tq * tk, tk, 1}));
        };
        auto q = bhtd("Q", kQ, tq, key.q_row), k = bhtd("K", kK, tk, key.k_row), v = bhtd("V", kV, tk, key.v_row);
        if (!key.backward) {
            auto opts = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(key.stats != 0).set_attn_scale(
                scale);
            if (composite) opts.set_implementation(fe::AttentionImplementation_t::COMPOSITE);
            // Top-left diagonal: query i sees keys <= i, cpu::attention_fwd's mask for any Tq, Tk.
            if (key.causal) opts.set_causal_mask(true);
            if (key.bias) opts.set_bias(bias_tensor());
            auto [o, stats] = g->sdpa(q, k, v, opts);
            o->set_output(true).set_uid(kO).set_dim({b, h, tq, d}).set_stride({tq * key.o_row, d, key.o_row, 1});
            if (key.stats)
                stats->set_output(true).set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim(stats_dim).set_stride(
                    stats_stride);
        } else {
            auto o = bhtd("O", kO, tq, key.o_row), dout = bhtd("dO", kdO, tq, key.o_row);
            auto stats = g->tensor(fe::graph::Tensor_attributes()
                                       .set_name("Stats")
                                       .set_uid(kStats)
                                       .set_dim(stats_dim)
                                       .set_stride(stats_stride)
                                       .set_data_type(fe::DataType_t::FLOAT));
            auto opts = fe::graph::SDPA_backward_attributes()
                            .set_name("sdpa_backward")
                            .set_attn_scale(scale)
                            .set_deterministic_algorithm(key.deterministic != 0);
            if (key.causal) opts.set_causal_mask(true);
            if (key.bias) opts.set_bias(bias_tensor());
            auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, opts);
            dq->set_output(true).set_uid(kdQ).set_dim({b, h, tq, d}).set_stride({tq * key.q_row, d, key.q_row, 1});
            dk->set_output(true).set_uid(kdK).set_dim({b, h, tk, d}).set_stride({tk * key.k_row, d, key.k_row, 1});
            dv->set_output(true).set_uid(kdV).set_dim({b, h, tk, d}).set_stride({tk * key.v_row, d, key.v_row, 1});
        }
        finish_graph(st, std::move(g), {fe::HeurMode_t::A}, 0, entry);
    } catch (const std::exception& e) {  // unsupported: the own kernels run this shape
        entry = {};
        st.stats.declined = e.what();
    }
}

// The cached graph of `key`, built on first use (under the state's mutex): the frontend's choice first, then the
// composite implementation for a forward it declined.
const GraphEntry& graph_for(CudnnState& st, const GraphKey& key, float scale) {
    auto it = st.graphs.find(key);
    if (it != st.graphs.end()) return it->second;
    GraphEntry entry;
    build_graph(st, key, scale, false, entry);
    if (entry.graph == nullptr && !key.backward) build_graph(st, key, scale, true, entry);
    return st.graphs.emplace(key, std::move(entry)).first->second;
}

// Chunks (batch, heads) to try, largest first: the whole problem, then one batch element with all heads, then
// with fewer heads (divisors of H), so each chunk's workspace fits the scratch.
std::vector<std::pair<int64_t, int64_t>> chunkings(int64_t batch, int64_t heads) {
    std::vector<std::pair<int64_t, int64_t>> out{{batch, heads}};
    if (batch > 1) out.push_back({1, heads});
    for (int64_t hc = heads - 1; hc >= 1; --hc)
        if (heads % hc == 0) out.push_back({1, hc});
    return out;
}

struct Operands {
    const void* q;
    const void* k;
    const void* v;
    const void* o;     // forward: written
    const void* dout;  // backward only
    const float* lse;  // forward: written (may be null)
    const void* bias;
    void* dq;
    void* dk;
    void* dv;
};

bool run(const Exec& ex, bool backward, const Operands& p, const AttentionShape& s, DType dt, AttentionRows rows) {
    if (!ex.cudnn_attention || ex.dnn == nullptr || ex.sm < 80 || !cudnn_shape_ok(s, dt) || env_forces_own())
        return false;
    // 16-byte alignment of every row (cuDNN's vectorized loads); else the own kernels, which have no such need.
    const size_t es = dtype_size(dt);
    for (int64_t row : {rows.q_row, rows.k_row, rows.v_row, rows.o_row})
        if ((row * static_cast<int64_t>(es)) % 16 != 0) return false;
    for (const void* ptr : {p.q, p.k, p.v, p.o, p.dout, static_cast<const void*>(p.dq), static_cast<const void*>(p.dk),
                            static_cast<const void*>(p.dv), p.bias, static_cast<const void*>(p.lse)})
        if (ptr != nullptr && !aligned16(ptr)) return false;
    if (p.bias != nullptr && (s.kv_len * static_cast<int64_t>(es)) % 16 != 0) return false;

    CudnnState& st = *ex.dnn;
    std::lock_guard<std::mutex> lock(st.mutex);
    if (!st.ready()) return false;
    GraphKey key{backward, static_cast<int64_t>(dt), s.batch, s.heads, s.heads, s.q_len, s.kv_len, s.head_dim,
                 rows.q_row, rows.k_row, rows.v_row, rows.o_row, s.causal, p.bias != nullptr,
                 backward || p.lse != nullptr, 0, backward && ex.deterministic_attention};
    std::memcpy(&key.scale_bits, &s.scale, sizeof(float));
    const GraphEntry* entry = nullptr;
    double per_pair = -1;  // workspace per (batch, head) pair of the whole graph: skips chunks that cannot fit
    for (auto [bc, hc] : chunkings(s.batch, s.heads)) {
        if (per_pair >= 0 && per_pair * static_cast<double>(bc * hc) > static_cast<double>(ex.scratch_bytes)) continue;
        // A chunk's lse starts (b0·H + h0)·Tq floats in: it must keep cuDNN's 16-byte alignment.
        const bool chunked = bc != s.batch || hc != s.heads;
        if (chunked && key.stats && (hc * s.q_len) % 4 != 0) continue;
        key.b = bc;
        key.h = hc;
        const GraphEntry& e = graph_for(st, key, s.scale);
        if (e.graph != nullptr && static_cast<size_t>(e.workspace) <= ex.scratch_bytes) {
            entry = &e;
            break;
        }
        if (e.graph != nullptr && per_pair < 0)
            per_pair = static_cast<double>(e.workspace) / static_cast<double>(bc * hc);
    }
    if (entry == nullptr) return false;
    bind_stream(st, ex.stream);
    ++st.stats.calls;
    st.stats.workspace = entry->workspace;
    st.stats.chunk_batch = key.b;
    st.stats.chunk_heads = key.h;
    const int64_t d = s.head_dim;
    auto at = [&](const void* base, int64_t b0, int64_t h0, int64_t t, int64_t row) -> void* {
        if (base == nullptr) return nullptr;
        return const_cast<char*>(static_cast<const char*>(base)) + (b0 * t * row + h0 * d) * static_cast<int64_t>(es);
    };
    for (int64_t b0 = 0; b0 < s.batch; b0 += key.b) {
        for (int64_t h0 = 0; h0 < s.heads; h0 += key.h) {
            std::unordered_map<int64_t, void*> pack{{kQ, at(p.q, b0, h0, s.q_len, rows.q_row)},
                                                    {kK, at(p.k, b0, h0, s.kv_len, rows.k_row)},
                                                    {kV, at(p.v, b0, h0, s.kv_len, rows.v_row)},
                                                    {kO, at(p.o, b0, h0, s.q_len, rows.o_row)}};
            if (key.stats) pack[kStats] = const_cast<float*>(p.lse) + (b0 * s.heads + h0) * s.q_len;
            if (p.bias != nullptr)
                pack[kBias] = const_cast<char*>(static_cast<const char*>(p.bias)) +
                              h0 * s.q_len * s.kv_len * static_cast<int64_t>(es);
            if (backward) {
                pack[kdO] = at(p.dout, b0, h0, s.q_len, rows.o_row);
                pack[kdQ] = at(p.dq, b0, h0, s.q_len, rows.q_row);
                pack[kdK] = at(p.dk, b0, h0, s.kv_len, rows.k_row);
                pack[kdV] = at(p.dv, b0, h0, s.kv_len, rows.v_row);
            }
            execute(st, *entry, pack, ex.scratch, backward ? "attention backward" : "attention forward");
        }
    }
    return true;
}

// The convolution's graph on channels-last operands (x [n, h, w, c], w [k, r, s, c], y [n, ho, wo, k]: cuDNN's
// tensor-core engines want them; on NCHW it picked CUDA-core ones, slower than im2col + GEMM). No bias (the
// caller adds it), so only precompiled engines are needed, no runtime fusion. Null where no engine within
// kConvWorkspaceCap takes it.
GraphEntry build_conv_graph(CudnnState& st, DType dt, const ConvShape& c) {
    GraphEntry entry;
    try {
        auto g = std::make_shared<fe::graph::Graph>();
        g->set_io_data_type(fe_type(dt))
            .set_intermediate_data_type(fe::DataType_t::FLOAT)
            .set_compute_data_type(fe::DataType_t::FLOAT);
        const int64_t ho = (c.h + 2 * c.pad - c.kh) / c.stride + 1, wo = (c.w + 2 * c.pad - c.kw) / c.stride + 1;
        auto x = g->tensor(fe::graph::Tensor_attributes().set_name("X").set_uid(kConvX)
                               .set_dim({c.batch, c.cin, c.h, c.w})
                               .set_stride({c.h * c.w * c.cin, 1, c.w * c.cin, c.cin}));
        auto w = g->tensor(fe::graph::Tensor_attributes().set_name("W").set_uid(kConvW)
                               .set_dim({c.cout, c.cin, c.kh, c.kw})
                               .set_stride({c.kh * c.kw * c.cin, 1, c.kw * c.cin, c.cin}));
        auto opts = fe::graph::Conv_fprop_attributes()
                        .set_name("conv")
                        .set_padding({c.pad, c.pad})
                        .set_stride({c.stride, c.stride})
                        .set_dilation({1, 1});
        auto y = g->conv_fprop(x, w, opts);
        y->set_output(true).set_uid(kConvY).set_dim({c.batch, c.cout, ho, wo})
            .set_stride({ho * wo * c.cout, 1, wo * c.cout, c.cout});
        finish_graph(st, std::move(g), {fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}, kConvWorkspaceCap, entry);
    } catch (const std::exception& e) {
        entry = {};
        st.stats.declined = e.what();
    }
    return entry;
}

}  // namespace

namespace {
// The cached graph of this convolution (built on first use; the caller holds the state's mutex), or null where
// cuDNN does not apply.
const GraphEntry* conv_graph(const Exec& ex, const ConvShape& c, DType dt) {
    if (ex.dnn == nullptr || ex.sm < 80 || (dt != DType::BF16 && dt != DType::F16)) return nullptr;
    CudnnState& st = *ex.dnn;
    if (!st.ready()) return nullptr;
    const ConvKey key{static_cast<int64_t>(dt), c};
    auto it = st.conv_graphs.find(key);
    if (it == st.conv_graphs.end()) it = st.conv_graphs.emplace(key, build_conv_graph(st, dt, c)).first;
    return it->second.graph != nullptr ? &it->second : nullptr;
}
}  // namespace

int64_t cudnn_conv2d_nhwc_workspace(const Exec& ex, const ConvShape& c, DType dt) {
    if (ex.dnn == nullptr) return -1;
    std::lock_guard<std::mutex> lock(ex.dnn->mutex);
    const GraphEntry* entry = conv_graph(ex, c, dt);
    return entry != nullptr ? entry->workspace : -1;
}

void cudnn_conv2d_nhwc(const Exec& ex, void* y, const void* x, const void* w, const ConvShape& c, DType dt) {
    SD3_ASSERT(aligned16(x) && aligned16(w) && aligned16(y), "cuDNN convolution: operands not 16-byte aligned");
    SD3_ASSERT(ex.dnn != nullptr, "cuDNN convolution without cuDNN");
    CudnnState& st = *ex.dnn;
    std::lock_guard<std::mutex> lock(st.mutex);
    const GraphEntry* entry = conv_graph(ex, c, dt);
    SD3_ASSERT(entry != nullptr && static_cast<size_t>(entry->workspace) <= ex.scratch_bytes,
               "cuDNN convolution: no graph, or scratch of ", ex.scratch_bytes, " bytes below its workspace");
    bind_stream(st, ex.stream);
    ++st.stats.conv_calls;
    std::unordered_map<int64_t, void*> pack{
        {kConvX, const_cast<void*>(x)}, {kConvW, const_cast<void*>(w)}, {kConvY, y}};
    execute(st, *entry, pack, ex.scratch, "convolution");
}

CudnnState* cudnn_state_create(int device, int sm, cudaStream_t stream) {
    if (sm < 80) return nullptr;  // cuDNN's SDPA needs sm_80 (research §1.3)
    auto* st = new CudnnState;    // freed with the process: see attention_cudnn.h
    st->device = device;
    st->sm = sm;
    st->stream = stream;
    return st;
}

bool cudnn_attention_fwd(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                         const void* bias, const AttentionShape& s, DType dt, AttentionRows rows) {
    return run(ex, false, Operands{q, k, v, out, nullptr, lse, bias, nullptr, nullptr, nullptr}, s, dt, rows);
}

bool cudnn_attention_bwd(const Exec& ex, void* dq, void* dk, void* dv, const void* dout, const void* q,
                         const void* k, const void* v, const void* out, const float* lse, const void* bias,
                         const AttentionShape& s, DType dt, AttentionRows rows) {
    return run(ex, true, Operands{q, k, v, out, dout, lse, bias, dq, dk, dv}, s, dt, rows);
}

CudnnAttentionStats cudnn_attention_stats(const Exec& ex) {
    if (ex.dnn == nullptr) return {};
    std::lock_guard<std::mutex> lock(ex.dnn->mutex);
    return ex.dnn->stats;
}

#else  // without cuDNN at build time: every call declines

CudnnState* cudnn_state_create(int, int, cudaStream_t) { return nullptr; }
bool cudnn_attention_fwd(const Exec&, void*, float*, const void*, const void*, const void*, const void*,
                         const AttentionShape&, DType, AttentionRows) {
    return false;
}
bool cudnn_attention_bwd(const Exec&, void*, void*, void*, const void*, const void*, const void*, const void*,
                         const void*, const float*, const void*, const AttentionShape&, DType, AttentionRows) {
    return false;
}
CudnnAttentionStats cudnn_attention_stats(const Exec&) { return {}; }
int64_t cudnn_conv2d_nhwc_workspace(const Exec&, const ConvShape&, DType) { return -1; }
void cudnn_conv2d_nhwc(const Exec&, void*, const void*, const void*, const ConvShape&, DType) {
    SD3_ASSERT(false, "cuDNN convolution in a build without cuDNN");
}

#endif

}  // namespace sd3::cuda::detail

namespace sd3::cuda {

bool cudnn_attention_available(const Exec& ex) {
#if SD3_HAVE_CUDNN
    if (ex.dnn == nullptr) return false;
    std::lock_guard<std::mutex> lock(ex.dnn->mutex);
    return ex.dnn->ready();
#else
    (void)ex;
    return false;
#endif
}

const char* cudnn_attention_info(const Exec& ex) {
#if SD3_HAVE_CUDNN
    if (ex.dnn == nullptr) return "no cuDNN attention on this device (it needs sm_80 or newer)";
    std::lock_guard<std::mutex> lock(ex.dnn->mutex);
    ex.dnn->ready();
    return ex.dnn->info.c_str();
#else
    (void)ex;
    return "built without cuDNN (scripts/fetch-cudnn-frontend.sh, then reconfigure): own attention kernels";
#endif
}

}  // namespace sd3::cuda
