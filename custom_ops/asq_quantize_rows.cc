// qexport.AsqQuantizeRows native kernel (signature and semantics: qexport/ops/asq_quantize_rows.py): per
// row of a [..., C] input, the adapter on the row itself gives the step, then x / step is rounded half to
// even, clipped, and stored plus the zero point (0, or 128 for signed codes stored as uint8).
#include <cstddef>
#include <string>
#include <vector>

#include "asq.h"
#include "ops.h"

namespace qx {

void AsqQuantizeRowsKernel::compute(OrtKernelContext* context) {
  const Isa isa = active_isa();
  const AsqInputs in = AsqInputs::read(context, 0, -1, true, qmin, qmax);
  const Tensor& x = in.x;
  const int64_t c = in.channels;
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.shape.size(); ++i) rows = checked_mul(rows, x.shape[i], "rows of input x");
  std::vector<int64_t> step_shape = x.shape;
  step_shape.back() = 1;
  float* y = static_cast<float*>(output(context, 0, x.shape));
  void* codes = output(context, 1, x.shape);
  float* row_step = static_cast<float*>(output(context, 2, step_shape));
  if (rows == 0) return;
  const float* xs = x.as<float>();
  std::vector<char> special(size_t(rows), 0);
  const int64_t hidden = in.hidden;
  const std::vector<float> hid = asq_hidden(context, isa, in, xs, rows, x.shape.size() == 2);
  const size_t bytes = in.is_signed ? sizeof(int8_t) : sizeof(uint8_t);
  parallel_for(context, size_t(rows), [&](size_t r) {
    const size_t at = r * size_t(c);
    asq_step(isa, in, hid.data() + r * size_t(hidden), xs + at, row_step + r, &special[r]);
    if (c == 0) return;
    asq_quantize_run(isa, in, xs + at, row_step[r], special[r] != 0, qmin, qmax, y ? y + at : nullptr,
                     static_cast<uint8_t*>(codes) + at * bytes, size_t(c));
  });
}

}  // namespace qx
