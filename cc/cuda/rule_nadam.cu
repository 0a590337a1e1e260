// CUDA kernels of NadamRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Nadam, NadamRule)
}  // namespace cuda
}  // namespace fusedopt
