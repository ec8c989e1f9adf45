// Region depthwise convolution on compact rows: out[n] = sum_k values[taps[n, k]] * kernel[k].
//
// Written by hand because no TensorFlow op reads a depthwise conv's neighbours from compact rows:
// with TF ops it is either kh*kw gathers (slow) or a write-back of the rows into a dense map, whose
// depthwise conv then costs the whole map whatever the region's size (docs/RESULTS.md).
// keras_lc/kernels/__init__.py compiles this file on first use and falls back to TF ops without it.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

using namespace tensorflow;

// values [R, C] float32; taps [N, K] int32, each in [0, R] (R: a zero row); kernel [K, C] -> [N, C].
REGISTER_OP("KerasLcRegionDepthwiseTaps")
    .Input("values: float")
    .Input("taps: int32")
    .Input("kernel: float")
    .Output("out: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->MakeShape({c->Dim(c->input(1), 0), c->Dim(c->input(0), 1)}));
      return absl::OkStatus();
    });

// The kernel's gradient: grad_kernel[k] = sum_n values[taps[n, k]] * grad[n]  -> [K, C].
REGISTER_OP("KerasLcRegionDepthwiseTapsKernelGrad")
    .Input("values: float")
    .Input("taps: int32")
    .Input("grad: float")
    .Output("out: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->MakeShape({c->Dim(c->input(1), 1), c->Dim(c->input(0), 1)}));
      return absl::OkStatus();
    });

namespace {

absl::Status CheckInputs(const Tensor& values, const Tensor& taps, const Tensor& third, int64_t third_rows) {
  if (values.dims() != 2 || taps.dims() != 2 || third.dims() != 2)
    return errors::InvalidArgument("region depthwise taps: values, taps and kernel/grad must be 2-D");
  if (third.dim_size(0) != third_rows || third.dim_size(1) != values.dim_size(1))
    return errors::InvalidArgument("region depthwise taps: shapes do not match: values ", values.shape().DebugString(),
                                   ", taps ", taps.shape().DebugString(), ", third input ",
                                   third.shape().DebugString());
  const int32_t* t = taps.flat<int32_t>().data();
  const int64_t rows = values.dim_size(0);
  for (int64_t i = 0; i < taps.NumElements(); ++i)
    if (t[i] < 0 || t[i] > rows)
      return errors::InvalidArgument("region depthwise taps: tap index ", t[i], " outside [0, ", rows, "]");
  return absl::OkStatus();
}

class RegionDepthwiseTapsOp : public OpKernel {
 public:
  explicit RegionDepthwiseTapsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& values = ctx->input(0);
    const Tensor& taps = ctx->input(1);
    const Tensor& kernel = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckInputs(values, taps, kernel, taps.dims() == 2 ? taps.dim_size(1) : 0));
    const int64_t rows = values.dim_size(0), C = values.dim_size(1);
    const int64_t N = taps.dim_size(0), K = taps.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({N, C}), &out));
    const float* v = values.flat<float>().data();
    const int32_t* t = taps.flat<int32_t>().data();
    const float* w = kernel.flat<float>().data();
    float* o = out->flat<float>().data();
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        float* on = o + n * C;
        for (int64_t c = 0; c < C; ++c) on[c] = 0.f;
        for (int64_t k = 0; k < K; ++k) {
          const int32_t m = t[n * K + k];
          if (m == rows) continue;  // the zero row: outside the region or the image
          const float* vm = v + static_cast<int64_t>(m) * C;
          const float* wk = w + k * C;
          for (int64_t c = 0; c < C; ++c) on[c] += vm[c] * wk[c];
        }
      }
    };
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    Shard(workers->NumThreads(), workers, N, 2 * K * C, work);
  }
};

class RegionDepthwiseTapsKernelGradOp : public OpKernel {
 public:
  explicit RegionDepthwiseTapsKernelGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& values = ctx->input(0);
    const Tensor& taps = ctx->input(1);
    const Tensor& grad = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckInputs(values, taps, grad, taps.dims() == 2 ? taps.dim_size(0) : 0));
    const int64_t rows = values.dim_size(0), C = values.dim_size(1);
    const int64_t N = taps.dim_size(0), K = taps.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({K, C}), &out));
    const float* v = values.flat<float>().data();
    const int32_t* t = taps.flat<int32_t>().data();
    const float* g = grad.flat<float>().data();
    float* o = out->flat<float>().data();
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        float* ok = o + k * C;
        for (int64_t c = 0; c < C; ++c) ok[c] = 0.f;
        for (int64_t n = 0; n < N; ++n) {
          const int32_t m = t[n * K + k];
          if (m == rows) continue;
          const float* vm = v + static_cast<int64_t>(m) * C;
          const float* gn = g + n * C;
          for (int64_t c = 0; c < C; ++c) ok[c] += vm[c] * gn[c];
        }
      }
    };
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    Shard(workers->NumThreads(), workers, K, 2 * N * C, work);
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("KerasLcRegionDepthwiseTaps").Device(DEVICE_CPU), RegionDepthwiseTapsOp);
REGISTER_KERNEL_BUILDER(Name("KerasLcRegionDepthwiseTapsKernelGrad").Device(DEVICE_CPU),
                        RegionDepthwiseTapsKernelGradOp);
