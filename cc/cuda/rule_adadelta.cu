// CUDA kernels of AdadeltaRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Adadelta, AdadeltaRule)
}  // namespace cuda
}  // namespace fusedopt
