// The native kernels, one file each: post_conv.cc, int_conv.cc, asq_quantize.cc.
#pragma once

#include <string>

#include "common.h"
#include "conv.h"

namespace qx {

// Whether input ``index`` of the node is a constant initializer (its packing can then be cached).
bool is_constant_input(const OrtKernelInfo* info, size_t index);

// What both conv kernels keep: the node's name, its conv attributes and the packed weights (packed
// once when the weight is a constant initializer).
struct ConvKernel {
  explicit ConvKernel(const OrtKernelInfo* info) : node(node_name(info)), constant_weights(is_constant_input(info, 2)) {
    attrs.read(info);
  }
  std::string node;
  bool constant_weights;
  ConvAttrs attrs;
  PackedWeights packed;
};

struct PostConvKernel : ConvKernel {
  static constexpr const char* kName = "PostConv";
  explicit PostConvKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  int64_t bits = 4;
};

struct IntConvKernel : ConvKernel {
  static constexpr const char* kName = "IntConv";
  explicit IntConvKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  int64_t relu = 0;
};

struct AsqQuantizeKernel {
  static constexpr const char* kName = "AsqQuantize";
  explicit AsqQuantizeKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  std::string node;
  int64_t qmin = 0, qmax = 0;
};

}  // namespace qx
