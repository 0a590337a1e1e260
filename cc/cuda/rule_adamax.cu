// CUDA kernels of AdamaxRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Adamax, AdamaxRule)
}  // namespace cuda
}  // namespace fusedopt
