// The native kernels, one file each: post_conv.cc (PostConv, PostConvRequant), int_conv.cc (IntConv,
// IntConvRequant), asq_quantize.cc, asq_quantize_rows.cc, requantize.cc, add_requant.cc, rescale.cc,
// post_rescale.cc.
#pragma once

#include <atomic>
#include <mutex>
#include <string>

#include "common.h"
#include "conv.h"

namespace qx {

// Whether input ``index`` of the node is a constant initializer (its packing can then be kept).
bool is_constant_input(const OrtKernelInfo* info, size_t index);

// What both conv kernels keep: the node's name, its conv attributes and, when the weight is a constant
// initializer, its packing, made by the first compute() under a mutex and never changed after (ORT may
// call compute() of one kernel from several threads at once).  A weight that is not constant is packed
// into the caller's own PackedWeights on every run.
struct ConvKernel {
  ConvKernel(const OrtKernelInfo* info, bool group_required, bool requantized)
      : node(node_name(info)), constant_weights(is_constant_input(info, 2)), requantized(requantized) {
    attrs.read(info, group_required);
    if (requantized) requant.read(info);
  }
  const RequantAttrs* requant_attrs() const { return requantized ? &requant : nullptr; }
  // The packed weights for this run: ``pack(PackedWeights&)`` fills (and validates) a packing.
  template <typename Pack>
  const PackedWeights& weights(PackedWeights& local, Pack&& pack) {
    if (!constant_weights) {
      pack(local);
      return local;
    }
    if (!packed_ready.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> lock(packing);
      if (!packed_ready.load(std::memory_order_relaxed)) {
        pack(packed);  // throws on a bad weight: not ready, the next run tries (and fails) again
        packed_ready.store(true, std::memory_order_release);
      }
    }
    return packed;
  }
  std::string node;
  bool constant_weights;
  bool requantized;  // a *Requant op: codes out
  ConvAttrs attrs;
  RequantAttrs requant;

 private:
  std::mutex packing;
  std::atomic<bool> packed_ready{false};
  PackedWeights packed;  // written once, under ``packing``, before packed_ready
};

struct PostConvKernel : ConvKernel {
  static constexpr const char* kName = "PostConv";
  explicit PostConvKernel(const OrtKernelInfo* info, bool requantized = false);
  void compute(OrtKernelContext* context);
  int64_t bits = 4;
  int64_t relu = 0;  // 0, 1 (ReLU) or 6 (ReLU6)
};

struct IntConvKernel : ConvKernel {
  static constexpr const char* kName = "IntConv";
  explicit IntConvKernel(const OrtKernelInfo* info, bool requantized = false);
  void compute(OrtKernelContext* context);
  int64_t relu = 0;
};

// The same convs with their output quantizer fused in: codes out (inputs y_scale, y_zero_point).
struct PostConvRequantKernel : PostConvKernel {
  static constexpr const char* kName = "PostConvRequant";
  explicit PostConvRequantKernel(const OrtKernelInfo* info) : PostConvKernel(info, true) {}
};

struct IntConvRequantKernel : IntConvKernel {
  static constexpr const char* kName = "IntConvRequant";
  explicit IntConvRequantKernel(const OrtKernelInfo* info) : IntConvKernel(info, true) {}
};

// The exact residual add with its output quantizer (add_requant.cc): attributes qmin / qmax, and relu
// (0 or 1, 0 when absent) for the optional dequantized output.
struct AddRequantKernel {
  static constexpr const char* kName = "AddRequant";
  explicit AddRequantKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  std::string node;
  RequantAttrs requant;
  bool relu = false;
};

// Requantize's output code for each input byte.
struct RequantTable {
  alignas(64) uint8_t code[256] = {};
};

// Codes to codes (requantize.cc): attributes relu (0 or 1) and qmin / qmax.  With constant steps and
// zero points (inputs 1-4) the table is made once, by the constructor, and only read after.
struct RequantizeKernel {
  static constexpr const char* kName = "Requantize";
  explicit RequantizeKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  std::string node;
  int64_t relu = 0;
  RequantAttrs requant;
  bool constant_table = false;
  ONNXTensorElementDataType x_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // x_zero_point's (constant_table)
  RequantTable table;
};

// An integer matmul's sums to float with per-column and per-row scales and a bias (rescale.cc).
struct RescaleKernel {
  static constexpr const char* kName = "Rescale";
  explicit RescaleKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  std::string node;
};

// POST's even and odd integer matmul sums to float, scaled, plus the bias (post_rescale.cc).
struct PostRescaleKernel {
  static constexpr const char* kName = "PostRescale";
  explicit PostRescaleKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  std::string node;
};

// The two ASQ kernels' attributes: qmin / qmax, both required (the function bodies read them).
struct AsqKernel {
  explicit AsqKernel(const OrtKernelInfo* info);
  std::string node;
  int64_t qmin = 0, qmax = 0;
};

struct AsqQuantizeRowsKernel : AsqKernel {
  static constexpr const char* kName = "AsqQuantizeRows";
  using AsqKernel::AsqKernel;
  void compute(OrtKernelContext* context);
};

struct AsqQuantizeKernel : AsqKernel {
  static constexpr const char* kName = "AsqQuantize";
  using AsqKernel::AsqKernel;
  void compute(OrtKernelContext* context);
};

}  // namespace qx
