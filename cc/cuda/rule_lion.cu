// CUDA kernels of LionRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Lion, LionRule)
}  // namespace cuda
}  // namespace fusedopt
