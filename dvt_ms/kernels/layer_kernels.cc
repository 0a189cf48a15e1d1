// Fused float32 CPU kernels of whole layers, forward and backward, called through mindspore.ops.Custom
// (func_type "aot"): the stack of transformer blocks of one DVT exit, and the token performer of the T2T stem.
//
// Each block is an attention half (LayerNorm, qkv, scores with an optional relation term, softmax, values,
// projection, drop path, residual) and an MLP half (LayerNorm over the tokens and, with feature reuse, the
// features, the previous exit's tokens, after the block's reuse MLP resized to this grid; fc1, exact GELU, fc2,
// drop path, residual). One kernel runs every block of the exit, so that an exit is a handful of graph nodes instead of
// ~80 per block: MindSpore's compile time grows with the nodes, the autodiff of every custom op and every
// parameter input, and its launch cost with the kernels per call. The matrix products call oneDNN's sgemm
// (the library MindSpore's own CPU kernels link, loaded with it), split over the worker pool; everything
// between two products is one pass over rows that are still in cache. In training the forward also writes
// what the backward reads into one buffer (its layout: carve).
//
// Row-major layouts as the stock path: tokens [B, N, C]; qkv [B, N, 3C] with columns (q | k | v), head j at
// columns j*d .. (j+1)*d of each; attention logits and relation terms of the stack [B, depth * heads, N, N]
// (block i, head j: channel i * heads + j, as the stock path concatenates them). Drop path: masks [B, M] of the
// whole exit, read from a given column on (see Stack).

#include "kernel_common.h"

extern "C" int dnnl_sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                          int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

namespace {

using dvt::Call;
using dvt::parallel_for;

constexpr dvt::Dtype kF32 = dvt::Dtype::kFloat32, kI32 = dvt::Dtype::kInt32;

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

// Which of a layer's two kernels is called: the arguments of the backward follow those of the forward.
enum class Pass { kForward, kBackward };

// Hands out consecutive pieces of a buffer; with a null base it only counts, which gives a layout's size from the
// same description that lays it out.
class Carver {
 public:
  explicit Carver(float *base) : base_(base) {}
  float *take(int64_t floats) {
    float *piece = base_ == nullptr ? nullptr : base_ + used_;
    used_ += floats;
    return piece;
  }
  int64_t used() const { return used_; }

 private:
  float *base_;
  int64_t used_ = 0;
};

// The sizes a block's saved buffer depends on: what carve lays out.
struct BlockShape {
  Dims dm{};
  int64_t hidden = 0;
  bool reuse = false;  // feature reuse: the previous exit's tokens ("features") [B, Nf, Cf] come in
  int64_t feature_tokens = 0, feature_width = 0, reuse_hidden = 0, reuse_width = 0;
};

// The stack's inputs and outputs, read from MindSpore's arguments and checked against each other.
// Inputs: 0 x [B, N, C], 1 features, the previous exit's tokens [B, Nf, Cf] (or [1]), 2 relation terms
// [B, depth * heads, N, N] (or [1]), 3 grid resize P [N - 1, Nf - 1] (or [1]), 4 drop-path masks [B, M] (or [1];
// block i's attention branch scaled by column first + 2i, its MLP branch by first + 2i + 1), 5 int32 config
// {depth, heads, qkv bias, relation, drop path, feature reuse, emit relations, training, first}, 6 LayerNorm eps
// [1], then 18 weights per block: norm1 w, b [C]; qkv w [3C, C], b [3C] (or [1] without qkv bias); proj w [C, C],
// b [C]; norm2 w, b [C + Cr]; fc1 w [H, C + Cr], b [H]; fc2 w [C, H], b [C]; the reuse MLP's norm w, b [Cf], fc1 w
// [Hr, Cf], b [Hr], fc2 w [Cr, Hr], b [Cr] (each [1] without feature reuse). Every tensor float32 but the config.
struct Stack : BlockShape {
  static constexpr int64_t kPerBlock = 18, kFirstWeight = 7, kReuse = 12;
  static constexpr const char *kInputs[kFirstWeight] = {"x", "features", "relation", "resize", "masks", "config",
                                                        "eps"};
  static constexpr const char *kWeights[kPerBlock] = {
      "norm1_w", "norm1_b", "qkv_w", "qkv_b", "proj_w", "proj_b", "norm2_w", "norm2_b", "fc1_w", "fc1_b", "fc2_w",
      "fc2_b", "reuse_norm_w", "reuse_norm_b", "reuse_fc1_w", "reuse_fc1_b", "reuse_fc2_w", "reuse_fc2_b"};
  int64_t depth = 0, first_mask_column = 0, mask_columns = 0;
  bool qkv_bias = false, relation = false, masked = false, emit = false, training = false;
  float eps = 0.0f;
  Pass pass = Pass::kForward;
  const Call *call = nullptr;

  const float *input(int64_t i) const { return call->in(static_cast<int>(i)); }
  const float *weight(int64_t block, int64_t k) const { return input(kFirstWeight + block * kPerBlock + k); }
  int64_t weights() const { return depth * kPerBlock; }

  // Argument i's description in messages, e.g. "'qkv_w' of block 0 (input 9)".
  std::string name(int i, int nparam) const {
    const int64_t weights_end = kFirstWeight + weights();
    const int inputs = static_cast<int>(pass == Pass::kForward ? weights_end : weights_end + 3);
    if (i < kFirstWeight) return Call::label(kInputs[i], i, inputs);
    auto of_block = [&](const char *prefix, int64_t k) {
      return std::string(prefix) + kWeights[k % kPerBlock] + "' of block " + std::to_string(k / kPerBlock);
    };
    if (depth < 1 || i >= nparam) return "argument " + std::to_string(i);
    if (i < weights_end) return of_block("'", i - kFirstWeight) + " (input " + std::to_string(i) + ")";
    const int64_t after = i - weights_end;
    if (pass == Pass::kForward) {
      static constexpr const char *kOutputs[] = {"y", "logits", "saved"};
      return Call::label(kOutputs[std::min<int64_t>(after, 2)], i, inputs);
    }
    static constexpr const char *kAfter[] = {"saved", "dy", "d_logits", "dx", "d_features", "d_relation"};
    if (after < 6) return Call::label(kAfter[after], i, inputs);
    return of_block("'d_", after - 6) + " (output " + std::to_string(i - inputs) + ")";
  }

  // Reads and checks the arguments of the forward (``y``, ``logits`` and, training, ``saved`` after the weights) or
  // of the backward (``saved``, ``dy``, ``d_logits``, then the gradients), dtypes first; fails when anything
  // disagrees.
  void read(Call &args, Pass which) {
    call = &args;
    pass = which;
    args.name_with([this, &args](int i) { return name(i, args.size()); });
    args.count_at_least(kFirstWeight);
    args.dtypes(0, 5, kF32);
    args.dtype(5, kI32);
    args.dtype(6, kF32);
    args.expect_shape(5, {9});
    args.expect_shape(6, {1});
    args.expect_ndim(0, 3);
    const int32_t *cfg = args.in<int32_t>(5);
    const int64_t wanted_depth = cfg[0], heads = cfg[1];
    qkv_bias = cfg[2] != 0;
    relation = cfg[3] != 0;
    masked = cfg[4] != 0;
    reuse = cfg[5] != 0;
    emit = cfg[6] != 0;
    training = cfg[7] != 0;
    first_mask_column = cfg[8];
    args.check(wanted_depth >= 1 && wanted_depth <= args.size() / kPerBlock, [&] {
      return args.arg(5) + " gives a depth of " + std::to_string(wanted_depth) + ": it must be at least 1 and fit " +
             "the " + std::to_string(args.size()) + " tensors given";
    });
    depth = wanted_depth;
    const int64_t after = pass == Pass::kBackward ? 6 + weights() : (training ? 3 : 2);
    args.check(args.size() == kFirstWeight + weights() + after, [&] {
      return "takes " + std::to_string(kFirstWeight) + " inputs, " + std::to_string(kPerBlock) + " weights for each of " +
             std::to_string(depth) + " blocks (the config's depth) and " + std::to_string(after) + " more: " +
             std::to_string(kFirstWeight + weights() + after) + " tensors, got " + std::to_string(args.size());
    });
    args.dtypes(kFirstWeight, args.size(), kF32);
    const int64_t b = args.dim(0, 0), n = args.dim(0, 1), c = args.dim(0, 2);
    args.check(heads > 0 && c % heads == 0 && n >= 1, [&] {
      return args.arg(5) + " gives " + std::to_string(heads) + " heads, which do not split the " +
             std::to_string(c) + " channels of " + args.arg(0) + " " + dvt::shape_text(3, args.shape(0));
    });
    dm = Dims{b, n, c, heads, c / heads, b * n};
    eps = *input(6);
    if (reuse) {
      args.check(args.ndim(1) == 3 && args.dim(1, 0) == b && args.dim(1, 1) >= 1, [&] {
        return args.arg(1) + " must be the previous exit's tokens [" + std::to_string(b) +
               ", Nf, Cf] (config: feature reuse), got " + dvt::shape_text(args.ndim(1), args.shape(1));
      });
      feature_tokens = args.dim(1, 1);
      feature_width = args.dim(1, 2);
      args.expect_shape(3, {n - 1, feature_tokens - 1});
      const int r = static_cast<int>(kFirstWeight + kReuse);
      args.expect_ndim(r + 2, 2);
      args.expect_ndim(r + 4, 2);
      reuse_hidden = args.dim(r + 2, 0);
      reuse_width = args.dim(r + 4, 0);
    }
    if (relation) args.expect_shape(2, {b, depth * heads, n, n});
    if (masked) {
      args.check(args.ndim(4) == 2 && args.dim(4, 0) == b && first_mask_column >= 0 &&
                     args.dim(4, 1) >= first_mask_column + 2 * depth,
                 [&] {
                   return args.arg(4) + " must be [" + std::to_string(b) + ", M] with M at least " +
                          std::to_string(first_mask_column + 2 * depth) + " (the config's first column " +
                          std::to_string(first_mask_column) + " + 2 per block), got " +
                          dvt::shape_text(args.ndim(4), args.shape(4));
                 });
    }
    mask_columns = masked ? args.dim(4, 1) : 0;
    args.expect_ndim(kFirstWeight + 8, 2);
    hidden = args.dim(kFirstWeight + 8, 0);
    const int64_t dim = c + reuse_width;
    for (int64_t blk = 0; blk < depth; ++blk) {
      const int k = static_cast<int>(kFirstWeight + blk * kPerBlock);
      args.expect_shape(k, {c});
      args.expect_shape(k + 1, {c});
      args.expect_shape(k + 2, {3 * c, c});
      if (qkv_bias) {
        args.expect_shape(k + 3, {3 * c});
      } else {
        args.expect_placeholder(k + 3, "config: no qkv bias");
      }
      args.expect_shape(k + 4, {c, c});
      args.expect_shape(k + 5, {c});
      args.expect_shape(k + 6, {dim});
      args.expect_shape(k + 7, {dim});
      args.expect_shape(k + 8, {hidden, dim});
      args.expect_shape(k + 9, {hidden});
      args.expect_shape(k + 10, {c, hidden});
      args.expect_shape(k + 11, {c});
      const int r = k + static_cast<int>(kReuse);
      if (reuse) {
        args.expect_shape(r, {feature_width});
        args.expect_shape(r + 1, {feature_width});
        args.expect_shape(r + 2, {reuse_hidden, feature_width});
        args.expect_shape(r + 3, {reuse_hidden});
        args.expect_shape(r + 4, {reuse_width, reuse_hidden});
        args.expect_shape(r + 5, {reuse_width});
      } else {
        for (int i = r; i < r + 6; ++i) args.expect_placeholder(i, "config: no feature reuse");
      }
    }
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
    return {dm.batch, feature_tokens, feature_width, 0, reuse_hidden, reuse_width, dm.batch * feature_tokens};
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
  float *reused, *resized;  // reuse MLP output [B, Nf, Cr]; resized to this grid with a zero class row [B, N, Cr]
};

// The layout of one block's saved buffer, the one description of it: pieces taken from ``carver`` in order.
// keep_probs false (inference): no room for the probabilities (attention_forward uses per-thread planes).
BlockSaved carve(const BlockShape &sh, Carver &carver, bool keep_probs) {
  const int64_t rows = sh.dm.rows, c = sh.dm.width, dim = c + sh.reuse_width;
  const int64_t feature_rows = sh.dm.batch * sh.feature_tokens;
  auto take = [&](int64_t floats) { return carver.take(floats); };
  BlockSaved s{};
  s.x_attention = take(rows * c);
  s.x_mlp = take(rows * c);
  s.attention.ln = take(rows * c);
  s.attention.qkv = take(rows * 3 * c);
  s.attention.probs = keep_probs ? take(sh.dm.batch * sh.dm.heads * sh.dm.tokens * sh.dm.tokens) : nullptr;
  s.attention.mixed = take(rows * c);
  s.attention.stats = take(2 * rows);
  s.mlp.ln = take(rows * dim);
  s.mlp.pre = take(rows * sh.hidden);
  s.mlp.stats = take(2 * rows);
  if (sh.reuse) {
    s.resized = take(rows * sh.reuse_width);
    s.reuse.ln = take(feature_rows * sh.feature_width);
    s.reuse.pre = take(feature_rows * sh.reuse_hidden);
    s.reuse.stats = take(2 * feature_rows);
    s.reused = take(feature_rows * sh.reuse_width);
  }
  return s;
}

BlockSaved carve(const BlockShape &sh, float *base, bool keep_probs) {
  Carver carver(base);
  return carve(sh, carver, keep_probs);
}

// Floats of one block's layout (keep_probs: training's saved buffer; else inference's scratch).
int64_t block_floats(const BlockShape &sh, bool keep_probs) {
  Carver counter(nullptr);
  carve(sh, counter, keep_probs);
  return counter.used();
}

// Forward: u = [0; P @ r[b, 1:]] per image, the reuse MLP's output r resized to this grid with a zero class
// row. Backward (the same product transposed): dr[b, 0] = 0 (the class row is constant), dr[b, 1:] = P^T @ du[b, 1:].
void resize_reused(const Stack &st, const float *resize, bool backward, const float *src, float *dst) {
  const int64_t n = st.dm.tokens, nr = st.feature_tokens, cr = st.reuse_width;
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

// The sizes the performer's saved buffer depends on: what carve lays out.
struct PerformerShape {
  int64_t batch = 0, tokens = 0, dim = 0, emb = 0, random_features = 0, rows = 0;
};

// Inputs: 0 x [B, T, D], 1 dropout multipliers after proj [B, T, E] (or [1]), 2 after the MLP (or [1]), 3 int32
// config {training, dropout}, 4 LayerNorm eps [1], then 13 weights: norm1 w, b [D]; kqv w [3E, D], b [3E];
// random features w [M, E]; proj w [E, E], b [E]; norm2 w, b [E]; fc1 w [E, E], b [E]; fc2 w [E, E], b [E].
// Every tensor float32 but the config.
struct Performer : PerformerShape {
  static constexpr int64_t kFirstWeight = 5, kWeights = 13;
  static constexpr const char *kInputs[kFirstWeight] = {"x", "dropout1", "dropout2", "config", "eps"};
  static constexpr const char *kWeightNames[kWeights] = {"norm1_w", "norm1_b", "kqv_w",   "kqv_b", "random_w",
                                                         "proj_w",  "proj_b",  "norm2_w", "norm2_b", "fc1_w",
                                                         "fc1_b",   "fc2_w",   "fc2_b"};
  bool training = false, dropout = false;
  float eps = 0.0f;
  Pass pass = Pass::kForward;
  const Call *call = nullptr;

  const float *input(int64_t i) const { return call->in(static_cast<int>(i)); }
  const float *weight(int64_t k) const { return input(kFirstWeight + k); }

  // Argument i's description in messages, e.g. "'kqv_w' (input 7)".
  std::string name(int i) const {
    const int64_t weights_end = kFirstWeight + kWeights;
    const int inputs = static_cast<int>(pass == Pass::kForward ? weights_end : weights_end + 2);
    if (i < kFirstWeight) return Call::label(kInputs[i], i, inputs);
    if (i < weights_end) return Call::label(kWeightNames[i - kFirstWeight], i, inputs);
    const int64_t after = i - weights_end;
    if (pass == Pass::kForward) return Call::label(after == 0 ? "out" : "saved", i, inputs);
    if (after < 3) return Call::label(after == 0 ? "saved" : after == 1 ? "dout" : "dx", i, inputs);
    return Call::label(std::string("d_") + kWeightNames[(after - 3) % kWeights], i, inputs);
  }

  // Reads and checks the arguments of the forward (``out`` and, training, ``saved`` after the weights) or of the
  // backward (``saved``, ``dout``, then ``dx`` and the gradients), dtypes first; fails when anything disagrees.
  void read(Call &args, Pass which) {
    call = &args;
    pass = which;
    args.name_with([this](int i) { return name(i); });
    args.count_at_least(kFirstWeight);
    args.dtypes(0, 3, kF32);
    args.dtype(3, kI32);
    args.dtype(4, kF32);
    args.expect_shape(3, {2});
    args.expect_shape(4, {1});
    args.expect_ndim(0, 3);
    const int32_t *cfg = args.in<int32_t>(3);
    training = cfg[0] != 0;
    dropout = cfg[1] != 0;
    const int after = pass == Pass::kBackward ? 3 + static_cast<int>(kWeights) : (training ? 2 : 1);
    args.count(static_cast<int>(kFirstWeight + kWeights) + after);
    args.dtypes(kFirstWeight, args.size(), kF32);
    batch = args.dim(0, 0);
    tokens = args.dim(0, 1);
    dim = args.dim(0, 2);
    rows = batch * tokens;
    eps = *input(4);
    const int kqv = kFirstWeight + 2, w = kFirstWeight + 4;
    args.expect_ndim(kqv, 2);
    args.check(args.dim(kqv, 0) % 3 == 0, [&] {
      return args.arg(kqv) + " must have 3E rows (k, q and v), got " + dvt::shape_text(2, args.shape(kqv));
    });
    args.expect_ndim(w, 2);
    emb = args.dim(kqv, 0) / 3;
    random_features = args.dim(w, 0);
    const int k = kFirstWeight;
    args.expect_shape(k, {dim});
    args.expect_shape(k + 1, {dim});
    args.expect_shape(k + 2, {3 * emb, dim});
    args.expect_shape(k + 3, {3 * emb});
    args.expect_shape(k + 4, {random_features, emb});
    args.expect_shape(k + 5, {emb, emb});
    args.expect_shape(k + 6, {emb});
    args.expect_shape(k + 7, {emb});
    args.expect_shape(k + 8, {emb});
    args.expect_shape(k + 9, {emb, emb});
    args.expect_shape(k + 10, {emb});
    args.expect_shape(k + 11, {emb, emb});
    args.expect_shape(k + 12, {emb});
    for (int i : {1, 2}) {
      if (dropout) {
        args.expect_shape(i, {batch, tokens, emb});
      } else {
        args.expect_placeholder(i, "config: no dropout");
      }
    }
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

// The layout of what the forward keeps for the backward, the one description of it: LayerNorm 1 output and
// statistics, kqv, the random features of k and q, per image [v, 1]^T kp, the normalised values y and their
// normaliser, a (after the attention), LayerNorm 2 output, fc1 output and LayerNorm 2 statistics.
PerformerSaved carve(const PerformerShape &pf, Carver &carver) {
  const int64_t rows = pf.rows, e = pf.emb, m = pf.random_features;
  auto take = [&](int64_t floats) { return carver.take(floats); };
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
  s.mlp.ln = take(rows * e);
  s.mlp.pre = take(rows * e);
  s.mlp.stats = take(2 * rows);
  return s;
}

PerformerSaved carve(const PerformerShape &pf, float *base) {
  Carver carver(base);
  return carve(pf, carver);
}

// Floats of the performer's saved buffer.
int64_t performer_floats(const PerformerShape &pf) {
  Carver counter(nullptr);
  carve(pf, counter);
  return counter.used();
}

// Positive random features of the columns [offset, offset + E) of kqv: exp(x w^T - |x|^2 / 2) / sqrt(M).
void random_features(const Performer &pf, const float *kqv, int64_t offset, float *out) {
  const int64_t e = pf.emb, m = pf.random_features, e3 = 3 * e;
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
  const int64_t e = pf.emb, m = pf.random_features, e3 = 3 * e;
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
// Outputs: out [B, T, E]; training also "saved" [performer_floats], what dvt_token_performer_grad reads.
int dvt_token_performer(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  return dvt::guarded(__func__, [&]() -> int {
    Call call(nparam, params, ndims, shapes, dtypes);
    Performer pf;
    pf.read(call, Pass::kForward);
    const bool training = pf.training;
    const int out_index = Performer::kFirstWeight + Performer::kWeights;
    const int64_t saved_floats = performer_floats(pf);
    call.expect_shape(out_index, {pf.batch, pf.tokens, pf.emb});
    if (training) call.expect_shape(out_index + 1, {saved_floats});
    float *out = call.out(out_index);
    dvt::Scratch scratch(training ? 0 : saved_floats);
    PerformerSaved s = carve(pf, training ? call.out(out_index + 1) : scratch.take(saved_floats));
    const int64_t rows = pf.rows, e = pf.emb, m = pf.random_features, e3 = 3 * e, t = pf.tokens;
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
int dvt_token_performer_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                             void *) {
  return dvt::guarded(__func__, [&]() -> int {
    Call call(nparam, params, ndims, shapes, dtypes);
    Performer pf;
    pf.read(call, Pass::kBackward);
    const int in = Performer::kFirstWeight + Performer::kWeights, out = in + 2;  // saved, dout; dx, d weights
    const int64_t rows = pf.rows, e = pf.emb, m = pf.random_features, e3 = 3 * e, t = pf.tokens;
    call.expect_shape(in, {performer_floats(pf)});
    call.expect_shape(in + 1, {pf.batch, t, e});
    call.expect_shape(out, {pf.batch, t, pf.dim});
    for (int k = 0; k < Performer::kWeights; ++k) call.expect_same_size(out + 1 + k, Performer::kFirstWeight + k);
    auto grad = [&](int64_t k) { return call.out(static_cast<int>(out + 1 + k)); };
    PerformerSaved s = carve(pf, call.out(in));
    const float *dout = call.in(in + 1);
    float *dx = call.out(out);
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
// logits of every block [B, depth * heads, N, N] (or [1] when relations are not emitted); training also "saved"
// [depth * block_floats], what dvt_block_stack_grad reads.
int dvt_block_stack(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  return dvt::guarded(__func__, [&]() -> int {
    Call call(nparam, params, ndims, shapes, dtypes);
    Stack st;
    st.read(call, Pass::kForward);
    const bool training = st.training;
    const int out = static_cast<int>(Stack::kFirstWeight + st.weights());
    const Dims &dm = st.dm;
    const int64_t per_block = block_floats(st, true);
    call.expect_shape(out, {dm.batch, dm.tokens, dm.width});
    if (st.emit) {
      call.expect_shape(out + 1, {dm.batch, st.depth * dm.heads, dm.tokens, dm.tokens});
    } else {
      call.expect_placeholder(out + 1, "config: relations not emitted");
    }
    if (training) call.expect_shape(out + 2, {st.depth * per_block});
    float *y = call.out(out);
    float *logits = st.emit ? call.out(out + 1) : nullptr;
    float *relation = st.relation ? call.out(2) : nullptr;
    float *saved = training ? call.out(out + 2) : nullptr;
    // inference: one block's pieces in scratch, reused by every block
    const int64_t inference_floats = training ? 0 : block_floats(st, false);
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
// d features (their shape, or [1]), d relation terms (their shape, or [1]), then one gradient per weight.
int dvt_block_stack_grad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                         void *) {
  return dvt::guarded(__func__, [&]() -> int {
    Call call(nparam, params, ndims, shapes, dtypes);
    Stack st;
    st.read(call, Pass::kBackward);
    const int64_t depth = st.depth, n_weights = st.weights();
    const Dims &dm = st.dm;
    const int in = static_cast<int>(Stack::kFirstWeight + n_weights);  // saved, dy, d logits
    const int out = in + 3;                                            // dx, d features, d relation, d weights
    const int64_t saved_per_block = block_floats(st, true);
    call.expect_shape(in, {depth * saved_per_block});
    call.expect_shape(in + 1, {dm.batch, dm.tokens, dm.width});
    call.expect_shape(out, {dm.batch, dm.tokens, dm.width});
    const bool d_logits_given = !call.placeholder(in + 2);
    if (d_logits_given) call.expect_shape(in + 2, {dm.batch, depth * dm.heads, dm.tokens, dm.tokens});
    for (int k = 0; k < n_weights; ++k) call.expect_same_size(out + 3 + k, Stack::kFirstWeight + k);
    for (int i : {1, 2}) {  // the gradients of the features and the relation terms: their size, or [1] when absent
      if (i == 1 ? st.reuse : st.relation) {
        call.check(call.elements(out + i) == call.elements(i), [&] {
          return call.arg(out + i) + " must have the size of " + call.arg(i) + ", " +
                 dvt::shape_text(call.ndim(i), call.shape(i)) + ", got " +
                 dvt::shape_text(call.ndim(out + i), call.shape(out + i));
        });
      } else {
        call.expect_placeholder(out + i, i == 1 ? "config: no feature reuse" : "config: no relation term");
      }
    }

    float *saved = call.out(in);
    const float *d_logits = d_logits_given ? call.in(in + 2) : nullptr;
    float *dx = call.out(out);
    float *d_features = call.out(out + 1);
    float *d_relation = st.relation ? call.out(out + 2) : nullptr;
    auto grad = [&](int64_t blk, int64_t k) { return call.out(static_cast<int>(out + 3 + blk * Stack::kPerBlock + k)); };
    const int64_t rows = dm.rows, c = dm.width;
    const int64_t features_size = st.reuse ? dm.batch * st.feature_tokens * st.feature_width : 0;
    const int64_t reused_size = st.reuse ? dm.batch * st.feature_tokens * st.reuse_width : 0;
    dvt::Scratch scratch(rows * c + (st.reuse ? rows * st.reuse_width : 0) + reused_size + features_size);
    float *d_mid = scratch.take(rows * c);
    float *d_resized = scratch.take(st.reuse ? rows * st.reuse_width : 0);
    float *d_reused = scratch.take(reused_size);
    float *d_features_block = scratch.take(features_size);
    if (st.reuse) {
      std::fill(d_features, d_features + features_size, 0.0f);
    } else {
      d_features[0] = 0.0f;
    }
    if (!st.relation) call.out(out + 2)[0] = 0.0f;
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
                     reuse_grads, d_features_block, nullptr);
        parallel_for(features_size, 1, [&](int64_t first, int64_t last, int64_t) {
#pragma omp simd
          for (int64_t i = first; i < last; ++i) d_features[i] += d_features_block[i];
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

// Floats of the "saved" output of a training dvt_block_stack call with these sizes (what its out_shape needs):
// tokens x [batch, tokens, width] in heads heads, MLP hidden width hidden, depth blocks; with feature reuse the
// features [batch, feature_tokens, feature_width] and the reuse MLP's hidden and output widths (all four 0 without
// it). -1 for sizes no call can have, the reason in dvt_last_error.
int64_t dvt_block_stack_saved_floats(int64_t batch, int64_t tokens, int64_t width, int64_t heads, int64_t hidden,
                                     int64_t feature_tokens, int64_t feature_width, int64_t reuse_hidden,
                                     int64_t reuse_width, int64_t depth) {
  return dvt::guarded(
      __func__,
      [&]() -> int64_t {
        const bool reuse = feature_tokens != 0;
        const bool valid = batch > 0 && tokens > 0 && width > 0 && heads > 0 && width % heads == 0 && hidden > 0 &&
                           depth > 0 &&
                           (reuse ? feature_tokens > 0 && feature_width > 0 && reuse_hidden > 0 && reuse_width > 0
                                  : feature_width == 0 && reuse_hidden == 0 && reuse_width == 0);
        if (!valid)
          throw dvt::KernelError(dvt::kBadArguments, "no block stack has these sizes: " + dvt::shape_text({
              batch, tokens, width, heads, hidden, feature_tokens, feature_width, reuse_hidden, reuse_width, depth}));
        BlockShape shape;
        shape.dm = Dims{batch, tokens, width, heads, width / heads, batch * tokens};
        shape.hidden = hidden;
        shape.reuse = reuse;
        shape.feature_tokens = feature_tokens;
        shape.feature_width = feature_width;
        shape.reuse_hidden = reuse_hidden;
        shape.reuse_width = reuse_width;
        return depth * block_floats(shape, true);
      },
      [](int) -> int64_t { return -1; });
}

// Floats of the "saved" output of a training dvt_token_performer call with these sizes: x [batch, tokens, dim],
// embedding width emb (kqv w [3 emb, dim]), random_features random features (w [random_features, emb]). -1 for
// sizes no call can have, the reason in dvt_last_error.
int64_t dvt_performer_saved_floats(int64_t batch, int64_t tokens, int64_t dim, int64_t emb, int64_t random_features) {
  return dvt::guarded(
      __func__,
      [&]() -> int64_t {
        if (batch <= 0 || tokens <= 0 || dim <= 0 || emb <= 0 || random_features <= 0)
          throw dvt::KernelError(dvt::kBadArguments, "no token performer has these sizes: " +
                                                         dvt::shape_text({batch, tokens, dim, emb, random_features}));
        return performer_floats(PerformerShape{batch, tokens, dim, emb, random_features, batch * tokens});
      },
      [](int) -> int64_t { return -1; });
}

}  // extern "C"
