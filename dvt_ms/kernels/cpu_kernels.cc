// Fused float32 CPU kernels for DVT (forward, and the backward of those training uses), called through
// mindspore.ops.Custom (func_type "aot").
//
// Every entry point has MindSpore's AOT signature: params holds the inputs then the outputs, ndims, shapes and
// dtypes describe them. Every kernel checks the count, dtypes and shapes it is handed (dvt::Call) before it touches
// a buffer, and returns an error code instead of reading or writing out of bounds, with a message naming the
// argument that dvt_last_error returns; no C++ exception crosses the C boundary (dvt::guarded). Large calls
// split their rows over the worker pool of kernel_common.h (parallel_for); no OpenMP team: its idle threads
// spin against MindSpore's own (measured: slower than one thread). The loops are written so that the
// compiler vectorises them (no branches, no libm calls).

#include "kernel_common.h"

namespace {

using dvt::Call;
using dvt::parallel_for;
using dvt::Param;

constexpr dvt::Dtype kF32 = dvt::Dtype::kFloat32, kI32 = dvt::Dtype::kInt32;

// The elements of a tensor of ndim dimensions.
int64_t count(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// The geometry of a soft split, checked against the shapes MindSpore hands over. Inputs 0, 1, 2 of both
// kernels: x, an image [B, C, side, side] (channels_last 0) or a square grid of tokens [B, side * side, C] (1);
// the geometry int32 [5]; the unfolded tensor [B, out * out, C * kernel * kernel] (the output of the unfold,
// the incoming gradient of the fold). A geometry that disagrees with either shape is refused, so that no
// kernel reads or writes outside its buffers. Every dtype is checked before.
struct SoftSplit {
  bool channels_last = false;
  int64_t batch = 0, channels = 0, side = 0, k = 0, stride = 0, pad = 0, out = 0, features = 0;

  // Reads the geometry {channels_last, side, kernel, stride, padding}; fails when it or the shapes disagree.
  void read(const Call &call) {
    call.expect_shape(1, {5});
    const int32_t *geometry = call.in<int32_t>(1);
    channels_last = geometry[0] != 0;
    side = geometry[1], k = geometry[2], stride = geometry[3], pad = geometry[4];
    call.check(side > 0 && k > 0 && stride > 0 && pad >= 0 && side + 2 * pad >= k, [&] {
      return call.arg(1) + " " + dvt::shape_text(5, std::vector<int64_t>(geometry, geometry + 5).data()) +
             " is no soft split: side, kernel and stride must be positive, padding not negative and the kernel at "
             "most side + 2 padding";
    });
    out = (side + 2 * pad - k) / stride + 1;
    const int64_t *x = call.shape(0);
    const bool fits = channels_last ? call.ndim(0) == 3 && x[1] == side * side
                                    : call.ndim(0) == 4 && x[2] == side && x[3] == side;
    call.check(fits, [&] {
      const std::string side_text = std::to_string(side);
      return call.arg(0) + " must be " +
             (channels_last ? "a grid of tokens [B, " + std::to_string(side * side) + ", C]"
                            : "an image [B, C, " + side_text + ", " + side_text + "]") +
             " for the geometry's side " + side_text + ", got " + dvt::shape_text(call.ndim(0), x);
    });
    batch = x[0];
    channels = channels_last ? x[2] : x[1];
    features = channels * k * k;
    call.expect_shape(2, {batch, out * out, features});
  }
};

}  // namespace

extern "C" {

// LayerNorm over the last axis. Inputs: x [..., D], weight [D], bias [D], eps [1]. Output: [..., D].
int dvt_layer_norm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    static constexpr Param kArgs[] = {{"x", kF32}, {"weight", kF32}, {"bias", kF32}, {"eps", kF32}, {"y", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 4);
    call.check(ndims[0] >= 1, [&] { return call.arg(0) + " must have at least one dimension"; });
    const int64_t d = shapes[0][ndims[0] - 1];
    call.expect_shape(1, {d});
    call.expect_shape(2, {d});
    call.expect_shape(3, {1});
    call.expect_same_shape(4, 0);
    const float *x = call.in(0), *w = call.in(1), *b = call.in(2), eps = *call.in(3);
    float *y = call.out(4);
    const int64_t rows = count(ndims[0] - 1, shapes[0]);
    parallel_for(rows, 4 * d, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t r = first; r < last; ++r) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float mean, rstd;
        dvt::row_stats(xr, d, eps, &mean, &rstd);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
      }
    });
    return 0;
  });
}

// Exact (erf) GELU, element-wise: 0.5 x (1 + erf(x / sqrt 2)). Input x, output of the same shape.
int dvt_gelu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    static constexpr Param kArgs[] = {{"x", kF32}, {"y", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 1);
    call.expect_same_shape(1, 0);
    const float *x = call.in(0);
    float *y = call.out(1);
    dvt::for_each_element(count(ndims[0], shapes[0]), 16, [&](int64_t i) { y[i] = dvt::gelu(x[i]); });
    return 0;
  });
}

// Soft split: torch's unfold with the tokens axis first. Inputs: x, geometry int32 [5] (see SoftSplit).
// Output [B, L, C * kernel * kernel], L = out * out with out = (side + 2 padding - kernel) / stride + 1,
// features ordered (c, ki, kj) as torch orders them; zero padding.
int dvt_unfold(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    static constexpr Param kArgs[] = {{"x", kF32}, {"geometry", kI32}, {"y", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 2);
    SoftSplit g;
    g.read(call);
    const float *x = call.in(0);
    float *y = call.out(2);
    const int64_t side = g.side, k = g.k, stride = g.stride, pad = g.pad, out = g.out, channels = g.channels;
    const int64_t features = g.features;
    parallel_for(g.batch * out, out * features, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t item = first; item < last; ++item) {
        const int64_t b = item / out, oy = item % out;
        const float *image = x + b * channels * side * side;
        for (int64_t ox = 0; ox < out; ++ox) {
          float *row = y + ((b * out + oy) * out + ox) * features;
          const int64_t ix0 = ox * stride - pad;  // the window's columns inside the image: kj in [lo, hi)
          const int64_t lo = std::min(k, std::max<int64_t>(0, -ix0)), hi = std::max(lo, std::min(k, side - ix0));
          if (g.channels_last) {  // gather C contiguous channels per pixel, scatter them k * k apart
            for (int64_t ki = 0; ki < k; ++ki) {
              const int64_t iy = oy * stride - pad + ki;
              for (int64_t kj = 0; kj < k; ++kj) {
                float *dst = row + ki * k + kj;  // feature (c, ki, kj) sits at c * k * k + ki * k + kj
                if (iy < 0 || iy >= side || kj < lo || kj >= hi) {
                  for (int64_t c = 0; c < channels; ++c) dst[c * k * k] = 0.0f;
                } else {
                  const float *pixel = image + (iy * side + ix0 + kj) * channels;
                  for (int64_t c = 0; c < channels; ++c) dst[c * k * k] = pixel[c];
                }
              }
            }
          } else {  // copy one image row segment of k pixels per (c, ki), zeros outside the image
            for (int64_t c = 0; c < channels; ++c) {
              const float *plane = image + c * side * side;
              for (int64_t ki = 0; ki < k; ++ki) {
                const int64_t iy = oy * stride - pad + ki;
                float *dst = row + (c * k + ki) * k;
                if (iy < 0 || iy >= side) {
                  std::fill(dst, dst + k, 0.0f);
                  continue;
                }
                std::fill(dst, dst + lo, 0.0f);
                if (hi > lo) std::memcpy(dst + lo, plane + iy * side + ix0 + lo, (hi - lo) * sizeof(float));
                std::fill(dst + hi, dst + k, 0.0f);
              }
            }
          }
        }
      }
    });
    return 0;
  });
}

// Resize both token axes of every plane: out[b, c] = P x[b, c] P^T. Inputs: x [B, C, n_in, n_in],
// P [n_out, n_in] (a resize operator: a few non-zeros per row). Output [B, C, n_out, n_out]. P is read
// as a sparse matrix, so the cost is proportional to its non-zeros, not to n_out * n_in.
int dvt_sandwich(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    static constexpr Param kArgs[] = {{"x", kF32}, {"p", kF32}, {"y", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 2);
    call.expect_ndim(0, 4);
    call.expect_ndim(1, 2);
    call.expect_shape(0, {shapes[0][0], shapes[0][1], shapes[1][1], shapes[1][1]});  // planes of p's n_in
    call.expect_shape(2, {shapes[0][0], shapes[0][1], shapes[1][0], shapes[1][0]});
    const float *x = call.in(0), *p = call.in(1);
    float *y = call.out(2);
    const int64_t planes = shapes[0][0] * shapes[0][1];
    const int64_t n_in = shapes[1][1], n_out = shapes[1][0];
    std::vector<int64_t> start(n_out + 1, 0), col;
    std::vector<float> weight;
    for (int64_t i = 0; i < n_out; ++i) {
      for (int64_t j = 0; j < n_in; ++j) {
        if (p[i * n_in + j] != 0.0f) {
          col.push_back(j);
          weight.push_back(p[i * n_in + j]);
        }
      }
      start[i + 1] = static_cast<int64_t>(col.size());
    }
    parallel_for(planes, n_out * n_out * 4, [&](int64_t first, int64_t last, int64_t) {
      std::vector<float> rows(n_in * n_out);  // x P^T for one plane: [n_in, n_out]
      for (int64_t plane = first; plane < last; ++plane) {
        const float *xp = x + plane * n_in * n_in;
        float *yp = y + plane * n_out * n_out;
        for (int64_t r = 0; r < n_in; ++r) {
          const float *xr = xp + r * n_in;
          float *tr = rows.data() + r * n_out;
          for (int64_t o = 0; o < n_out; ++o) {
            float acc = 0.0f;
            for (int64_t e = start[o]; e < start[o + 1]; ++e) acc += weight[e] * xr[col[e]];
            tr[o] = acc;
          }
        }
        for (int64_t o = 0; o < n_out; ++o) {
          float *yr = yp + o * n_out;
          std::fill(yr, yr + n_out, 0.0f);
          for (int64_t e = start[o]; e < start[o + 1]; ++e) {
            const float w = weight[e];
            const float *tr = rows.data() + col[e] * n_out;
#pragma omp simd
            for (int64_t q = 0; q < n_out; ++q) yr[q] += w * tr[q];
          }
        }
      }
    });
    return 0;
  });
}

// Backward of dvt_layer_norm. Inputs: x [..., D], weight [D], dy [..., D], eps [1]. Outputs: dx [..., D],
// dweight [D], dbias [D]. The row statistics are recomputed from x (one extra pass, no saved state). With
// x_hat = (x - mean) * rstd and g = dy * weight: dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)),
// dweight = sum over rows of dy * x_hat, dbias = sum over rows of dy (partial sums over fixed chunks of rows,
// added in order).
int dvt_layer_norm_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  return dvt::guarded(__func__, [&]() -> int {
    static constexpr Param kArgs[] = {{"x", kF32},  {"weight", kF32},  {"dy", kF32},   {"eps", kF32},
                                      {"dx", kF32}, {"dweight", kF32}, {"dbias", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 4);
    call.check(ndims[0] >= 1, [&] { return call.arg(0) + " must have at least one dimension"; });
    const int64_t d = shapes[0][ndims[0] - 1];
    call.expect_shape(1, {d});
    call.expect_same_shape(2, 0);
    call.expect_shape(3, {1});
    call.expect_same_shape(4, 0);
    call.expect_shape(5, {d});
    call.expect_shape(6, {d});
    const float *x = call.in(0), *w = call.in(1), *dy = call.in(2), eps = *call.in(3);
    float *dx = call.out(4), *dw = call.out(5), *db = call.out(6);
    const int64_t rows = count(ndims[0] - 1, shapes[0]);
    dvt::layer_norm_backward(rows, d, nullptr, eps, w, dy, dx, nullptr, 0, dw, db,
                             [&](int64_t r, float *) { return x + r * d; });
    return 0;
  });
}

// Backward of dvt_gelu: dx = dy * (Phi(x) + x phi(x)), Phi the normal CDF, phi its density.
int dvt_gelu_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    static constexpr Param kArgs[] = {{"x", kF32}, {"dy", kF32}, {"dx", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 2);
    call.expect_same_shape(1, 0);
    call.expect_same_shape(2, 0);
    const float *x = call.in(0), *dy = call.in(1);
    float *dx = call.out(2);
    dvt::for_each_element(count(ndims[0], shapes[0]), 24, [&](int64_t i) { dx[i] = dy[i] * dvt::gelu_slope(x[i]); });
    return 0;
  });
}

// Backward of dvt_unfold (torch's fold): every output feature adds its gradient to the pixel it was read
// from. Inputs: x (for its shape only), geometry as dvt_unfold, dy [B, L, C * kernel * kernel]. Output:
// dx of x's shape. Each image is summed by one thread, in a fixed order.
int dvt_unfold_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    static constexpr Param kArgs[] = {{"x", kF32}, {"geometry", kI32}, {"dy", kF32}, {"dx", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 3);
    SoftSplit g;
    g.read(call);
    call.expect_same_shape(3, 0);
    const float *dy = call.in(2);
    float *dx = call.out(3);
    const bool channels_last = g.channels_last;
    const int64_t side = g.side, k = g.k, stride = g.stride, pad = g.pad, out = g.out, channels = g.channels;
    const int64_t batch = g.batch, features = g.features;
    const int64_t image_size = channels * side * side;
    parallel_for(batch, out * out * features, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t b = first; b < last; ++b) {
        float *image = dx + b * image_size;
        std::fill(image, image + image_size, 0.0f);
        for (int64_t oy = 0; oy < out; ++oy) {
          for (int64_t ox = 0; ox < out; ++ox) {
            const float *row = dy + ((b * out + oy) * out + ox) * features;
            for (int64_t ki = 0; ki < k; ++ki) {
              const int64_t iy = oy * stride - pad + ki;
              if (iy < 0 || iy >= side) continue;
              for (int64_t kj = 0; kj < k; ++kj) {
                const int64_t ix = ox * stride - pad + kj;
                if (ix < 0 || ix >= side) continue;
                const float *src = row + ki * k + kj;
                if (channels_last) {
                  float *pixel = image + (iy * side + ix) * channels;
                  for (int64_t c = 0; c < channels; ++c) pixel[c] += src[c * k * k];
                } else {
                  for (int64_t c = 0; c < channels; ++c) image[(c * side + iy) * side + ix] += src[c * k * k];
                }
              }
            }
          }
        }
      }
    });
    return 0;
  });
}

// One AdamW update of a float32 tensor (dvt::AdamW, as torch.optim.AdamW and dvt_ms.train.optimizer compute it),
// in one pass. Inputs: param, grad, exp_avg, exp_avg_sq (same shape), hyper [9] = {lr, step_size (lr / bias
// correction 1), sqrt(bias correction 2), 1 - beta1, beta2, 1 - beta2, eps, weight_decay, apply}. Outputs: the
// new param, exp_avg and exp_avg_sq; with apply 0 (a step whose gradients overflowed) the old ones, unchanged.
int dvt_adamw(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    static constexpr Param kArgs[] = {{"param", kF32},     {"grad", kF32},    {"exp_avg", kF32},
                                      {"exp_avg_sq", kF32}, {"hyper", kF32},   {"new_param", kF32},
                                      {"new_exp_avg", kF32}, {"new_exp_avg_sq", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 5);
    call.expect_shape(4, {9});
    for (int t : {1, 2, 3, 5, 6, 7}) call.expect_same_shape(t, 0);
    const float *p = call.in(0), *g = call.in(1), *m = call.in(2), *v = call.in(3), *hyper = call.in(4);
    float *p_out = call.out(5), *m_out = call.out(6), *v_out = call.out(7);
    const dvt::AdamW adamw = dvt::AdamW::from(hyper);
    const int64_t n = count(ndims[0], shapes[0]);
    if (hyper[8] == 0.0f) {
      std::memcpy(p_out, p, n * sizeof(float));
      std::memcpy(m_out, m, n * sizeof(float));
      std::memcpy(v_out, v, n * sizeof(float));
      return 0;
    }
    const float keep = adamw.keep();
    const int64_t block = 4096;
    parallel_for((n + block - 1) / block, 12 * block, [&](int64_t first, int64_t last, int64_t) {
      const int64_t end = std::min(n, last * block);
#pragma omp simd
      for (int64_t i = first * block; i < end; ++i) {
        float param = p[i], exp_avg = m[i], exp_avg_sq = v[i];
        adamw.step(g[i], keep, param, exp_avg, exp_avg_sq);
        m_out[i] = exp_avg;
        v_out[i] = exp_avg_sq;
        p_out[i] = param;
      }
    });
    return 0;
  });
}

// The multipliers of a dropout mask, exactly as dvt_ms.models.layers.dropout.Dropout.mask computes them in the
// graph (same int32 arithmetic and table, so the same bits): for sample b at global position p = (b * ranks +
// rank) mod 2^18 under the stream words (C, O, P, O2, P2, X), element f of a sample of F elements reads
// TABLE[(O + p P + f C) mod 2^18] ^ TABLE[(O2 + p P2) mod 2^18] ^ X (samples above 2^18 elements in chunks r of
// 2^18: offset r P2, stride (C + 2r) mod 2^11) and is kept when that is below keep_below. Inputs: x (its shape
// only), words int32 [6, 1], table int32 [2^18], config int32 {rank, ranks, keep_below}, scale float32 [1]
// (1 / keep). Output: float32 of x's shape, scale where kept, else 0.
int dvt_dropout_mask(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    constexpr int64_t kTable = 1 << 18, kMask = kTable - 1;
    static constexpr Param kArgs[] = {{"x", kF32},      {"words", kI32}, {"table", kI32},
                                      {"config", kI32}, {"scale", kF32}, {"mask", kF32}};
    Call call(nparam, params, ndims, shapes, dtypes);
    call.expect(kArgs, 5);
    call.check(ndims[0] >= 1, [&] { return call.arg(0) + " must have at least one dimension"; });
    call.expect_shape(1, {6, 1});
    call.expect_shape(2, {kTable});
    call.expect_shape(3, {3});
    call.expect_shape(4, {1});
    call.expect_same_shape(5, 0);
    const int32_t *w = call.in<int32_t>(1), *table = call.in<int32_t>(2), *cfg = call.in<int32_t>(3);
    const float scale = *call.in(4);
    float *out = call.out(5);
    const int64_t batch = shapes[0][0], size = count(ndims[0] - 1, shapes[0] + 1);
    const int64_t rank = cfg[0], ranks = cfg[1], keep_below = cfg[2];
    const int64_t c = w[0], o = w[1], p_stride = w[2], o2 = w[3], p2 = w[4], x_word = w[5];
    parallel_for(batch, 4 * size, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t b = first; b < last; ++b) {
        const int64_t position = (b * ranks + rank) & kMask;
        const int64_t base = (o + position * p_stride) & kMask;
        const int32_t xor_word = table[(o2 + position * p2) & kMask] ^ static_cast<int32_t>(x_word);
        float *row = out + b * size;
        for (int64_t start = 0, chunk = 0; start < size; start += kTable, ++chunk) {
          const int64_t from = size <= kTable ? base : (base + chunk * p2) & kMask;
          const int64_t stride = size <= kTable ? c : (c + 2 * chunk) & 0x7FF;
          const int64_t n = std::min(kTable, size - start);
          for (int64_t f = 0; f < n; ++f) {
            const int32_t uniform = table[(from + f * stride) & kMask] ^ xor_word;
            row[start + f] = uniform < keep_below ? scale : 0.0f;
          }
        }
      }
    });
    return 0;
  });
}

// The whole update of a CPU train step in one pass over every tensor, in place: the overflow check of the
// scaled gradients, unscaling, AdamW (dvt::AdamW, as dvt_adamw) and the EMA of the updated weights. Inputs: hyper
// float32 [12] = {lr, step_size, sqrt(bias correction 2), 1 - beta1, beta2, 1 - beta2, eps, weight_decay,
// 1 / loss scale, EMA decay, 1 - EMA decay, EMA on}; decayed float32 [T] (1: the tensor takes the weight decay);
// then T parameters, T scaled gradients, T exp_avg, T exp_avg_sq and, with the EMA, T shadows. Output: float32
// [1], 1 when every gradient was finite (the step was applied), else 0 (nothing changed). The tensors are
// updated in place (the op is marked side_effect_mem: MindSpore orders it after every read of them and before
// every later one).
int dvt_train_update(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                     void *) {
  return dvt::guarded(__func__, [&]() -> int {
    Call call(nparam, params, ndims, shapes, dtypes);
    int64_t tensors = 0;  // known once "decayed" is checked
    call.name_with([&](int i) {
      static constexpr const char *kGroups[] = {"param", "grad", "exp_avg", "exp_avg_sq", "ema_shadow"};
      if (i < 2) return Call::label(i == 0 ? "hyper" : "decayed", i, nparam - 1);
      if (i == nparam - 1 || tensors < 1) return Call::label(i == nparam - 1 ? "applied" : "tensor", i, nparam - 1);
      const int64_t group = (i - 2) / tensors, t = (i - 2) % tensors;
      return Call::label(std::string(kGroups[std::min<int64_t>(group, 4)]) + " " + std::to_string(t), i, nparam - 1);
    });
    call.count_at_least(4);
    call.dtype(0, kF32);
    call.dtype(1, kF32);
    call.expect_shape(0, {12});
    call.expect_ndim(1, 1);
    const float *hyper = call.in(0), *decayed = call.in(1);
    const int64_t groups = hyper[11] != 0.0f ? 5 : 4;
    tensors = shapes[1][0];
    call.check(tensors >= 1, [&] { return call.arg(1) + " must name at least one tensor, got shape [0]"; });
    call.check(nparam == 3 + groups * tensors, [&] {
      return "takes hyper, decayed, " + std::to_string(groups) + " groups of " + std::to_string(tensors) +
             " tensors (decayed's length" + (groups == 5 ? ", EMA on" : "") + ") and the output: " +
             std::to_string(3 + groups * tensors) + " tensors, got " + std::to_string(nparam);
    });
    call.dtypes(2, nparam, kF32);
    call.expect_shape(nparam - 1, {1});
    std::vector<int64_t> start(tensors + 1, 0);  // each tensor's first element in the concatenation of all
    for (int64_t t = 0; t < tensors; ++t) {
      const int64_t n = count(ndims[2 + t], shapes[2 + t]);
      for (int64_t g = 1; g < groups; ++g) call.expect_same_size(static_cast<int>(2 + g * tensors + t), 2 + t);
      start[t + 1] = start[t] + n;
    }
    auto tensor = [&](int64_t group, int64_t t) { return static_cast<float *>(params[2 + group * tensors + t]); };
    // runs body(t, first, last) over the pieces of tensors that [begin, end) of the concatenation covers
    auto each_piece = [&](int64_t begin, int64_t end, auto &&body) {
      int64_t t = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
      for (; t < tensors && start[t] < end; ++t) {
        const int64_t first = std::max(begin, start[t]) - start[t], last = std::min(end, start[t + 1]) - start[t];
        if (first < last) body(t, first, last);
      }
    };
    const int64_t total = start[tensors], block = 4096, blocks = (total + block - 1) / block;
    std::vector<unsigned char> finite(blocks, 1);
    parallel_for(blocks, block, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t b = first; b < last; ++b) {
        float acc = 0.0f;
        each_piece(b * block, std::min(total, (b + 1) * block), [&](int64_t t, int64_t i0, int64_t i1) {
          const float *g = tensor(1, t);
#pragma omp simd reduction(+ : acc)
          for (int64_t i = i0; i < i1; ++i) acc += g[i] * 0.0f;  // 0 for finite values, NaN otherwise
        });
        finite[b] = acc == 0.0f;
      }
    });
    const bool apply = std::all_of(finite.begin(), finite.end(), [](unsigned char f) { return f != 0; });
    static_cast<float *>(params[nparam - 1])[0] = apply ? 1.0f : 0.0f;
    if (!apply) return 0;
    const dvt::AdamW adamw = dvt::AdamW::from(hyper);
    const float inv_scale = hyper[8], ema_decay = hyper[9], ema_rest = hyper[10];
    const float keep_decayed = adamw.keep();
    const bool ema = groups == 5;
    parallel_for(blocks, 16 * block, [&](int64_t first, int64_t last, int64_t) {
      each_piece(first * block, std::min(total, last * block), [&](int64_t t, int64_t i0, int64_t i1) {
        float *p = tensor(0, t), *m = tensor(2, t), *v = tensor(3, t);
        const float *graw = tensor(1, t);
        const float keep = decayed[t] != 0.0f ? keep_decayed : 1.0f;
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) adamw.step(graw[i] * inv_scale, keep, p[i], m[i], v[i]);
        if (ema) {
          float *shadow = tensor(4, t);
#pragma omp simd
          for (int64_t i = i0; i < i1; ++i) shadow[i] = shadow[i] * ema_decay + p[i] * ema_rest;
        }
      });
    });
    return 0;
  });
}

// Whether every element of every input is finite: inputs any number of float32 tensors; output float32 [1],
// 1 when all are finite, else 0. x * 0 is 0 for a finite x and NaN for inf or NaN, so one vectorised sum per
// tensor tells.
int dvt_all_finite(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    Call call(nparam, params, ndims, shapes, dtypes);
    call.name_with([&](int i) {
      return Call::label(i == nparam - 1 ? std::string("finite") : "tensor " + std::to_string(i), i, nparam - 1);
    });
    call.count_at_least(2);
    call.dtypes(0, nparam, kF32);
    call.check(count(ndims[nparam - 1], shapes[nparam - 1]) == 1, [&] {
      return call.arg(nparam - 1) + " must have one element, got shape " +
             dvt::shape_text(ndims[nparam - 1], shapes[nparam - 1]);
    });
    const int64_t tensors = nparam - 1;
    std::vector<unsigned char> finite(tensors, 1);
    parallel_for(tensors, 1 << 16, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t t = first; t < last; ++t) {
        const float *x = static_cast<const float *>(params[t]);
        const int64_t n = count(ndims[t], shapes[t]);
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < n; ++i) acc += x[i] * 0.0f;
        finite[t] = acc == 0.0f;
      }
    });
    float *out = static_cast<float *>(params[nparam - 1]);
    out[0] = std::all_of(finite.begin(), finite.end(), [](unsigned char f) { return f != 0; }) ? 1.0f : 0.0f;
    return 0;
  });
}

// The most recent failure of any kernel of this library, "kernel: message" (empty when none failed): what Python
// shows when MindSpore reports a kernel's non-zero return. The pointer stays valid on the calling thread until its
// next call.
const char *dvt_last_error() {
  static thread_local std::string text;
  text = dvt::last_error_text();
  return text.c_str();
}

// Threads of the worker pool (the caller included): $DVT_MS_KERNEL_THREADS, or the default (dvt::pool_threads).
int dvt_kernel_threads() { return static_cast<int>(dvt::Pool::instance().threads()); }

}  // extern "C"
