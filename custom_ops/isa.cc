#include "isa.h"

#include <cstdlib>
#include <string>

#include "common.h"

namespace qx {

namespace {

bool supported(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Avx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    case Isa::Avx2:  // every AVX2 CPU has FMA too; the ASQ adapter's float path uses it
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Scalar:
      return true;
  }
  return false;
#else
  return isa == Isa::Scalar;
#endif
}

}  // namespace

bool has_avx512vbmi() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return bool(__builtin_cpu_supports("avx512vbmi"));
  }();
  return has;
#else
  return false;
#endif
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512Vnni: return "avx512vnni";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

Isa active_isa() {
  const char* forced = std::getenv("QEXPORT_ISA");
  if (forced == nullptr || *forced == '\0') {
    static const Isa best = supported(Isa::Avx512Vnni) ? Isa::Avx512Vnni : supported(Isa::Avx2) ? Isa::Avx2 : Isa::Scalar;
    return best;
  }
  std::string name(forced);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni}) {
    if (name == isa_name(isa)) {
      if (!supported(isa)) fail("QEXPORT_ISA=" + name + " but this CPU lacks it: unset QEXPORT_ISA or choose scalar");
      return isa;
    }
  }
  fail("QEXPORT_ISA=" + name + " is not a kernel path: use scalar, avx2 or avx512vnni");
}

}  // namespace qx
