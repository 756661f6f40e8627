// OrtCustomOp for a kernel class K: K(const OrtKernelInfo*) reads and validates attributes,
// K::compute(OrtKernelContext*) validates inputs and runs; qx::Error and std::exception become ORT
// error statuses naming the op and the node (never an exception across the C boundary).
#pragma once

#include <climits>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "common.h"

namespace qx {

template <typename K>
struct Op : OrtCustomOp {
  const char* name;
  std::vector<ONNXTensorElementDataType> inputs;   // UNDEFINED: any type (checked by the kernel)
  std::vector<ONNXTensorElementDataType> outputs;
  unsigned optional_outputs;  // bit i: output i may be left out of the node (an empty name)

  Op(const char* op_name, std::vector<ONNXTensorElementDataType> in, std::vector<ONNXTensorElementDataType> out,
     unsigned optional = 0)
      : OrtCustomOp{}, name(op_name), inputs(std::move(in)), outputs(std::move(out)), optional_outputs(optional) {
    version = ORT_API_VERSION;
    GetName = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->name; };
    GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return "CPUExecutionProvider"; };
    GetInputType = [](const OrtCustomOp* op, size_t i) { return static_cast<const Op*>(op)->inputs[i]; };
    GetInputTypeCount = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->inputs.size(); };
    GetOutputType = [](const OrtCustomOp* op, size_t i) { return static_cast<const Op*>(op)->outputs[i]; };
    GetOutputTypeCount = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->outputs.size(); };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetOutputCharacteristic = [](const OrtCustomOp* op, size_t i) {
      return (static_cast<const Op*>(op)->optional_outputs >> i) & 1u ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 0; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 0; };
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return INT_MAX; };
    KernelDestroy = [](void* kernel) { delete static_cast<K*>(kernel); };
    CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info, void** kernel) -> OrtStatus* {
      try {
        *kernel = new K(info);
        return nullptr;
      } catch (const std::exception& e) {
        return status(static_cast<const Op*>(op)->name, node_name(info), e.what());
      }
    };
    KernelComputeV2 = [](void* kernel, OrtKernelContext* context) -> OrtStatus* {
      K* k = static_cast<K*>(kernel);
      try {
        k->compute(context);
        return nullptr;
      } catch (const std::bad_alloc&) {
        return status(K::kName, k->node, "out of memory");
      } catch (const std::exception& e) {
        return status(K::kName, k->node, e.what());
      }
    };
  }

  static OrtStatus* status(const char* op, const std::string& node, const char* message) {
    std::string text = std::string("qexport.") + op + " (node '" + node + "'): " + message;
    return api->CreateStatus(ORT_INVALID_ARGUMENT, text.c_str());
  }
};

}  // namespace qx
