// experts.hpp: the routed experts as grouped products over already-permuted
// tokens (rows grouped by local expert; split sizes from the dispatcher).
//
// Each weight matrix is one grouped call over all local experts (gemm.hpp
// gemm_grouped: one cuBLAS call where the backend has it, a loop of products
// elsewhere), and the SwiGLU elementwise work is one kernel over all rows, so
// the number of launches per MoE layer does not grow with the expert count.
#pragma once

#include <vector>

#include "model/layers.hpp"
#include "model/scratch_pool.hpp"

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

  // out is (rows,C) (overwritten), inp is (rows,C); w1, w3 are (E_local,De,C), w2 is (E_local,C,De);
  // rows_per_expert (E_local): the split of the rows, expert-major.
  void forward(T* out, const T* inp, const T* w1, const T* w3, const T* w2,
               const std::vector<int>& rows_per_expert) {
    const long rows = total_rows(rows_per_expert);
    reserve_rows(rows);
    T* h1 = h1_.data();    // (rows,De)
    T* h3 = h3_.data();    // (rows,De)
    T* act = act_.data();  // (rows,De)
    // h1_e = inp_e w1_e^T, h3_e = inp_e w3_e^T (n_e,De)
    grouped_matmul<T>('N', 'T', T(1), T(0), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{n, De_, C_, inp + row * C_, w1 + e * weight_size(), h1 + row * De_};
    }));
    grouped_matmul<T>('N', 'T', T(1), T(0), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{n, De_, C_, inp + row * C_, w3 + e * weight_size(), h3 + row * De_};
    }));
    swiglu_activation_forward<T>(act, h1, h3, rows * De_);
    // out_e = act_e w2_e^T (n_e,C)
    grouped_matmul<T>('N', 'T', T(1), T(0), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{n, C_, De_, act + row * De_, w2 + e * weight_size(), out + row * C_};
    }));
  }

  // Rows of one forward or backward: the sum of the split.
  static long total_rows(const std::vector<int>& rows_per_expert) {
    long rows = 0;
    for (int n : rows_per_expert) rows += n;
    return rows;
  }

  // Elements of gradient scratch backward needs for `rows` rows: dact, dh1, dh3 (rows,De).
  long backward_scratch(long rows) const { return 3 * rows * De_; }

  // dinp is (rows,C) (overwritten); dw1, dw3, dw2 like the weights (+=); dout is (rows,C);
  // scratch: backward_scratch(rows) elements, borrowed (the model's ScratchPool)
  void backward(T* dinp, T* dw1, T* dw3, T* dw2, const T* dout, const T* inp, const T* w1,
                const T* w3, const T* w2, const std::vector<int>& rows_per_expert, T* scratch) {
    const long rows = total_rows(rows_per_expert);
    T* dact = scratch;                  // (rows,De)
    T* dh1 = scratch + rows * De_;      // (rows,De)
    T* dh3 = scratch + 2 * rows * De_;  // (rows,De)
    const T* h1 = h1_.data();
    const T* h3 = h3_.data();
    const T* act = act_.data();
    // dw2_e += dout_e^T act_e (C,De)
    grouped_matmul<T>('T', 'N', T(1), T(1), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{C_, De_, n, dout + row * C_, act + row * De_, dw2 + e * weight_size()};
    }));
    // dact_e = dout_e w2_e (n_e,De)
    grouped_matmul<T>('N', 'N', T(1), T(0), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{n, De_, C_, dout + row * C_, w2 + e * weight_size(), dact + row * De_};
    }));
    swiglu_activation_backward<T>(dh1, dh3, dact, h1, h3, rows * De_);
    // dw1_e += dh1_e^T inp_e, dw3_e += dh3_e^T inp_e (De,C)
    grouped_matmul<T>('T', 'N', T(1), T(1), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{De_, C_, n, dh1 + row * De_, inp + row * C_, dw1 + e * weight_size()};
    }));
    grouped_matmul<T>('T', 'N', T(1), T(1), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{De_, C_, n, dh3 + row * De_, inp + row * C_, dw3 + e * weight_size()};
    }));
    // dinp_e = dh1_e w1_e + dh3_e w3_e (n_e,C): the first product overwrites
    // (beta = 0), so dinp needs no zeroing pass.
    grouped_matmul<T>('N', 'N', T(1), T(0), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{n, C_, De_, dh1 + row * De_, w1 + e * weight_size(), dinp + row * C_};
    }));
    grouped_matmul<T>('N', 'N', T(1), T(1), per_expert(rows_per_expert, [&](int e, long row, int n) {
      return MatmulProblem<T>{n, C_, De_, dh3 + row * De_, w3 + e * weight_size(), dinp + row * C_};
    }));
  }

 private:
  long weight_size() const { return (long)De_ * C_; }  // one expert's w1, w3 or w2

  // The problems of one grouped call: problem(e, first row, rows) for every
  // local expert that received rows (an expert with none has no product).
  template <class F>
  std::vector<MatmulProblem<T>> per_expert(const std::vector<int>& rows_per_expert, const F& problem) const {
    std::vector<MatmulProblem<T>> out;
    out.reserve(rows_per_expert.size());
    long row = 0;
    for (std::size_t e = 0; e < rows_per_expert.size(); ++e) {
      if (rows_per_expert[e] > 0) out.push_back(problem((int)e, row, rows_per_expert[e]));
      row += rows_per_expert[e];
    }
    return out;
  }

  // Grows the kept buffers to hold `rows` rows (grown_row_capacity);
  // contents are not kept: only forward calls it, before writing them.
  void reserve_rows(long rows) {
    const long cap = grown_row_capacity(rows, capacity_rows_);
    if (cap == capacity_rows_) return;
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
