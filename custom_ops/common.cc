#include "common.h"

#include <cmath>
#include <limits>
#include <sstream>

namespace qx {

const OrtApi* api = nullptr;

void check(OrtStatus* status) {
  if (status == nullptr) return;
  std::string message = api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  fail(message);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

const char* type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT4: return "uint4";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT4: return "int4";
    default: return "another type";
  }
}

void size_overflow(const std::string& what) {
  fail(what + " overflows 64-bit size arithmetic (a native kernel limit)");
}

Tensor describe(const OrtValue* value, const std::string& what) {
  if (value == nullptr) fail(what + " is missing");
  int is_tensor = 0;
  check(api->IsTensor(value, &is_tensor));
  if (!is_tensor) fail(what + " is not a tensor");
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api->GetTensorTypeAndShape(value, &info));
  Tensor t;
  size_t rank = 0;
  OrtStatus* status = api->GetTensorElementType(info, &t.type);
  if (!status) status = api->GetDimensionsCount(info, &rank);
  if (!status) {
    t.shape.resize(rank);
    status = api->GetDimensions(info, t.shape.data(), rank);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  check(status);
  // every dimension is bounded, also when another one is 0 (the kernels' size arithmetic uses them all)
  int64_t volume = 1;
  t.count = 1;
  for (int64_t d : t.shape) {
    if (d < 0) fail(what + " has a negative dimension " + shape_text(t.shape));
    volume = checked_mul(volume, d > 0 ? d : 1, [&] { return what + " shape " + shape_text(t.shape); });
    t.count *= d;  // <= volume: cannot overflow
  }
  if (t.count > std::numeric_limits<int32_t>::max())
    fail(what + " has more than 2^31 - 1 elements " + shape_text(t.shape) + " (a native kernel limit)");
  void* data = nullptr;  // the C API has only the mutable accessor; inputs are only read
  check(api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  t.data = data;
  if (t.count > 0 && t.data == nullptr) fail(what + " has no data");
  return t;
}

Tensor input(OrtKernelContext* context, size_t index, const std::string& what) {
  size_t count = 0;
  check(api->KernelContext_GetInputCount(context, &count));
  if (index >= count) fail(what + " is missing");
  const OrtValue* value = nullptr;
  check(api->KernelContext_GetInput(context, index, &value));
  return describe(value, what);
}

void* output(OrtKernelContext* context, size_t index, const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t d : shape) count = checked_mul(count, d, [&] { return "output shape " + shape_text(shape); });
  if (count > std::numeric_limits<int32_t>::max())  // asked of onnxruntime's allocator, it may abort
    fail("output " + shape_text(shape) + " of more than 2^31 - 1 elements (a native kernel limit)");
  OrtValue* value = nullptr;
  check(api->KernelContext_GetOutput(context, index, shape.data(), shape.size(), &value));
  if (value == nullptr) return nullptr;
  void* data = nullptr;
  check(api->GetTensorMutableData(value, &data));
  return data;
}

void expect_type(const Tensor& t, ONNXTensorElementDataType type, const std::string& what) {
  if (t.type != type) fail(what + " must be " + type_name(type) + ", got " + type_name(t.type));
}

void expect_rank(const Tensor& t, size_t rank, const std::string& what) {
  if (t.shape.size() != rank)
    fail(what + " must have rank " + std::to_string(rank) + ", got shape " + shape_text(t.shape));
}

void expect_shape(const Tensor& t, const std::vector<int64_t>& shape, const std::string& what) {
  if (t.shape != shape) fail(what + " must have shape " + shape_text(shape) + ", got " + shape_text(t.shape));
}

float scalar_step(const Tensor& t, const std::string& what) {
  expect_type(t, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, what);
  expect_shape(t, {}, what);
  const float step = t.as<float>()[0];
  if (!(step > 0.0f) || std::isinf(step)) fail(what + " must be a positive finite number");
  return step;
}

void expect_codes(const Tensor& t, const std::string& what) {
  if (t.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 && t.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    fail(what + " must be int8 or uint8, got " + type_name(t.type));
}

int32_t scalar_zero_point(const Tensor& t, const std::string& what) {
  expect_shape(t, {}, what);
  expect_codes(t, what);
  return t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 ? int32_t(t.as<int8_t>()[0]) : int32_t(t.as<uint8_t>()[0]);
}

namespace {

enum class AttrKind { Missing, Int, Ints, Other };

// Whether attribute ``name`` is absent, an int, a list of ints or of another type.  ORT reports a
// missing attribute and one of another type alike (an error status), so other readers tell them apart.
AttrKind attr_kind(const OrtKernelInfo* info, const char* name) {
  auto ok = [](OrtStatus* status) {
    if (status == nullptr) return true;
    api->ReleaseStatus(status);
    return false;
  };
  int64_t i = 0;
  if (ok(api->KernelInfoGetAttribute_int64(info, name, &i))) return AttrKind::Int;
  // the array readers do not check the element type: a list of floats reads as no ints
  size_t ints = 0, floats = 0;
  const bool ints_ok = ok(api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &ints));
  const bool floats_ok = ok(api->KernelInfoGetAttributeArray_float(info, name, nullptr, &floats));
  if (ints_ok && ints > 0) return AttrKind::Ints;
  if (floats_ok && floats > 0) return AttrKind::Other;
  float f = 0;
  if (ok(api->KernelInfoGetAttribute_float(info, name, &f))) return AttrKind::Other;
  size_t size = 0;
  if (ok(api->KernelInfoGetAttribute_string(info, name, nullptr, &size))) return AttrKind::Other;
  if (ints_ok) return AttrKind::Ints;  // an empty list
  // a tensor, graph or sparse attribute: ORT says "No attribute with name" only when there is none
  OrtStatus* status = api->KernelInfoGetAttribute_int64(info, name, &i);
  const std::string message = status ? api->GetErrorMessage(status) : "";
  if (status) api->ReleaseStatus(status);
  return message.find("No attribute") != std::string::npos ? AttrKind::Missing : AttrKind::Other;
}

}  // namespace

int64_t attr_int(const OrtKernelInfo* info, const char* name) {
  const AttrKind kind = attr_kind(info, name);
  if (kind == AttrKind::Missing) fail(std::string("attribute ") + name + " is required");
  if (kind != AttrKind::Int) fail(std::string("attribute ") + name + " must be an int");
  int64_t value = 0;
  check(api->KernelInfoGetAttribute_int64(info, name, &value));
  return value;
}

int64_t attr_int(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  return attr_kind(info, name) == AttrKind::Missing ? fallback : attr_int(info, name);
}

std::vector<int64_t> attr_ints(const OrtKernelInfo* info, const char* name, std::vector<int64_t> fallback) {
  const AttrKind kind = attr_kind(info, name);
  if (kind == AttrKind::Missing) return fallback;
  if (kind != AttrKind::Ints) fail(std::string("attribute ") + name + " must be a list of ints");
  size_t size = 0;
  check(api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size));
  std::vector<int64_t> values(size);
  if (size) check(api->KernelInfoGetAttributeArray_int64(info, name, values.data(), &size));
  values.resize(size);
  return values;
}

int64_t relu_attr(const OrtKernelInfo* info, bool required, bool relu6) {
  const int64_t relu = required ? attr_int(info, "relu") : attr_int(info, "relu", 0);
  if (relu != 0 && relu != 1 && (!relu6 || relu != 6))
    fail("attribute relu=" + std::to_string(relu) + (relu6 ? " must be 0, 1 or 6" : " must be 0 or 1"));
  return relu;
}

std::string node_name(const OrtKernelInfo* info) {
  size_t size = 0;
  OrtStatus* status = api->KernelInfo_GetNodeName(info, nullptr, &size);
  if (status) {
    api->ReleaseStatus(status);
    return "?";
  }
  std::string name(size, '\0');
  status = api->KernelInfo_GetNodeName(info, name.data(), &size);
  if (status) {
    api->ReleaseStatus(status);
    return "?";
  }
  if (!name.empty() && name.back() == '\0') name.pop_back();
  return name;
}

}  // namespace qx
