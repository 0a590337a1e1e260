// CUDA kernels of AdamRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Adam, AdamRule)
}  // namespace cuda
}  // namespace fusedopt
