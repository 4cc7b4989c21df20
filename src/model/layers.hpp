// layers.hpp: the dense transformer layers as forward/backward pairs.
//
// Conventions (llm.c): buffers are flat, row-major, and each argument carries
// its shape in a comment; N = B*T tokens. Backward functions ACCUMULATE into
// parameter gradients (+=) and into the input gradient named d<inp> (+=), so
// a residual stream's gradient can be summed over branches. Every kernel is
// labelled "<layer>::<what>". The exact definition is doc/model.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "model/kokkos_types.hpp"

namespace fulcrum {

// ---------------------------------------------------------------- embedding
// out is (N,C), tokens is (N), wte is (V,C)
template <class T>
void embedding_forward(T* out, const int* tokens, const T* wte, int N, int C) {
  Kokkos::parallel_for("embedding::forward", RangePolicy(0, (long)N * C), KOKKOS_LAMBDA(const long i) {
    const long n = i / C, c = i % C;
    out[i] = wte[(long)tokens[n] * C + c];
  });
}
// dwte is (V,C) (+=), dout is (N,C). A token may repeat in the batch, so
// rows of dwte receive several adds; every element dwte[v,c] adds the
// dout[n,c] of v's positions n in increasing order, so it is summed in one
// fixed order in both nests, whatever the thread count (atomic adds per
// (n, c) gave thread-dependent sums under Kokkos-OpenMP: two identical runs
// differed in about 2% of all gradients), and the two nests give the same
// bits. Host nest: a work item per column c adds the tokens n = 0..N-1 (on
// Serial the order the atomic loop had). Device nest: the positions sorted
// by id by a stable counting sort (below), then a work item per (id present
// in the batch, column) adds that id's positions in order: parallel over
// (ids, C) rather than C.
//
// The device nest's sort, without atomics: the N positions split into
// `chunks` consecutive chunks; counts per (id, chunk) by a sequential pass
// per chunk; their exclusive scan in (id, chunk) order gives each chunk's
// first slot for each id; a sequential pass per chunk places its positions
// at those slots. Ids in increasing order, and within an id the chunks in
// order and each chunk's positions in order: positions increase within an
// id (stable). A second scan lists the ids present and where each starts.
// (The MoE dispatcher's sort by expert, token_dispatcher.hpp, is the same
// scheme; here the (id, chunk) table is capped at kMaxCounts entries, as the
// vocabulary may be large.)
struct EmbeddingBackwardScratch {
  static constexpr int kChunkTokens = 64;        // positions per chunk aimed at
  static constexpr long kMaxCounts = 1L << 22;   // cap of vocab * chunks (16 MiB of counts)
  int max_tokens = 0, vocab = 0, chunks = 0;
  DeviceBuffer<int> counts;     // (vocab*chunks + 1) counts per (id, chunk), then their exclusive scan
  DeviceBuffer<int> sorted;     // (max_tokens) positions ordered by id, increasing within an id
  DeviceBuffer<int> ids;        // (min(max_tokens, vocab)) the ids present, increasing
  DeviceBuffer<int> begin;      // (min(max_tokens, vocab) + 1) each present id's first slot in sorted; then N
  Kokkos::View<int, MemSpace> present;  // how many ids are present
  EmbeddingBackwardScratch() = default;
  // For up to max_tokens positions of ids in [0, vocab). Allocates only for
  // the device nest (device_nest: the default nest of this backend is it).
  EmbeddingBackwardScratch(int max_tokens_, int vocab_, bool device_nest = !kHostLoops)
      : max_tokens(max_tokens_), vocab(vocab_) {
    if (!device_nest) return;
    const long by_tokens = ((long)max_tokens + kChunkTokens - 1) / kChunkTokens;
    const long by_memory = kMaxCounts / (vocab > 0 ? vocab : 1);
    chunks = (int)std::max(1L, std::min(by_tokens, by_memory));
    const long distinct = std::min<long>(max_tokens, vocab);
    counts = DeviceBuffer<int>("embedding::sort_counts", (long)vocab * chunks + 1);
    sorted = DeviceBuffer<int>("embedding::sort_positions", max_tokens);
    ids = DeviceBuffer<int>("embedding::sort_ids", distinct);
    begin = DeviceBuffer<int>("embedding::sort_begin", distinct + 1);
    present = Kokkos::View<int, MemSpace>("embedding::sort_present");
  }
};

// tokens is (N), ids in [0, sort.vocab); sort is used by the device nest only
// (allocated for at least N positions).
template <class T, bool HostLoops = kHostLoops>
void embedding_backward(T* dwte, const T* dout, const int* tokens, int N, int C,
                        const EmbeddingBackwardScratch& sort) {
  if (N <= 0 || C <= 0) return;
  if constexpr (HostLoops) {
    Kokkos::parallel_for("embedding::backward", RangePolicy(0, C), KOKKOS_LAMBDA(const int c) {
      for (long n = 0; n < N; ++n) dwte[(long)tokens[n] * C + c] += dout[n * C + c];
    });
  } else {
    if (sort.chunks == 0 || N > sort.max_tokens)
      throw std::invalid_argument("embedding_backward: sort scratch not allocated for this many tokens");
    const int V = sort.vocab, P = sort.chunks;
    const int len = (N + P - 1) / P;  // positions per chunk
    const long VP = (long)V * P;
    int* counts = sort.counts.data();
    int* sorted = sort.sorted.data();
    int* ids = sort.ids.data();
    int* begin = sort.begin.data();
    int* present = sort.present.data();
    Kokkos::parallel_for("embedding::backward_clear", RangePolicy(0, VP + 1),
                         KOKKOS_LAMBDA(const long i) { counts[i] = 0; });
    Kokkos::parallel_for("embedding::backward_count", RangePolicy(0, P), KOKKOS_LAMBDA(const int p) {
      const int n_end = (p + 1) * len < N ? (p + 1) * len : N;
      for (int n = p * len; n < n_end; ++n) ++counts[(long)tokens[n] * P + p];
    });
    // exclusive, in place: counts[v*P + p] = first slot of chunk p's positions of id v; counts[V*P] = N
    Kokkos::parallel_scan("embedding::backward_offsets", RangePolicy(0, VP + 1),
                          KOKKOS_LAMBDA(const long i, int& update, const bool final) {
      const int here = counts[i];
      if (final) counts[i] = update;
      update += here;
    });
    Kokkos::parallel_scan("embedding::backward_ids", RangePolicy(0, V + 1),
                          KOKKOS_LAMBDA(const int v, int& update, const bool final) {
      const int here = v < V && counts[(long)(v + 1) * P] > counts[(long)v * P] ? 1 : 0;
      if (final) {
        if (here) {
          ids[update] = v;
          begin[update] = counts[(long)v * P];
        }
        if (v == V) {
          begin[update] = N;
          *present = update;
        }
      }
      update += here;
    });
    Kokkos::parallel_for("embedding::backward_place", RangePolicy(0, P), KOKKOS_LAMBDA(const int p) {
      const int n_end = (p + 1) * len < N ? (p + 1) * len : N;
      for (int n = p * len; n < n_end; ++n) sorted[counts[(long)tokens[n] * P + p]++] = n;
    });
    const long distinct = std::min<long>(N, V);
    Kokkos::parallel_for("embedding::backward_rows", RangePolicy(0, distinct * C), KOKKOS_LAMBDA(const long i) {
      const long u = i / C, c = i % C;
      if (u >= *present) return;
      T* w = dwte + (long)ids[u] * C + c;
      T acc = *w;
      for (int s = begin[u]; s < begin[u + 1]; ++s) acc += dout[(long)sorted[s] * C + c];
      *w = acc;
    });
  }
}

// ---------------------------------------------------------------- RMSNorm
// out is (N,C), rstd is (N), inp is (N,C), weight is (C)
// y = x r w, r = 1/sqrt(mean(x^2) + eps). Host nest: a row per work item;
// team nest: a thread per row, lanes along C (kokkos_types.hpp, kHostLoops).
template <class T, bool HostLoops = kHostLoops>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, double eps) {
  const T teps = static_cast<T>(eps);
  if constexpr (HostLoops) {
    Kokkos::parallel_for("rmsnorm::forward", RangePolicy(0, N), KOKKOS_LAMBDA(const int n) {
      const T* x = inp + (long)n * C;
      T ms = 0;
      for (int c = 0; c < C; ++c) ms += x[c] * x[c];
      ms /= C;
      const T r = T(1) / math::sqrt(ms + teps);
      rstd[n] = r;
      T* o = out + (long)n * C;
      for (int c = 0; c < C; ++c) o[c] = x[c] * r * weight[c];
    });
  } else {
    Kokkos::parallel_for("rmsnorm::forward_team", row_team_policy(N), KOKKOS_LAMBDA(const TeamMember& member) {
      for_team_rows(member, N, [&](const long n) {
        const T* x = inp + n * C;
        T ms = 0;
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, C), [&](const int c, T& a) { a += x[c] * x[c]; },
                                ms);
        const T r = T(1) / math::sqrt(ms / C + teps);
        Kokkos::single(Kokkos::PerThread(member), [&]() { rstd[n] = r; });
        T* o = out + n * C;
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, C), [&](const int c) { o[c] = x[c] * r * weight[c]; });
      });
    });
  }
}
// The weight gradient is a sum over the N rows: a deterministic two-pass
// reduction over blocks of kNormRowBlock rows (pass 1: one partial row of C
// sums per block, rows in order and contiguous in c; pass 2: the partials
// summed in block order per column). Same result for any thread count.
constexpr int kNormRowBlock = 64;
// elements of the dweight_partial scratch rmsnorm_backward needs for N rows
inline long rmsnorm_backward_scratch(int N, int C) { return (long)((N + kNormRowBlock - 1) / kNormRowBlock) * C; }

// dinp is (N,C) (+=), dweight is (C) (+=), dout is (N,C), inp is (N,C), rstd is (N),
// dweight_partial is (ceil(N/kNormRowBlock), C) scratch
template <class T, bool HostLoops = kHostLoops>
void rmsnorm_backward(T* dinp, T* dweight, T* dweight_partial, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C) {
  const int blocks = (N + kNormRowBlock - 1) / kNormRowBlock;
  if constexpr (HostLoops) {
    Kokkos::parallel_for("rmsnorm::backward_input", RangePolicy(0, N), KOKKOS_LAMBDA(const int n) {
      const T* x = inp + (long)n * C;
      const T* dy = dout + (long)n * C;
      const T r = rstd[n];
      // dx = r * (w dy - xhat * mean(w dy xhat)),  xhat = x r
      T dot = 0;
      for (int c = 0; c < C; ++c) dot += weight[c] * dy[c] * x[c] * r;
      dot /= C;
      T* dx = dinp + (long)n * C;
      for (int c = 0; c < C; ++c) dx[c] += r * (weight[c] * dy[c] - x[c] * r * dot);
    });
    Kokkos::parallel_for("rmsnorm::backward_weight_blocks", RangePolicy(0, blocks), KOKKOS_LAMBDA(const int blk) {
      T* part = dweight_partial + (long)blk * C;
      for (int c = 0; c < C; ++c) part[c] = 0;
      const int n_end = (blk + 1) * kNormRowBlock < N ? (blk + 1) * kNormRowBlock : N;
      for (int n = blk * kNormRowBlock; n < n_end; ++n) {
        const T* dy = dout + (long)n * C;
        const T* x = inp + (long)n * C;
        const T r = rstd[n];
        for (int c = 0; c < C; ++c) part[c] += dy[c] * x[c] * r;
      }
    });
  } else {
    Kokkos::parallel_for("rmsnorm::backward_input_team", row_team_policy(N), KOKKOS_LAMBDA(const TeamMember& member) {
      for_team_rows(member, N, [&](const long n) {
        const T* x = inp + n * C;
        const T* dy = dout + n * C;
        const T r = rstd[n];
        T dot = 0;
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, C), [&](const int c, T& a) {
          a += weight[c] * dy[c] * x[c] * r;
        }, dot);
        dot /= C;
        T* dx = dinp + n * C;
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, C), [&](const int c) {
          dx[c] += r * (weight[c] * dy[c] - x[c] * r * dot);
        });
      });
    });
    // pass 1 as a team per row block: threads and lanes take columns, each
    // column summed over the block's rows in order
    Kokkos::parallel_for("rmsnorm::backward_weight_blocks_team", TeamPolicy(blocks, Kokkos::AUTO),
                         KOKKOS_LAMBDA(const TeamMember& member) {
      const int blk = member.league_rank();
      const int n_end = (blk + 1) * kNormRowBlock < N ? (blk + 1) * kNormRowBlock : N;
      Kokkos::parallel_for(Kokkos::TeamThreadRange(member, C), [&](const int c) {
        T acc = 0;
        for (int n = blk * kNormRowBlock; n < n_end; ++n) acc += dout[(long)n * C + c] * inp[(long)n * C + c] * rstd[n];
        dweight_partial[(long)blk * C + c] = acc;
      });
    });
  }
  Kokkos::parallel_for("rmsnorm::backward_weight_sum", RangePolicy(0, C), KOKKOS_LAMBDA(const int c) {
    T s = 0;
    for (int blk = 0; blk < blocks; ++blk) s += dweight_partial[(long)blk * C + c];
    dweight[c] += s;
  });
}

// ---------------------------------------------------------------- RoPE
// rope_cos, rope_sin are (T, hd/2): angle(t,i) = t * theta^(-2i/hd)
template <class T>
void rope_tables(DeviceBuffer<T>& cos_table, DeviceBuffer<T>& sin_table, int seq_len, int head_dim,
                 double theta) {
  const int half = head_dim / 2;
  cos_table = DeviceBuffer<T>("rope::cos", (long)seq_len * half);
  sin_table = DeviceBuffer<T>("rope::sin", (long)seq_len * half);
  auto hc = Kokkos::create_mirror_view(cos_table);
  auto hs = Kokkos::create_mirror_view(sin_table);
  for (int t = 0; t < seq_len; ++t)
    for (int i = 0; i < half; ++i) {
      const double angle = t * std::pow(theta, -2.0 * i / head_dim);
      hc(t * half + i) = static_cast<T>(std::cos(angle));
      hs(t * half + i) = static_cast<T>(std::sin(angle));
    }
  Kokkos::deep_copy(cos_table, hc);
  Kokkos::deep_copy(sin_table, hs);
}

// Head-major permute with optional rotation (rotate-half convention):
// out is (B,H,T,hd), inp is (B,T,H*hd). One work item per (b,t,h) row: the
// index arithmetic is per row, the inner loop over the hd/2 rotation pairs is
// contiguous in both layouts (vectorises on CPUs; coalesced per row on GPUs).
template <class T>
void rope_permute_forward(T* out, const T* inp, const T* cos_t, const T* sin_t, int B, int Tn,
                          int H, int hd, bool rotate) {
  const int half = hd / 2;
  Kokkos::parallel_for("rope::permute_forward", RangePolicy(0, (long)B * Tn * H), KOKKOS_LAMBDA(const long row) {
    const int h = static_cast<int>(row % H);
    const long bt = row / H;  // b * Tn + t
    const int t = static_cast<int>(bt % Tn);
    const long b = bt / Tn;
    const T* x = inp + row * hd;
    T* o = out + ((b * H + h) * Tn + t) * hd;
    if (rotate) {
      const T* c = cos_t + (long)t * half;
      const T* s = sin_t + (long)t * half;
      for (int i = 0; i < half; ++i) {
        const T x1 = x[i], x2 = x[i + half];
        o[i] = x1 * c[i] - x2 * s[i];
        o[i + half] = x2 * c[i] + x1 * s[i];
      }
    } else {
      for (int i = 0; i < hd; ++i) o[i] = x[i];
    }
  });
}
// dinp is (B,T,H*hd) (overwritten), dout is (B,H,T,hd)
template <class T>
void rope_permute_backward(T* dinp, const T* dout, const T* cos_t, const T* sin_t, int B, int Tn,
                           int H, int hd, bool rotate) {
  const int half = hd / 2;
  Kokkos::parallel_for("rope::permute_backward", RangePolicy(0, (long)B * Tn * H), KOKKOS_LAMBDA(const long row) {
    const int h = static_cast<int>(row % H);
    const long bt = row / H;
    const int t = static_cast<int>(bt % Tn);
    const long b = bt / Tn;
    T* dx = dinp + row * hd;
    const T* d = dout + ((b * H + h) * Tn + t) * hd;
    if (rotate) {
      const T* c = cos_t + (long)t * half;
      const T* s = sin_t + (long)t * half;
      for (int i = 0; i < half; ++i) {
        const T d1 = d[i], d2 = d[i + half];
        dx[i] = d1 * c[i] + d2 * s[i];
        dx[i + half] = -d1 * s[i] + d2 * c[i];
      }
    } else {
      for (int i = 0; i < hd; ++i) dx[i] = d[i];
    }
  });
}

// ---------------------------------------------------------------- attention
// Causal GQA attention on head-major, already rotated q/k.
// out is (B,nh,T,hd), att is (B,nh,T,T) (softmax probabilities, kept for
// backward), q is (B,nh,T,hd), k and v are (B,nkv,T,hd).
// The `group` = nh/nkv query heads sharing one KV head are contiguous in the
// head-major layout, so each product runs once per (batch, KV group) on the
// stacked (group*T, .) rows: fewer, larger products, and the backward's sums
// over the heads of a group (dk, dv) happen inside one product.
template <class T, bool HostLoops = kHostLoops>
void attention_forward(T* out, T* att, const T* q, const T* k, const T* v, int B, int Tn, int nh,
                       int nkv, int hd) {
  const int group = nh / nkv;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const long qs = (long)Tn * hd, as = (long)Tn * Tn;
  const int GT = group * Tn;  // stacked query rows of one KV group
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < nkv; ++g) {
      const long bh = (long)b * nh + (long)g * group, bg = (long)b * nkv + g;
      matmul<T>('N', 'T', GT, Tn, hd, scale, q + bh * qs, k + bg * qs, T(0), att + bh * as);
    }
  if constexpr (HostLoops) {
    Kokkos::parallel_for("attention::causal_softmax", RangePolicy(0, (long)B * nh * Tn),
                         KOKKOS_LAMBDA(const long row) {
      const int t = row % Tn;
      T* p = att + row * Tn;
      const T mx = math::row_max(p, t + 1);
      for (int j = 0; j <= t; ++j) p[j] = math::fast_exp(p[j] - mx);
      const T inv = T(1) / math::row_sum(p, t + 1);
      for (int j = 0; j <= t; ++j) p[j] *= inv;
      for (int j = t + 1; j < Tn; ++j) p[j] = 0;
    });
  } else {
    Kokkos::parallel_for("attention::causal_softmax_team", row_team_policy((long)B * nh * Tn),
                         KOKKOS_LAMBDA(const TeamMember& member) {
      for_team_rows(member, (long)B * nh * Tn, [&](const long row) {
        const int t = row % Tn;
        T* p = att + row * Tn;
        T mx = p[0];
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, t + 1), [&](const int j, T& m) {
          m = p[j] > m ? p[j] : m;
        }, Kokkos::Max<T>(mx));
        T sum = 0;
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, t + 1), [&](const int j, T& a) {
          p[j] = math::fast_exp(p[j] - mx);
          a += p[j];
        }, sum);  // the scaling below reads only each lane's own p[j]
        const T inv = T(1) / sum;
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, Tn), [&](const int j) {
          p[j] = j <= t ? p[j] * inv : T(0);
        });
      });
    });
  }
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < nkv; ++g) {
      const long bh = (long)b * nh + (long)g * group, bg = (long)b * nkv + g;
      matmul<T>('N', 'N', GT, hd, Tn, T(1), att + bh * as, v + bg * qs, T(0), out + bh * qs);
    }
}
// dq is (B,nh,T,hd) (overwritten); dk, dv are (B,nkv,T,hd) (overwritten);
// datt is (B,nh,T,T) scratch; dout is (B,nh,T,hd)
template <class T, bool HostLoops = kHostLoops>
void attention_backward(T* dq, T* dk, T* dv, T* datt, const T* dout, const T* att, const T* q,
                        const T* k, const T* v, int B, int Tn, int nh, int nkv, int hd) {
  const int group = nh / nkv;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const long qs = (long)Tn * hd, as = (long)Tn * Tn;
  const int GT = group * Tn;  // stacked query rows of one KV group
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < nkv; ++g) {
      const long bh = (long)b * nh + (long)g * group, bg = (long)b * nkv + g;
      matmul<T>('N', 'T', GT, Tn, hd, T(1), dout + bh * qs, v + bg * qs, T(0), datt + bh * as);
      // dv = sum over the group's heads of P_h^T dout_h: one product over the stacked rows
      matmul<T>('T', 'N', Tn, hd, GT, T(1), att + bh * as, dout + bh * qs, T(0), dv + bg * qs);
    }
  // dS = P * (dP - sum_j P_j dP_j) * scale
  if constexpr (HostLoops) {
    Kokkos::parallel_for("attention::softmax_backward", RangePolicy(0, (long)B * nh * Tn),
                         KOKKOS_LAMBDA(const long row) {
      const int t = row % Tn;
      const T* p = att + row * Tn;
      T* d = datt + row * Tn;
      const T dot = math::row_dot(p, d, t + 1);
      for (int j = 0; j <= t; ++j) d[j] = p[j] * (d[j] - dot) * scale;
      for (int j = t + 1; j < Tn; ++j) d[j] = 0;
    });
  } else {
    Kokkos::parallel_for("attention::softmax_backward_team", row_team_policy((long)B * nh * Tn),
                         KOKKOS_LAMBDA(const TeamMember& member) {
      for_team_rows(member, (long)B * nh * Tn, [&](const long row) {
        const int t = row % Tn;
        const T* p = att + row * Tn;
        T* d = datt + row * Tn;
        T dot = 0;
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, t + 1), [&](const int j, T& a) {
          a += p[j] * d[j];
        }, dot);
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, Tn), [&](const int j) {
          d[j] = j <= t ? p[j] * (d[j] - dot) * scale : T(0);
        });
      });
    });
  }
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < nkv; ++g) {
      const long bh = (long)b * nh + (long)g * group, bg = (long)b * nkv + g;
      matmul<T>('N', 'N', GT, hd, Tn, T(1), datt + bh * as, k + bg * qs, T(0), dq + bh * qs);
      matmul<T>('T', 'N', Tn, hd, GT, T(1), datt + bh * as, q + bh * qs, T(0), dk + bg * qs);
    }
}

// ---------------------------------------------------------------- SwiGLU
// The elementwise part of SwiGLU over `count` entries: act = silu(h1) * h3,
// silu(z) = z sigmoid(z). The routed experts (experts.hpp) call it once over
// all their rows, between grouped products.
template <class T>
void swiglu_activation_forward(T* act, const T* h1, const T* h3, long count) {
  Kokkos::parallel_for("swiglu::activation", RangePolicy(0, count), KOKKOS_LAMBDA(const long i) {
    const T z = h1[i];
    const T sig = T(1) / (T(1) + math::fast_exp(-z));
    act[i] = z * sig * h3[i];
  });
}
// Its backward: dh3 = dact silu(z), dh1 = dact h3 sigmoid(z) (1 + z (1 - sigmoid(z))).
template <class T>
void swiglu_activation_backward(T* dh1, T* dh3, const T* dact, const T* h1, const T* h3, long count) {
  Kokkos::parallel_for("swiglu::activation_backward", RangePolicy(0, count), KOKKOS_LAMBDA(const long i) {
    const T z = h1[i];
    const T sig = T(1) / (T(1) + math::fast_exp(-z));
    const T silu = z * sig;
    dh3[i] = dact[i] * silu;
    dh1[i] = dact[i] * h3[i] * sig * (T(1) + z * (T(1) - sig));
  });
}

// swiglu(h) = (silu(h w1^T) * (h w3^T)) w2^T, width W.
// out is (N,C) (out = beta*out + result), h1, h3, act are (N,W) (kept for
// backward), inp is (N,C), w1, w3 are (W,C), w2 is (C,W)
template <class T>
void swiglu_forward(T* out, T* h1, T* h3, T* act, const T* inp, const T* w1, const T* w3,
                    const T* w2, int N, int C, int W, T beta) {
  if (N == 0) return;
  matmul<T>('N', 'T', N, W, C, T(1), inp, w1, T(0), h1);
  matmul<T>('N', 'T', N, W, C, T(1), inp, w3, T(0), h3);
  swiglu_activation_forward<T>(act, h1, h3, (long)N * W);
  matmul<T>('N', 'T', N, C, W, T(1), act, w2, beta, out);
}
// dinp is (N,C) (dinp = dinp_beta * dinp + result: 1 adds, 0 overwrites
// without reading, so a caller needs no zeroing pass); dw1, dw3 are (W,C) (+=);
// dw2 is (C,W) (+=); dout is (N,C); dact is (N,W) scratch; dh1, dh3 are (N,W) scratch
template <class T>
void swiglu_backward(T* dinp, T* dw1, T* dw3, T* dw2, T* dact, T* dh1, T* dh3, const T* dout,
                     const T* h1, const T* h3, const T* act, const T* inp, const T* w1,
                     const T* w3, const T* w2, int N, int C, int W, T dinp_beta = T(1)) {
  if (N == 0) return;
  matmul<T>('T', 'N', C, W, N, T(1), dout, act, T(1), dw2);
  matmul<T>('N', 'N', N, W, C, T(1), dout, w2, T(0), dact);
  swiglu_activation_backward<T>(dh1, dh3, dact, h1, h3, (long)N * W);
  matmul<T>('T', 'N', W, C, N, T(1), dh1, inp, T(1), dw1);
  matmul<T>('T', 'N', W, C, N, T(1), dh3, inp, T(1), dw3);
  matmul<T>('N', 'N', N, C, W, T(1), dh1, w1, dinp_beta, dinp);
  matmul<T>('N', 'N', N, C, W, T(1), dh3, w3, T(1), dinp);
}

// ---------------------------------------------------------------- cross-entropy
// logits is (N,V), targets is (N); lse is (N) (written): each row's
// log-sum-exp, which the backward reuses. The sum over rows of
// lse - z[target] goes to `result`, a Kokkos::Sum reducer: into a host double
// (crossentropy_forward, which waits for it) or into a device scalar
// (crossentropy_forward_device, which does not).
// Team nest: the row log-sum-exps by a thread per row (vector max and sum
// over V), then the sum over rows as a second, cheap reduction.
template <class T, bool HostLoops, class SumReducer>
void crossentropy_forward_sum(T* lse, const SumReducer& result, const T* logits, const int* targets, int N, int V) {
  if constexpr (HostLoops) {
    Kokkos::parallel_reduce("crossentropy::forward", RangePolicy(0, N),
                            KOKKOS_LAMBDA(const int n, double& acc) {
      const T* z = logits + (long)n * V;
      const T mx = math::row_max(z, V);
      const T l = mx + math::log(math::row_sum_exp(z, V, mx));
      lse[n] = l;
      acc += static_cast<double>(l - z[targets[n]]);
    }, result);
  } else {
    Kokkos::parallel_for("crossentropy::forward_lse_team", row_team_policy(N), KOKKOS_LAMBDA(const TeamMember& member) {
      for_team_rows(member, N, [&](const long n) {
        const T* z = logits + n * V;
        T mx = z[0];
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, V), [&](const int v, T& m) {
          m = z[v] > m ? z[v] : m;
        }, Kokkos::Max<T>(mx));
        T sum = 0;
        Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, V), [&](const int v, T& a) {
          a += math::fast_exp(z[v] - mx);
        }, sum);
        Kokkos::single(Kokkos::PerThread(member), [&]() { lse[n] = mx + math::log(sum); });
      });
    });
    Kokkos::parallel_reduce("crossentropy::forward_sum", RangePolicy(0, N), KOKKOS_LAMBDA(const int n, double& acc) {
      acc += static_cast<double>(lse[n] - logits[(long)n * V + targets[n]]);
    }, result);
  }
}
// Returns the mean loss over the N positions (waits for the device).
template <class T, bool HostLoops = kHostLoops>
double crossentropy_forward(T* lse, const T* logits, const int* targets, int N, int V) {
  double total = 0;
  crossentropy_forward_sum<T, HostLoops>(lse, Kokkos::Sum<double, Kokkos::HostSpace>(total), logits, targets, N, V);
  return total / N;
}
// The same mean loss left in device memory: loss[0] = sum / N, the sum
// reduced into `total` (a device scalar), so a training step need not wait
// for the device (transformer_impl.hpp reads the loss at log steps only).
template <class T, bool HostLoops = kHostLoops>
void crossentropy_forward_device(T* lse, double* loss, const Kokkos::View<double, MemSpace>& total, const T* logits,
                                 const int* targets, int N, int V) {
  crossentropy_forward_sum<T, HostLoops>(lse, Kokkos::Sum<double, MemSpace>(total), logits, targets, N, V);
  const double* sum = total.data();
  Kokkos::parallel_for("crossentropy::mean", RangePolicy(0, 1), KOKKOS_LAMBDA(const int) { loss[0] = *sum / N; });
}
// dlogits is (N,V) (overwritten) = d(dloss * mean loss)/dlogits = dloss (softmax - onehot) / N;
// lse is (N), from crossentropy_forward on the same logits
template <class T, bool HostLoops = kHostLoops>
void crossentropy_backward(T* dlogits, const T* logits, const T* lse, const int* targets, int N, int V,
                           T dloss) {
  const T scale = dloss / static_cast<T>(N);
  if constexpr (HostLoops) {
    Kokkos::parallel_for("crossentropy::backward", RangePolicy(0, N), KOKKOS_LAMBDA(const int n) {
      const T* z = logits + (long)n * V;
      T* dz = dlogits + (long)n * V;
      const T l = lse[n];
      for (int v = 0; v < V; ++v) dz[v] = math::fast_exp(z[v] - l) * scale;
      dz[targets[n]] -= scale;
    });
  } else {
    Kokkos::parallel_for("crossentropy::backward_team", row_team_policy(N), KOKKOS_LAMBDA(const TeamMember& member) {
      for_team_rows(member, N, [&](const long n) {
        const T* z = logits + n * V;
        T* dz = dlogits + n * V;
        const T l = lse[n];
        const int target = targets[n];
        // the one-hot term inside the lane that owns the target column
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, V), [&](const int v) {
          dz[v] = math::fast_exp(z[v] - l) * scale - (v == target ? scale : T(0));
        });
      });
    });
  }
}

}  // namespace fulcrum
