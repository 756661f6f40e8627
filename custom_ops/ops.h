// The native kernels, one file each: post_conv.cc, int_conv.cc, asq_quantize.cc.
#pragma once

#include <string>

#include "common.h"
#include "conv.h"

namespace qx {

// Whether input ``index`` of the node is a constant initializer (its packing can then be cached).
bool is_constant_input(const OrtKernelInfo* info, size_t index);

struct PostConvKernel {
  static constexpr const char* kName = "PostConv";
  explicit PostConvKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  std::string node;
  bool constant_weights;
  ConvAttrs attrs;
  int64_t bits = 4;
  PackedWeights packed;
};

struct IntConvKernel {
  static constexpr const char* kName = "IntConv";
  explicit IntConvKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  std::string node;
  bool constant_weights;
  ConvAttrs attrs;
  int64_t relu = 0;
  PackedWeights packed;
};

struct AsqQuantizeKernel {
  static constexpr const char* kName = "AsqQuantize";
  explicit AsqQuantizeKernel(const OrtKernelInfo* info);
  void compute(OrtKernelContext* context);
  std::string node;
  int64_t qmin = 0, qmax = 0;
};

}  // namespace qx
