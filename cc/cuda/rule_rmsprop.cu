// CUDA kernels of RmspropRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Rmsprop, RmspropRule)
}  // namespace cuda
}  // namespace fusedopt
