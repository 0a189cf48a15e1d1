// Shared pieces of the fused CPU kernels: the argument checks and error messages of every entry point, the worker
// pool behind parallel_for, per-thread scratch memory, vectorisable exp / erf, GELU, the AdamW step and LayerNorm
// row helpers.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace dvt {

// Error codes returned to MindSpore (0: success). A non-zero code fails the op with MindSpore's error; the
// message saying why is dvt_last_error's.
constexpr int kBadArguments = 1;  // argument count, dtypes, shapes or config disagree with what the kernel computes
constexpr int kInternal = 2;      // allocation or thread start failed, or a kernel asked for more scratch than it took

// Why a kernel stopped: thrown by the checks below, caught by guarded() at the C boundary.
class KernelError : public std::exception {
 public:
  KernelError(int code, std::string message) : code_(code), message_(std::move(message)) {}
  int code() const { return code_; }
  const char *what() const noexcept override { return message_.c_str(); }

 private:
  int code_;
  std::string message_;
};

// The most recent failure of any thread, "kernel: message". Process-wide rather than per thread: MindSpore runs a
// kernel on the Python caller's thread in graph mode but on a thread of its own in PyNative mode.
struct LastError {
  std::mutex mutex;
  std::string text;
};

inline LastError &last_error() {
  static LastError error;
  return error;
}

inline void record_error(const char *kernel, const char *message) noexcept {
  try {
    LastError &error = last_error();
    std::lock_guard<std::mutex> lock(error.mutex);
    error.text = std::string(kernel) + ": " + message;
  } catch (...) {  // no memory for the message: MindSpore's error code still stops the run
  }
}

inline std::string last_error_text() {
  LastError &error = last_error();
  std::lock_guard<std::mutex> lock(error.mutex);
  return error.text;
}

// Runs body() and turns any C++ exception into a recorded message and failed(code): none crosses the C boundary
// into MindSpore or Python.
template <typename Body, typename Failed>
auto guarded(const char *name, const Body &body, const Failed &failed) -> decltype(body()) {
  try {
    return body();
  } catch (const KernelError &e) {
    record_error(name, e.what());
    return failed(e.code());
  } catch (const std::bad_alloc &) {
    record_error(name, "out of memory");
    return failed(kInternal);
  } catch (const std::exception &e) {
    record_error(name, e.what());
    return failed(kInternal);
  } catch (...) {
    record_error(name, "unknown C++ exception");
    return failed(kInternal);
  }
}

// An entry point's body, returning MindSpore's code: 0, or the failure's code with its message recorded.
template <typename Body>
int guarded(const char *kernel, const Body &body) {
  return guarded(kernel, body, [](int code) { return code; });
}

// ---- the arguments of a kernel --------------------------------------------------------------------------------

enum class Dtype { kFloat32, kInt32 };

inline const char *dtype_name(Dtype dtype) { return dtype == Dtype::kFloat32 ? "float32" : "int32"; }

// One argument of a kernel with a fixed argument list: its name in messages and the dtype it must have.
struct Param {
  const char *name;
  Dtype dtype;
};

// "[2, 5, 8]"
inline std::string shape_text(int ndim, const int64_t *shape) {
  std::string text = "[";
  for (int i = 0; i < ndim; ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

inline std::string shape_text(std::initializer_list<int64_t> shape) {
  return shape_text(static_cast<int>(shape.size()), shape.begin());
}

// The tensors MindSpore hands a kernel (inputs, then outputs: params, ndims, shapes, dtypes), and the checks every
// entry point makes before it touches a buffer. A failed check throws KernelError with a message naming the
// argument, what the kernel expects and what it was given.
class Call {
 public:
  Call(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes)
      : nparam_(nparam), params_(params), ndims_(ndims), shapes_(shapes), dtypes_(dtypes) {}

  int size() const { return nparam_; }
  int ndim(int i) const { return ndims_[i]; }
  const int64_t *shape(int i) const { return shapes_[i]; }
  int64_t dim(int i, int axis) const { return shapes_[i][axis]; }
  int64_t elements(int i) const {
    int64_t n = 1;
    for (int a = 0; a < ndims_[i]; ++a) n *= shapes_[i][a];
    return n;
  }
  bool is(int i, std::initializer_list<int64_t> expected) const {
    if (ndims_[i] != static_cast<int>(expected.size())) return false;
    return std::equal(expected.begin(), expected.end(), shapes_[i]);
  }
  bool placeholder(int i) const { return is(i, {1}); }
  template <typename T = float>
  const T *in(int i) const { return static_cast<const T *>(params_[i]); }
  template <typename T = float>
  T *out(int i) const { return static_cast<T *>(params_[i]); }

  // A fixed argument list (``inputs`` of them inputs, the rest outputs): checks the count and every dtype.
  template <size_t N>
  void expect(const Param (&params)[N], int inputs) {
    table_ = params;
    table_size_ = static_cast<int>(N);
    inputs_ = inputs;
    count(static_cast<int>(N));
    for (int i = 0; i < static_cast<int>(N); ++i) dtype(i, params[i].dtype);
  }

  // Names the arguments of a variable list: namer(i) gives argument i's description, e.g. "'qkv_w' of block 0
  // (input 9)" (see label).
  void name_with(std::function<std::string(int)> namer) { namer_ = std::move(namer); }

  // "'name' (input i)" or "'name' (output j)"; inputs < 0: not known yet, "(argument i)".
  static std::string label(const std::string &name, int index, int inputs) {
    std::string where = inputs < 0    ? "argument " + std::to_string(index)
                        : index < inputs ? "input " + std::to_string(index)
                                         : "output " + std::to_string(index - inputs);
    return "'" + name + "' (" + where + ")";
  }

  std::string arg(int i) const {
    if (namer_) return namer_(i);
    if (i < table_size_) return label(table_[i].name, i, inputs_);
    return "argument " + std::to_string(i);
  }

  [[noreturn]] void fail(const std::string &problem) const { throw KernelError(kBadArguments, problem); }

  // Fails with message() (only built when it fails) unless ok.
  template <typename Message>
  void check(bool ok, const Message &message) const {
    if (!ok) fail(message());
  }

  void count(int expected) const {
    check(nparam_ == expected, [&] {
      return "takes " + std::to_string(expected) + " tensors (inputs and outputs), got " + std::to_string(nparam_);
    });
  }
  void count_at_least(int least) const {
    check(nparam_ >= least, [&] {
      return "takes at least " + std::to_string(least) + " tensors (inputs and outputs), got " +
             std::to_string(nparam_);
    });
  }
  void dtype(int i, Dtype expected) const {
    check(dtypes_ != nullptr, [] { return std::string("MindSpore passed no dtypes"); });
    check(std::strcmp(dtypes_[i], dtype_name(expected)) == 0, [&] {
      return arg(i) + " must be " + dtype_name(expected) + ", got " + dtypes_[i];
    });
  }
  void dtypes(int first, int end, Dtype expected) const {
    for (int i = first; i < end; ++i) dtype(i, expected);
  }
  void expect_ndim(int i, int expected) const {
    check(ndims_[i] == expected, [&] {
      return arg(i) + " must have " + std::to_string(expected) + " dimensions, got shape " +
             shape_text(ndims_[i], shapes_[i]);
    });
  }
  void expect_shape(int i, std::initializer_list<int64_t> expected) const {
    check(is(i, expected), [&] {
      return arg(i) + " must have shape " + shape_text(expected) + ", got " + shape_text(ndims_[i], shapes_[i]);
    });
  }
  void expect_same_shape(int i, int like) const {
    const bool same = ndims_[i] == ndims_[like] && std::equal(shapes_[i], shapes_[i] + ndims_[i], shapes_[like]);
    check(same, [&] {
      return arg(i) + " must have the shape of " + arg(like) + ", " + shape_text(ndims_[like], shapes_[like]) +
             ", got " + shape_text(ndims_[i], shapes_[i]);
    });
  }
  // As many dimensions and elements as argument ``like`` (a gradient MindSpore may hand over reshaped).
  void expect_same_size(int i, int like) const {
    check(ndims_[i] == ndims_[like] && elements(i) == elements(like), [&] {
      return arg(i) + " must have the size of " + arg(like) + ", " + shape_text(ndims_[like], shapes_[like]) +
             ", got " + shape_text(ndims_[i], shapes_[i]);
    });
  }
  // The placeholder [1] of an absent input (``why``: what makes it absent).
  void expect_placeholder(int i, const char *why) const {
    check(placeholder(i), [&] {
      return arg(i) + " must be the placeholder [1] (" + why + "), got " + shape_text(ndims_[i], shapes_[i]);
    });
  }

 private:
  int nparam_;
  void **params_;
  int *ndims_;
  int64_t **shapes_;
  const char **dtypes_;
  const Param *table_ = nullptr;
  int table_size_ = 0, inputs_ = -1;
  std::function<std::string(int)> namer_;
};

// ---- the worker pool ----------------------------------------------------------------------------------------

constexpr int64_t kMaxThreads = 256;

// Threads of the pool, the caller included: $DVT_MS_KERNEL_THREADS when it is a whole number in [1, kMaxThreads]
// (the Python side refuses any other value before a kernel runs), else one per core, at most 8.
inline int64_t pool_threads() {
  if (const char *text = std::getenv("DVT_MS_KERNEL_THREADS")) {
    char *end = nullptr;
    const long long value = std::strtoll(text, &end, 10);
    while (end != text && (*end == ' ' || *end == '\t' || *end == '\n')) ++end;
    if (end != text && *end == '\0' && value >= 1 && value <= kMaxThreads) return value;
  }
  const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  return std::min<int64_t>(cores, 8);
}

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
    const int64_t wanted = pool_threads() - 1;
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
// hands out consecutive pieces of one buffer, never more than it was built with; Scratch objects alive at the same
// time on one thread (a helper taking scratch inside a kernel) use different buffers, one per nesting depth.
class Scratch {
 public:
  // Throws std::bad_alloc, leaving this thread's scratch as it was (smaller buffers freed).
  explicit Scratch(int64_t floats) : depth_(depth()), size_(floats) {
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

  // The next ``floats`` floats; a KernelError (internal) when fewer are left.
  float *take(int64_t floats) {
    if (floats < 0 || floats > size_ - used_)
      throw KernelError(kInternal, "scratch memory overrun: asked for " + std::to_string(floats) + " floats with " +
                                       std::to_string(size_ - used_) + " of " + std::to_string(size_) + " left");
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
  int64_t depth_, size_;
  float *base_ = nullptr;
  int64_t used_ = 0;
};

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

// Exact (erf) GELU, 0.5 x (1 + erf(x / sqrt 2)): the one definition every kernel uses.
inline float gelu(float x) { return 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752f)); }

// d gelu / dx = Phi(x) + x phi(x), Phi the normal CDF, phi its density.
inline float gelu_slope(float x) {
  const float cdf = 0.5f * (1.0f + erf_approx(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * exp_approx(-0.5f * x * x);
  return cdf + x * pdf;
}

// One AdamW update of one element, as torch.optim.AdamW and dvt_ms.train.optimizer compute it: every operation a
// separate float32 rounding in the order of the stock ops (built with -ffp-contract=off: no fused multiply-adds),
// so the kernels and the stock path give the same bits. The one definition dvt_adamw and dvt_train_update use.
struct AdamW {
  float lr, step_size, bias2_sqrt, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;

  // hyper: {lr, step_size (lr / bias correction 1), sqrt(bias correction 2), 1 - beta1, beta2, 1 - beta2, eps,
  // weight_decay}
  static AdamW from(const float *hyper) {
    return {hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5], hyper[6], hyper[7]};
  }
  // What the weight decay multiplies a decayed parameter by.
  float keep() const { return weight_decay != 0.0f ? 1.0f - lr * weight_decay : 1.0f; }

  // param, exp_avg and exp_avg_sq updated with the gradient; keep: keep() for a decayed parameter, else 1.
  void step(float grad, float keep, float &param, float &exp_avg, float &exp_avg_sq) const {
    const float decayed = param * keep;
    const float m_new = exp_avg + (grad - exp_avg) * one_minus_beta1;
    const float v_new = exp_avg_sq * beta2 + grad * grad * one_minus_beta2;
    const float denom = std::sqrt(v_new) / bias2_sqrt + eps;
    exp_avg = m_new;
    exp_avg_sq = v_new;
    param = decayed - step_size * (m_new / denom);
  }
};

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

}  // namespace dvt
