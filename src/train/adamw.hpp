// adamw.hpp: AdamW with global gradient-norm clipping (doc/model.md).
// The moments m and v share the parameter layout (one allocation each).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "model/kokkos_types.hpp"
#include "model/model_shape.hpp"

namespace fulcrum {

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

template <class T>
class AdamW {
 public:
  AdamW(const std::vector<ParameterTensor>& layout, long n, const AdamWSettings& settings)
      : settings_(settings), m_("adamw::m", n), v_("adamw::v", n), decay_("adamw::decay_mask", n) {
    // weight decay on matrices only (rank >= 2), never on norm weights
    auto h = Kokkos::create_mirror_view(decay_);
    for (const auto& t : layout)
      for (long i = 0; i < t.size; ++i) h(t.offset + i) = t.is_matrix ? 1 : 0;
    Kokkos::deep_copy(decay_, h);
  }

  // Sum of squares of grads[begin, end) (default: all of this rank's), in double.
  static double grad_sq_sum(const DeviceBuffer<T>& grads, long begin = 0, long end = -1) {
    Kokkos::View<double, MemSpace> out("adamw::grad_sq");
    grad_sq_sum_device(grads, begin, end, out);
    double s = 0;
    Kokkos::deep_copy(s, out);
    return s;
  }
  // The same sum left in device memory (no host wait).
  static void grad_sq_sum_device(const DeviceBuffer<T>& grads, long begin, long end,
                                 const Kokkos::View<double, MemSpace>& out) {
    const T* g = grads.data();
    Kokkos::parallel_reduce("adamw::grad_norm", RangePolicy(begin, end < 0 ? (long)grads.extent(0) : end),
                            KOKKOS_LAMBDA(const long i, double& acc) {
      acc += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    }, Kokkos::Sum<double, MemSpace>(out));
  }

  // Clip factor as torch.nn.utils.clip_grad_norm_: min(1, clip / (norm + 1e-6)).
  KOKKOS_INLINE_FUNCTION static double clip_scale(double grad_norm, double clip) {
    if (clip <= 0) return 1.0;
    const double c = clip / (grad_norm + 1e-6);
    return c < 1.0 ? c : 1.0;
  }
  // On the device: norm_scale = [sqrt(sq_a + sq_b), clip_scale(that norm)],
  // from the sums of squares of two parts of the gradients (replicated and
  // expert parameters), so the step need not read the norm on the host.
  static void clip_scale_device(const Kokkos::View<double, MemSpace>& sq_a, const Kokkos::View<double, MemSpace>& sq_b,
                                double clip, double* norm_scale) {
    const double* a = sq_a.data();
    const double* b = sq_b.data();
    Kokkos::parallel_for("adamw::clip_scale", RangePolicy(0, 1), KOKKOS_LAMBDA(const int) {
      const double norm = math::sqrt(*a + *b);
      norm_scale[0] = norm;
      norm_scale[1] = clip_scale(norm, clip);
    });
  }

  // p <- p - lr (mhat / (sqrt(vhat) + eps) + wd p), with g = grad_scale * grad
  void step(DeviceBuffer<T>& params, const DeviceBuffer<T>& grads, double lr, double grad_scale) {
    Kokkos::deep_copy(host_scale_, grad_scale);
    step_device(params, grads, lr, host_scale_.data());
  }
  // The same with grad_scale read by the kernel from device memory (the
  // clip scale of clip_scale_device): no host wait.
  void step_device(DeviceBuffer<T>& params, const DeviceBuffer<T>& grads, double lr, const double* grad_scale) {
    ++t_;
    const T b1 = static_cast<T>(settings_.beta1), b2 = static_cast<T>(settings_.beta2);
    const T eps = static_cast<T>(settings_.eps), wd = static_cast<T>(settings_.weight_decay);
    const T bc1 = static_cast<T>(1.0 - std::pow(settings_.beta1, (double)t_));
    const T bc2 = static_cast<T>(1.0 - std::pow(settings_.beta2, (double)t_));
    const T tlr = static_cast<T>(lr);
    T* p = params.data();
    const T* g = grads.data();
    T* m = m_.data();
    T* v = v_.data();
    const std::uint8_t* decay = decay_.data();
    Kokkos::parallel_for("adamw::step", RangePolicy(0, params.extent(0)), KOKKOS_LAMBDA(const long i) {
      const T gi = g[i] * static_cast<T>(*grad_scale);
      m[i] = b1 * m[i] + (T(1) - b1) * gi;
      v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
      const T mhat = m[i] / bc1, vhat = v[i] / bc2;
      p[i] -= tlr * (mhat / (math::sqrt(vhat) + eps) + (decay[i] ? wd * p[i] : T(0)));
    });
  }

  std::int64_t steps_taken() const { return t_; }
  void set_steps_taken(std::int64_t t) { t_ = t; }  // checkpoint restore
  DeviceBuffer<T>& first_moment() { return m_; }
  DeviceBuffer<T>& second_moment() { return v_; }

 private:
  AdamWSettings settings_;
  DeviceBuffer<T> m_, v_;
  DeviceBuffer<std::uint8_t> decay_;
  Kokkos::View<double, MemSpace> host_scale_{"adamw::scale"};  // step()'s scale, uploaded
  std::int64_t t_ = 0;
};

}  // namespace fulcrum
