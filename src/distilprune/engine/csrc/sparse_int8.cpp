// Block-sparse int8 GEMM for CPUs: y = dequant(quant(x) @ W^T) + bias, W sparse in 1x4 blocks.
//
// Weights (packed once, in Python, see engine/packing.py): each output row o keeps only its
// non-zero 1x4 blocks along the input dimension, CSR style: block columns `cols[b]` for
// b in [row_ptr[o], row_ptr[o+1]), the block's 4 int8 weights as one int32 `values[b]`, the
// same 4 weights as two int16 pairs (w0,w2) / (w1,w3) in `even[b]` / `odd[b]` for the AVX2
// path, the row sum `wsum[o]` and the per-output-channel scale `wscale[o]`.
//
// Activations are quantized per token (symmetric, q = round(x * 127 / amax), |q| <= 127) and
// stored as unsigned bytes u = q + 128 in token tiles of TILE tokens: xq[tile][k/4][t] holds the
// 4 bytes of token t for input columns 4k..4k+3 as one int32, so one vector load brings the
// same block column of 16 (AVX-512) or 8 (AVX2) consecutive tokens. The kernel broadcasts a
// weight block and multiplies it with those tokens (vpdpbusd: 4 u8 x s8 products summed into
// each int32 lane); the +128 offset is removed exactly with 128 * wsum[o]. Accumulation is in
// int32, so the result equals the dense integer reference bit for bit; the float epilogue is
// ((float)acc * xscale[t]) * wscale[o] + bias[o], evaluated in that order without FMA, then
// optionally the exact GELU (simd_math.h) when the layer is an FFN's first Linear.
//
// Threads: at::parallel_for over chunks of 16 output rows (torch's intra-op thread pool).
// Instruction set chosen at run time: AVX-512 VNNI, else AVX2, else none (Python falls back).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "simd_math.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DP_X86 1
#endif

namespace {

constexpr int TILE = 64;   // tokens per tile
constexpr int CHUNK = 16;  // output rows per work item (one 16x16 transpose)

enum class Isa { none = 0, avx2 = 1, avx512_vnni = 2 };

Isa probe_isa() {
#ifdef DP_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
    return Isa::avx512_vnni;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::none;
}

Isa detect_isa() {
  static const Isa isa = probe_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512_vnni: return "avx512_vnni";
    case Isa::avx2: return "avx2";
    default: return "none";
  }
}

Isa parse_isa(const std::string& name) {
  Isa best = detect_isa();
  if (name.empty() || name == "auto") return best;
  Isa want = name == "avx512_vnni" ? Isa::avx512_vnni : name == "avx2" ? Isa::avx2 : Isa::none;
  TORCH_CHECK(want != Isa::none, "unknown instruction set '", name, "'");
  TORCH_CHECK(static_cast<int>(want) <= static_cast<int>(best), "this CPU lacks ", name);
  return want;
}

// ------------------------------------------------------------------ activation quantization
// One token row: amax, scale and the bytes u = q + 128 written into the tiled layout.
void quantize_row(const float* x, int64_t k, float* scale, uint8_t* bytes) {
  float amax = 0.f;
  for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(x[i]));
  float inv = amax > 0.f ? 127.f / amax : 0.f;
  *scale = amax > 0.f ? amax / 127.f : 1.f;
  for (int64_t i = 0; i < k; ++i) {
    float q = std::nearbyint(x[i] * inv);
    q = std::min(127.f, std::max(-127.f, q));
    bytes[i] = static_cast<uint8_t>(static_cast<int>(q) + 128);
  }
}

#ifdef DP_X86
__attribute__((target("avx512f,avx512bw,avx512vl")))
void quantize_row_avx512(const float* x, int64_t k, float* scale, uint8_t* bytes) {
  __m512 vmax = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  float amax = _mm512_reduce_max_ps(vmax);
  for (; i < k; ++i) amax = std::max(amax, std::fabs(x[i]));
  float inv = amax > 0.f ? 127.f / amax : 0.f;
  *scale = amax > 0.f ? amax / 127.f : 1.f;
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(128);
  for (i = 0; i + 16 <= k; i += 16) {
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vinv));  // round to nearest even
    q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), off);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bytes + i), _mm512_cvtepi32_epi8(q));
  }
  for (; i < k; ++i) {
    float q = std::min(127.f, std::max(-127.f, std::nearbyint(x[i] * inv)));
    bytes[i] = static_cast<uint8_t>(static_cast<int>(q) + 128);
  }
}
#endif

// ------------------------------------------------------------------ per-row kernels
// acc[t] (t < TILE) = sum over the row's blocks of <u[t, 4c..4c+3], w_block> (with the +128).
// Two rows at a time: eight independent accumulator chains hide the vpdpbusd latency.
#ifdef DP_X86
#define DP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
template <int NR>
DP_AVX512 inline void dp_step(__m512i* a, const int32_t* p, __m512i w) {
  for (int r = 0; r < NR; ++r) a[r] = _mm512_dpbusd_epi32(a[r], _mm512_load_si512(p + 16 * r), w);
}

// NR = active 16-token registers of the tile (a short last tile computes fewer).
template <int NR>
DP_AVX512 void rows_avx512(const int32_t* xt, const int32_t* cols, const int32_t* vals,
                           int64_t n0, int64_t n1, __m512i a[TILE / 16], __m512i c[TILE / 16]) {
  for (int r = 0; r < TILE / 16; ++r) a[r] = c[r] = _mm512_setzero_si512();
  const int32_t *cols1 = cols + n0, *vals1 = vals + n0;
  const int64_t both = std::min(n0, n1);
  for (int64_t b = 0; b < both; ++b) {
    dp_step<NR>(a, xt + static_cast<int64_t>(cols[b]) * TILE, _mm512_set1_epi32(vals[b]));
    dp_step<NR>(c, xt + static_cast<int64_t>(cols1[b]) * TILE, _mm512_set1_epi32(vals1[b]));
  }
  for (int64_t b = both; b < n0; ++b)
    dp_step<NR>(a, xt + static_cast<int64_t>(cols[b]) * TILE, _mm512_set1_epi32(vals[b]));
  for (int64_t b = both; b < n1; ++b)
    dp_step<NR>(c, xt + static_cast<int64_t>(cols1[b]) * TILE, _mm512_set1_epi32(vals1[b]));
}

DP_AVX512 void rows_dispatch(int nr, const int32_t* xt, const int32_t* cols, const int32_t* vals,
                             int64_t n0, int64_t n1, __m512i a[TILE / 16], __m512i c[TILE / 16]) {
  switch (nr) {
    case 1: rows_avx512<1>(xt, cols, vals, n0, n1, a, c); break;
    case 2: rows_avx512<2>(xt, cols, vals, n0, n1, a, c); break;
    case 3: rows_avx512<3>(xt, cols, vals, n0, n1, a, c); break;
    default: rows_avx512<4>(xt, cols, vals, n0, n1, a, c); break;
  }
}

__attribute__((target("avx512f")))
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * k + 2]), d = _mm512_castps_pd(t[4 * k + 3]);
    r[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 t1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    const __m512 t2 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    const __m512 t3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 t4 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    t[j] = _mm512_shuffle_f32x4(t1, t3, 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(t2, t4, 0x88);
    t[8 + j] = _mm512_shuffle_f32x4(t1, t3, 0xDD);
    t[12 + j] = _mm512_shuffle_f32x4(t2, t4, 0xDD);
  }
  for (int k = 0; k < 16; ++k) r[k] = t[k];
}

// quads [16 tokens][width] -> dst[c * TILE + token] for c < kb (16x16 transposes).
__attribute__((target("avx512f"))) void scatter_tokens_avx512(const int32_t* quads, int64_t width,
                                                               int64_t kb, int32_t* dst) {
  for (int64_t c0 = 0; c0 < kb; c0 += 16) {
    __m512 square[16];
    for (int i = 0; i < 16; ++i)
      square[i] = _mm512_castsi512_ps(_mm512_loadu_si512(quads + i * width + c0));
    transpose16(square);
    for (int64_t j = 0; j < 16 && c0 + j < kb; ++j)
      _mm512_storeu_si512(dst + (c0 + j) * TILE, _mm512_castps_si512(square[j]));
  }
}
#endif

// AVX2: 8 tokens per ymm; u8 pairs split into int16 lanes, multiplied by int16 weight pairs.
#ifdef DP_X86
__attribute__((target("avx2,fma")))
inline void row_avx2(const int32_t* xt, const int32_t* cols, const int32_t* even,
                     const int32_t* odd, int64_t n, int32_t* out) {
  __m256i acc[TILE / 8];
  for (auto& a : acc) a = _mm256_setzero_si256();
  const __m256i low_bytes = _mm256_set1_epi32(0x00FF00FF);
  for (int64_t b = 0; b < n; ++b) {
    const __m256i we = _mm256_set1_epi32(even[b]), wo = _mm256_set1_epi32(odd[b]);
    const int32_t* p = xt + static_cast<int64_t>(cols[b]) * TILE;
    for (int r = 0; r < TILE / 8; ++r) {
      const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 8 * r));
      const __m256i lo = _mm256_and_si256(v, low_bytes), hi = _mm256_srli_epi16(v, 8);
      acc[r] = _mm256_add_epi32(acc[r], _mm256_add_epi32(_mm256_madd_epi16(lo, we),
                                                         _mm256_madd_epi16(hi, wo)));
    }
  }
  for (int r = 0; r < TILE / 8; ++r) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8 * r), acc[r]);
}
#endif

struct Packed {
  const int32_t* row_ptr;
  const int32_t* cols;
  const int32_t* vals;
  const int32_t* even;
  const int32_t* odd;
  const int32_t* wsum;
  const float* wscale;
  const float* bias;  // may be null
  int64_t out_features;
  bool gelu;          // exact GELU applied to the result (the FFN's first Linear)
};

// Float epilogue of one row (scalar; the AVX-512 path does the same in vectors, same order).
inline float dequant(int32_t acc, float xs, float ws, float b) {
  return static_cast<float>(acc) * xs * ws + b;
}

// One chunk of <= 16 output rows [o0, o1) x one token tile (AVX2: scalar epilogue).
void chunk_tile_avx2(const Packed& w, const int32_t* xq, const float* xs, int64_t tokens, int64_t kb,
                     int64_t tile, int64_t o0, int64_t o1, float* y) {
  alignas(64) int32_t acc[TILE] = {};
  const int32_t* xt = xq + tile * kb * TILE;
  const int64_t t0 = tile * TILE, tn = std::min<int64_t>(TILE, tokens - t0);
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t b0 = w.row_ptr[o], n = w.row_ptr[o + 1] - b0;
#ifdef DP_X86
    row_avx2(xt, w.cols + b0, w.even + b0, w.odd + b0, n, acc);
#endif
    const int32_t comp = 128 * w.wsum[o];
    const float ws = w.wscale[o], b = w.bias ? w.bias[o] : 0.f;
    for (int64_t t = 0; t < tn; ++t) {
      const float r = dequant(acc[t] - comp, xs[t0 + t], ws, b);
      y[(t0 + t) * w.out_features + o] = w.gelu ? gelu_scalar(r) : r;
    }
  }
}

#ifdef DP_X86
// Same on AVX-512 VNNI, rows in pairs; results go through a 16x16 transpose to y's row layout.
DP_AVX512 void chunk_tile_avx512(const Packed& w, const int32_t* xq, const float* xs, int64_t tokens,
                                 int64_t kb, int64_t tile, int64_t o0, int64_t o1, float* y) {
  alignas(64) float tmp[CHUNK][TILE];
  const int64_t rows = o1 - o0, out = w.out_features;
  const int32_t* xt = xq + tile * kb * TILE;
  const int64_t t0 = tile * TILE, tn = std::min<int64_t>(TILE, tokens - t0);
  const int nr = static_cast<int>((tn + 15) / 16);
  for (int64_t i = 0; i < CHUNK; i += 2) {
    const int64_t o = o0 + i;
    const int64_t b0 = o < o1 ? w.row_ptr[o] : 0;
    const int64_t n0 = o < o1 ? w.row_ptr[o + 1] - b0 : 0;
    const int64_t n1 = o + 1 < o1 ? w.row_ptr[o + 2] - w.row_ptr[o + 1] : 0;
    __m512i acc[2][TILE / 16];
    rows_dispatch(nr, xt, w.cols + b0, w.vals + b0, n0, n1, acc[0], acc[1]);
    for (int j = 0; j < 2; ++j) {
      const bool real = o + j < o1;
      const __m512i comp = _mm512_set1_epi32(real ? 128 * w.wsum[o + j] : 0);
      const __m512 ws = _mm512_set1_ps(real ? w.wscale[o + j] : 0.f);
      const __m512 b = _mm512_set1_ps(real && w.bias ? w.bias[o + j] : 0.f);
      for (int r = 0; r < nr; ++r) {
        __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[j][r], comp));
        v = _mm512_mul_ps(v, _mm512_loadu_ps(xs + t0 + 16 * r));
        v = _mm512_add_ps(_mm512_mul_ps(v, ws), b);
        if (w.gelu) v = gelu_ps(v);
        _mm512_store_ps(tmp[i + j] + 16 * r, v);
      }
    }
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << rows) - 1u);
  for (int r = 0; r < nr; ++r) {
    __m512 block[16];
    for (int i = 0; i < 16; ++i) block[i] = _mm512_load_ps(tmp[i] + 16 * r);
    transpose16(block);
    for (int t = 0; t < 16 && 16 * r + t < tn; ++t)
      _mm512_mask_storeu_ps(y + (t0 + 16 * r + t) * out + o0, mask, block[t]);
  }
}
#endif

void check_packed(const torch::Tensor& t, torch::ScalarType type, const char* name) {
  TORCH_CHECK(t.scalar_type() == type && t.is_contiguous() && t.device().is_cpu(),
              name, ": expected a contiguous CPU tensor of ", c10::toString(type));
}

}  // namespace

// ------------------------------------------------------------------ Python API
std::string isa() { return isa_name(detect_isa()); }

// x [tokens, in] float32 -> (xq int32 [tiles, ceil(in/4), TILE] (u8 quads), xscale float32 [tiles*TILE])
std::vector<torch::Tensor> quantize_tokens(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be a 2-D float32 tensor");
  x = x.contiguous();
  const int64_t tokens = x.size(0), in = x.size(1), kb = (in + 3) / 4;
  const int64_t tiles = std::max<int64_t>(1, (tokens + TILE - 1) / TILE);
  auto xq = torch::full({tiles, kb, TILE}, static_cast<int64_t>(static_cast<int32_t>(0x80808080u)), torch::kInt32);  // q = 0
  auto xs = torch::ones({tiles * TILE}, torch::kFloat32);
  const float* px = x.data_ptr<float>();
  int32_t* pq = xq.data_ptr<int32_t>();
  float* ps = xs.data_ptr<float>();
  const int64_t groups = (tokens + 15) / 16, width = (kb + 15) / 16 * 16;
  const bool wide = detect_isa() == Isa::avx512_vnni;
  // Groups of 16 tokens: quantize each row, then move 16x16 int32 squares into the tile layout.
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> quads(16 * width, static_cast<int32_t>(0x80808080u));
    for (int64_t g = begin; g < end; ++g) {
      const int64_t t0 = g * 16, n = std::min<int64_t>(16, tokens - t0);
      for (int64_t i = 0; i < n; ++i) {
        auto* bytes = reinterpret_cast<uint8_t*>(quads.data() + i * width);
#ifdef DP_X86
        if (wide) { quantize_row_avx512(px + (t0 + i) * in, in, ps + t0 + i, bytes); continue; }
#endif
        quantize_row(px + (t0 + i) * in, in, ps + t0 + i, bytes);
      }
      int32_t* dst = pq + (t0 / TILE) * kb * TILE + (t0 % TILE);
      if (wide) {
#ifdef DP_X86
        scatter_tokens_avx512(quads.data(), width, kb, dst);
#endif
      } else {
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c = 0; c < kb; ++c) dst[c * TILE + i] = quads[i * width + c];
      }
    }
  });
  return {xq, xs};
}

// y [tokens, out] from quantized activations and a packed weight.
torch::Tensor sparse_matmul(torch::Tensor xq, torch::Tensor xs, int64_t tokens, torch::Tensor row_ptr,
                            torch::Tensor cols, torch::Tensor vals, torch::Tensor even, torch::Tensor odd,
                            torch::Tensor wsum, torch::Tensor wscale, c10::optional<torch::Tensor> bias,
                            const std::string& isa_name_, c10::optional<torch::Tensor> out_,
                            const std::string& activation) {
  const Isa isa = parse_isa(isa_name_);
  TORCH_CHECK(activation == "none" || activation == "gelu", "unknown activation '", activation, "'");
  TORCH_CHECK(isa != Isa::none, "the sparse int8 kernel needs AVX2 or AVX-512 VNNI");
  check_packed(xq, torch::kInt32, "xq");
  check_packed(xs, torch::kFloat32, "xscale");
  for (auto* t : {&row_ptr, &cols, &vals, &even, &odd, &wsum}) check_packed(*t, torch::kInt32, "packed weight");
  check_packed(wscale, torch::kFloat32, "wscale");
  TORCH_CHECK(xq.dim() == 3 && xq.size(2) == TILE, "xq has the wrong layout");
  const int64_t kb = xq.size(1), out = row_ptr.size(0) - 1;
  TORCH_CHECK(xq.size(0) * TILE >= tokens && xs.size(0) >= xq.size(0) * TILE, "too few quantized tokens");
  TORCH_CHECK(wscale.size(0) == out && wsum.size(0) == out, "row count mismatch");
  const int64_t nnz = cols.size(0);
  TORCH_CHECK(vals.size(0) == nnz && (isa != Isa::avx2 || (even.size(0) == nnz && odd.size(0) == nnz)),
              "block count mismatch");
  const int32_t* pc = cols.data_ptr<int32_t>();
  TORCH_CHECK(std::all_of(pc, pc + nnz, [kb](int32_t c) { return c >= 0 && c < kb; }),
              "block column out of range for ", kb * 4, " input features");
  torch::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    check_packed(b, torch::kFloat32, "bias");
    TORCH_CHECK(b.size(0) == out, "bias size mismatch");
  }
  torch::Tensor y;
  if (out_.has_value() && out_->defined()) {
    y = *out_;
    TORCH_CHECK(y.scalar_type() == torch::kFloat32 && y.is_contiguous() && y.numel() == tokens * out,
                "out must be a contiguous float32 tensor of ", tokens, " x ", out);
  } else {
    y = torch::empty({tokens, out}, torch::kFloat32);
  }
  if (tokens == 0 || out == 0) return y;
  const Packed w{row_ptr.data_ptr<int32_t>(), cols.data_ptr<int32_t>(), vals.data_ptr<int32_t>(),
                 even.numel() ? even.data_ptr<int32_t>() : nullptr, odd.numel() ? odd.data_ptr<int32_t>() : nullptr,
                 wsum.data_ptr<int32_t>(), wscale.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr,
                 out, activation == "gelu"};
  const int32_t* pq = xq.data_ptr<int32_t>();
  const float* ps = xs.data_ptr<float>();
  float* py = y.data_ptr<float>();
  // Work items: a token tile x a group of 16-row chunks. Tile-major, so a thread keeps one
  // activation tile hot in cache while it sweeps the weights; short inputs split the rows.
  const int64_t chunks = (out + CHUNK - 1) / CHUNK, tiles = (tokens + TILE - 1) / TILE;
  const int64_t threads = at::get_num_threads();
  const int64_t groups = tiles >= 2 * threads ? 1 : std::min(chunks, (2 * threads + tiles - 1) / tiles);
  const int64_t per_group = (chunks + groups - 1) / groups;
  at::parallel_for(0, tiles * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t tile = item / groups, c0 = (item % groups) * per_group;
      for (int64_t c = c0; c < std::min(chunks, c0 + per_group); ++c) {
        const int64_t o0 = c * CHUNK, o1 = std::min(out, o0 + CHUNK);
#ifdef DP_X86
        if (isa == Isa::avx512_vnni) chunk_tile_avx512(w, pq, ps, tokens, kb, tile, o0, o1, py);
        else chunk_tile_avx2(w, pq, ps, tokens, kb, tile, o0, o1, py);
#endif
      }
    }
  });
  return y;
}

// attention_int8.cpp
torch::Tensor int8_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                             torch::Tensor key_bias, double scaling);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "distilprune block-sparse (1x4) int8 GEMM and int8 attention kernels";
  m.attr("TILE") = TILE;
  m.def("isa", &isa, "best instruction set of this CPU: avx512_vnni, avx2 or none");
  m.def("quantize_tokens", &quantize_tokens, "per-token int8 quantization into the tiled layout");
  m.def("sparse_matmul", &sparse_matmul, "block-sparse int8 matmul with dequantizing epilogue",
        py::arg("xq"), py::arg("xscale"), py::arg("tokens"), py::arg("row_ptr"), py::arg("cols"),
        py::arg("vals"), py::arg("even"), py::arg("odd"), py::arg("wsum"), py::arg("wscale"),
        py::arg("bias") = py::none(), py::arg("isa") = "auto", py::arg("out") = py::none(),
        py::arg("activation") = "none");
  m.def("int8_attention", &int8_attention,
        "int8 self-attention with a per-key additive mask: (B,H,S,D) q/k/v -> (B,S,H,D)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("key_bias"), py::arg("scaling"));
}
