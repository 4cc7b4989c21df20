// experts.hpp: the routed experts as a grouped GEMM over already-permuted
// tokens (rows grouped by local expert; split sizes from the dispatcher).
#pragma once

#include <vector>

#include "model/layers.hpp"

namespace fulcrum {

template <class T>
class Experts {
 public:
  Experts(int max_rows, int d_model, int d_expert)
      : C_(d_model), De_(d_expert),
        h1_("experts::h1", (long)max_rows * d_expert), h3_("experts::h3", (long)max_rows * d_expert),
        act_("experts::act", (long)max_rows * d_expert),
        dact_("experts::dact", (long)max_rows * d_expert),
        dh1_("experts::dh1", (long)max_rows * d_expert),
        dh3_("experts::dh3", (long)max_rows * d_expert) {}

  // out is (rows,C), inp is (rows,C); w1, w3 are (E_local,De,C), w2 is (E_local,C,De)
  void forward(T* out, const T* inp, const T* w1, const T* w3, const T* w2,
               const std::vector<int>& rows_per_expert) {
    long row = 0;
    const long wsz = (long)De_ * C_;
    for (std::size_t e = 0; e < rows_per_expert.size(); ++e) {
      const int n = rows_per_expert[e];
      if (n > 0)
        swiglu_forward<T>(out + row * C_, h1_.data() + row * De_, h3_.data() + row * De_,
                          act_.data() + row * De_, inp + row * C_, w1 + e * wsz, w3 + e * wsz,
                          w2 + e * wsz, n, C_, De_, T(0));
      row += n;
    }
  }

  // dinp is (rows,C) (overwritten); dw1, dw3, dw2 like the weights (+=); dout is (rows,C)
  void backward(T* dinp, T* dw1, T* dw3, T* dw2, const T* dout, const T* inp, const T* w1,
                const T* w3, const T* w2, const std::vector<int>& rows_per_expert) {
    long rows = 0;
    for (int n : rows_per_expert) rows += n;
    zero(dinp, (std::size_t)rows * C_);
    long row = 0;
    const long wsz = (long)De_ * C_;
    for (std::size_t e = 0; e < rows_per_expert.size(); ++e) {
      const int n = rows_per_expert[e];
      if (n > 0)
        swiglu_backward<T>(dinp + row * C_, dw1 + e * wsz, dw3 + e * wsz, dw2 + e * wsz,
                           dact_.data() + row * De_, dh1_.data() + row * De_,
                           dh3_.data() + row * De_, dout + row * C_, h1_.data() + row * De_,
                           h3_.data() + row * De_, act_.data() + row * De_, inp + row * C_,
                           w1 + e * wsz, w3 + e * wsz, w2 + e * wsz, n, C_, De_);
      row += n;
    }
  }

 private:
  int C_, De_;
  DeviceBuffer<T> h1_, h3_, act_, dact_, dh1_, dh3_;
};

}  // namespace fulcrum
