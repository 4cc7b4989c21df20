// attention.hpp: causal GQA attention whose memory is linear in T
// (FlashAttention-2's algorithm, Dao 2023, arXiv:2307.08691, as Kokkos team
// kernels). The T x T path (attention_forward/backward in layers.hpp, batched
// products through the gemm layer, probabilities kept for backward) stays as
// the reference and as an option; which one the model runs is decided by
// attention_kernel_for() (attention_kernel.hpp, doc/model.md "Attention kernels").
//
// Shapes: q, out, dq, dout are (B,nh,T,hd) (head-major, q/k already rotated);
// k, v, dk, dv are (B,nkv,T,hd); lse, delta are (B,nh,T). The `group` =
// nh/nkv query heads of a KV group read the same K/V rows, so one team serves
// all of them: a K/V tile is loaded once per group, not once per head.
//
// Forward, per query row i (scale = 1/sqrt(hd), keys j <= i), over key blocks:
//   s_j = scale q_i.k_j;  m' = max(m, max_j s_j);  p_j = exp(s_j - m')
//   l  = l exp(m - m') + sum_j p_j;  o = o exp(m - m') + sum_j p_j v_j;  m = m'
//   out_i = o / l,  lse_i = m + log(l)                (only lse is kept: (B,nh,T))
// Backward recomputes p_ij = exp(s_ij - lse_i) from the saved lse:
//   delta_i = dout_i . out_i                          (= sum_j p_ij dp_ij)
//   dp_ij = dout_i . v_j;  ds_ij = p_ij (dp_ij - delta_i)
//   dv_j = sum_{h in group, i >= j} p_ij dout_i;  dk_j = scale sum ds_ij q_i;  dq_i = scale sum_j ds_ij k_j
// Every output element is written by one team and summed in a fixed order:
// no atomics, bit-identical results run to run, for any number of threads.
//
// Two loop nests of the same algorithm; each output element is accumulated
// in the same order in both (dv_j, dk_j over (head, i) ascending, dq_i and o_i
// over j ascending); dot products over d are plain sums in the host nest and
// vector reductions in the device nest:
//   HostLoops = true (host backends): a team is one thread (the backend's
//     threads take different teams). Register-tiled micro-kernels (kR rows x
//     kW lanes) that the compiler vectorises. The backward is one kernel per
//     (batch, KV group), whose team owns that group's dq, dk and dv, so
//     nothing is recomputed.
//   HostLoops = false (device backends): TeamThreadRange over a tile's rows,
//     ThreadVectorRange over keys or head dimensions, vector reductions. The
//     backward is two kernels, dk/dv per key block and dq per query block, for
//     enough teams to fill a GPU (each recomputes p and dp).
// Both nests compile and are tested everywhere (tests/model/test_attention.cpp);
// the default is the one that suits the execution space.
#pragma once

#include <cmath>
#include <cstring>
#include <type_traits>

#include "model/kokkos_types.hpp"

namespace fulcrum {

template <class T>
using ScratchBuffer = Kokkos::View<T*, ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;


// Query and key block sizes. Host: 64 x 64 (a 64-key tile of K^T and V at
// hd = 64 is 32 KiB, in L2 with the 64-row accumulators). Device: 32 x 32, so
// that the tiles fit a block's shared memory for hd <= 64 with group <= 4.
template <bool HostLoops>
constexpr int flash_block_q() { return HostLoops ? 64 : 32; }
template <bool HostLoops>
constexpr int flash_block_k() { return HostLoops ? 64 : 32; }

namespace detail {
// A team policy with `bytes` of team scratch: level 0 (shared memory on
// GPUs) when it fits, else level 1.
template <bool HostLoops>
inline TeamPolicy flash_policy(long league, std::size_t bytes, int& level) {
  const int vector = (HostLoops || std::is_same_v<ExecSpace, Kokkos::DefaultHostExecutionSpace>) ? 1 : 32;
  TeamPolicy policy = HostLoops ? TeamPolicy((int)league, 1, 1) : TeamPolicy((int)league, Kokkos::AUTO, vector);
  level = bytes <= (std::size_t)TeamPolicy::scratch_size_max(0) ? 0 : 1;
  return policy.set_scratch_size(level, Kokkos::PerTeam(bytes));
}
// Whether the products of this call round their operands to bf16: float
// buffers under a bf16 gemm backend (the run's train.precision). The flash
// kernels are not gemm-layer products, so they apply the same rule
// themselves (doc/model.md "Mixed precision"): q, k, v, dout, p and ds are
// rounded where they enter a product; scores, sums and accumulators stay fp32.
template <class T>
inline bool flash_rounds_bf16() {
  if constexpr (std::is_same_v<T, float>) {
    const GemmBackend* g = active_gemm_backend();
    return g && g->precision() == Precision::bf16;
  }
  return false;
}

// scratch bytes for n values of T, rounded up so each buffer stays aligned
template <class T>
constexpr std::size_t scratch_bytes(long n) { return ((n * sizeof(T) + 63) / 64) * 64; }

// Host micro-kernels (the HostLoops nest): register tiles of kR rows x kW
// lanes; every loaded tile vector feeds kR fused multiply-adds. Each output
// element is still summed in plain order (over d, or over j / rows
// ascending), so the vector code gives the scalar code's results. The
// accumulators are GCC/Clang vector types in host code (plain arrays of
// kR x kW stay in memory: the loop vectoriser spills them each iteration);
// the scalar form remains for device compilation passes, where these
// functions are never called.
constexpr int kW = 16;  // lanes: one 512-bit register of floats
constexpr int kR = 4;   // rows per register tile

#if defined(__GNUC__) && !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__) && !defined(__SYCL_DEVICE_ONLY__)
#define FULCRUM_HOST_VECTOR_TYPES 1
template <class T>
struct HostVec {
  typedef T type __attribute__((vector_size(kW * sizeof(T))));
};
template <class T>
inline typename HostVec<T>::type host_load(const T* p) {
  typename HostVec<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void host_store(T* p, const typename HostVec<T>::type& v) { std::memcpy(p, &v, sizeof v); }
#endif

#ifdef FULCRUM_HOST_VECTOR_TYPES
// The vector bodies below take NV consecutive registers per row (NV = 2 where
// the width allows: kR x 2 independent accumulators cover the FMA latency).
template <class T, int NV>
inline void host_rows_times_tile_block(T* const s[], const T* const a[], int nr, const T* bt, int ldb, int hd,
                                       int j0) {
  typename HostVec<T>::type acc[kR][NV] = {};
  for (int d = 0; d < hd; ++d) {
    typename HostVec<T>::type b[NV];
    for (int w = 0; w < NV; ++w) b[w] = host_load(bt + (long)d * ldb + j0 + w * kW);
    for (int r = 0; r < kR; ++r) {
      const T x = a[r][d];
      for (int w = 0; w < NV; ++w) acc[r][w] += x * b[w];
    }
  }
  for (int r = 0; r < nr; ++r)
    for (int w = 0; w < NV; ++w) host_store(s[r] + j0 + w * kW, acc[r][w]);
}
template <class T, int NV>
inline void host_rows_accumulate_block(T* const o[], const T* beta, const T* const c[], int nr, const T* m, int ldm,
                                       int n, int d0) {
  typename HostVec<T>::type acc[kR][NV];
  for (int r = 0; r < kR; ++r) {
    const T bt = beta ? beta[r < nr ? r : nr - 1] : T(1);
    for (int w = 0; w < NV; ++w) acc[r][w] = host_load(o[r] + d0 + w * kW) * bt;
  }
  for (int j = 0; j < n; ++j) {
    typename HostVec<T>::type mj[NV];
    for (int w = 0; w < NV; ++w) mj[w] = host_load(m + (long)j * ldm + d0 + w * kW);
    for (int r = 0; r < kR; ++r) {
      const T x = c[r][j];
      for (int w = 0; w < NV; ++w) acc[r][w] += x * mj[w];
    }
  }
  for (int r = 0; r < nr; ++r)
    for (int w = 0; w < NV; ++w) host_store(o[r] + d0 + w * kW, acc[r][w]);
}
template <class T, int NV>
inline void host_tile_rank_update_block(T* out, int ldo, const T* const c[], const T* const x[], int nr, int n,
                                        int d0) {
  int j = 0;
  for (; j + kR <= n; j += kR) {
    typename HostVec<T>::type acc[kR][NV];
    for (int u = 0; u < kR; ++u)
      for (int w = 0; w < NV; ++w) acc[u][w] = host_load(out + (long)(j + u) * ldo + d0 + w * kW);
    for (int r = 0; r < nr; ++r) {
      typename HostVec<T>::type xr[NV];
      for (int w = 0; w < NV; ++w) xr[w] = host_load(x[r] + d0 + w * kW);
      for (int u = 0; u < kR; ++u) {
        const T cr = c[r][j + u];
        for (int w = 0; w < NV; ++w) acc[u][w] += cr * xr[w];
      }
    }
    for (int u = 0; u < kR; ++u)
      for (int w = 0; w < NV; ++w) host_store(out + (long)(j + u) * ldo + d0 + w * kW, acc[u][w]);
  }
  for (; j < n; ++j)
    for (int w = 0; w < NV; ++w) {
      auto acc = host_load(out + (long)j * ldo + d0 + w * kW);
      for (int r = 0; r < nr; ++r) acc += c[r][j] * host_load(x[r] + d0 + w * kW);
      host_store(out + (long)j * ldo + d0 + w * kW, acc);
    }
}
#endif

// s_r[j] = sum_d a_r[d] bt[d*ldb + j] for r < nr <= kR, j < ncols (a multiple
// of kW; bt is zero-padded to it). Rows r >= nr of `a` must be valid pointers
// (callers repeat the last row); their results are not stored.
template <class T>
KOKKOS_INLINE_FUNCTION void host_rows_times_tile(T* const s[], const T* const a[], int nr, const T* bt, int ldb,
                                                 int hd, int ncols) {
#ifdef FULCRUM_HOST_VECTOR_TYPES
  int j0 = 0;
  for (; j0 + 2 * kW <= ncols; j0 += 2 * kW) host_rows_times_tile_block<T, 2>(s, a, nr, bt, ldb, hd, j0);
  for (; j0 < ncols; j0 += kW) host_rows_times_tile_block<T, 1>(s, a, nr, bt, ldb, hd, j0);
#else
  for (int j0 = 0; j0 < ncols; j0 += kW) {
    T acc[kR][kW] = {};
    for (int d = 0; d < hd; ++d)
      for (int r = 0; r < kR; ++r)
        for (int l = 0; l < kW; ++l) acc[r][l] += a[r][d] * bt[(long)d * ldb + j0 + l];
    for (int r = 0; r < nr; ++r)
      for (int l = 0; l < kW; ++l) s[r][j0 + l] = acc[r][l];
  }
#endif
}

// o_r[d] = beta_r o_r[d] + sum_{j < n} c_r[j] m[j*ldm + d] for r < nr <= kR,
// d < hd (beta = nullptr: 1). Rows r >= nr of o and c must be valid pointers.
template <class T>
KOKKOS_INLINE_FUNCTION void host_rows_accumulate(T* const o[], const T* beta, const T* const c[], int nr,
                                                 const T* m, int ldm, int n, int hd) {
  int d0 = 0;
#ifdef FULCRUM_HOST_VECTOR_TYPES
  for (; d0 + 2 * kW <= hd; d0 += 2 * kW) host_rows_accumulate_block<T, 2>(o, beta, c, nr, m, ldm, n, d0);
  for (; d0 + kW <= hd; d0 += kW) host_rows_accumulate_block<T, 1>(o, beta, c, nr, m, ldm, n, d0);
#endif
  for (int r = 0; r < nr; ++r)  // the head dimensions past the last full register
    for (int d = d0; d < hd; ++d) {
      T acc = o[r][d] * (beta ? beta[r] : T(1));
      for (int j = 0; j < n; ++j) acc += c[r][j] * m[(long)j * ldm + d];
      o[r][d] = acc;
    }
}

// out[j*ldo + d] += sum_{r < nr} c_r[j] x_r[d] for j < n, d < hd: the rank-nr
// update of a (n,hd) accumulator tile (dk, dv), rows added in order.
template <class T>
KOKKOS_INLINE_FUNCTION void host_tile_rank_update(T* out, int ldo, const T* const c[], const T* const x[], int nr,
                                                  int n, int hd) {
  int d0 = 0;
#ifdef FULCRUM_HOST_VECTOR_TYPES
  for (; d0 + 2 * kW <= hd; d0 += 2 * kW) host_tile_rank_update_block<T, 2>(out, ldo, c, x, nr, n, d0);
  for (; d0 + kW <= hd; d0 += kW) host_tile_rank_update_block<T, 1>(out, ldo, c, x, nr, n, d0);
#endif
  for (int j = 0; j < n; ++j)
    for (int r = 0; r < nr; ++r)
      for (int d = d0; d < hd; ++d) out[(long)j * ldo + d] += c[r][j] * x[r][d];
}
}  // namespace detail

// ---------------------------------------------------------------- forward
namespace detail {
// The host nest of flash_attention_forward: a one-thread team per (batch, KV
// group, query block of BQ rows of each of the group's heads).
template <class T>
void flash_forward_host(T* out, T* lse, const T* q, const T* k, const T* v, int B, int Tn, int nh, int nkv, int hd) {
  constexpr int BQ = flash_block_q<true>(), BK = flash_block_k<true>();
  const int group = nh / nkv, nqb = (Tn + BQ - 1) / BQ, rows_max = group * BQ;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const bool bf16 = flash_rounds_bf16<T>();
  // scratch: kt (hd,BK) key tile transposed, zero past the tile's keys; vt
  // (BK,hd) value tile; qt (rows,hd) the team's query rows; s (rows,BK)
  // scores, then probabilities; o (rows,hd) unnormalised output; m, l, alpha
  // (rows) running max, sum, rescale factor
  const std::size_t bytes = 2 * scratch_bytes<T>((long)hd * BK) + 2 * scratch_bytes<T>((long)rows_max * hd) +
                            scratch_bytes<T>((long)rows_max * BK) + scratch_bytes<T>((long)rows_max * hd) +
                            3 * scratch_bytes<T>(rows_max);
  int level = 0;
  const TeamPolicy policy = flash_policy<true>((long)B * nkv * nqb, bytes, level);
  const T lowest = Kokkos::reduction_identity<T>::max();  // the most negative finite value
  Kokkos::parallel_for("flash_attention::forward", policy, KOKKOS_LAMBDA(const TeamMember& member) {
    const int qb = member.league_rank() % nqb;
    const long bg = member.league_rank() / nqb, b = bg / nkv, g = bg % nkv;  // bg = b * nkv + g
    const int q0 = qb * BQ, nq = (Tn - q0) < BQ ? (Tn - q0) : BQ, rows = group * nq;
    ScratchBuffer<T> kt(member.team_scratch(level), (long)hd * BK), vt(member.team_scratch(level), (long)BK * hd);
    ScratchBuffer<T> s(member.team_scratch(level), (long)rows_max * BK), o(member.team_scratch(level), (long)rows_max * hd);
    ScratchBuffer<T> m(member.team_scratch(level), rows_max), l(member.team_scratch(level), rows_max);
    ScratchBuffer<T> alpha(member.team_scratch(level), rows_max), qt(member.team_scratch(level), (long)rows_max * hd);
    const T* kg = k + bg * Tn * hd;
    const T* vg = v + bg * Tn * hd;
    // tile row r: head g*group + r/nq, query position q0 + r%nq
    auto row_of = [&](int r) { return (b * nh + g * group + r / nq) * Tn + q0 + r % nq; };
    for (int r = 0; r < rows; ++r) {
      m(r) = lowest;
      l(r) = 0;
      const T* qr = q + row_of(r) * hd;
      for (int d = 0; d < hd; ++d) {
        o(r * hd + d) = 0;
        qt(r * hd + d) = bf16 ? math::round_bf16(qr[d]) : qr[d];
      }
    }
    const int nkb = (q0 + nq - 1) / BK + 1;  // key blocks holding a key <= the block's last query
    for (int kb = 0; kb < nkb; ++kb) {
      const int k0 = kb * BK, nk = (q0 + nq - k0) < BK ? (q0 + nq - k0) : BK;
      const int ncols = (nk + kW - 1) / kW * kW;
      for (int d = 0; d < hd; ++d)
        for (int j = 0; j < ncols; ++j) kt(d * BK + j) = j < nk ? kg[(long)(k0 + j) * hd + d] : T(0);
      for (int j = 0; j < nk; ++j)
        for (int d = 0; d < hd; ++d) vt(j * hd + d) = vg[(long)(k0 + j) * hd + d];
      if (bf16) {
        for (int x = 0; x < hd * BK; ++x) kt(x) = math::round_bf16(kt(x));
        for (int x = 0; x < nk * hd; ++x) vt(x) = math::round_bf16(vt(x));
      }
      // scores of every row against the tile, kR rows at a time
      for (int r0 = 0; r0 < rows; r0 += kR) {
        const int nr = (rows - r0) < kR ? (rows - r0) : kR;
        const T* a[kR];
        T* srow[kR];
        for (int u = 0; u < kR; ++u) {
          const int r = r0 + (u < nr ? u : nr - 1);
          a[u] = &qt(r * hd);
          srow[u] = &s(r * BK);
        }
        host_rows_times_tile(srow, a, nr, &kt(0), BK, hd, ncols);
      }
      // online softmax per row; probabilities of masked keys set to 0
      for (int r = 0; r < rows; ++r) {
        const int i = q0 + r % nq;
        const int jmax = (i - k0 + 1) < nk ? (i - k0 + 1) : nk;  // causal: keys k0 .. i
        T* sr = &s(r * BK);
        if (jmax <= 0) {
          alpha(r) = 1;
          for (int j = 0; j < nk; ++j) sr[j] = 0;
          continue;
        }
        for (int j = 0; j < jmax; ++j) sr[j] *= scale;
        const T mx_tile = math::row_max(sr, jmax);
        const T mx = mx_tile > m(r) ? mx_tile : m(r);
        for (int j = 0; j < jmax; ++j) sr[j] = math::fast_exp(sr[j] - mx);
        for (int j = jmax; j < nk; ++j) sr[j] = 0;
        alpha(r) = math::fast_exp(m(r) - mx);  // rescales what earlier tiles summed
        l(r) = l(r) * alpha(r) + math::row_sum(sr, jmax);
        m(r) = mx;
        if (bf16)  // p enters the product p v as a bf16 operand; l keeps the fp32 sum
          for (int j = 0; j < jmax; ++j) sr[j] = math::round_bf16(sr[j]);
      }
      // o = alpha o + P V, kR rows at a time
      for (int r0 = 0; r0 < rows; r0 += kR) {
        const int nr = (rows - r0) < kR ? (rows - r0) : kR;
        T* orow[kR];
        const T* prow[kR];
        for (int u = 0; u < kR; ++u) {
          const int r = r0 + (u < nr ? u : nr - 1);
          orow[u] = &o(r * hd);
          prow[u] = &s(r * BK);
        }
        host_rows_accumulate(orow, &alpha(r0), prow, nr, &vt(0), hd, nk, hd);
      }
    }
    for (int r = 0; r < rows; ++r) {
      const long row = row_of(r);
      const T inv = T(1) / l(r);
      for (int d = 0; d < hd; ++d) out[row * hd + d] = o(r * hd + d) * inv;
      lse[row] = m(r) + math::log(l(r));
    }
  });
}

// The device nest of flash_attention_forward: a team per (batch, KV group,
// query block); threads take rows, vector lanes take keys (scores) or head
// dimensions (the output update).
template <class T>
void flash_forward_team(T* out, T* lse, const T* q, const T* k, const T* v, int B, int Tn, int nh, int nkv, int hd) {
  constexpr int BQ = flash_block_q<false>(), BK = flash_block_k<false>();
  const int group = nh / nkv, nqb = (Tn + BQ - 1) / BQ, rows_max = group * BQ;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  // scratch: kt (hd,BK) key tile transposed; vt (BK,hd) value tile; s (rows,BK)
  // score/probability rows; o (rows,hd) unnormalised output; m, l (rows)
  const std::size_t bytes = 2 * scratch_bytes<T>((long)hd * BK) + scratch_bytes<T>((long)rows_max * BK) +
                            scratch_bytes<T>((long)rows_max * hd) + 2 * scratch_bytes<T>(rows_max);
  int level = 0;
  const TeamPolicy policy = flash_policy<false>((long)B * nkv * nqb, bytes, level);
  const T lowest = Kokkos::reduction_identity<T>::max();
  const bool bf16 = flash_rounds_bf16<T>();
  Kokkos::parallel_for("flash_attention::forward_team", policy, KOKKOS_LAMBDA(const TeamMember& member) {
    const int qb = member.league_rank() % nqb;
    const long bg = member.league_rank() / nqb, b = bg / nkv, g = bg % nkv;
    const int q0 = qb * BQ, nq = (Tn - q0) < BQ ? (Tn - q0) : BQ, rows = group * nq;
    ScratchBuffer<T> kt(member.team_scratch(level), (long)hd * BK), vt(member.team_scratch(level), (long)BK * hd);
    ScratchBuffer<T> s_all(member.team_scratch(level), (long)rows_max * BK);
    ScratchBuffer<T> o_all(member.team_scratch(level), (long)rows_max * hd);
    ScratchBuffer<T> m(member.team_scratch(level), rows_max), l(member.team_scratch(level), rows_max);
    const T* kg = k + bg * Tn * hd;
    const T* vg = v + bg * Tn * hd;
    auto row_of = [&](int r) { return (b * nh + g * group + r / nq) * Tn + q0 + r % nq; };
    Kokkos::parallel_for(Kokkos::TeamThreadRange(member, rows), [&](const int r) {
      Kokkos::single(Kokkos::PerThread(member), [&]() { m(r) = lowest; l(r) = 0; });
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) { o_all(r * hd + d) = 0; });
    });
    const int nkb = (q0 + nq - 1) / BK + 1;
    for (int kb = 0; kb < nkb; ++kb) {
      const int k0 = kb * BK, nk = (q0 + nq - k0) < BK ? (q0 + nq - k0) : BK;
      member.team_barrier();  // the previous tile is no longer read
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, nk), [&](const int j) {
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
          const T kx = kg[(long)(k0 + j) * hd + d], vx = vg[(long)(k0 + j) * hd + d];
          kt(d * BK + j) = bf16 ? math::round_bf16(kx) : kx;
          vt(j * hd + d) = bf16 ? math::round_bf16(vx) : vx;
        });
      });
      member.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, rows), [&](const int r) {
        const int i = q0 + r % nq;
        const int jmax = (i - k0 + 1) < nk ? (i - k0 + 1) : nk;  // causal: keys k0 .. i
        if (jmax <= 0) return;
        const T* qi = q + row_of(r) * hd;
        T* s = &s_all(r * BK);
        T* o = &o_all(r * hd);
        T mx_tile = lowest;
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, jmax), [&](const int j, T& mx) {
          T acc = 0;
          for (int d = 0; d < hd; ++d) acc += (bf16 ? math::round_bf16(qi[d]) : qi[d]) * kt(d * BK + j);
          s[j] = acc * scale;
          mx = s[j] > mx ? s[j] : mx;
        }, Kokkos::Max<T>(mx_tile));
        const T mx = mx_tile > m(r) ? mx_tile : m(r);
        T sum = 0;
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, jmax), [&](const int j, T& acc) {
          s[j] = math::fast_exp(s[j] - mx);
          acc += s[j];
        }, sum);  // lanes then read each other's s[j]: the reduction's warp shuffles are the sync point (unverified on a GPU)
        const T alpha = math::fast_exp(m(r) - mx);
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
          T acc = o[d] * alpha;
          for (int j = 0; j < jmax; ++j) acc += (bf16 ? math::round_bf16(s[j]) : s[j]) * vt(j * hd + d);
          o[d] = acc;
        });
        Kokkos::single(Kokkos::PerThread(member), [&]() { l(r) = l(r) * alpha + sum; m(r) = mx; });
      });
    }
    member.team_barrier();
    Kokkos::parallel_for(Kokkos::TeamThreadRange(member, rows), [&](const int r) {
      const long row = row_of(r);
      const T inv = T(1) / l(r);
      Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
        out[row * hd + d] = o_all(r * hd + d) * inv;
      });
      Kokkos::single(Kokkos::PerThread(member), [&]() { lse[row] = m(r) + math::log(l(r)); });
    });
  });
}
}  // namespace detail

// out is (B,nh,T,hd) (overwritten), lse is (B,nh,T) (overwritten: log-sum-exp
// of each query row's scaled scores, all the backward needs), q is
// (B,nh,T,hd), k and v are (B,nkv,T,hd).
template <class T, bool HostLoops = kHostLoops>
void flash_attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, int B, int Tn, int nh, int nkv,
                             int hd) {
  if constexpr (HostLoops) detail::flash_forward_host<T>(out, lse, q, k, v, B, Tn, nh, nkv, hd);
  else detail::flash_forward_team<T>(out, lse, q, k, v, B, Tn, nh, nkv, hd);
}

// ---------------------------------------------------------------- backward
// delta is (B,nh,T) (overwritten): delta = rowsum(dout * out) per query row.
// dout and out are (B,nh,T,hd) when heads_major, else token-major (B,T,nh*hd)
// (the layer's attention output before the output projection, which the
// model keeps anyway, and its gradient: no head-major copy of out is needed).
template <class T, bool HostLoops = kHostLoops>
void flash_attention_backward_delta(T* delta, const T* dout, const T* out, int B, int Tn, int nh, int hd,
                                    bool heads_major) {
  int level = 0;
  const TeamPolicy policy = detail::flash_policy<HostLoops>((long)B * nh, 0, level);
  Kokkos::parallel_for("flash_attention::backward_delta", policy, KOKKOS_LAMBDA(const TeamMember& member) {
    const long bh = member.league_rank(), b = bh / nh, h = bh % nh;
    // captured here, not first inside `if constexpr` (nvcc refuses that in an extended lambda)
    T* const drow = delta + bh * Tn;
    const T* const dO = dout;
    const T* const O = out;
    auto row = [&](const int t) {
      const long off = heads_major ? (bh * Tn + t) * hd : ((b * Tn + t) * nh + h) * hd;
      if constexpr (HostLoops) {
        drow[t] = math::row_dot(dO + off, O + off, hd);
      } else {
        T acc = 0;
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, hd), [&](const int d, T& a) {
          a += dO[off + d] * O[off + d];
        }, acc);
        Kokkos::single(Kokkos::PerThread(member), [&]() { drow[t] = acc; });
      }
    };
    if constexpr (HostLoops) {
      for (int t = 0; t < Tn; ++t) row(t);
    } else {
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, Tn), row);
    }
  });
}

namespace detail {
// The host nest of flash_attention_backward: one kernel, a one-thread team
// per (batch, KV group) that owns the group's dq rows and its dk, dv rows.
// For each key block: its tiles are loaded, then every later query row of
// the group's heads (kR rows at a time) recomputes its scores and dp against
// the tile and adds into dv, dk (the tile's accumulators) and dq (in place).
template <class T>
void flash_backward_host(T* dq, T* dk, T* dv, const T* dout, const T* lse, const T* delta, const T* q, const T* k,
                         const T* v, int B, int Tn, int nh, int nkv, int hd) {
  constexpr int BK = flash_block_k<true>();
  const int group = nh / nkv, nkb = (Tn + BK - 1) / BK;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const bool bf16 = flash_rounds_bf16<T>();
  // scratch: kt, vt (hd,BK) key and value tiles transposed, zero past the
  // tile's keys; kr (BK,hd) key tile; dk_acc, dv_acc (BK,hd); p, ds (kR,BK)
  // the probabilities and score gradients of kR query rows; qs, dos (kR,hd)
  // those rows of q and dout rounded to bf16 (bf16 products only)
  const std::size_t bytes = 5 * scratch_bytes<T>((long)hd * BK) + 2 * scratch_bytes<T>((long)kR * BK) +
                            2 * scratch_bytes<T>((long)kR * hd);
  int level = 0;
  const TeamPolicy policy = flash_policy<true>((long)B * nkv, bytes, level);
  Kokkos::parallel_for("flash_attention::backward", policy, KOKKOS_LAMBDA(const TeamMember& member) {
    const long bg = member.league_rank(), b = bg / nkv, g = bg % nkv;
    ScratchBuffer<T> kt(member.team_scratch(level), (long)hd * BK), vt(member.team_scratch(level), (long)hd * BK);
    ScratchBuffer<T> kr(member.team_scratch(level), (long)BK * hd);
    ScratchBuffer<T> dk_acc(member.team_scratch(level), (long)BK * hd), dv_acc(member.team_scratch(level), (long)BK * hd);
    ScratchBuffer<T> p(member.team_scratch(level), (long)kR * BK), ds(member.team_scratch(level), (long)kR * BK);
    ScratchBuffer<T> qs(member.team_scratch(level), (long)kR * hd), dos(member.team_scratch(level), (long)kR * hd);
    const T* kg = k + bg * Tn * hd;
    const T* vg = v + bg * Tn * hd;
    T* dq_group = dq + (b * nh + g * group) * Tn * hd;  // the group's heads are contiguous
    for (long x = 0; x < (long)group * Tn * hd; ++x) dq_group[x] = 0;
    for (int kb = 0; kb < nkb; ++kb) {
      const int k0 = kb * BK, nk = (Tn - k0) < BK ? (Tn - k0) : BK;
      const int ncols = (nk + kW - 1) / kW * kW;
      for (int d = 0; d < hd; ++d)
        for (int j = 0; j < ncols; ++j) {
          kt(d * BK + j) = j < nk ? kg[(long)(k0 + j) * hd + d] : T(0);
          vt(d * BK + j) = j < nk ? vg[(long)(k0 + j) * hd + d] : T(0);
        }
      for (int j = 0; j < nk; ++j)
        for (int d = 0; d < hd; ++d) {
          kr(j * hd + d) = kg[(long)(k0 + j) * hd + d];
          dk_acc(j * hd + d) = 0;
          dv_acc(j * hd + d) = 0;
        }
      if (bf16) {
        for (int x = 0; x < hd * BK; ++x) {
          kt(x) = math::round_bf16(kt(x));
          vt(x) = math::round_bf16(vt(x));
        }
        for (int x = 0; x < nk * hd; ++x) kr(x) = math::round_bf16(kr(x));
      }
      for (int hl = 0; hl < group; ++hl) {
        const long bh = b * nh + g * group + hl;
        for (int i0 = k0; i0 < Tn; i0 += kR) {  // causal: queries i >= k0 see this tile
          const int nr = (Tn - i0) < kR ? (Tn - i0) : kR;
          const T* qr[kR];
          const T* dor[kR];
          T* pr[kR];
          T* dsr[kR];
          T* dqr[kR];
          for (int u = 0; u < kR; ++u) {
            const int uu = u < nr ? u : nr - 1;
            qr[u] = q + (bh * Tn + i0 + uu) * hd;
            dor[u] = dout + (bh * Tn + i0 + uu) * hd;
            pr[u] = &p(uu * BK);
            dsr[u] = &ds(uu * BK);
            dqr[u] = dq + (bh * Tn + i0 + uu) * hd;
          }
          if (bf16)
            for (int u = 0; u < kR; ++u) {
              for (int d = 0; d < hd; ++d) {
                qs(u * hd + d) = math::round_bf16(qr[u][d]);
                dos(u * hd + d) = math::round_bf16(dor[u][d]);
              }
              qr[u] = &qs(u * hd);
              dor[u] = &dos(u * hd);
            }
          host_rows_times_tile(pr, qr, nr, &kt(0), BK, hd, ncols);   // q_i . k_j
          host_rows_times_tile(dsr, dor, nr, &vt(0), BK, hd, ncols); // dout_i . v_j = dp_ij
          for (int u = 0; u < nr; ++u) {
            const int i = i0 + u;
            const int jmax = (i - k0 + 1) < nk ? (i - k0 + 1) : nk;
            const T lse_i = lse[bh * Tn + i], delta_i = delta[bh * Tn + i];
            T* pu = pr[u];
            T* dsu = dsr[u];
            for (int j = 0; j < jmax; ++j) {
              pu[j] = math::fast_exp(pu[j] * scale - lse_i);
              dsu[j] = pu[j] * (dsu[j] - delta_i);
            }
            for (int j = jmax; j < nk; ++j) pu[j] = dsu[j] = 0;
            if (bf16)
              for (int j = 0; j < jmax; ++j) {
                pu[j] = math::round_bf16(pu[j]);
                dsu[j] = math::round_bf16(dsu[j]);
              }
          }
          host_tile_rank_update(&dv_acc(0), hd, pr, dor, nr, nk, hd);   // dv_j += p_ij dout_i
          host_tile_rank_update(&dk_acc(0), hd, dsr, qr, nr, nk, hd);   // dk_j += ds_ij q_i
          host_rows_accumulate(dqr, (const T*)nullptr, dsr, nr, &kr(0), hd, nk, hd);  // dq_i += ds_ij k_j
        }
      }
      for (int j = 0; j < nk; ++j)
        for (int d = 0; d < hd; ++d) {
          dk[(bg * Tn + k0 + j) * hd + d] = dk_acc(j * hd + d) * scale;
          dv[(bg * Tn + k0 + j) * hd + d] = dv_acc(j * hd + d);
        }
    }
    for (long x = 0; x < (long)group * Tn * hd; ++x) dq_group[x] *= scale;
  });
}

// The device nest of flash_attention_backward: (1) dk, dv with a team per
// (batch, KV group, key block), threads owning keys j and summing over the
// group's heads and later queries; (2) dq with a team per (batch, KV group,
// query block), threads owning rows. Both recompute p and dp.
template <class T>
void flash_backward_team(T* dq, T* dk, T* dv, const T* dout, const T* lse, const T* delta, const T* q, const T* k,
                         const T* v, int B, int Tn, int nh, int nkv, int hd) {
  constexpr int BQ = flash_block_q<false>(), BK = flash_block_k<false>();
  const int group = nh / nkv, nqb = (Tn + BQ - 1) / BQ, nkb = (Tn + BK - 1) / BK, rows_max = group * BQ;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const bool bf16 = flash_rounds_bf16<T>();
  {
    // scratch: kr, vr (BK,hd) key and value tiles; dk_acc, dv_acc (BK,hd)
    const std::size_t bytes = 4 * scratch_bytes<T>((long)hd * BK);
    int level = 0;
    const TeamPolicy policy = flash_policy<false>((long)B * nkv * nkb, bytes, level);
    Kokkos::parallel_for("flash_attention::backward_dkdv_team", policy, KOKKOS_LAMBDA(const TeamMember& member) {
      const int kb = member.league_rank() % nkb;
      const long bg = member.league_rank() / nkb, b = bg / nkv, g = bg % nkv;
      const int k0 = kb * BK, nk = (Tn - k0) < BK ? (Tn - k0) : BK;
      ScratchBuffer<T> kr(member.team_scratch(level), (long)BK * hd), vr(member.team_scratch(level), (long)BK * hd);
      ScratchBuffer<T> dk_acc(member.team_scratch(level), (long)BK * hd), dv_acc(member.team_scratch(level), (long)BK * hd);
      const T* kg = k + bg * Tn * hd;
      const T* vg = v + bg * Tn * hd;
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, nk), [&](const int j) {
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
          const T kx = kg[(long)(k0 + j) * hd + d], vx = vg[(long)(k0 + j) * hd + d];
          kr(j * hd + d) = bf16 ? math::round_bf16(kx) : kx;
          vr(j * hd + d) = bf16 ? math::round_bf16(vx) : vx;
          dk_acc(j * hd + d) = 0;
          dv_acc(j * hd + d) = 0;
        });
      });
      member.team_barrier();
      // threads own keys j (no two threads add into one row), lanes span d
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, nk), [&](const int j) {
        const T* kj = &kr(j * hd);
        const T* vj = &vr(j * hd);
        for (int hl = 0; hl < group; ++hl) {
          const long bh = b * nh + g * group + hl;
          for (int i = k0 + j; i < Tn; ++i) {  // causal: queries i >= key position k0 + j
            const T* qi = q + (bh * Tn + i) * hd;
            const T* doi = dout + (bh * Tn + i) * hd;
            T qk = 0, dp = 0;
            auto rd = [&](const T x) { return bf16 ? math::round_bf16(x) : x; };
            Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, hd), [&](const int d, T& a) {
              a += rd(qi[d]) * kj[d];
            }, qk);
            Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, hd), [&](const int d, T& a) {
              a += rd(doi[d]) * vj[d];
            }, dp);
            const T pij = math::fast_exp(qk * scale - lse[bh * Tn + i]);
            const T dsij = rd(pij * (dp - delta[bh * Tn + i]));
            const T pr = rd(pij);
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
              dv_acc(j * hd + d) += pr * rd(doi[d]);
              dk_acc(j * hd + d) += dsij * rd(qi[d]);
            });
          }
        }
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
          dk[(bg * Tn + k0 + j) * hd + d] = dk_acc(j * hd + d) * scale;
          dv[(bg * Tn + k0 + j) * hd + d] = dv_acc(j * hd + d);
        });
      });
    });
  }
  {
    // scratch: kt, vtt (hd,BK) transposed tiles (scores and dp); kr (BK,hd)
    // key tile (the dq update); dq_acc (rows,hd); ds (rows,BK)
    const std::size_t bytes = 3 * scratch_bytes<T>((long)hd * BK) + scratch_bytes<T>((long)rows_max * hd) +
                              scratch_bytes<T>((long)rows_max * BK);
    int level = 0;
    const TeamPolicy policy = flash_policy<false>((long)B * nkv * nqb, bytes, level);
    Kokkos::parallel_for("flash_attention::backward_dq_team", policy, KOKKOS_LAMBDA(const TeamMember& member) {
      const int qb = member.league_rank() % nqb;
      const long bg = member.league_rank() / nqb, b = bg / nkv, g = bg % nkv;
      const int q0 = qb * BQ, nq = (Tn - q0) < BQ ? (Tn - q0) : BQ, rows = group * nq;
      ScratchBuffer<T> kt(member.team_scratch(level), (long)hd * BK), vtt(member.team_scratch(level), (long)hd * BK);
      ScratchBuffer<T> kr(member.team_scratch(level), (long)BK * hd);
      ScratchBuffer<T> dq_acc(member.team_scratch(level), (long)rows_max * hd);
      ScratchBuffer<T> ds_all(member.team_scratch(level), (long)rows_max * BK);
      const T* kg = k + bg * Tn * hd;
      const T* vg = v + bg * Tn * hd;
      auto row_of = [&](int r) { return (b * nh + g * group + r / nq) * Tn + q0 + r % nq; };
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, rows), [&](const int r) {
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) { dq_acc(r * hd + d) = 0; });
      });
      const int nkb_q = (q0 + nq - 1) / BK + 1;
      for (int kb = 0; kb < nkb_q; ++kb) {
        const int k0 = kb * BK, nk = (q0 + nq - k0) < BK ? (q0 + nq - k0) : BK;
        member.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, nk), [&](const int j) {
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
            const T kx = kg[(long)(k0 + j) * hd + d], vx = vg[(long)(k0 + j) * hd + d];
            kt(d * BK + j) = bf16 ? math::round_bf16(kx) : kx;
            vtt(d * BK + j) = bf16 ? math::round_bf16(vx) : vx;
            kr(j * hd + d) = bf16 ? math::round_bf16(kx) : kx;
          });
        });
        member.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(member, rows), [&](const int r) {
          const long row = row_of(r);
          const int i = q0 + r % nq;
          const int jmax = (i - k0 + 1) < nk ? (i - k0 + 1) : nk;
          if (jmax <= 0) return;
          const T* qi = q + row * hd;
          const T* doi = dout + row * hd;
          const T lse_i = lse[row], delta_i = delta[row];
          T* ds = &ds_all(r * BK);
          T* dqi = &dq_acc(r * hd);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, jmax), [&](const int j) {
            T qk = 0, dp = 0;
            for (int d = 0; d < hd; ++d) {
              qk += (bf16 ? math::round_bf16(qi[d]) : qi[d]) * kt(d * BK + j);
              dp += (bf16 ? math::round_bf16(doi[d]) : doi[d]) * vtt(d * BK + j);
            }
            const T pij = math::fast_exp(qk * scale - lse_i);
            const T dsj = pij * (dp - delta_i);
            ds[j] = bf16 ? math::round_bf16(dsj) : dsj;
          });
          T order = 0;  // lanes then read each other's ds[j]: this reduction's warp shuffles are the sync point (unverified on a GPU)
          Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, jmax), [&](const int j, T& a) { a += ds[j]; },
                                  order);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
            T acc = dqi[d];
            for (int j = 0; j < jmax; ++j) acc += ds[j] * kr(j * hd + d);
            dqi[d] = acc;
          });
        });
      }
      member.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, rows), [&](const int r) {
        T* dst = dq + row_of(r) * hd;
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, hd), [&](const int d) {
          dst[d] = dq_acc(r * hd + d) * scale;
        });
      });
    });
  }
}
}  // namespace detail

// dq is (B,nh,T,hd) (overwritten); dk, dv are (B,nkv,T,hd) (overwritten);
// dout is (B,nh,T,hd); lse and delta are (B,nh,T) (from flash_attention_forward
// and flash_attention_backward_delta); q is (B,nh,T,hd), k and v are (B,nkv,T,hd).
template <class T, bool HostLoops = kHostLoops>
void flash_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* lse, const T* delta, const T* q,
                              const T* k, const T* v, int B, int Tn, int nh, int nkv, int hd) {
  if constexpr (HostLoops) detail::flash_backward_host<T>(dq, dk, dv, dout, lse, delta, q, k, v, B, Tn, nh, nkv, hd);
  else detail::flash_backward_team<T>(dq, dk, dv, dout, lse, delta, q, k, v, B, Tn, nh, nkv, hd);
}

}  // namespace fulcrum
