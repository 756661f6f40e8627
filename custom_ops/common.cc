#include "common.h"

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
  t.count = 1;
  for (int64_t d : t.shape) {
    if (d < 0) fail(what + " has a negative dimension " + shape_text(t.shape));
    if (d != 0 && t.count > std::numeric_limits<int32_t>::max() / d) fail(what + " is too large " + shape_text(t.shape));
    t.count *= d;
  }
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

int64_t attr_int(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t value = 0;
  OrtStatus* status = api->KernelInfoGetAttribute_int64(info, name, &value);
  if (status) {
    api->ReleaseStatus(status);
    return fallback;
  }
  return value;
}

std::vector<int64_t> attr_ints(const OrtKernelInfo* info, const char* name, std::vector<int64_t> fallback) {
  size_t size = 0;
  OrtStatus* status = api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
  if (status) {
    api->ReleaseStatus(status);
    return fallback;
  }
  std::vector<int64_t> values(size);
  if (size) check(api->KernelInfoGetAttributeArray_int64(info, name, values.data(), &size));
  return values;
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
