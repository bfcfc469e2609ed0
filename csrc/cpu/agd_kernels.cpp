// CPU kernels of Automatic Gradient Descent's two passes (docs/MATH.md §7), multi-tensor and deterministic.
//   agd_sumsq   pass A: per tensor, the sum of squares of every slice of the gradient (a matrix is one slice;
//               a contiguous (d_out, d_in, kh, kw) kernel has kh*kw slices, element f in slice f % (kh*kw)).
//   agd_update  pass B: W -= coef[slice] * g, coef the per-slice factors made on the device from G and eta.
// Fixed chunks of whole rows (about kReduceBlock elements) spread over threads; chunk sums (float32 math for
// float32 weights, float64 for float64) combined in chunk order in float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../hyperfused/check.h"
#include "../hyperfused/common.h"

namespace hyperfused {
namespace {

struct AgdChunk {
  int64_t tensor, begin, end;
};

// Chunks hold whole rows of S slices (S = slices of the tensor), so every chunk starts at slice 0.
std::vector<AgdChunk> chunks_of(at::TensorList ts, const std::vector<int64_t>& slices) {
  std::vector<AgdChunk> out;
  for (int64_t i = 0; i < static_cast<int64_t>(ts.size()); ++i) {
    const int64_t S = slices[i];
    const int64_t step = std::max<int64_t>(S, (kReduceBlock / S) * S);
    for (int64_t b = 0; b < ts[i].numel(); b += step) out.push_back({i, b, std::min(ts[i].numel(), b + step)});
  }
  return out;
}

template <typename scalar_t>
using agd_math_t = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

// Sum of squares per slice over rows [begin, end) (begin a multiple of S); row-major (row, slice) order, so
// with S known at compile time the inner loop unrolls and the rows vectorise.
template <typename scalar_t, int S_FIXED>
void sumsq_rows(const scalar_t* g, int64_t begin, int64_t end, int64_t S_dyn, double* out) {
  using T = agd_math_t<scalar_t>;
  const int64_t S = S_FIXED > 0 ? S_FIXED : S_dyn;
  if (S == 1) {
    constexpr int L = 16;
    T lanes[L] = {};
    int64_t f = begin;
    for (; f + L <= end; f += L)
      for (int l = 0; l < L; ++l) {
        const T x = static_cast<T>(g[f + l]);
        lanes[l] += x * x;
      }
    for (int l = 0; f < end; ++f, ++l) {
      const T x = static_cast<T>(g[f]);
      lanes[l] += x * x;
    }
    for (int l = 0; l < L; ++l) out[0] += static_cast<double>(lanes[l]);
    return;
  }
  // the slice pattern repeats every S elements: accumulate over blocks of P = 16 S contiguous elements (a
  // plain vectorisable loop), then fold the P partial sums into the S slices
  const int64_t P = 16 * S;
  std::vector<T> acc(P, T(0));
  T* a = acc.data();
  int64_t f = begin;
  for (; f + P <= end; f += P)
    for (int64_t i = 0; i < P; ++i) {
      const T x = static_cast<T>(g[f + i]);
      a[i] += x * x;
    }
  for (int64_t i = 0; f + i < end; ++i) {
    const T x = static_cast<T>(g[f + i]);
    a[i] += x * x;
  }
  for (int64_t i = 0; i < P; ++i) out[i % S] += static_cast<double>(a[i]);
}

template <typename scalar_t>
void sumsq_chunk(const scalar_t* g, int64_t begin, int64_t end, int64_t S, double* out) {
  switch (S) {
    case 1: return sumsq_rows<scalar_t, 1>(g, begin, end, S, out);
    case 9: return sumsq_rows<scalar_t, 9>(g, begin, end, S, out);
    case 25: return sumsq_rows<scalar_t, 25>(g, begin, end, S, out);
    case 49: return sumsq_rows<scalar_t, 49>(g, begin, end, S, out);
    default: return sumsq_rows<scalar_t, 0>(g, begin, end, S, out);
  }
}

at::Tensor agd_sumsq_cpu(at::TensorList grads, at::IntArrayRef slices) {
  HF_CHECK(grads.size() == slices.size(), "agd_sumsq: ", grads.size(), " gradients but ", slices.size(),
              " slice counts");
  std::vector<int64_t> offset(grads.size() + 1, 0);
  for (size_t i = 0; i < grads.size(); ++i) {
    HF_CHECK(grads[i].device().is_cpu() && grads[i].is_contiguous(), "agd_sumsq: gradient ", i,
                " must be a contiguous CPU tensor");
    HF_CHECK(slices[i] >= 1 && grads[i].numel() % slices[i] == 0, "agd_sumsq: gradient ", i, " of ",
                grads[i].numel(), " elements cannot have ", slices[i], " slices");
    offset[i + 1] = offset[i] + slices[i];
  }
  const auto chunks = chunks_of(grads, std::vector<int64_t>(slices.begin(), slices.end()));
  std::vector<std::vector<double>> part(chunks.size());
  at::parallel_for(0, chunks.size(), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const auto& ch = chunks[k];
      const int64_t S = slices[ch.tensor];
      part[k].assign(S, 0.0);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[ch.tensor].scalar_type(), "agd_sumsq", [&] {
        sumsq_chunk<scalar_t>(grads[ch.tensor].const_data_ptr<scalar_t>(), ch.begin, ch.end, S, part[k].data());
      });
    }
  });
  auto out = at::zeros({offset.back()}, at::TensorOptions().dtype(at::kDouble));
  double* po = out.data_ptr<double>();
  for (size_t k = 0; k < chunks.size(); ++k)
    for (int64_t s = 0; s < slices[chunks[k].tensor]; ++s) po[offset[chunks[k].tensor] + s] += part[k][s];
  return out;
}

template <typename scalar_t, int S_FIXED>
void update_rows(scalar_t* w, const scalar_t* g, int64_t begin, int64_t end, int64_t S_dyn, const double* coef) {
  using T = agd_math_t<scalar_t>;
  const int64_t S = S_FIXED > 0 ? S_FIXED : S_dyn;
  if (S == 1) {
    const T c = static_cast<T>(coef[0]);
    for (int64_t f = begin; f < end; ++f)
      w[f] = static_cast<scalar_t>(static_cast<T>(w[f]) - c * static_cast<T>(g[f]));
    return;
  }
  // the coefficients repeated over a block of P = 16 S elements: a plain vectorisable loop per block
  const int64_t P = 16 * S;
  std::vector<T> cv(P);
  for (int64_t i = 0; i < P; ++i) cv[i] = static_cast<T>(coef[i % S]);
  const T* c = cv.data();
  int64_t f = begin;
  for (; f + P <= end; f += P)
    for (int64_t i = 0; i < P; ++i)
      w[f + i] = static_cast<scalar_t>(static_cast<T>(w[f + i]) - c[i] * static_cast<T>(g[f + i]));
  for (int64_t i = 0; f + i < end; ++i)
    w[f + i] = static_cast<scalar_t>(static_cast<T>(w[f + i]) - c[i] * static_cast<T>(g[f + i]));
}

template <typename scalar_t>
void update_chunk(scalar_t* w, const scalar_t* g, int64_t begin, int64_t end, int64_t S, const double* coef) {
  switch (S) {
    case 1: return update_rows<scalar_t, 1>(w, g, begin, end, S, coef);
    case 9: return update_rows<scalar_t, 9>(w, g, begin, end, S, coef);
    case 25: return update_rows<scalar_t, 25>(w, g, begin, end, S, coef);
    case 49: return update_rows<scalar_t, 49>(w, g, begin, end, S, coef);
    default: return update_rows<scalar_t, 0>(w, g, begin, end, S, coef);
  }
}

// ok (optional one-element bool): when false nothing is written (the caller's skip decision, as on CUDA)
void agd_update_cpu(at::TensorList params, at::TensorList grads, const at::Tensor& coef,
                    const std::optional<at::Tensor>& ok) {
  HF_CHECK(params.size() == grads.size(), "agd_update: ", params.size(), " params for ", grads.size(), " grads");
  HF_CHECK(coef.scalar_type() == at::kDouble && coef.is_contiguous() && coef.device().is_cpu(),
              "agd_update: coef must be a contiguous float64 CPU tensor");
  std::vector<int64_t> offset(params.size() + 1, 0), slices(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    HF_CHECK(p.is_contiguous() && grads[i].is_contiguous() && p.sizes() == grads[i].sizes() &&
                    p.scalar_type() == grads[i].scalar_type(),
                "agd_update: parameter ", i, " and its gradient must be contiguous, of one shape and dtype");
    HF_CHECK(p.dim() == 2 || p.dim() == 4, "agd_update: parameter ", i, " must be a matrix or a 4-D kernel");
    slices[i] = p.dim() == 2 ? 1 : p.size(2) * p.size(3);
    offset[i + 1] = offset[i] + slices[i];
  }
  HF_CHECK(coef.numel() == offset.back(), "agd_update: ", coef.numel(), " coefficients for ", offset.back(),
              " slices");
  if (ok.has_value()) {
    HF_CHECK(ok->scalar_type() == at::kBool && ok->numel() == 1 && ok->device().is_cpu(),
                "agd_update: ok must be a one-element bool CPU tensor");
    if (!ok->item<bool>()) return;
  }
  const double* pc = coef.const_data_ptr<double>();
  const auto chunks = chunks_of(grads, slices);
  at::parallel_for(0, chunks.size(), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const auto& ch = chunks[k];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[ch.tensor].scalar_type(), "agd_update", [&] {
        update_chunk<scalar_t>(params[ch.tensor].data_ptr<scalar_t>(), grads[ch.tensor].const_data_ptr<scalar_t>(),
                               ch.begin, ch.end, slices[ch.tensor], pc + offset[ch.tensor]);
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hyperfused, CPU, m) {
  m.impl("agd_sumsq", &agd_sumsq_cpu);
  m.impl("agd_update", &agd_update_cpu);
}

}  // namespace hyperfused

namespace hyperfused {
namespace {

// Spectral AGD's power iteration on the native layout of every gradient (no copy into slices): element
// (o, i, s) of a contiguous (d_out, d_in[, kh, kw]) gradient is at (o * d_in + i) * S + s.
//   agd_gv:  gv[s, o] = sum_i g[o, i, s] v[s, i], and the per-slice sums of squares, in one read (pass A of
//            docs/MATH.md §7.3); rows o in parallel, every output has one owner.
//   agd_gtu: gtu[s, i] = sum_o g[o, i, s] u[s, o]; fixed blocks of rows, partial sums added in block order.
// float32 math for float32 gradients (float64 for float64); results float64.
constexpr int64_t kRowBlock = 64;

// gv over rows [o0, o1). v is laid out in row order (vt[i * S + s] = v[s, i]) so that a row (d_in * S contiguous
// elements) meets it element by element, summed in P = 16 S lanes; S is a compile-time constant for the usual
// kernels (1, 9, 25, 49), so the lanes live in registers (or a fixed array) and the loop vectorises.
template <typename scalar_t, int S_FIXED>
void gv_rows(const scalar_t* g, const double* v, int64_t o0, int64_t o1, int64_t in, int64_t S_dyn, double* gv,
             int64_t out_rows, double* sq) {
  using T = agd_math_t<scalar_t>;
  const int64_t S = S_FIXED > 0 ? S_FIXED : S_dyn;
  const int64_t K = in * S;                  // elements per row
  std::vector<T> vt(K);
  for (int64_t i = 0; i < in; ++i)
    for (int64_t s = 0; s < S; ++s) vt[i * S + s] = static_cast<T>(v[s * in + i]);
  constexpr int64_t PF = 16 * (S_FIXED > 0 ? S_FIXED : 1);
  const int64_t P = S_FIXED > 0 ? PF : 16 * S;
  std::vector<T> acc_v(S_FIXED > 0 ? 0 : P), sqa_v(S_FIXED > 0 ? 0 : P, T(0));
  T acc_f[S_FIXED > 0 ? PF : 1], sqa_f[S_FIXED > 0 ? PF : 1];
  T* acc = S_FIXED > 0 ? acc_f : acc_v.data();
  T* sqa = S_FIXED > 0 ? sqa_f : sqa_v.data();
  for (int64_t j = 0; j < P; ++j) sqa[j] = T(0);
  const T* w = vt.data();
  for (int64_t o = o0; o < o1; ++o) {
    const scalar_t* row = g + o * K;
    for (int64_t j = 0; j < P; ++j) acc[j] = T(0);
    int64_t k = 0;
    for (; k + P <= K; k += P)
      for (int64_t j = 0; j < P; ++j) {
        const T x = static_cast<T>(row[k + j]);
        acc[j] += x * w[k + j];
        sqa[j] += x * x;
      }
    for (int64_t j = 0; k + j < K; ++j) {
      const T x = static_cast<T>(row[k + j]);
      acc[j] += x * w[k + j];
      sqa[j] += x * x;
    }
    for (int64_t s = 0; s < S; ++s) {
      double total = 0.0;
      for (int64_t j = s; j < P; j += S) total += static_cast<double>(acc[j]);
      gv[s * out_rows + o] = total;
    }
  }
  for (int64_t j = 0; j < P; ++j) sq[j % S] += static_cast<double>(sqa[j]);
}

template <typename scalar_t>
void gv_block(const scalar_t* g, const double* v, int64_t o0, int64_t o1, int64_t in, int64_t S, double* gv,
              int64_t out_rows, double* sq) {
  switch (S) {
    case 1: return gv_rows<scalar_t, 1>(g, v, o0, o1, in, S, gv, out_rows, sq);
    case 9: return gv_rows<scalar_t, 9>(g, v, o0, o1, in, S, gv, out_rows, sq);
    case 25: return gv_rows<scalar_t, 25>(g, v, o0, o1, in, S, gv, out_rows, sq);
    case 49: return gv_rows<scalar_t, 49>(g, v, o0, o1, in, S, gv, out_rows, sq);
    default: return gv_rows<scalar_t, 0>(g, v, o0, o1, in, S, gv, out_rows, sq);
  }
}

// gtu over rows [o0, o1): part[i * S + s] += g[o, i, s] u[s, o], a scaled add of each row (u repeated every S;
// S a compile-time constant for the usual kernels).
template <typename scalar_t, int S_FIXED>
void gtu_rows(const scalar_t* g, const double* u, int64_t o0, int64_t o1, int64_t in, int64_t S_dyn,
              int64_t out_rows, double* part) {
  using T = agd_math_t<scalar_t>;
  const int64_t S = S_FIXED > 0 ? S_FIXED : S_dyn;
  const int64_t K = in * S;
  std::vector<T> acc(K, T(0));
  T* a = acc.data();
  if (S == 1) {
    for (int64_t o = o0; o < o1; ++o) {
      const scalar_t* row = g + o * K;
      const T uo = static_cast<T>(u[o]);
      for (int64_t k = 0; k < K; ++k) a[k] += static_cast<T>(row[k]) * uo;
    }
  } else {
    constexpr int64_t PF = 16 * (S_FIXED > 0 ? S_FIXED : 1);
    const int64_t P = S_FIXED > 0 ? PF : 16 * S;
    std::vector<T> uo(P);
    for (int64_t o = o0; o < o1; ++o) {
      const scalar_t* row = g + o * K;
      for (int64_t j = 0; j < P; ++j) uo[j] = static_cast<T>(u[(j % S) * out_rows + o]);
      const T* ub = uo.data();
      int64_t k = 0;
      for (; k + P <= K; k += P)
        for (int64_t j = 0; j < P; ++j) a[k + j] += static_cast<T>(row[k + j]) * ub[j];
      for (int64_t j = 0; k + j < K; ++j) a[k + j] += static_cast<T>(row[k + j]) * ub[j];
    }
  }
  for (int64_t k = 0; k < K; ++k) part[k] = static_cast<double>(a[k]);   // (i, s) order
}

template <typename scalar_t>
void gtu_block(const scalar_t* g, const double* u, int64_t o0, int64_t o1, int64_t in, int64_t S, int64_t out_rows,
               double* part) {
  switch (S) {
    case 1: return gtu_rows<scalar_t, 1>(g, u, o0, o1, in, S, out_rows, part);
    case 9: return gtu_rows<scalar_t, 9>(g, u, o0, o1, in, S, out_rows, part);
    case 25: return gtu_rows<scalar_t, 25>(g, u, o0, o1, in, S, out_rows, part);
    case 49: return gtu_rows<scalar_t, 49>(g, u, o0, o1, in, S, out_rows, part);
    default: return gtu_rows<scalar_t, 0>(g, u, o0, o1, in, S, out_rows, part);
  }
}

void check_mats(const char* op, at::TensorList grads, at::TensorList vecs, bool by_in) {
  HF_CHECK(grads.size() == vecs.size(), op, ": ", grads.size(), " gradients but ", vecs.size(), " vectors");
  for (size_t t = 0; t < grads.size(); ++t) {
    const auto& g = grads[t];
    HF_CHECK(g.device().is_cpu() && g.is_contiguous() && (g.dim() == 2 || g.dim() == 4), op, ": gradient ", t,
                " must be a contiguous CPU matrix or 4-D kernel");
    const int64_t S = g.dim() == 2 ? 1 : g.size(2) * g.size(3);
    const int64_t n = by_in ? g.size(1) : g.size(0);
    HF_CHECK(vecs[t].scalar_type() == at::kDouble && vecs[t].is_contiguous() && vecs[t].numel() == S * n, op,
                ": vector ", t, " must be a contiguous float64 tensor of ", S, " x ", n, " elements");
  }
}

// Blocks of rows of every tensor, in tensor order.
struct RowBlock {
  int64_t tensor, o0, o1;
};

std::vector<RowBlock> row_blocks(at::TensorList grads) {
  std::vector<RowBlock> out;
  for (int64_t t = 0; t < static_cast<int64_t>(grads.size()); ++t)
    for (int64_t o = 0; o < grads[t].size(0); o += kRowBlock)
      out.push_back({t, o, std::min(grads[t].size(0), o + kRowBlock)});
  return out;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> agd_gv_cpu(at::TensorList grads, at::TensorList vs) {
  check_mats("agd_gv", grads, vs, /*by_in=*/true);
  std::vector<at::Tensor> gv;
  std::vector<int64_t> soff(grads.size() + 1, 0);
  for (size_t t = 0; t < grads.size(); ++t) {
    const int64_t S = grads[t].dim() == 2 ? 1 : grads[t].size(2) * grads[t].size(3);
    gv.push_back(at::zeros({S, grads[t].size(0)}, at::TensorOptions().dtype(at::kDouble)));
    soff[t + 1] = soff[t] + S;
  }
  const auto blocks = row_blocks(grads);
  std::vector<std::vector<double>> sq_part(blocks.size());
  at::parallel_for(0, blocks.size(), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const auto& bl = blocks[k];
      const auto& g = grads[bl.tensor];
      const int64_t S = soff[bl.tensor + 1] - soff[bl.tensor];
      sq_part[k].assign(S, 0.0);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "agd_gv", [&] {
        gv_block<scalar_t>(g.const_data_ptr<scalar_t>(), vs[bl.tensor].const_data_ptr<double>(), bl.o0, bl.o1,
                           g.size(1), S, gv[bl.tensor].data_ptr<double>(), g.size(0), sq_part[k].data());
      });
    }
  });
  auto sq = at::zeros({soff.back()}, at::TensorOptions().dtype(at::kDouble));
  double* ps = sq.data_ptr<double>();
  for (size_t k = 0; k < blocks.size(); ++k)
    for (size_t s = 0; s < sq_part[k].size(); ++s) ps[soff[blocks[k].tensor] + s] += sq_part[k][s];
  return {sq, gv};
}

std::vector<at::Tensor> agd_gtu_cpu(at::TensorList grads, at::TensorList us) {
  check_mats("agd_gtu", grads, us, /*by_in=*/false);
  const auto blocks = row_blocks(grads);
  std::vector<std::vector<double>> part(blocks.size());
  at::parallel_for(0, blocks.size(), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const auto& bl = blocks[k];
      const auto& g = grads[bl.tensor];
      const int64_t S = g.dim() == 2 ? 1 : g.size(2) * g.size(3);
      part[k].assign(S * g.size(1), 0.0);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "agd_gtu", [&] {
        gtu_block<scalar_t>(g.const_data_ptr<scalar_t>(), us[bl.tensor].const_data_ptr<double>(), bl.o0, bl.o1,
                            g.size(1), S, g.size(0), part[k].data());
      });
    }
  });
  std::vector<at::Tensor> out;
  for (size_t t = 0; t < grads.size(); ++t) {
    const int64_t S = grads[t].dim() == 2 ? 1 : grads[t].size(2) * grads[t].size(3);
    out.push_back(at::zeros({S, grads[t].size(1)}, at::TensorOptions().dtype(at::kDouble)));
  }
  for (size_t k = 0; k < blocks.size(); ++k) {
    const auto& g = grads[blocks[k].tensor];
    const int64_t S = g.dim() == 2 ? 1 : g.size(2) * g.size(3), in = g.size(1);
    double* po = out[blocks[k].tensor].data_ptr<double>();
    for (int64_t i = 0; i < in; ++i)
      for (int64_t s = 0; s < S; ++s) po[s * in + i] += part[k][i * S + s];
  }
  return out;
}

// Rows of every tensor, normalised in place into dsts (rows of norm 0 keep what dsts held); the norms, in row
// order, are returned. Each row has one owner and is summed left to right in float64.
at::Tensor agd_normalize_rows_cpu(at::TensorList xs, at::TensorList dsts) {
  HF_CHECK(xs.size() == dsts.size(), "agd_normalize_rows: ", xs.size(), " tensors but ", dsts.size(),
              " destinations");
  std::vector<int64_t> row0(xs.size() + 1, 0);
  for (size_t t = 0; t < xs.size(); ++t) {
    const auto& x = xs[t];
    const auto& d = dsts[t];
    HF_CHECK(x.device().is_cpu() && x.scalar_type() == at::kDouble && x.is_contiguous() && x.dim() == 2,
                "agd_normalize_rows: tensor ", t, " must be a contiguous float64 CPU matrix (rows, d), got ",
                x.scalar_type(), " of shape ", x.sizes());
    HF_CHECK(d.device().is_cpu() && d.scalar_type() == at::kDouble && d.is_contiguous() &&
                    d.numel() == x.numel(),
                "agd_normalize_rows: destination ", t, " must be a contiguous float64 CPU tensor of ", x.numel(),
                " elements");
    row0[t + 1] = row0[t] + x.size(0);
  }
  auto norms = at::empty({row0.back()}, at::TensorOptions().dtype(at::kDouble));
  double* pn = norms.data_ptr<double>();
  at::parallel_for(0, static_cast<int64_t>(xs.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t rows = xs[t].size(0), d = xs[t].size(1);
      const double* px = xs[t].const_data_ptr<double>();
      double* pd = dsts[t].data_ptr<double>();
      for (int64_t r = 0; r < rows; ++r) {
        const double* xr = px + r * d;
        double ss = 0.0;
        for (int64_t j = 0; j < d; ++j) ss += xr[j] * xr[j];
        const double n = std::sqrt(ss);
        pn[row0[t] + r] = n;
        if (n > 0.0)
          for (int64_t j = 0; j < d; ++j) pd[r * d + j] = xr[j] / n;
      }
    }
  });
  return norms;
}

}  // namespace

TORCH_LIBRARY_IMPL(hyperfused, CPU, m) {
  m.impl("agd_normalize_rows", &agd_normalize_rows_cpu);
  m.impl("agd_gv", &agd_gv_cpu);
  m.impl("agd_gtu", &agd_gtu_cpu);
}

}  // namespace hyperfused
