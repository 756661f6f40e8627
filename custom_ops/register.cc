// Entry point: RegisterCustomOps adds the qexport domain's native kernels to a session's options.
// Built against the ORT C API headers only (ORT_API_MANUAL_INIT style: the OrtApi comes from the
// OrtApiBase handed in), so the library loads in any onnxruntime at least as new as its headers.
#include <memory>
#include <mutex>

#include "op.h"
#include "ops.h"

namespace qx {

bool is_constant_input(const OrtKernelInfo* info, size_t index) {
  int constant = 0;
  const OrtValue* value = nullptr;
  OrtStatus* status = api->KernelInfoGetConstantInput_tensor(info, index, &constant, &value);
  if (status) {
    api->ReleaseStatus(status);
    return false;
  }
  return constant != 0;
}

}  // namespace qx

using qx::Op;
constexpr auto kAny = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
constexpr auto kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr auto kU8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr auto kS8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                                const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // an onnxruntime older than these headers: nothing registered
  qx::api = api;
  // ops live as long as the process: sessions keep pointers to them.  The conv kernels take inputs of
  // any type and check each themselves, so a node of the wrong types gets the kernel's one-line error
  // rather than onnxruntime running the op's function body instead.  The ASQ ops cannot: onnxruntime
  // infers its codes' type from its one input of any type (zero_point); a node whose other inputs are
  // not float32 finds no kernel and runs the function body.
  static Op<qx::PostConvKernel> post_conv("PostConv", {kAny, kAny, kAny, kAny, kAny}, {kFloat});
  static Op<qx::IntConvKernel> int_conv("IntConv", {kAny, kAny, kAny, kAny, kAny}, {kFloat});
  // codes out, of y_zero_point's type: one registration per type (onnxruntime infers an output of any
  // type only from a node with one input of any type)
  static Op<qx::PostConvRequantKernel> post_conv_requant_u8("PostConvRequant", {kAny, kAny, kAny, kAny, kAny, kAny, kU8},
                                                            {kU8});
  static Op<qx::PostConvRequantKernel> post_conv_requant_s8("PostConvRequant", {kAny, kAny, kAny, kAny, kAny, kAny, kS8},
                                                            {kS8});
  static Op<qx::IntConvRequantKernel> int_conv_requant_u8("IntConvRequant", {kAny, kAny, kAny, kAny, kAny, kAny, kU8},
                                                          {kU8});
  static Op<qx::IntConvRequantKernel> int_conv_requant_s8("IntConvRequant", {kAny, kAny, kAny, kAny, kAny, kAny, kS8},
                                                          {kS8});
  static Op<qx::AsqQuantizeKernel> asq("AsqQuantize", {kFloat, kFloat, kAny, kFloat, kFloat, kFloat, kFloat},
                                       {kFloat, kAny, kFloat}, 1u);  // y is optional
  static Op<qx::AsqQuantizeRowsKernel> asq_rows("AsqQuantizeRows", {kFloat, kFloat, kAny, kFloat, kFloat, kFloat, kFloat},
                                                {kFloat, kAny, kFloat}, 1u);
  static Op<qx::RequantizeKernel> requantize_u8("Requantize", {kAny, kAny, kAny, kAny, kU8}, {kU8});
  static Op<qx::RequantizeKernel> requantize_s8("Requantize", {kAny, kAny, kAny, kAny, kS8}, {kS8});
  // (output 1, the dequantized sum, optional)
  static Op<qx::AddRequantKernel> add_requant_u8("AddRequant", {kAny, kAny, kAny, kAny, kAny, kAny, kAny, kU8},
                                                 {kU8, kFloat}, 2u);
  static Op<qx::AddRequantKernel> add_requant_s8("AddRequant", {kAny, kAny, kAny, kAny, kAny, kAny, kAny, kS8},
                                                 {kS8, kFloat}, 2u);
  static Op<qx::RescaleKernel> rescale("Rescale", {kAny, kAny, kAny, kAny}, {kFloat});
  static Op<qx::PostRescaleKernel> post_rescale("PostRescale", {kAny, kAny, kAny, kAny}, {kFloat});
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* s = api->CreateCustomOpDomain("qexport", &domain)) return s;
  for (OrtCustomOp* op : {static_cast<OrtCustomOp*>(&post_conv), static_cast<OrtCustomOp*>(&int_conv),
                          static_cast<OrtCustomOp*>(&post_conv_requant_u8), static_cast<OrtCustomOp*>(&post_conv_requant_s8),
                          static_cast<OrtCustomOp*>(&int_conv_requant_u8), static_cast<OrtCustomOp*>(&int_conv_requant_s8),
                          static_cast<OrtCustomOp*>(&asq), static_cast<OrtCustomOp*>(&asq_rows),
                          static_cast<OrtCustomOp*>(&requantize_u8), static_cast<OrtCustomOp*>(&requantize_s8),
                          static_cast<OrtCustomOp*>(&add_requant_u8), static_cast<OrtCustomOp*>(&add_requant_s8),
                          static_cast<OrtCustomOp*>(&rescale), static_cast<OrtCustomOp*>(&post_rescale)}) {
    if (OrtStatus* s = api->CustomOpDomain_Add(domain, op)) return s;
  }
  return api->AddCustomOpDomain(options, domain);
}
