// Run-time choice of the kernel path from the CPU's features (never a global -march: a library
// built for AVX-512 would die with SIGILL on older CPUs).  QEXPORT_ISA=scalar|avx2|avx512vnni forces
// a path; forcing one this CPU lacks is an error, not a crash.
#pragma once

namespace qx {

enum class Isa { Scalar, Avx2, Avx512Vnni };

// The path in use (throws qx::Error when QEXPORT_ISA names an unknown or unsupported path).
Isa active_isa();
const char* isa_name(Isa isa);
// Whether the CPU has AVX-512 VBMI (vpermb: any byte of a zmm to any lane), which some AVX-512 VNNI
// kernels need beyond the path itself (Cascade Lake has VNNI without it; Ice Lake on and Zen 4 on
// have both); those kernels step aside without it.
bool has_avx512vbmi();

}  // namespace qx
