// The gradient options every fused call takes (Note [gradient transform] in
// update_rules.h): scaling, clipping by value, norm or global norm, and
// skipping a step with a non-finite gradient. TensorFlow-free.
#ifndef FUSEDOPT_CC_CORE_GRAD_OPTIONS_H_
#define FUSEDOPT_CC_CORE_GRAD_OPTIONS_H_

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cc/rules/update_rules.h"

namespace fusedopt {

struct GradOptions {
  double grad_scale = 1.0;             // multiplies every gradient (1 / loss_scale)
  double clip_value = INFINITY;        // clip each element to [-v, v]
  double clip_norm = INFINITY;         // clip each variable's gradient to this L2 norm
  double global_clip_norm = INFINITY;  // clip all gradients to this global L2 norm
  bool skip_nonfinite = false;         // any inf/NaN gradient: write nothing, report it

  bool NeedsStats() const {
    return std::isfinite(clip_norm) || std::isfinite(global_clip_norm) || skip_nonfinite;
  }
  bool Transforms() const {
    return grad_scale != 1.0 || std::isfinite(clip_value) || std::isfinite(clip_norm) ||
           std::isfinite(global_clip_norm);
  }
};

// "" or what is wrong: every clip setting > 0 (+inf disables it), at most one
// of them finite, as Keras allows.
inline std::string ValidateGradOptions(const GradOptions& o) {
  int active = 0;
  for (const auto& [name, v] : {std::pair<const char*, double>{"clip_value", o.clip_value},
                                {"clip_norm", o.clip_norm},
                                {"global_clip_norm", o.global_clip_norm}}) {
    if (!(v > 0)) {
      std::ostringstream s;
      s << "'" << name << "' must be > 0 (+inf disables it), got " << v;
      return s.str();
    }
    active += std::isfinite(v) ? 1 : 0;
  }
  if (active > 1) {
    return "at most one of clip_value, clip_norm and global_clip_norm may be set (finite), as in "
           "Keras";
  }
  return "";
}

// Per-tensor transforms from the gradients' sums of squares, as Keras
// computes them: clip_norm: g * c / max(|g|, c); global:
// g * c * min(1/G, 1/c) + (G - G) (NaN everywhere when G is not finite).
// Norms are of the scaled gradients.
inline std::vector<GradXform> MakeXforms(const GradOptions& o, const std::vector<double>& sum_sq) {
  const int n = static_cast<int>(sum_sq.size());
  const double gs = o.grad_scale;
  std::vector<GradXform> x(n, GradXform{gs, o.clip_value});
  if (std::isfinite(o.clip_norm)) {
    for (int i = 0; i < n; ++i) {
      const double norm = std::fabs(gs) * std::sqrt(sum_sq[i]);
      const double denom = std::isnan(norm) ? norm : std::max(norm, o.clip_norm);
      x[i].scale = gs * (o.clip_norm / denom);
    }
  } else if (std::isfinite(o.global_clip_norm)) {
    double total = 0;
    for (int i = 0; i < n; ++i) total += sum_sq[i];
    const double g = std::fabs(gs) * std::sqrt(total);
    const double c = o.global_clip_norm;
    const double scale = c * std::min(1.0 / g, 1.0 / c) + (g - g);
    for (int i = 0; i < n; ++i) x[i].scale = gs * scale;
  }
  return x;
}

}  // namespace fusedopt

#endif  // FUSEDOPT_CC_CORE_GRAD_OPTIONS_H_
