// Fused float32 CPU kernels of whole layers, forward and backward, called through mindspore.ops.Custom
// (func_type "aot"): the stack of transformer blocks of one DVT exit, and the token performer of the T2T stem.
//
// Each block is an attention half (LayerNorm, qkv, scores with an optional relation term, softmax, values,
// projection, drop path, residual) and an MLP half (LayerNorm over the tokens and, with feature reuse, the
// upstream tokens after the block's reuse MLP resized to this grid; fc1, exact GELU, fc2, drop path,
// residual). One kernel runs every block of the exit, so that an exit is a handful of graph nodes instead of
// ~80 per block: MindSpore's compile time grows with the nodes, the autodiff of every custom op and every
// parameter input, and its launch cost with the kernels per call. The matrix products call oneDNN's sgemm
// (the library MindSpore's own CPU kernels link, loaded with it), split over the worker pool; everything
// between two products is one pass over rows that are still in cache. In training the forward also writes
// what the backward reads into one buffer (layout: StackLayout).
//
// Row-major layouts as the stock path: tokens [B, N, C]; qkv [B, N, 3C] with columns (q | k | v), head j at
// columns j*d .. (j+1)*d of each; attention logits and relation terms of the stack [B, depth * heads, N, N]
// (block i, head j: channel i * heads + j, as the stock path concatenates them). Drop path: masks [B, M] of the
// whole exit, read from a given column on (see Stack).

#include "kernel_common.h"

extern "C" int dnnl_sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                          int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

namespace {

using dvt::is_shape;
using dvt::kBadArguments;
using dvt::parallel_for;

// C = alpha op(A) op(B) + beta C on the calling thread (row-major; op transposes when t is true).
inline void gemm_serial(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // oneDNN needs k >= 1; an empty sum is 0
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// The same product split over the pool: by rows of C when it has at least as many rows as columns, else by
// columns in multiples of 16 (one cache line of floats).
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
          const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (m >= n) {
    parallel_for(m, n * k, [&](int64_t first, int64_t last, int64_t) {
      gemm_serial(ta, tb, last - first, n, k, alpha, ta ? a + first : a + first * lda, lda, b, ldb, beta,
                  c + first * ldc, ldc);
    });
  } else {
    const int64_t panels = (n + 15) / 16;
    parallel_for(panels, 16 * m * k, [&](int64_t first, int64_t last, int64_t) {
      const int64_t j0 = first * 16, j1 = std::min(n, last * 16);
      gemm_serial(ta, tb, m, j1 - j0, k, alpha, a, lda, tb ? b + j0 * ldb : b + j0, ldb, beta, c + j0, ldc);
    });
  }
}

// out[j] = sum over rows of x[r, j] (x [rows, n], row stride ld): split by columns, so every sum runs over
// the rows in order whatever the number of threads.
void column_sums(const float *x, int64_t rows, int64_t n, int64_t ld, float *out) {
  const int64_t panels = (n + 15) / 16;
  parallel_for(panels, 16 * rows, [&](int64_t first, int64_t last, int64_t) {
    const int64_t j0 = first * 16, j1 = std::min(n, last * 16);
    std::fill(out + j0, out + j1, 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      const float *xr = x + r * ld;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) out[j] += xr[j];
    }
  });
}

// Each row of c [rows, n] set to bias [n] (the product then adds onto it: beta 1).
void fill_rows(float *c, int64_t rows, int64_t n, const float *bias) {
  parallel_for(rows, n, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t r = first; r < last; ++r) std::memcpy(c + r * n, bias, n * sizeof(float));
  });
}

// The scale of a branch: per image (drop path: masks[b, column]), per element (dropout: elements[r, i]), or 1.
struct PathMask {
  const float *masks = nullptr;
  int64_t columns = 0, column = -1;
  const float *elements = nullptr;  // [rows, n], the branch's shape
  float of(int64_t b) const { return masks == nullptr ? 1.0f : masks[b * columns + column]; }
};

bool is_placeholder(int ndim, const int64_t *shape) { return ndim == 1 && shape[0] == 1; }

// y[r] = [x[r] +] mask * (y[r] + bias), for the rows of the products' output y [rows, n].
void bias_mask_residual(float *y, const float *x, const float *bias, const PathMask &mask, int64_t rows,
                        int64_t tokens, int64_t n) {
  parallel_for(rows, 2 * n, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t r = first; r < last; ++r) {
      const float m = mask.of(r / tokens);
      float *yr = y + r * n;
      if (mask.elements != nullptr) {
        const float *er = mask.elements + r * n;
        if (x != nullptr) {
          const float *xr = x + r * n;
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] + (yr[i] + bias[i]) * er[i];
        } else {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) yr[i] = (yr[i] + bias[i]) * er[i];
        }
      } else if (x != nullptr) {
        const float *xr = x + r * n;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] + (yr[i] + bias[i]) * m;
      } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) yr[i] = (yr[i] + bias[i]) * m;
      }
    }
  });
}

// g = mask * dy over rows [rows, n].
void masked_copy(float *g, const float *dy, const PathMask &mask, int64_t rows, int64_t tokens, int64_t n) {
  parallel_for(rows, n, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t r = first; r < last; ++r) {
      if (mask.elements != nullptr) {
        const float *er = mask.elements + r * n;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) g[r * n + i] = dy[r * n + i] * er[i];
      } else {
        const float m = mask.of(r / tokens);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) g[r * n + i] = dy[r * n + i] * m;
      }
    }
  });
}

// LayerNorm of rows [rows, d] (row(r, buffer) gives the input row) into out, with each row's (mean, 1 / std).
template <typename RowInput>
void layer_norm_rows(int64_t rows, int64_t d, float eps, const float *w, const float *b, float *out, float *stats,
                     const RowInput &row) {
  parallel_for(rows, 6 * d, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t r = first; r < last; ++r) {
      float *o = out + r * d;
      const float *xr = row(r, o);
      float mean, rstd;
      dvt::row_stats(xr, d, eps, &mean, &rstd);
      stats[2 * r] = mean;
      stats[2 * r + 1] = rstd;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) o[i] = (xr[i] - mean) * rstd * w[i] + b[i];
    }
  });
}

// ---- the two halves of a block ------------------------------------------------------------------------------

struct Dims {
  int64_t batch, tokens, width, heads, head_dim, rows;
};

struct AttentionWeights {
  const float *ln_w, *ln_b, *qkv_w, *qkv_b, *proj_w, *proj_b;  // qkv_b null: qkv without bias
};

struct AttentionGrads {
  float *ln_w, *ln_b, *qkv_w, *qkv_b, *proj_w, *proj_b;
};

// What the forward keeps of one attention half for the backward (or scratch in inference).
struct AttentionSaved {
  float *ln, *qkv, *probs, *mixed, *stats;  // probs null in inference: per-thread planes instead
};

// Attention-logit planes of image b, head j: plane (b * per_image + offset + j), each N x N.
struct Planes {
  float *data = nullptr;
  int64_t per_image = 0, offset = 0;
  float *at(int64_t b, int64_t j, int64_t n) const { return data + ((b * per_image + offset + j) * n) * n; }
};

// y = x + mask * proj(attention(LayerNorm(x))); relation (may be null) adds to the logits; logits (may be null)
// receive them.
void attention_forward(const Dims &dm, float eps, const AttentionWeights &w, const float *x, Planes relation,
                       Planes logits, const PathMask &mask, const AttentionSaved &s, float *y) {
  const int64_t n = dm.tokens, c = dm.width, c3 = 3 * c, d = dm.head_dim, heads = dm.heads, rows = dm.rows;
  layer_norm_rows(rows, c, eps, w.ln_w, w.ln_b, s.ln, s.stats, [&](int64_t r, float *) { return x + r * c; });
  if (w.qkv_b != nullptr) fill_rows(s.qkv, rows, c3, w.qkv_b);
  gemm(false, true, rows, c3, c, 1.0f, s.ln, c, w.qkv_w, c, w.qkv_b != nullptr ? 1.0f : 0.0f, s.qkv, c3);

  const float scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));
  const int64_t slots = dvt::Pool::instance().threads();
  dvt::Scratch scratch(s.probs == nullptr ? slots * n * n : 0);
  float *plane_scratch = scratch.take(s.probs == nullptr ? slots * n * n : 0);
  parallel_for(dm.batch * heads, 4 * n * n * d, [&](int64_t first, int64_t last, int64_t slot) {
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item / heads, j = item % heads;
      const float *q = s.qkv + b * n * c3 + j * d, *k = q + c, *v = q + 2 * c;
      float *p = s.probs != nullptr ? s.probs + item * n * n : plane_scratch + slot * n * n;
      gemm_serial(false, true, n, n, d, 1.0f, q, c3, k, c3, 0.0f, p, n);
      const float *rel = relation.data != nullptr ? relation.at(b, j, n) : nullptr;
      float *out_logits = logits.data != nullptr ? logits.at(b, j, n) : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        float *pr = p + i * n;
        if (rel != nullptr) {
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) pr[t] = pr[t] * scale + rel[i * n + t];
        } else {
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) pr[t] = pr[t] * scale;
        }
        if (out_logits != nullptr) std::memcpy(out_logits + i * n, pr, n * sizeof(float));
        float top = pr[0];
        for (int64_t t = 1; t < n; ++t) top = std::max(top, pr[t]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < n; ++t) {
          pr[t] = dvt::exp_approx(pr[t] - top);
          sum += pr[t];
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t t = 0; t < n; ++t) pr[t] *= inv;
      }
      gemm_serial(false, false, n, d, n, 1.0f, p, n, v, c3, 0.0f, s.mixed + b * n * c + j * d, c);
    }
  });
  gemm(false, true, rows, c, c, 1.0f, s.mixed, c, w.proj_w, c, 0.0f, y, c);
  bias_mask_residual(y, x, w.proj_b, mask, rows, n, c);
}

// Backward of attention_forward: dx = dy + the branch's gradient; d_relation (may be null) receives the logits'
// gradient; d_logits (may be null) is the gradient arriving at the emitted logits.
void attention_backward(const Dims &dm, const AttentionWeights &w, const float *x, const AttentionSaved &s,
                        const PathMask &mask, const float *dy, Planes d_logits, Planes d_relation,
                        const AttentionGrads &g, float *dx) {
  const int64_t n = dm.tokens, c = dm.width, c3 = 3 * c, d = dm.head_dim, heads = dm.heads, rows = dm.rows;
  const int64_t slots = dvt::Pool::instance().threads();
  dvt::Scratch scratch(rows * (3 * c + c3) + slots * n * n);
  float *gy = scratch.take(rows * c), *dmixed = scratch.take(rows * c), *dqkv = scratch.take(rows * c3);
  float *dln = scratch.take(rows * c), *plane_scratch = scratch.take(slots * n * n);

  masked_copy(gy, dy, mask, rows, n, c);
  column_sums(gy, rows, c, c, g.proj_b);
  gemm(true, false, c, c, rows, 1.0f, gy, c, s.mixed, c, 0.0f, g.proj_w, c);
  gemm(false, false, rows, c, c, 1.0f, gy, c, w.proj_w, c, 0.0f, dmixed, c);

  const float scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));
  parallel_for(dm.batch * heads, 8 * n * n * d, [&](int64_t first, int64_t last, int64_t slot) {
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item / heads, j = item % heads;
      const float *q = s.qkv + b * n * c3 + j * d, *k = q + c, *v = q + 2 * c;
      const float *p = s.probs + item * n * n;
      const float *dmixed_h = dmixed + b * n * c + j * d;
      float *dq = dqkv + b * n * c3 + j * d, *dk = dq + c, *dv = dq + 2 * c;
      float *ds = plane_scratch + slot * n * n;
      gemm_serial(false, true, n, n, d, 1.0f, dmixed_h, c, v, c3, 0.0f, ds, n);  // d probabilities
      gemm_serial(true, false, n, d, n, 1.0f, p, n, dmixed_h, c, 0.0f, dv, c3);   // d values
      const float *dl = d_logits.data != nullptr ? d_logits.at(b, j, n) : nullptr;
      for (int64_t i = 0; i < n; ++i) {  // softmax backward, plus what reached the emitted logits
        float *dsr = ds + i * n;
        const float *pr = p + i * n;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t t = 0; t < n; ++t) dot += dsr[t] * pr[t];
        if (dl != nullptr) {
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) dsr[t] = pr[t] * (dsr[t] - dot) + dl[i * n + t];
        } else {
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) dsr[t] = pr[t] * (dsr[t] - dot);
        }
      }
      if (d_relation.data != nullptr) std::memcpy(d_relation.at(b, j, n), ds, n * n * sizeof(float));
      gemm_serial(false, false, n, d, n, scale, ds, n, k, c3, 0.0f, dq, c3);  // d queries
      gemm_serial(true, false, n, d, n, scale, ds, n, q, c3, 0.0f, dk, c3);   // d keys
    }
  });
  if (w.qkv_b != nullptr) column_sums(dqkv, rows, c3, c3, g.qkv_b);
  gemm(true, false, c3, c, rows, 1.0f, dqkv, c3, s.ln, c, 0.0f, g.qkv_w, c);
  gemm(false, false, rows, c, c3, 1.0f, dqkv, c3, w.qkv_w, c, 0.0f, dln, c);
  dvt::layer_norm_backward(rows, c, s.stats, 0.0f, w.ln_w, dln, dx, dy, c, g.ln_w, g.ln_b,
                           [&](int64_t r, float *) { return x + r * c; });
}

struct MlpDims {
  int64_t batch, tokens, width, extra, hidden, out, rows;  // input [rows, width (+ extra)], output [rows, out]
};

struct MlpWeights {
  const float *ln_w, *ln_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
};

struct MlpGrads {
  float *ln_w, *ln_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
};

struct MlpSaved {
  float *ln, *pre, *stats;  // LayerNorm output, fc1 output before GELU, LayerNorm statistics
};

// y = [x +] mask * fc2(GELU(fc1(LayerNorm([x, extra])))); extra [rows, m.extra] may be null (m.extra 0).
// Residual when residual is true (then m.out == m.width).
void mlp_forward(const MlpDims &m, float eps, const MlpWeights &w, const float *x, const float *extra,
                 bool residual, const PathMask &mask, const MlpSaved &s, float *y) {
  const int64_t dim = m.width + m.extra, rows = m.rows, hidden = m.hidden;
  layer_norm_rows(rows, dim, eps, w.ln_w, w.ln_b, s.ln, s.stats, [&](int64_t r, float *buffer) {
    if (extra == nullptr) return x + r * m.width;
    std::memcpy(buffer, x + r * m.width, m.width * sizeof(float));  // assembled in the output row
    std::memcpy(buffer + m.width, extra + r * m.extra, m.extra * sizeof(float));
    return static_cast<const float *>(buffer);
  });
  fill_rows(s.pre, rows, hidden, w.fc1_b);
  gemm(false, true, rows, hidden, dim, 1.0f, s.ln, dim, w.fc1_w, dim, 1.0f, s.pre, hidden);
  dvt::Scratch scratch(rows * hidden);
  float *act = scratch.take(rows * hidden);
  const int64_t block = 4096, total = rows * hidden;
  parallel_for((total + block - 1) / block, 16 * block, [&](int64_t first, int64_t last, int64_t) {
    const int64_t end = std::min(total, last * block);
#pragma omp simd
    for (int64_t i = first * block; i < end; ++i) act[i] = dvt::gelu(s.pre[i]);
  });
  gemm(false, true, rows, m.out, hidden, 1.0f, act, hidden, w.fc2_w, hidden, 0.0f, y, m.out);
  bias_mask_residual(y, residual ? x : nullptr, w.fc2_b, mask, rows, m.tokens, m.out);
}

// Backward of mlp_forward: dx [rows, width] (dy added with the residual), d_extra [rows, extra] (may be null).
void mlp_backward(const MlpDims &m, const MlpWeights &w, const float *x, const float *extra, bool residual,
                  const PathMask &mask, const MlpSaved &s, const float *dy, const MlpGrads &g, float *dx,
                  float *d_extra) {
  const int64_t dim = m.width + m.extra, rows = m.rows, hidden = m.hidden, out = m.out;
  dvt::Scratch scratch(rows * (out + 3 * hidden + 2 * dim));
  float *gy = scratch.take(rows * out), *act = scratch.take(rows * hidden), *slope = scratch.take(rows * hidden);
  float *da = scratch.take(rows * hidden), *dln = scratch.take(rows * dim), *dh = scratch.take(rows * dim);

  masked_copy(gy, dy, mask, rows, m.tokens, out);
  const int64_t block = 4096, total = rows * hidden;
  parallel_for((total + block - 1) / block, 32 * block, [&](int64_t first, int64_t last, int64_t) {
    const int64_t end = std::min(total, last * block);
#pragma omp simd
    for (int64_t i = first * block; i < end; ++i) {
      act[i] = dvt::gelu(s.pre[i]);
      slope[i] = dvt::gelu_slope(s.pre[i]);
    }
  });
  column_sums(gy, rows, out, out, g.fc2_b);
  gemm(true, false, out, hidden, rows, 1.0f, gy, out, act, hidden, 0.0f, g.fc2_w, hidden);
  gemm(false, false, rows, hidden, out, 1.0f, gy, out, w.fc2_w, hidden, 0.0f, da, hidden);
  parallel_for((total + block - 1) / block, 2 * block, [&](int64_t first, int64_t last, int64_t) {
    const int64_t end = std::min(total, last * block);
#pragma omp simd
    for (int64_t i = first * block; i < end; ++i) da[i] *= slope[i];
  });
  column_sums(da, rows, hidden, hidden, g.fc1_b);
  gemm(true, false, hidden, dim, rows, 1.0f, da, hidden, s.ln, dim, 0.0f, g.fc1_w, dim);
  gemm(false, false, rows, dim, hidden, 1.0f, da, hidden, w.fc1_w, dim, 0.0f, dln, dim);
  dvt::layer_norm_backward(rows, dim, s.stats, 0.0f, w.ln_w, dln, dh, nullptr, 0, g.ln_w, g.ln_b,
                           [&](int64_t r, float *buffer) {
                             if (extra == nullptr) return x + r * m.width;
                             std::memcpy(buffer, x + r * m.width, m.width * sizeof(float));
                             std::memcpy(buffer + m.width, extra + r * m.extra, m.extra * sizeof(float));
                             return static_cast<const float *>(buffer);
                           });
  parallel_for(rows, dim, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t r = first; r < last; ++r) {
      const float *dhr = dh + r * dim;
      float *dxr = dx + r * m.width;
      if (residual) {
        const float *dyr = dy + r * out;
#pragma omp simd
        for (int64_t i = 0; i < m.width; ++i) dxr[i] = dyr[i] + dhr[i];
      } else {
        std::memcpy(dxr, dhr, m.width * sizeof(float));
      }
      if (d_extra != nullptr) std::memcpy(d_extra + r * m.extra, dhr + m.width, m.extra * sizeof(float));
    }
  });
}

// ---- the stack of one exit ----------------------------------------------------------------------------------

// What a fused layer's arguments start with: x [B, T, C] first, the int32 flags at args[flags] (``size`` values)
// and the LayerNorm eps [1] at args[eps], all before the weights at first_weight. Returns the flags, or nullptr
// when any of that disagrees.
const int32_t *read_flags(int nparam, void **args, int *ndims, int64_t **shapes, int64_t first_weight, int flags,
                          int64_t size, int eps) {
  if (nparam < first_weight || ndims[0] != 3 || !is_shape(ndims[flags], shapes[flags], {size}) ||
      !is_shape(ndims[eps], shapes[eps], {1}))
    return nullptr;
  return static_cast<const int32_t *>(args[flags]);
}

// The stack's inputs and outputs, read from MindSpore's arguments and checked against each other.
// Inputs: 0 x [B, N, C], 1 upstream tokens [B, Nr, Cu] (or [1]), 2 relation terms [B, depth * heads, N, N]
// (or [1]), 3 grid resize P [N - 1, Nr - 1] (or [1]), 4 drop-path masks [B, M] (or [1]; block i's attention
// branch scaled by column first + 2i, its MLP branch by first + 2i + 1), 5 int32 config {depth, heads, qkv bias,
// relation, drop path, feature reuse, emit logits, training, first}, 6 LayerNorm eps [1], then
// 18 weights per block: norm1 w, b [C]; qkv w [3C, C], b [3C] (or [1] without qkv bias); proj w [C, C], b [C];
// norm2 w, b [C + Cr]; fc1 w [H, C + Cr], b [H]; fc2 w [C, H], b [C]; the reuse MLP's norm w, b [Cu], fc1 w
// [Hr, Cu], b [Hr], fc2 w [Cr, Hr], b [Cr] (each [1] without feature reuse).
struct Stack {
  static constexpr int64_t kPerBlock = 18, kFirstWeight = 7, kReuse = 12;
  int64_t depth = 0, first_mask_column = 0, mask_columns = 0;
  bool qkv_bias = false, relation = false, masked = false, reuse = false, emit = false, training = false;
  Dims dm{};
  int64_t up_tokens = 0, up_width = 0, reuse_hidden = 0, reuse_width = 0, hidden = 0;
  float eps = 0.0f;
  void **params = nullptr;

  const float *input(int64_t i) const { return static_cast<const float *>(params[i]); }
  const float *weight(int64_t block, int64_t k) const { return input(kFirstWeight + block * kPerBlock + k); }
  int64_t weights() const { return depth * kPerBlock; }

  // Floats the forward keeps per block for the backward (the training output "saved").
  int64_t saved_per_block() const {
    const int64_t rows = dm.rows, c = dm.width, dim = c + reuse_width, up_rows = dm.batch * up_tokens;
    int64_t floats = 2 * rows * c + rows * c + rows * 3 * c + dm.batch * dm.heads * dm.tokens * dm.tokens +
                     rows * c + 2 * rows + rows * dim + rows * hidden + 2 * rows;
    if (reuse) floats += rows * reuse_width + up_rows * up_width + up_rows * reuse_hidden + 2 * up_rows +
                         up_rows * reuse_width;
    return floats;
  }

  // Reads and checks the arguments: ``after`` of them follow the weights (``after_training`` instead, when not
  // negative and the flags say training); false when anything disagrees.
  bool read(int nparam, void **args, int *ndims, int64_t **shapes, int after, int after_training = -1) {
    params = args;
    const int32_t *cfg = read_flags(nparam, args, ndims, shapes, kFirstWeight, 5, 9, 6);
    if (cfg == nullptr) return false;
    depth = cfg[0];
    qkv_bias = cfg[2] != 0;
    relation = cfg[3] != 0;
    masked = cfg[4] != 0;
    reuse = cfg[5] != 0;
    emit = cfg[6] != 0;
    training = cfg[7] != 0;
    first_mask_column = cfg[8];
    if (training && after_training >= 0) after = after_training;
    if (depth < 1 || nparam != kFirstWeight + depth * kPerBlock + after) return false;
    const int64_t b = shapes[0][0], n = shapes[0][1], c = shapes[0][2], heads = cfg[1];
    if (heads <= 0 || c % heads != 0 || n < 1) return false;
    dm = Dims{b, n, c, heads, c / heads, b * n};
    eps = *input(6);
    if (reuse) {
      if (ndims[1] != 3 || shapes[1][0] != b || shapes[1][1] < 1) return false;
      up_tokens = shapes[1][1];
      up_width = shapes[1][2];
      if (!is_shape(ndims[3], shapes[3], {n - 1, up_tokens - 1})) return false;
      const int64_t r = kFirstWeight + kReuse;
      if (ndims[r + 2] != 2 || ndims[r + 4] != 2) return false;
      reuse_hidden = shapes[r + 2][0];
      reuse_width = shapes[r + 4][0];
    }
    if (relation && !is_shape(ndims[2], shapes[2], {b, depth * heads, n, n})) return false;
    if (masked && (ndims[4] != 2 || shapes[4][0] != b || first_mask_column < 0 ||
                   shapes[4][1] < first_mask_column + 2 * depth))
      return false;
    mask_columns = masked ? shapes[4][1] : 0;
    if (ndims[kFirstWeight + 8] != 2) return false;
    hidden = shapes[kFirstWeight + 8][0];
    const int64_t dim = c + reuse_width;
    for (int64_t blk = 0; blk < depth; ++blk) {
      const int64_t k = kFirstWeight + blk * kPerBlock;
      auto shaped = [&](int64_t i, std::initializer_list<int64_t> shape) {
        return is_shape(ndims[k + i], shapes[k + i], shape);
      };
      auto absent = [&](int64_t i) { return is_placeholder(ndims[k + i], shapes[k + i]); };
      if (!shaped(0, {c}) || !shaped(1, {c}) || !shaped(2, {3 * c, c}) ||
          !(qkv_bias ? shaped(3, {3 * c}) : absent(3)) ||
          !shaped(4, {c, c}) || !shaped(5, {c}) || !shaped(6, {dim}) || !shaped(7, {dim}) ||
          !shaped(8, {hidden, dim}) || !shaped(9, {hidden}) || !shaped(10, {c, hidden}) || !shaped(11, {c}))
        return false;
      const int64_t r = kReuse;
      if (reuse ? !(shaped(r, {up_width}) && shaped(r + 1, {up_width}) && shaped(r + 2, {reuse_hidden, up_width}) &&
                    shaped(r + 3, {reuse_hidden}) && shaped(r + 4, {reuse_width, reuse_hidden}) &&
                    shaped(r + 5, {reuse_width}))
                : !(absent(r) && absent(r + 1) && absent(r + 2) && absent(r + 3) && absent(r + 4) && absent(r + 5)))
        return false;
    }
    return true;
  }

  AttentionWeights attention(int64_t blk) const {
    return {weight(blk, 0), weight(blk, 1), weight(blk, 2), qkv_bias ? weight(blk, 3) : nullptr, weight(blk, 4),
            weight(blk, 5)};
  }
  MlpWeights mlp(int64_t blk) const {
    return {weight(blk, 6), weight(blk, 7), weight(blk, 8), weight(blk, 9), weight(blk, 10), weight(blk, 11)};
  }
  MlpWeights reuse_mlp(int64_t blk) const {
    const int64_t k = kReuse;
    return {weight(blk, k), weight(blk, k + 1), weight(blk, k + 2), weight(blk, k + 3), weight(blk, k + 4),
            weight(blk, k + 5)};
  }
  MlpDims mlp_dims() const { return {dm.batch, dm.tokens, dm.width, reuse_width, hidden, dm.width, dm.rows}; }
  MlpDims reuse_dims() const {
    return {dm.batch, up_tokens, up_width, 0, reuse_hidden, reuse_width, dm.batch * up_tokens};
  }
  PathMask mask(int64_t column) const {
    PathMask m;
    if (masked) {
      m.masks = input(4);
      m.columns = mask_columns;
      m.column = first_mask_column + column;
    }
    return m;
  }
  Planes relation_planes(float *data, int64_t blk) const {
    return data == nullptr ? Planes{} : Planes{data, depth * dm.heads, blk * dm.heads};
  }
};

// Per-block pieces of the saved buffer (training) or of scratch memory (inference, one block at a time).
struct BlockSaved {
  float *x_attention, *x_mlp;  // the inputs of the two halves
  AttentionSaved attention;
  MlpSaved mlp, reuse;
  float *reused, *resized;  // reuse MLP output [B, Nr, Cr]; resized to this grid with a zero class row [B, N, Cr]
};

// keep_probs false (inference): no room for the probabilities (attention_forward uses per-thread planes).
BlockSaved carve(const Stack &st, float *base, bool keep_probs) {
  const int64_t rows = st.dm.rows, c = st.dm.width, dim = c + st.reuse_width, up_rows = st.dm.batch * st.up_tokens;
  BlockSaved s{};
  float *p = base;
  auto take = [&](int64_t floats) {
    float *piece = p;
    p += floats;
    return piece;
  };
  s.x_attention = take(rows * c);
  s.x_mlp = take(rows * c);
  s.attention.ln = take(rows * c);
  s.attention.qkv = take(rows * 3 * c);
  s.attention.probs = keep_probs ? take(st.dm.batch * st.dm.heads * st.dm.tokens * st.dm.tokens) : nullptr;
  s.attention.mixed = take(rows * c);
  s.attention.stats = take(2 * rows);
  s.mlp = {take(rows * dim), take(rows * st.hidden), take(2 * rows)};
  if (st.reuse) {
    s.resized = take(rows * st.reuse_width);
    s.reuse = {take(up_rows * st.up_width), take(up_rows * st.reuse_hidden), take(2 * up_rows)};
    s.reused = take(up_rows * st.reuse_width);
  }
  return s;
}

// Forward: u = [0; P @ r[b, 1:]] per image, the reuse MLP's output r resized to this grid with a zero class
// row. Backward (the same product transposed): dr[b, 0] = 0 (the class row is constant), dr[b, 1:] = P^T @ du[b, 1:].
void resize_reused(const Stack &st, const float *resize, bool backward, const float *src, float *dst) {
  const int64_t n = st.dm.tokens, nr = st.up_tokens, cr = st.reuse_width;
  const int64_t rows_out = backward ? nr : n, rows_in = backward ? n : nr;
  parallel_for(st.dm.batch, (n - 1) * (nr - 1) * cr, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t b = first; b < last; ++b) {
      std::fill(dst + b * rows_out * cr, dst + b * rows_out * cr + cr, 0.0f);
      gemm_serial(backward, false, rows_out - 1, cr, rows_in - 1, 1.0f, resize, nr - 1, src + (b * rows_in + 1) * cr,
                  cr, 0.0f, dst + (b * rows_out + 1) * cr, cr);
    }
  });
}

// ---- the token performer of the T2T stem ---------------------------------------------------------------------

// Inputs: 0 x [B, T, D], 1 dropout multipliers after proj [B, T, E] (or [1]), 2 after the MLP (or [1]), 3 int32
// config {training, dropout}, 4 LayerNorm eps [1], then 13 weights: norm1 w, b [D]; kqv w [3E, D], b [3E];
// random features w [M, E]; proj w [E, E], b [E]; norm2 w, b [E]; fc1 w [E, E], b [E]; fc2 w [E, E], b [E].
struct Performer {
  static constexpr int64_t kFirstWeight = 5, kWeights = 13;
  int64_t batch = 0, tokens = 0, dim = 0, emb = 0, features = 0, rows = 0;
  bool training = false, dropout = false;
  float eps = 0.0f;
  void **params = nullptr;

  const float *input(int64_t i) const { return static_cast<const float *>(params[i]); }
  const float *weight(int64_t k) const { return input(kFirstWeight + k); }

  // Floats the forward keeps for the backward: LayerNorm 1 output and statistics, kqv, the random features of k
  // and q, per image [v, 1]^T kp, the normalised values y and their normaliser, a (after the attention), LayerNorm
  // 2 output and statistics, fc1 output.
  int64_t saved() const {
    return rows * (dim + 2 + 3 * emb + 2 * features + emb + 1 + emb + emb + 2 + emb) + batch * (emb + 1) * features;
  }

  // Reads and checks the arguments, as Stack::read.
  bool read(int nparam, void **args, int *ndims, int64_t **shapes, int after, int after_training = -1) {
    params = args;
    const int32_t *cfg = read_flags(nparam, args, ndims, shapes, kFirstWeight, 3, 2, 4);
    if (cfg == nullptr) return false;
    training = cfg[0] != 0;
    dropout = cfg[1] != 0;
    if (training && after_training >= 0) after = after_training;
    if (nparam != kFirstWeight + kWeights + after) return false;
    batch = shapes[0][0];
    tokens = shapes[0][1];
    dim = shapes[0][2];
    rows = batch * tokens;
    eps = *input(4);
    const int64_t kqv = kFirstWeight + 2, w = kFirstWeight + 4;
    if (ndims[kqv] != 2 || shapes[kqv][0] % 3 != 0 || ndims[w] != 2) return false;
    emb = shapes[kqv][0] / 3;
    features = shapes[w][0];
    auto shaped = [&](int64_t k, std::initializer_list<int64_t> shape) {
      return is_shape(ndims[kFirstWeight + k], shapes[kFirstWeight + k], shape);
    };
    if (!shaped(0, {dim}) || !shaped(1, {dim}) || !shaped(2, {3 * emb, dim}) || !shaped(3, {3 * emb}) ||
        !shaped(4, {features, emb}) || !shaped(5, {emb, emb}) || !shaped(6, {emb}) || !shaped(7, {emb}) ||
        !shaped(8, {emb}) || !shaped(9, {emb, emb}) || !shaped(10, {emb}) || !shaped(11, {emb, emb}) ||
        !shaped(12, {emb}))
      return false;
    return dropout ? is_shape(ndims[1], shapes[1], {batch, tokens, emb}) &&
                         is_shape(ndims[2], shapes[2], {batch, tokens, emb})
                   : is_placeholder(ndims[1], shapes[1]) && is_placeholder(ndims[2], shapes[2]);
  }

  PathMask mask(int64_t i) const {
    PathMask m;
    if (dropout) m.elements = input(i);
    return m;
  }
  MlpDims mlp_dims() const { return {batch, tokens, emb, 0, emb, emb, rows}; }
  MlpWeights mlp() const { return {weight(7), weight(8), weight(9), weight(10), weight(11), weight(12)}; }
};

struct PerformerSaved {
  float *ln, *stats, *kqv, *kp, *qp, *kptv, *y, *den, *a;
  MlpSaved mlp;
};

PerformerSaved carve(const Performer &pf, float *base) {
  const int64_t rows = pf.rows, e = pf.emb, m = pf.features;
  float *p = base;
  auto take = [&](int64_t floats) {
    float *piece = p;
    p += floats;
    return piece;
  };
  PerformerSaved s{};
  s.ln = take(rows * pf.dim);
  s.stats = take(2 * rows);
  s.kqv = take(rows * 3 * e);
  s.kp = take(rows * m);
  s.qp = take(rows * m);
  s.kptv = take(pf.batch * (e + 1) * m);
  s.y = take(rows * e);
  s.den = take(rows);
  s.a = take(rows * e);
  s.mlp = {take(rows * e), take(rows * e), take(2 * rows)};
  return s;
}

// Positive random features of the columns [offset, offset + E) of kqv: exp(x w^T - |x|^2 / 2) / sqrt(M).
void random_features(const Performer &pf, const float *kqv, int64_t offset, float *out) {
  const int64_t e = pf.emb, m = pf.features, e3 = 3 * e;
  gemm(false, true, pf.rows, m, e, 1.0f, kqv + offset, e3, pf.weight(4), e, 0.0f, out, m);
  const float inv_sqrt_m = 1.0f / std::sqrt(static_cast<float>(m));
  parallel_for(pf.rows, 4 * (e + m), [&](int64_t first, int64_t last, int64_t) {
    for (int64_t r = first; r < last; ++r) {
      const float *x = kqv + r * e3 + offset;
      float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < e; ++i) sq += x[i] * x[i];
      float *o = out + r * m;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) o[j] = dvt::exp_approx(o[j] - 0.5f * sq) * inv_sqrt_m;
    }
  });
}

// Backward of random_features: adds to dx (columns [offset, offset + E) of dkqv) d(out) = dfeat, with feat the
// forward's output: dz = dfeat * feat, dx = dz w - x * sum_j dz.
void random_features_backward(const Performer &pf, const float *kqv, int64_t offset, const float *feat, float *dfeat,
                              float *dkqv) {
  const int64_t e = pf.emb, m = pf.features, e3 = 3 * e;
  dvt::Scratch scratch(pf.rows);
  float *row_sums = scratch.take(pf.rows);
  parallel_for(pf.rows, 2 * m, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t r = first; r < last; ++r) {
      float *dz = dfeat + r * m;
      const float *f = feat + r * m;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < m; ++j) {
        dz[j] *= f[j];
        sum += dz[j];
      }
      row_sums[r] = sum;
    }
  });
  gemm(false, false, pf.rows, e, m, 1.0f, dfeat, m, pf.weight(4), e, 0.0f, dkqv + offset, e3);
  parallel_for(pf.rows, e, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t r = first; r < last; ++r) {
      const float *x = kqv + r * e3 + offset;
      float *dx = dkqv + r * e3 + offset;
      const float sum = row_sums[r];
#pragma omp simd
      for (int64_t i = 0; i < e; ++i) dx[i] -= x[i] * sum;
    }
  });
}

}  // namespace

extern "C" {

// The token performer (single-head performer attention with v as the skip, then an MLP), as TokenPerformer:
// a = v + dropout(proj(y)), y = qp (kp^T v) / (qp . sum_t kp + 1e-8), kp / qp the random features of k / q;
// out = a + dropout(fc2(GELU(fc1(LayerNorm(a))))), (k, q, v) = kqv(LayerNorm(x)). Inputs as Performer::read.
// Outputs: out [B, T, E]; training also "saved" [Performer::saved()], what dvt_token_performer_grad reads.
int dvt_token_performer(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    Performer pf;
    if (!pf.read(nparam, params, ndims, shapes, 1, 2)) return kBadArguments;  // training: also "saved"
    const bool training = pf.training;
    const int64_t out_index = Performer::kFirstWeight + Performer::kWeights;
    if (!is_shape(ndims[out_index], shapes[out_index], {pf.batch, pf.tokens, pf.emb}) ||
        (training && !is_shape(ndims[out_index + 1], shapes[out_index + 1], {pf.saved()})))
      return kBadArguments;
    float *out = static_cast<float *>(params[out_index]);
    dvt::Scratch scratch(training ? 0 : pf.saved());
    PerformerSaved s = carve(pf, training ? static_cast<float *>(params[out_index + 1]) : scratch.take(pf.saved()));
    const int64_t rows = pf.rows, e = pf.emb, m = pf.features, e3 = 3 * e, t = pf.tokens;
    const float *x = pf.input(0);

    layer_norm_rows(rows, pf.dim, pf.eps, pf.weight(0), pf.weight(1), s.ln, s.stats,
                    [&](int64_t r, float *) { return x + r * pf.dim; });
    fill_rows(s.kqv, rows, e3, pf.weight(3));
    gemm(false, true, rows, e3, pf.dim, 1.0f, s.ln, pf.dim, pf.weight(2), pf.dim, 1.0f, s.kqv, e3);
    random_features(pf, s.kqv, 0, s.kp);  // columns: k | q | v
    random_features(pf, s.kqv, e, s.qp);
    parallel_for(pf.batch, 4 * t * (e + 1) * m, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t b = first; b < last; ++b) {
        const float *kp = s.kp + b * t * m, *qp = s.qp + b * t * m, *v = s.kqv + b * t * e3 + 2 * e;
        float *kptv = s.kptv + b * (e + 1) * m;  // rows 0..E-1: v^T kp; row E: sum over tokens of kp
        gemm_serial(true, false, e, m, t, 1.0f, v, e3, kp, m, 0.0f, kptv, m);
        float *total = kptv + e * m;
        std::fill(total, total + m, 0.0f);
        for (int64_t i = 0; i < t; ++i) {
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) total[j] += kp[i * m + j];
        }
        float *y = s.y + b * t * e;
        gemm_serial(false, true, t, e, m, 1.0f, qp, m, kptv, m, 0.0f, y, e);
        for (int64_t i = 0; i < t; ++i) {
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < m; ++j) dot += qp[i * m + j] * total[j];
          const float den = dot + 1e-8f;
          s.den[b * t + i] = den;
#pragma omp simd
          for (int64_t j = 0; j < e; ++j) y[i * e + j] /= den;
        }
      }
    });
    gemm(false, true, rows, e, e, 1.0f, s.y, e, pf.weight(5), e, 0.0f, s.a, e);
    const PathMask after_proj = pf.mask(1);
    parallel_for(rows, 2 * e, [&](int64_t first, int64_t last, int64_t) {  // a = v + dropout(proj(y))
      const float *bias = pf.weight(6);
      for (int64_t r = first; r < last; ++r) {
        const float *v = s.kqv + r * e3 + 2 * e;
        const float *mask = after_proj.elements != nullptr ? after_proj.elements + r * e : nullptr;
        float *ar = s.a + r * e;
        if (mask != nullptr) {
#pragma omp simd
          for (int64_t i = 0; i < e; ++i) ar[i] = v[i] + (ar[i] + bias[i]) * mask[i];
        } else {
#pragma omp simd
          for (int64_t i = 0; i < e; ++i) ar[i] = v[i] + (ar[i] + bias[i]);
        }
      }
    });
    mlp_forward(pf.mlp_dims(), pf.eps, pf.mlp(), s.a, nullptr, true, pf.mask(2), s.mlp, out);
    return 0;
  });
}

// Backward of dvt_token_performer (training). Inputs: the forward's inputs (as Performer::read), saved, dout
// [B, T, E]. Outputs: dx [B, T, D], then one gradient per weight (the random features' is zero: they are fixed).
int dvt_token_performer_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    Performer pf;
    const int after = 2 + 1 + static_cast<int>(Performer::kWeights);  // saved, dout; dx, d weights
    if (!pf.read(nparam, params, ndims, shapes, after)) return kBadArguments;
    const int64_t in = Performer::kFirstWeight + Performer::kWeights, out = in + 2;
    const int64_t rows = pf.rows, e = pf.emb, m = pf.features, e3 = 3 * e, t = pf.tokens;
    if (!is_shape(ndims[in], shapes[in], {pf.saved()}) || !is_shape(ndims[in + 1], shapes[in + 1], {pf.batch, t, e}) ||
        !is_shape(ndims[out], shapes[out], {pf.batch, t, pf.dim}))
      return kBadArguments;
    for (int64_t k = 0; k < Performer::kWeights; ++k) {
      const int64_t wi = Performer::kFirstWeight + k, gi = out + 1 + k;
      if (ndims[wi] != ndims[gi] || dvt::count(ndims[wi], shapes[wi]) != dvt::count(ndims[gi], shapes[gi]))
        return kBadArguments;
    }
    auto grad = [&](int64_t k) { return static_cast<float *>(params[out + 1 + k]); };
    PerformerSaved s = carve(pf, static_cast<float *>(params[in]));
    const float *dout = pf.input(in + 1);
    float *dx = static_cast<float *>(params[out]);
    dvt::Scratch scratch(rows * (e + e + e3 + 2 * m + pf.dim + 1) + pf.batch * (e + 1) * m);
    float *da = scratch.take(rows * e), *dy = scratch.take(rows * e), *dkqv = scratch.take(rows * e3);
    float *dkp = scratch.take(rows * m), *dqp = scratch.take(rows * m), *dln = scratch.take(rows * pf.dim);
    float *dden = scratch.take(rows), *dkptv = scratch.take(pf.batch * (e + 1) * m);

    // the MLP (with its residual): da = dout + its branch's gradient
    const MlpGrads mlp_grads{grad(7), grad(8), grad(9), grad(10), grad(11), grad(12)};
    mlp_backward(pf.mlp_dims(), pf.mlp(), s.a, nullptr, true, pf.mask(2), s.mlp, dout, mlp_grads, da, nullptr);
    // a = v + dropout(proj(y)): the proj branch, and v's direct share
    masked_copy(dy, da, pf.mask(1), rows, t, e);  // dy holds d(proj output) for now
    column_sums(dy, rows, e, e, grad(6));
    gemm(true, false, e, e, rows, 1.0f, dy, e, s.y, e, 0.0f, grad(5), e);
    float *dproj = dy;
    dvt::Scratch scratch_y(rows * e);
    float *dyy = scratch_y.take(rows * e);
    gemm(false, false, rows, e, e, 1.0f, dproj, e, pf.weight(5), e, 0.0f, dyy, e);
    parallel_for(rows, e, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t r = first; r < last; ++r) std::memcpy(dkqv + r * e3 + 2 * e, da + r * e, e * sizeof(float));
    });
    // y = num / den: d num = dy / den; d den = -sum(dy * y) / den
    parallel_for(rows, 2 * e, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t r = first; r < last; ++r) {
        float *dr = dyy + r * e;
        const float *yr = s.y + r * e;
        const float inv = 1.0f / s.den[r];
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < e; ++i) dot += dr[i] * yr[i];
        dden[r] = -dot * inv;
#pragma omp simd
        for (int64_t i = 0; i < e; ++i) dr[i] *= inv;
      }
    });
    parallel_for(pf.batch, 8 * t * (e + 1) * m, [&](int64_t first, int64_t last, int64_t) {
      for (int64_t b = first; b < last; ++b) {
        const float *kp = s.kp + b * t * m, *qp = s.qp + b * t * m, *v = s.kqv + b * t * e3 + 2 * e;
        const float *kptv = s.kptv + b * (e + 1) * m, *total = kptv + e * m;
        const float *dnum = dyy + b * t * e, *dd = dden + b * t;
        float *dq = dqp + b * t * m, *dk = dkp + b * t * m, *dkv = dkptv + b * (e + 1) * m;
        float *dtotal = dkv + e * m;
        // num = qp kptv[:E]^T, den = qp . total + 1e-8
        gemm_serial(false, false, t, m, e, 1.0f, dnum, e, kptv, m, 0.0f, dq, m);
        for (int64_t i = 0; i < t; ++i) {
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) dq[i * m + j] += dd[i] * total[j];
        }
        gemm_serial(true, false, e, m, t, 1.0f, dnum, e, qp, m, 0.0f, dkv, m);
        std::fill(dtotal, dtotal + m, 0.0f);
        for (int64_t i = 0; i < t; ++i) {
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) dtotal[j] += dd[i] * qp[i * m + j];
        }
        // kptv[:E] = v^T kp, total = sum over tokens of kp
        float *dv = dkqv + b * t * e3 + 2 * e;
        gemm_serial(false, true, t, e, m, 1.0f, kp, m, dkv, m, 1.0f, dv, e3);
        gemm_serial(false, false, t, m, e, 1.0f, v, e3, dkv, m, 0.0f, dk, m);
        for (int64_t i = 0; i < t; ++i) {
#pragma omp simd
          for (int64_t j = 0; j < m; ++j) dk[i * m + j] += dtotal[j];
        }
      }
    });
    random_features_backward(pf, s.kqv, 0, s.kp, dkp, dkqv);
    random_features_backward(pf, s.kqv, e, s.qp, dqp, dkqv);
    column_sums(dkqv, rows, e3, e3, grad(3));
    gemm(true, false, e3, pf.dim, rows, 1.0f, dkqv, e3, s.ln, pf.dim, 0.0f, grad(2), pf.dim);
    gemm(false, false, rows, pf.dim, e3, 1.0f, dkqv, e3, pf.weight(2), pf.dim, 0.0f, dln, pf.dim);
    const float *x = pf.input(0);
    dvt::layer_norm_backward(rows, pf.dim, s.stats, 0.0f, pf.weight(0), dln, dx, nullptr, 0, grad(0), grad(1),
                             [&](int64_t r, float *) { return x + r * pf.dim; });
    float *dw = grad(4);
    std::fill(dw, dw + m * e, 0.0f);
    return 0;
  });
}



// Every block of an exit. Inputs as Stack::read. Outputs: y [B, N, C] (the last block's output), the attention
// logits of every block [B, depth * heads, N, N] (or [1] when not emitted); training also "saved" [depth *
// Stack::saved_per_block()], what dvt_block_stack_grad reads.
int dvt_block_stack(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    Stack st;
    if (!st.read(nparam, params, ndims, shapes, 2, 3)) return kBadArguments;  // training: also "saved"
    const bool training = st.training;
    const int64_t out = Stack::kFirstWeight + st.weights();
    const Dims &dm = st.dm;
    const int64_t per_block = st.saved_per_block();
    if (!is_shape(ndims[out], shapes[out], {dm.batch, dm.tokens, dm.width}) ||
        !(st.emit ? is_shape(ndims[out + 1], shapes[out + 1], {dm.batch, st.depth * dm.heads, dm.tokens, dm.tokens})
                  : is_placeholder(ndims[out + 1], shapes[out + 1])) ||
        (training && !is_shape(ndims[out + 2], shapes[out + 2], {st.depth * per_block})))
      return kBadArguments;
    float *y = static_cast<float *>(params[out]);
    float *logits = st.emit ? static_cast<float *>(params[out + 1]) : nullptr;
    float *relation = st.relation ? static_cast<float *>(params[2]) : nullptr;
    float *saved = training ? static_cast<float *>(params[out + 2]) : nullptr;
    // inference: one block's pieces in scratch, reused by every block
    const int64_t inference_floats = training ? 0 : per_block - dm.batch * dm.heads * dm.tokens * dm.tokens;
    dvt::Scratch scratch(inference_floats);
    float *inference_base = scratch.take(inference_floats);

    const float *x = st.input(0);
    for (int64_t blk = 0; blk < st.depth; ++blk) {
      BlockSaved s = carve(st, training ? saved + blk * per_block : inference_base, training);
      if (training) std::memcpy(s.x_attention, x, dm.rows * dm.width * sizeof(float));
      attention_forward(dm, st.eps, st.attention(blk), x, st.relation_planes(relation, blk),
                        st.relation_planes(logits, blk), st.mask(2 * blk), s.attention, s.x_mlp);
      const float *extra = nullptr;
      if (st.reuse) {
        mlp_forward(st.reuse_dims(), st.eps, st.reuse_mlp(blk), st.input(1), nullptr, false, PathMask{}, s.reuse,
                    s.reused);
        resize_reused(st, st.input(3), false, s.reused, s.resized);
        extra = s.resized;
      }
      mlp_forward(st.mlp_dims(), st.eps, st.mlp(blk), s.x_mlp, extra, true, st.mask(2 * blk + 1), s.mlp, y);
      x = y;
    }
    return 0;
  });
}

// Backward of dvt_block_stack (training). Inputs: the forward's inputs (as Stack::read), then saved, dy [B, N,
// C] and the gradient of the emitted logits [B, depth * heads, N, N] (or [1]). Outputs: dx [B, N, C],
// d upstream (its shape, or [1]), d relation terms (their shape, or [1]), then one gradient per weight.
int dvt_block_stack_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  return dvt::guarded([&]() -> int {
    Stack st;
    if (nparam < Stack::kFirstWeight || !is_shape(ndims[5], shapes[5], {9})) return kBadArguments;
    const int64_t depth = static_cast<const int32_t *>(params[5])[0];
    const int64_t n_weights = depth * Stack::kPerBlock;
    // after the weights: saved, dy, d logits, then the outputs dx, d upstream, d relation and the weights' gradients
    if (depth < 1 || !st.read(nparam, params, ndims, shapes, static_cast<int>(6 + n_weights))) return kBadArguments;
    const Dims &dm = st.dm;
    const int64_t in = Stack::kFirstWeight + n_weights;  // saved, dy, d logits
    const int64_t out = in + 3;                          // dx, d upstream, d relation, d weights
    const int64_t saved_per_block = st.saved_per_block();
    if (!is_shape(ndims[in], shapes[in], {depth * saved_per_block}) ||
        !is_shape(ndims[in + 1], shapes[in + 1], {dm.batch, dm.tokens, dm.width}) ||
        !is_shape(ndims[out], shapes[out], {dm.batch, dm.tokens, dm.width}))
      return kBadArguments;
    const bool d_logits_given = !is_placeholder(ndims[in + 2], shapes[in + 2]);
    if (d_logits_given && !is_shape(ndims[in + 2], shapes[in + 2], {dm.batch, depth * dm.heads, dm.tokens, dm.tokens}))
      return kBadArguments;
    for (int64_t k = 0; k < n_weights; ++k) {  // each weight's gradient has the weight's shape
      const int64_t wi = Stack::kFirstWeight + k, gi = out + 3 + k;
      if (ndims[wi] != ndims[gi] || dvt::count(ndims[wi], shapes[wi]) != dvt::count(ndims[gi], shapes[gi]))
        return kBadArguments;
    }
    if ((st.reuse ? dvt::count(ndims[out + 1], shapes[out + 1]) != dvt::count(ndims[1], shapes[1])
                  : !is_placeholder(ndims[out + 1], shapes[out + 1])) ||
        (st.relation ? dvt::count(ndims[out + 2], shapes[out + 2]) != dvt::count(ndims[2], shapes[2])
                     : !is_placeholder(ndims[out + 2], shapes[out + 2])))
      return kBadArguments;

    float *saved = static_cast<float *>(params[in]);
    const float *d_logits = d_logits_given ? static_cast<const float *>(params[in + 2]) : nullptr;
    float *dx = static_cast<float *>(params[out]);
    float *d_upstream = static_cast<float *>(params[out + 1]);
    float *d_relation = st.relation ? static_cast<float *>(params[out + 2]) : nullptr;
    auto grad = [&](int64_t blk, int64_t k) {
      return static_cast<float *>(params[out + 3 + blk * Stack::kPerBlock + k]);
    };
    const int64_t rows = dm.rows, c = dm.width;
    const int64_t up_size = st.reuse ? dm.batch * st.up_tokens * st.up_width : 0;
    dvt::Scratch scratch(rows * c + (st.reuse ? rows * st.reuse_width + 2 * up_size +
                                                    dm.batch * st.up_tokens * st.reuse_width : 0));
    float *d_mid = scratch.take(rows * c);
    float *d_resized = scratch.take(st.reuse ? rows * st.reuse_width : 0);
    float *d_reused = scratch.take(st.reuse ? dm.batch * st.up_tokens * st.reuse_width : 0);
    float *d_up_block = scratch.take(up_size);
    if (st.reuse) {
      std::fill(d_upstream, d_upstream + up_size, 0.0f);
    } else {
      d_upstream[0] = 0.0f;
    }
    if (!st.relation) static_cast<float *>(params[out + 2])[0] = 0.0f;
    for (int64_t blk = 0; blk < depth; ++blk) {  // absent weights ([1] placeholders) get a zero gradient
      if (!st.qkv_bias) grad(blk, 3)[0] = 0.0f;
      for (int64_t k = Stack::kReuse; !st.reuse && k < Stack::kPerBlock; ++k) grad(blk, k)[0] = 0.0f;
    }

    // dx carries the gradient from block to block, from the last block down
    std::memcpy(dx, st.input(in + 1), rows * c * sizeof(float));
    for (int64_t blk = depth - 1; blk >= 0; --blk) {
      BlockSaved s = carve(st, saved + blk * saved_per_block, true);
      const MlpGrads mlp_grads{grad(blk, 6), grad(blk, 7), grad(blk, 8), grad(blk, 9), grad(blk, 10), grad(blk, 11)};
      mlp_backward(st.mlp_dims(), st.mlp(blk), s.x_mlp, st.reuse ? s.resized : nullptr, true, st.mask(2 * blk + 1),
                   s.mlp, dx, mlp_grads, d_mid, st.reuse ? d_resized : nullptr);
      if (st.reuse) {
        const int64_t r0 = Stack::kReuse;
        const MlpGrads reuse_grads{grad(blk, r0), grad(blk, r0 + 1), grad(blk, r0 + 2), grad(blk, r0 + 3),
                                   grad(blk, r0 + 4), grad(blk, r0 + 5)};
        resize_reused(st, st.input(3), true, d_resized, d_reused);
        mlp_backward(st.reuse_dims(), st.reuse_mlp(blk), st.input(1), nullptr, false, PathMask{}, s.reuse, d_reused,
                     reuse_grads, d_up_block, nullptr);
        parallel_for(up_size, 1, [&](int64_t first, int64_t last, int64_t) {
#pragma omp simd
          for (int64_t i = first; i < last; ++i) d_upstream[i] += d_up_block[i];
        });
      }
      const AttentionGrads attention_grads{grad(blk, 0), grad(blk, 1), grad(blk, 2),
                                           st.qkv_bias ? grad(blk, 3) : nullptr, grad(blk, 4), grad(blk, 5)};
      Planes dl = d_logits != nullptr ? Planes{const_cast<float *>(d_logits), depth * dm.heads, blk * dm.heads}
                                      : Planes{};
      attention_backward(dm, st.attention(blk), s.x_attention, s.attention, st.mask(2 * blk), d_mid, dl,
                         st.relation_planes(d_relation, blk), attention_grads, dx);
    }
    return 0;
  });
}

}  // extern "C"
