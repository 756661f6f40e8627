// Shared plumbing of the qexport native kernels: the OrtApi handle, input validation that throws a
// one-line error (turned into an ORT error status by op.h), attribute readers, ParallelFor.
#pragma once

#include <onnxruntime_c_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace qx {

extern const OrtApi* api;

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

// Throw the message of a failed ORT call.
void check(OrtStatus* status);

std::string shape_text(const std::vector<int64_t>& shape);
const char* type_name(ONNXTensorElementDataType type);

struct Tensor {
  const void* data = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  int64_t count = 0;  // number of elements
  template <typename T>
  const T* as() const { return static_cast<const T*>(data); }
};

// Size arithmetic in 64 bits, checked: an overflow is an error naming ``what``: a string, or a callable
// returning one, built only on overflow (these checks run on every call of a kernel; a shape_text per
// call was a tenth of a small model's time).
[[noreturn]] void size_overflow(const std::string& what);
inline const std::string& message_of(const std::string& what) { return what; }
inline std::string message_of(const char* what) { return what; }
template <typename F, typename = decltype(std::declval<const F&>()())>
std::string message_of(const F& what) { return what(); }
template <typename What>
int64_t checked_mul(int64_t a, int64_t b, const What& what) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) size_overflow(message_of(what));
  return r;
}
template <typename What>
int64_t checked_add(int64_t a, int64_t b, const What& what) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) size_overflow(message_of(what));
  return r;
}

// Describe an OrtValue (validated: a dense CPU tensor with non-negative dimensions whose product,
// each empty dimension counted as 1, fits in 64 bits, and at most 2^31 - 1 elements).
Tensor describe(const OrtValue* value, const std::string& what);
// Input ``index`` of the running node; ``what`` names it in errors ("PostConv input x_codes").
Tensor input(OrtKernelContext* context, size_t index, const std::string& what);
// Output ``index`` allocated with ``shape`` (at most 2^31 - 1 elements, else a native kernel limit
// error); returns its data pointer (nullptr for an optional output the node leaves out).
void* output(OrtKernelContext* context, size_t index, const std::vector<int64_t>& shape);

void expect_type(const Tensor& t, ONNXTensorElementDataType type, const std::string& what);
void expect_rank(const Tensor& t, size_t rank, const std::string& what);
// exactly this shape (rank and every dimension)
void expect_shape(const Tensor& t, const std::vector<int64_t>& shape, const std::string& what);
// A step: float32 [], positive and finite (``what`` names it in the error).
float scalar_step(const Tensor& t, const std::string& what);
// Codes: int8 or uint8, any shape.
void expect_codes(const Tensor& t, const std::string& what);
// A zero point: int8 or uint8 []; its value.
int32_t scalar_zero_point(const Tensor& t, const std::string& what);

// Attributes, read strictly: a required one that is missing, or any one of another type, is an error;
// an optional one takes ``fallback`` only when it is absent.
int64_t attr_int(const OrtKernelInfo* info, const char* name);
int64_t attr_int(const OrtKernelInfo* info, const char* name, int64_t fallback);
std::vector<int64_t> attr_ints(const OrtKernelInfo* info, const char* name, std::vector<int64_t> fallback);
// The ``relu`` attribute: 0 (none), 1 (ReLU) or, with ``relu6``, 6 (ReLU6); 0 when absent and not
// ``required`` (an op whose body reads it requires it); any other value an error.
int64_t relu_attr(const OrtKernelInfo* info, bool required, bool relu6);
std::string node_name(const OrtKernelInfo* info);

// Run fn(0..total-1) on ORT's intra-op thread pool.
template <typename F>
void parallel_for(OrtKernelContext* context, size_t total, F&& fn) {
  if (total == 0) return;
  if (total == 1) {
    fn(size_t{0});
    return;
  }
  struct Call {
    F* fn;
    static void run(void* self, size_t i) { (*static_cast<Call*>(self)->fn)(i); }
  } call{&fn};
  check(api->KernelContext_ParallelFor(context, &Call::run, total, 0, &call));
}

// fn(r) for rows 0..rows-1 on ORT's thread pool, in tasks of whole rows, about 16K values each
// (``row_values`` a row).
template <typename F>
void parallel_rows(OrtKernelContext* context, int64_t rows, int64_t row_values, F&& fn) {
  const int64_t per_task = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(row_values, 1));
  parallel_for(context, size_t((rows + per_task - 1) / per_task), [&](size_t t) {
    for (int64_t r = int64_t(t) * per_task; r < std::min(rows, (int64_t(t) + 1) * per_task); ++r) fn(r);
  });
}

}  // namespace qx
