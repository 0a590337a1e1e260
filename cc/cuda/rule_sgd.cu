// CUDA kernels of SgdRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Sgd, SgdRule)
}  // namespace cuda
}  // namespace fusedopt
