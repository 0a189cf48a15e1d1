// Fused float32 CPU kernels for DVT (forward, and the backward of those training uses), called through
// mindspore.ops.Custom (func_type "aot").
//
// Every entry point has MindSpore's AOT signature: params holds the inputs then the output, shapes and
// ndims describe them. Every kernel checks the shapes it is handed and returns an error code instead of
// reading or writing out of bounds; no C++ exception crosses the C boundary (dvt::guarded). Large calls
// split their rows over the worker pool of kernel_common.h (parallel_for); no OpenMP team: its idle threads
// spin against MindSpore's own (measured: slower than one thread). The loops are written so that the
// compiler vectorises them (no branches, no libm calls).

#include "kernel_common.h"

namespace {

using dvt::count;
using dvt::erf_approx;
using dvt::exp_approx;
using dvt::is_shape;
using dvt::parallel_for;
using dvt::same_shape;

// The geometry of a soft split, checked against the shapes MindSpore hands over. Inputs 0, 1, 2 of both
// kernels: x, an image [B, C, side, side] (channels_last 0) or a square grid of tokens [B, side * side, C] (1);
// the geometry int32 [5]; the unfolded tensor [B, out * out, C * kernel * kernel] (the output of the unfold,
// the incoming gradient of the fold). A geometry that disagrees with either shape is refused, so that no
// kernel reads or writes outside its buffers.
struct SoftSplit {
  bool channels_last = false;
  int64_t batch = 0, channels = 0, side = 0, k = 0, stride = 0, pad = 0, out = 0, features = 0;

  // False when the geometry {channels_last, side, kernel, stride, padding} or the shapes disagree.
  bool read(void **params, const int *ndims, int64_t *const *shapes) {
    if (!dvt::is_shape(ndims[1], shapes[1], {5})) return false;
    const int32_t *geometry = static_cast<const int32_t *>(params[1]);
    const int x_ndim = ndims[0];
    const int64_t *x_shape = shapes[0];
    channels_last = geometry[0] != 0;
    side = geometry[1], k = geometry[2], stride = geometry[3], pad = geometry[4];
    if (side <= 0 || k <= 0 || stride <= 0 || pad < 0 || side + 2 * pad < k) return false;
    out = (side + 2 * pad - k) / stride + 1;
    if (channels_last ? !(x_ndim == 3 && x_shape[1] == side * side)
                      : !(x_ndim == 4 && x_shape[2] == side && x_shape[3] == side))
      return false;
    batch = x_shape[0];
    channels = channels_last ? x_shape[2] : x_shape[1];
    features = channels * k * k;
    return dvt::is_shape(ndims[2], shapes[2], {batch, out * out, features});
  }
};

}  // namespace

extern "C" {

// LayerNorm over the last axis. Inputs: x [..., D], weight [D], bias [D], eps [1]. Output: [..., D].
int dvt_layer_norm(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    if (nparam != 5 || ndims[0] < 1) return dvt::kBadArguments;
    const int64_t d = shapes[0][ndims[0] - 1];
    if (!is_shape(ndims[1], shapes[1], {d}) || !is_shape(ndims[2], shapes[2], {d}) ||
        !is_shape(ndims[3], shapes[3], {1}) || !same_shape(ndims, shapes, 4, 0))
      return dvt::kBadArguments;
    const dvt::Tensors t{params};
    const float *x = t.in(0), *w = t.in(1), *b = t.in(2), eps = *t.in(3);
    float *y = t.out(4);
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
int dvt_gelu(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    if (nparam != 2 || !same_shape(ndims, shapes, 1, 0)) return dvt::kBadArguments;
    const float *x = dvt::Tensors{params}.in(0);
    float *y = dvt::Tensors{params}.out(1);
    dvt::for_each_element(count(ndims[0], shapes[0]), 16, [&](int64_t i) {
      y[i] = 0.5f * x[i] * (1.0f + erf_approx(x[i] * 0.70710678118654752f));
    });
    return 0;
  });
}

// Soft split: torch's unfold with the tokens axis first. Inputs: x, geometry int32 [5] (see SoftSplit).
// Output [B, L, C * kernel * kernel], L = out * out with out = (side + 2 padding - kernel) / stride + 1,
// features ordered (c, ki, kj) as torch orders them; zero padding.
int dvt_unfold(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    SoftSplit g;
    if (nparam != 3 || !g.read(params, ndims, shapes)) return dvt::kBadArguments;
    const float *x = static_cast<const float *>(params[0]);
    float *y = static_cast<float *>(params[2]);
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
int dvt_sandwich(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    if (nparam != 3 || ndims[0] != 4 || ndims[1] != 2 || shapes[0][2] != shapes[1][1] || shapes[0][3] != shapes[1][1] ||
        !(ndims[2] == 4 && shapes[2][0] == shapes[0][0] && shapes[2][1] == shapes[0][1] &&
          shapes[2][2] == shapes[1][0] && shapes[2][3] == shapes[1][0]))
      return dvt::kBadArguments;
    const float *x = static_cast<const float *>(params[0]);
    const float *p = static_cast<const float *>(params[1]);
    float *y = static_cast<float *>(params[2]);
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
int dvt_layer_norm_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    if (nparam != 7 || ndims[0] < 1) return dvt::kBadArguments;
    const int64_t d = shapes[0][ndims[0] - 1];
    if (!is_shape(ndims[1], shapes[1], {d}) || !same_shape(ndims, shapes, 2, 0) ||
        !is_shape(ndims[3], shapes[3], {1}) ||
        !same_shape(ndims, shapes, 4, 0) || !is_shape(ndims[5], shapes[5], {d}) || !is_shape(ndims[6], shapes[6], {d}))
      return dvt::kBadArguments;
    const float *x = static_cast<const float *>(params[0]);
    const float *w = static_cast<const float *>(params[1]);
    const float *dy = static_cast<const float *>(params[2]);
    const float eps = *static_cast<const float *>(params[3]);
    float *dx = static_cast<float *>(params[4]);
    float *dw = static_cast<float *>(params[5]);
    float *db = static_cast<float *>(params[6]);
    const int64_t rows = count(ndims[0] - 1, shapes[0]);
    dvt::layer_norm_backward(rows, d, nullptr, eps, w, dy, dx, nullptr, 0, dw, db,
                             [&](int64_t r, float *) { return x + r * d; });
    return 0;
  });
}

// Backward of dvt_gelu: dx = dy * (Phi(x) + x phi(x)), Phi the normal CDF, phi its density.
int dvt_gelu_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    if (nparam != 3 || !same_shape(ndims, shapes, 1, 0) || !same_shape(ndims, shapes, 2, 0)) return dvt::kBadArguments;
    const dvt::Tensors t{params};
    const float *x = t.in(0), *dy = t.in(1);
    float *dx = t.out(2);
    dvt::for_each_element(count(ndims[0], shapes[0]), 24, [&](int64_t i) {
      const float v = x[i];
      const float cdf = 0.5f * (1.0f + erf_approx(v * 0.70710678118654752f));
      const float pdf = 0.39894228040143268f * exp_approx(-0.5f * v * v);
      dx[i] = dy[i] * (cdf + v * pdf);
    });
    return 0;
  });
}

// Backward of dvt_unfold (torch's fold): every output feature adds its gradient to the pixel it was read
// from. Inputs: x (for its shape only), geometry as dvt_unfold, dy [B, L, C * kernel * kernel]. Output:
// dx of x's shape. Each image is summed by one thread, in a fixed order.
int dvt_unfold_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    SoftSplit g;
    if (nparam != 4 || !g.read(params, ndims, shapes) || !same_shape(ndims, shapes, 3, 0))
      return dvt::kBadArguments;
    const float *dy = static_cast<const float *>(params[2]);
    float *dx = static_cast<float *>(params[3]);
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

// One AdamW update of a float32 tensor, as torch.optim.AdamW and dvt_ms.train.optimizer compute it, in one
// pass. Inputs: param, grad, exp_avg, exp_avg_sq (same shape), hyper [9] = {lr, step_size (lr / bias
// correction 1), sqrt(bias correction 2), 1 - beta1, beta2, 1 - beta2, eps, weight_decay, apply}. Outputs: the
// new param, exp_avg and exp_avg_sq; with apply 0 (a step whose gradients overflowed) the old ones, unchanged.
// Every operation is a separate float32 rounding, in the order of the stock ops (built with
// -ffp-contract=off: no fused multiply-adds), so both paths give the same bits.
int dvt_adamw(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    if (nparam != 8 || !is_shape(ndims[4], shapes[4], {9})) return dvt::kBadArguments;
    for (int t : {1, 2, 3, 5, 6, 7})
      if (!same_shape(ndims, shapes, t, 0)) return dvt::kBadArguments;
    const float *p = static_cast<const float *>(params[0]);
    const float *g = static_cast<const float *>(params[1]);
    const float *m = static_cast<const float *>(params[2]);
    const float *v = static_cast<const float *>(params[3]);
    const float *hyper = static_cast<const float *>(params[4]);
    float *p_out = static_cast<float *>(params[5]);
    float *m_out = static_cast<float *>(params[6]);
    float *v_out = static_cast<float *>(params[7]);
    const float lr = hyper[0], step_size = hyper[1], bias2_sqrt = hyper[2], one_minus_beta1 = hyper[3];
    const float beta2 = hyper[4], one_minus_beta2 = hyper[5], eps = hyper[6], weight_decay = hyper[7];
    const int64_t n = count(ndims[0], shapes[0]);
    if (hyper[8] == 0.0f) {
      std::memcpy(p_out, p, n * sizeof(float));
      std::memcpy(m_out, m, n * sizeof(float));
      std::memcpy(v_out, v, n * sizeof(float));
      return 0;
    }
    const float keep = weight_decay != 0.0f ? 1.0f - lr * weight_decay : 1.0f;
    const int64_t block = 4096;
    parallel_for((n + block - 1) / block, 12 * block, [&](int64_t first, int64_t last, int64_t) {
      const int64_t end = std::min(n, last * block);
#pragma omp simd
      for (int64_t i = first * block; i < end; ++i) {
        const float decayed = p[i] * keep;
        const float m_new = m[i] + (g[i] - m[i]) * one_minus_beta1;
        const float v_new = v[i] * beta2 + g[i] * g[i] * one_minus_beta2;
        const float denom = std::sqrt(v_new) / bias2_sqrt + eps;
        m_out[i] = m_new;
        v_out[i] = v_new;
        p_out[i] = decayed - step_size * (m_new / denom);
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
int dvt_dropout_mask(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    constexpr int64_t kTable = 1 << 18, kMask = kTable - 1;
    if (nparam != 6 || ndims[0] < 1 || !is_shape(ndims[1], shapes[1], {6, 1}) ||
        !is_shape(ndims[2], shapes[2], {kTable}) || !is_shape(ndims[3], shapes[3], {3}) ||
        !is_shape(ndims[4], shapes[4], {1}) || !same_shape(ndims, shapes, 5, 0))
      return dvt::kBadArguments;
    const dvt::Tensors t{params};
    const int32_t *w = t.in<int32_t>(1), *table = t.in<int32_t>(2), *cfg = t.in<int32_t>(3);
    const float scale = *t.in(4);
    float *out = t.out(5);
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
// scaled gradients, unscaling, AdamW (exactly as dvt_adamw) and the EMA of the updated weights. Inputs: hyper
// float32 [12] = {lr, step_size, sqrt(bias correction 2), 1 - beta1, beta2, 1 - beta2, eps, weight_decay,
// 1 / loss scale, EMA decay, 1 - EMA decay, EMA on}; decayed float32 [T] (1: the tensor takes the weight decay);
// then T parameters, T scaled gradients, T exp_avg, T exp_avg_sq and, with the EMA, T shadows. Output: float32
// [1], 1 when every gradient was finite (the step was applied), else 0 (nothing changed). The tensors are
// updated in place (the op is marked side_effect_mem: MindSpore orders it after every read of them and before
// every later one).
int dvt_train_update(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    if (nparam < 4 || !is_shape(ndims[0], shapes[0], {12}) || ndims[1] != 1) return dvt::kBadArguments;
    const float *hyper = static_cast<const float *>(params[0]);
    const float *decayed = static_cast<const float *>(params[1]);
    const int64_t groups = hyper[11] != 0.0f ? 5 : 4, tensors = shapes[1][0];
    if (tensors < 1 || nparam != 3 + groups * tensors || !(ndims[nparam - 1] == 1 && shapes[nparam - 1][0] == 1))
      return dvt::kBadArguments;
    std::vector<int64_t> start(tensors + 1, 0);  // each tensor's first element in the concatenation of all
    for (int64_t t = 0; t < tensors; ++t) {
      const int64_t n = count(ndims[2 + t], shapes[2 + t]);
      for (int64_t g = 1; g < groups; ++g) {
        const int64_t k = 2 + g * tensors + t;
        if (ndims[k] != ndims[2 + t] || count(ndims[k], shapes[k]) != n) return dvt::kBadArguments;
      }
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
    const float lr = hyper[0], step_size = hyper[1], bias2_sqrt = hyper[2], one_minus_beta1 = hyper[3];
    const float beta2 = hyper[4], one_minus_beta2 = hyper[5], eps = hyper[6], weight_decay = hyper[7];
    const float inv_scale = hyper[8], ema_decay = hyper[9], ema_rest = hyper[10];
    const float keep_decayed = weight_decay != 0.0f ? 1.0f - lr * weight_decay : 1.0f;
    const bool ema = groups == 5;
    parallel_for(blocks, 16 * block, [&](int64_t first, int64_t last, int64_t) {
      each_piece(first * block, std::min(total, last * block), [&](int64_t t, int64_t i0, int64_t i1) {
        float *p = tensor(0, t), *m = tensor(2, t), *v = tensor(3, t);
        const float *graw = tensor(1, t);
        const float keep = decayed[t] != 0.0f ? keep_decayed : 1.0f;
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) {
          const float g = graw[i] * inv_scale;
          const float param = p[i] * keep;
          const float m_new = m[i] + (g - m[i]) * one_minus_beta1;
          const float v_new = v[i] * beta2 + g * g * one_minus_beta2;
          const float denom = std::sqrt(v_new) / bias2_sqrt + eps;
          m[i] = m_new;
          v[i] = v_new;
          p[i] = param - step_size * (m_new / denom);
        }
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
int dvt_all_finite(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    if (nparam < 2 || count(ndims[nparam - 1], shapes[nparam - 1]) != 1) return dvt::kBadArguments;
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

}  // extern "C"
