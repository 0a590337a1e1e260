// CUDA kernels of FtrlRule (see cc/cuda/elementwise.cuh).
#include "cc/cuda/elementwise.cuh"

namespace fusedopt {
namespace cuda {
FUSEDOPT_DEFINE_LAUNCH(Ftrl, FtrlRule)
}  // namespace cuda
}  // namespace fusedopt
