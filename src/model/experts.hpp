// experts.hpp: the routed experts as a grouped GEMM over already-permuted
// tokens (rows grouped by local expert; split sizes from the dispatcher).
#pragma once

#include <algorithm>
#include <vector>

#include "model/layers.hpp"

namespace fulcrum {

template <class T>
class Experts {
 public:
  // rows_hint: the rows expected per forward (N*k at balanced routing); the
  // buffers kept for backward grow past it when a forward brings more rows
  // (expert parallelism: a rank receives a varying number), never sized for
  // the worst case (every peer sending every token to this rank).
  Experts(long rows_hint, int d_model, int d_expert)
      : C_(d_model), De_(d_expert) {
    reserve_rows(rows_hint);
  }

  // out is (rows,C), inp is (rows,C); w1, w3 are (E_local,De,C), w2 is (E_local,C,De)
  void forward(T* out, const T* inp, const T* w1, const T* w3, const T* w2,
               const std::vector<int>& rows_per_expert) {
    long rows = 0;
    for (int n : rows_per_expert) rows += n;
    reserve_rows(rows);
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

  // Elements of gradient scratch backward needs for `rows` rows: dact, dh1, dh3 (rows,De).
  long backward_scratch(long rows) const { return 3 * rows * De_; }

  // dinp is (rows,C) (overwritten); dw1, dw3, dw2 like the weights (+=); dout is (rows,C);
  // scratch: backward_scratch(rows) elements, borrowed (the model's ScratchPool)
  void backward(T* dinp, T* dw1, T* dw3, T* dw2, const T* dout, const T* inp, const T* w1,
                const T* w3, const T* w2, const std::vector<int>& rows_per_expert, T* scratch) {
    long rows = 0;
    for (int n : rows_per_expert) rows += n;
    T* dact = scratch;
    T* dh1 = scratch + rows * De_;
    T* dh3 = scratch + 2 * rows * De_;
    zero(dinp, (std::size_t)rows * C_);
    long row = 0;
    const long wsz = (long)De_ * C_;
    for (std::size_t e = 0; e < rows_per_expert.size(); ++e) {
      const int n = rows_per_expert[e];
      if (n > 0)
        swiglu_backward<T>(dinp + row * C_, dw1 + e * wsz, dw3 + e * wsz, dw2 + e * wsz,
                           dact + row * De_, dh1 + row * De_,
                           dh3 + row * De_, dout + row * C_, h1_.data() + row * De_,
                           h3_.data() + row * De_, act_.data() + row * De_, inp + row * C_,
                           w1 + e * wsz, w3 + e * wsz, w2 + e * wsz, n, C_, De_);
      row += n;
    }
  }

 private:
  // Grows the kept buffers to `rows` rows with 25% headroom (a fluctuating
  // load does not reallocate every micro-batch); contents are not kept: only
  // forward calls it, before writing them.
  void reserve_rows(long rows) {
    if (rows <= capacity_rows_ && capacity_rows_ > 0) return;
    const long cap = std::max<long>(1, std::max(rows, capacity_rows_ + capacity_rows_ / 4));
    Kokkos::fence();
    h1_ = DeviceBuffer<T>("experts::h1", cap * De_);
    h3_ = DeviceBuffer<T>("experts::h3", cap * De_);
    act_ = DeviceBuffer<T>("experts::act", cap * De_);
    capacity_rows_ = cap;
  }

  int C_, De_;
  long capacity_rows_ = 0;
  DeviceBuffer<T> h1_, h3_, act_;  // (capacity_rows_, De) kept for backward
};

}  // namespace fulcrum
