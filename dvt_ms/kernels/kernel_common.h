// Shared pieces of the fused CPU kernels: the worker pool behind parallel_for, per-thread scratch memory,
// vectorisable exp / erf, LayerNorm row helpers and the error guard of every entry point.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace dvt {

// Error codes returned to MindSpore (0: success). A non-zero code fails the op with MindSpore's error.
constexpr int kBadArguments = 1;  // input count, shapes or geometry disagree with what the kernel computes
constexpr int kInternal = 2;      // allocation or thread start failed (a C++ exception, caught here)

// Persistent workers that sleep on a condition variable between calls: nothing spins, so MindSpore's own
// threads keep the cores while the kernels are idle, and a call costs a wake-up, not a thread start. One
// call at a time uses the workers; a second concurrent caller (or a nested parallel_for) runs serially.
class Pool {
 public:
  static Pool &instance() {
    static std::once_flag once;
    // A forked child has none of the workers: it builds a fresh pool on first use (the parent's is leaked).
    std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { current().store(nullptr); }); });
    Pool *pool = current().load();
    if (pool == nullptr) {
      Pool *fresh = new Pool();  // never destroyed: workers may still sleep in it at exit
      pool = current().compare_exchange_strong(pool, fresh) ? fresh : pool;  // a lost race leaks an idle pool
    }
    return *pool;
  }

  int64_t threads() const { return static_cast<int64_t>(workers_.size()) + 1; }

  // Runs task(slot) for slot in [0, slots) on the caller and the workers; false when the pool was busy.
  bool run(int64_t slots, const std::function<void(int64_t)> &task) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock() || in_pool_) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      slots_ = slots;
      next_.store(1);
      pending_ = static_cast<int64_t>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    in_pool_ = true;
    task(0);
    drain(task);
    in_pool_ = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    task_ = nullptr;
    return true;
  }

 private:
  static std::atomic<Pool *> &current() {
    static std::atomic<Pool *> pool{nullptr};
    return pool;
  }

  Pool() {
    const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
    const int64_t wanted = std::min<int64_t>(cores, 8) - 1;
    try {
      for (int64_t i = 0; i < wanted; ++i) workers_.emplace_back([this] { work(); });
    } catch (...) {  // could not start every thread: use the ones that started
    }
    for (auto &w : workers_) w.detach();
  }

  void drain(const std::function<void(int64_t)> &task) {
    for (int64_t slot = next_.fetch_add(1); slot < slots_; slot = next_.fetch_add(1)) task(slot);
  }

  void work() {
    in_pool_ = true;
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int64_t)> *task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        task = task_;
      }
      if (task != nullptr) drain(*task);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)> *task_ = nullptr;
  int64_t slots_ = 0, pending_ = 0;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  static inline thread_local bool in_pool_ = false;
};

// How many slots parallel_for splits work of this size into (1: run on the caller alone).
inline int64_t slots_for(int64_t n, int64_t work_per_item) {
  const int64_t min_work_per_slot = 1 << 18;
  int64_t slots = Pool::instance().threads();
  slots = std::min(slots, std::max<int64_t>(1, n * work_per_item / min_work_per_slot));
  return std::max<int64_t>(1, std::min(slots, n));
}

// Runs body(begin, end, slot) over [0, n) in contiguous chunks, one per slot, chunk boundaries fixed by n and
// the slot count (so results that depend on the split are reproducible on a machine). An exception thrown by
// body on any thread is caught there and rethrown on the caller once every slot has finished.
template <typename Body>
void parallel_for(int64_t n, int64_t work_per_item, const Body &body) {
  const int64_t slots = slots_for(n, work_per_item);
  if (slots <= 1) {
    if (n > 0) body(0, n, 0);
    return;
  }
  const int64_t chunk = (n + slots - 1) / slots;
  std::mutex failure_mutex;
  std::exception_ptr failure;
  const std::function<void(int64_t)> task = [&](int64_t slot) {
    try {
      const int64_t begin = slot * chunk, end = std::min(n, begin + chunk);
      if (begin < end) body(begin, end, slot);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  };
  if (!Pool::instance().run(slots, task)) {
    for (int64_t slot = 0; slot < slots; ++slot) task(slot);
  }
  if (failure) std::rethrow_exception(failure);
}

// Scratch memory of the calling thread, kept between calls (no page faults per call). A Scratch object
// hands out consecutive pieces of one buffer; Scratch objects alive at the same time on one thread (a helper
// taking scratch inside a kernel) use different buffers, one per nesting depth.
class Scratch {
 public:
  // Throws std::bad_alloc, leaving this thread's scratch as it was (smaller buffers freed).
  explicit Scratch(int64_t floats) : depth_(depth()) {
    std::vector<Buffer> &buffers = mine();
    if (static_cast<int64_t>(buffers.size()) <= depth_) buffers.resize(depth_ + 1);
    Buffer &buffer = buffers[depth_];
    if (buffer.size < floats) {
      buffer.size = 0;
      buffer.data.reset();
      buffer.data.reset(new float[floats]);
      buffer.size = floats;
    }
    base_ = buffer.data.get();
    ++depth();  // only once nothing can throw: the destructor, which lowers it, runs for built objects only
  }
  ~Scratch() { --depth(); }
  Scratch(const Scratch &) = delete;
  Scratch &operator=(const Scratch &) = delete;

  float *take(int64_t floats) {
    float *piece = base_ + used_;
    used_ += floats;
    return piece;
  }

 private:
  struct Buffer {
    std::unique_ptr<float[]> data;
    int64_t size = 0;
  };
  static std::vector<Buffer> &mine() {
    static thread_local std::vector<Buffer> buffers;
    return buffers;
  }
  static int64_t &depth() {
    static thread_local int64_t level = 0;
    return level;
  }
  int64_t depth_;
  float *base_ = nullptr;
  int64_t used_ = 0;
};

// Whether a tensor of ndim dimensions has exactly the expected shape.
inline bool is_shape(int ndim, const int64_t *shape, std::initializer_list<int64_t> expected) {
  if (ndim != static_cast<int>(expected.size())) return false;
  int i = 0;
  for (int64_t e : expected)
    if (shape[i++] != e) return false;
  return true;
}

// Whether inputs/outputs a and b of a kernel call have the same shape.
inline bool same_shape(const int *ndims, int64_t *const *shapes, int a, int b) {
  if (ndims[a] != ndims[b]) return false;
  for (int i = 0; i < ndims[a]; ++i)
    if (shapes[a][i] != shapes[b][i]) return false;
  return true;
}

inline int64_t count(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// exp(x) for float32: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2; relative error below 2e-7. NaN in, NaN
// out: the clamps are written so that a NaN passes them, and the exponent bits come from the clamped n.
inline float exp_approx(float x) {
  const float clamped = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // round to nearest by adding and removing 1.5 * 2^23 (exact for |x| < 2^22; nearbyint is a libm call
  // that keeps the loop from vectorising)
  float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (clamped - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  n = n == n ? n : 0.0f;  // NaN: cast a defined value (p is NaN already and carries it)
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// erf(x): Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), odd extension for x < 0.
inline float erf_approx(float x) {
  const float a = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_approx(-a * a);
  return std::copysign(y, x);
}

inline float gelu(float x) { return 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752f)); }

// d gelu / dx = Phi(x) + x phi(x), Phi the normal CDF, phi its density.
inline float gelu_slope(float x) {
  const float cdf = 0.5f * (1.0f + erf_approx(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * exp_approx(-0.5f * x * x);
  return cdf + x * pdf;
}

// Mean and 1 / sqrt(variance + eps) of a row of d values (two passes, as the stock op).
inline void row_stats(const float *x, int64_t d, float eps, float *mean_out, float *rstd_out) {
  const float inv_d = 1.0f / static_cast<float>(d);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < d; ++i) sum += x[i];
  const float mean = sum * inv_d;
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < d; ++i) {
    const float c = x[i] - mean;
    sq += c * c;
  }
  *mean_out = mean;
  *rstd_out = 1.0f / std::sqrt(sq * inv_d + eps);
}

// LayerNorm backward of one row with x_hat = (x - mean) * rstd and g = dy * weight:
// dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)); adds dy * x_hat to dweight_acc and dy to dbias_acc.
// xhat: scratch of d floats.
inline void layer_norm_backward_row(const float *x, float mean, float rstd, const float *w, const float *dy,
                                    int64_t d, float *dx, float *dweight_acc, float *dbias_acc, float *xhat) {
  const float inv_d = 1.0f / static_cast<float>(d);
  float g_sum = 0.0f, gx_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, gx_sum)
  for (int64_t i = 0; i < d; ++i) {
    const float xh = (x[i] - mean) * rstd;
    const float g = dy[i] * w[i];
    xhat[i] = xh;
    g_sum += g;
    gx_sum += g * xh;
    dweight_acc[i] += dy[i] * xh;
    dbias_acc[i] += dy[i];
  }
  const float g_mean = g_sum * inv_d, gx_mean = gx_sum * inv_d;
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) dx[i] = rstd * (dy[i] * w[i] - g_mean - xhat[i] * gx_mean);
}

// LayerNorm backward over rows [rows, d]: dx written (plus add[r] when add is not null), dweight / dbias
// summed over 8 fixed chunks of rows and then in chunk order (the same bits for any number of threads).
// row(r, buffer) returns the LayerNorm input of row r (a pointer into the input, or assembled in buffer, d
// floats); stats holds each row's (mean, 1 / std), or is null: recomputed from the input with eps.
template <typename RowInput>
void layer_norm_backward(int64_t rows, int64_t d, const float *stats, float eps, const float *w, const float *dy,
                         float *dx, const float *add, int64_t add_ld, float *dweight, float *dbias,
                         const RowInput &row) {
  const int64_t chunks = 8;
  const int64_t chunk = (rows + chunks - 1) / chunks;
  Scratch scratch(2 * chunks * d + chunks * 2 * d);
  float *partial = scratch.take(2 * chunks * d);
  float *buffers = scratch.take(chunks * 2 * d);
  std::fill(partial, partial + 2 * chunks * d, 0.0f);
  parallel_for(chunks, 8 * chunk * d, [&](int64_t first, int64_t last, int64_t) {
    for (int64_t c = first; c < last; ++c) {
      float *pw = partial + 2 * c * d, *pb = pw + d;
      float *input = buffers + c * 2 * d, *xhat = input + d;
      for (int64_t r = c * chunk; r < std::min(rows, (c + 1) * chunk); ++r) {
        float *dxr = dx + r * d;
        const float *xr = row(r, input);
        float mean, rstd;
        if (stats != nullptr) {
          mean = stats[2 * r];
          rstd = stats[2 * r + 1];
        } else {
          row_stats(xr, d, eps, &mean, &rstd);
        }
        layer_norm_backward_row(xr, mean, rstd, w, dy + r * d, d, dxr, pw, pb, xhat);
        if (add != nullptr) {
          const float *ar = add + r * add_ld;
#pragma omp simd
          for (int64_t i = 0; i < d; ++i) dxr[i] += ar[i];
        }
      }
    }
  });
  for (int64_t i = 0; i < d; ++i) {
    float sw = 0.0f, sb = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) {
      sw += partial[2 * c * d + i];
      sb += partial[(2 * c + 1) * d + i];
    }
    dweight[i] = sw;
    dbias[i] = sb;
  }
}


// Runs body(i) for every i in [0, n): blocks of 4096 elements spread over the pool, each block one SIMD loop;
// cost is the work of one element (what parallel_for splits by).
template <typename Body>
void for_each_element(int64_t n, int64_t cost, const Body &body) {
  constexpr int64_t block = 4096;
  parallel_for((n + block - 1) / block, cost * block, [&](int64_t first, int64_t last, int64_t) {
    const int64_t end = std::min(n, last * block);
#pragma omp simd
    for (int64_t i = first * block; i < end; ++i) body(i);
  });
}

// The tensors MindSpore hands a kernel (void pointers), read as typed pointers: in<T>(i) for inputs,
// out<T>(i) for outputs.
struct Tensors {
  void **params;
  template <typename T = float>
  const T *in(int i) const { return static_cast<const T *>(params[i]); }
  template <typename T = float>
  T *out(int i) const { return static_cast<T *>(params[i]); }
};

// Calls body() and turns a C++ exception (allocation, thread start) into an error code: none crosses the
// C boundary into MindSpore.
template <typename Body>
int guarded(const Body &body) {
  try {
    return body();
  } catch (...) {
    return kInternal;
  }
}

}  // namespace dvt
