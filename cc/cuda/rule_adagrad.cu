// CUDA kernels of AdagradRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Adagrad, AdagradRule)
}  // namespace cuda
}  // namespace fusedopt
