// CUDA kernels of ScheduleFreeRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(ScheduleFree, ScheduleFreeRule)
}  // namespace cuda
}  // namespace fusedopt
