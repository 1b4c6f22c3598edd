// Int8 self-attention on AVX-512 VNNI for a padding mask (one additive bias per key).
//
// Per (batch, head), with D the head dim (a multiple of 16) and the keys padded to SK (x16):
//   q8, k8: per-token symmetric int8 (127 levels); queries stored as bytes u = q8 + 128 and the
//           +128 removed with 128 * sum(k8[j]) (as in the sparse GEMM);
//   s[i][j] = ((float)(q8[i] . k8[j]) * sk[j]) * (sq[i] * scaling) + bias[j];
//   e = exp(s - max_j s), l = sum_j e, p8 = round(255 e) as bytes;
//   v8:     per-channel symmetric int8 over the keys with a finite bias;
//   o[i][c] = ((float)(p8[i] . v8[:, c]) * (1 / (255 l[i]))) * sv[c].
// Both products accumulate in int32 with vpdpbusd (u8 x s8); softmax is fp32 with a degree-6
// exp. Keys are packed so one 64-byte load holds 4 consecutive bytes of 16 keys (scores) or of
// 4 consecutive keys for 16 channels (output). Threads: at::parallel_for over batch x heads.
// engine/attention.py has the same arithmetic in PyTorch (the test oracle) and the dispatch.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "simd_math.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DP_ATTN_X86 1
#endif

namespace {

#ifdef DP_ATTN_X86
#define DP_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")))

bool has_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("avx512dq");
}

// Symmetric int8 of d floats (d % 16 == 0): bytes q (as int8) and the scale amax / 127.
DP_VNNI inline float quantize16(const float* x, int64_t d, int8_t* q) {
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; c += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + c)));
  const float amax = _mm512_reduce_max_ps(vmax);
  const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int64_t c = 0; c < d; c += 16) {
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + c), inv));
    v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), _mm512_cvtepi32_epi8(v));
  }
  return amax > 0.f ? amax / 127.f : 1.f;
}

struct Strides {
  int64_t b, h, s;  // elements; the last (head) dim is contiguous
};

struct HeadPack {              // one head's quantized operands
  std::vector<uint8_t> qu;     // [S][D] query bytes + 128
  std::vector<float> qscale;   // [S] sq * scaling
  std::vector<int32_t> kpack;  // [SK/16][D/4][16] 4 key bytes per lane
  std::vector<int32_t> ksum;   // [SK]
  std::vector<float> kscale;   // [SK]
  std::vector<int8_t> vpack;   // [SK/4][D/16][16][4]
  std::vector<float> vscale;   // [D]

  void reserve(int64_t S, int64_t SK, int64_t D) {
    qu.resize(S * D); qscale.resize(S);
    kpack.assign(SK * D / 4, 0); ksum.assign(SK, 0); kscale.assign(SK, 0.f);
    vpack.assign(SK * D, 0); vscale.resize(D);
  }
};

struct Scratch {
  std::vector<HeadPack> heads;
  std::vector<int8_t> row;     // one quantized row
  std::vector<float> bias;     // [SK]
  std::vector<float> vmax;     // [heads][D]
  std::vector<float> scores;   // [S][SK]
  std::vector<uint8_t> p8;     // [S][SK]
  std::vector<float> pnorm;    // [S] 1 / (255 l)

  void reserve(int64_t heads_, int64_t S, int64_t SK, int64_t D) {
    if (static_cast<int64_t>(heads.size()) < heads_) heads.resize(heads_);
    for (int64_t h = 0; h < heads_; ++h) heads[h].reserve(S, SK, D);
    row.resize(D); bias.resize(SK); vmax.assign(heads_ * D, 0.f);
    scores.resize(S * SK); p8.resize(S * SK); pnorm.resize(S);
  }
};

// Tokens outer, heads inner: each token's row of the heads [h0, h1) is read once, in order.
struct Block {
  const float *q, *k, *v;  // batch element b, head h0
  Strides st;
  int64_t heads, S, SK, D;
};

DP_VNNI void pack_keys(const Block& x, const float* key_bias, Scratch& w) {
  const int64_t G = x.D / 4;
  for (int64_t j = 0; j < x.SK; ++j)
    w.bias[j] = j < x.S ? key_bias[j] : -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < x.S; ++j) {
    for (int64_t h = 0; h < x.heads; ++h) {
      HeadPack& hp = w.heads[h];
      hp.kscale[j] = quantize16(x.k + h * x.st.h + j * x.st.s, x.D, w.row.data());
      int32_t sum = 0;
      for (int64_t c = 0; c < x.D; ++c) sum += w.row[c];
      hp.ksum[j] = sum;
      const int32_t* quads = reinterpret_cast<const int32_t*>(w.row.data());
      int32_t* dst = hp.kpack.data() + (j / 16) * G * 16 + (j % 16);
      for (int64_t g = 0; g < G; ++g) dst[g * 16] = quads[g];
    }
  }
}

DP_VNNI void pack_values(const Block& x, Scratch& w) {
  const int64_t D = x.D, CB = D / 16;
  for (int64_t j = 0; j < x.S; ++j) {
    if (!std::isfinite(w.bias[j])) continue;
    for (int64_t h = 0; h < x.heads; ++h) {
      const float* row = x.v + h * x.st.h + j * x.st.s;
      float* m = w.vmax.data() + h * D;
      for (int64_t c = 0; c < D; c += 16)
        _mm512_storeu_ps(m + c, _mm512_max_ps(_mm512_loadu_ps(m + c), _mm512_abs_ps(_mm512_loadu_ps(row + c))));
    }
  }
  for (int64_t h = 0; h < x.heads; ++h) {
    for (int64_t c = 0; c < D; ++c) {
      float& amax = w.vmax[h * D + c];
      w.heads[h].vscale[c] = amax > 0.f ? amax / 127.f : 1.f;
      amax = amax > 0.f ? 127.f / amax : 0.f;  // vmax now holds the inverse scale
    }
  }
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  alignas(16) int8_t q[16];
  for (int64_t j = 0; j < x.S; ++j) {
    if (!std::isfinite(w.bias[j])) continue;  // stays 0, as in the reference
    for (int64_t h = 0; h < x.heads; ++h) {
      const float* row = x.v + h * x.st.h + j * x.st.s;
      for (int64_t cb = 0; cb < CB; ++cb) {
        __m512i t = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + cb * 16),
                                                     _mm512_loadu_ps(w.vmax.data() + h * D + cb * 16)));
        t = _mm512_min_epi32(_mm512_max_epi32(t, lo), hi);
        _mm_store_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(t));
        int8_t* dst = w.heads[h].vpack.data() + ((j / 4) * CB + cb) * 64 + (j % 4);
        for (int lane = 0; lane < 16; ++lane) dst[lane * 4] = q[lane];
      }
    }
  }
}

DP_VNNI void pack_queries(const Block& x, float scaling, Scratch& w) {
  const __m128i off = _mm_set1_epi8(static_cast<char>(0x80));
  for (int64_t i = 0; i < x.S; ++i) {
    for (int64_t h = 0; h < x.heads; ++h) {
      HeadPack& hp = w.heads[h];
      hp.qscale[i] = quantize16(x.q + h * x.st.h + i * x.st.s, x.D, w.row.data()) * scaling;
      for (int64_t c = 0; c < x.D; c += 16) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.row.data() + c));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(hp.qu.data() + i * x.D + c), _mm_xor_si128(b, off));
      }
    }
  }
}

// scores[i][j] for R (<= 4) queries from i0 against every key block.
template <int R>
DP_VNNI void score_rows(int64_t i0, int64_t SK, int64_t D, const HeadPack& hp, Scratch& w) {
  const int64_t G = D / 4;
  for (int64_t kb = 0; kb < SK / 16; ++kb) {
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    const int32_t* kp = hp.kpack.data() + kb * G * 16;
    for (int64_t g = 0; g < G; ++g) {
      const __m512i kv = _mm512_loadu_si512(kp + g * 16);
      for (int r = 0; r < R; ++r) {
        int32_t quad;
        std::memcpy(&quad, hp.qu.data() + (i0 + r) * D + 4 * g, 4);
        acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(quad), kv);
      }
    }
    const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(hp.ksum.data() + kb * 16), 7);
    const __m512 ks = _mm512_loadu_ps(hp.kscale.data() + kb * 16);
    const __m512 bias = _mm512_loadu_ps(w.bias.data() + kb * 16);
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r], corr)), ks),
                                     _mm512_set1_ps(hp.qscale[i0 + r]));
      _mm512_storeu_ps(w.scores.data() + (i0 + r) * SK + kb * 16, _mm512_add_ps(s, bias));
    }
  }
}

DP_VNNI void softmax_rows(int64_t S, int64_t SK, Scratch& w) {
  for (int64_t i = 0; i < S; ++i) {
    float* s = w.scores.data() + i * SK;
    __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < SK; j += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
    const float m = _mm512_reduce_max_ps(vmax);
    uint8_t* p = w.p8.data() + i * SK;
    if (!std::isfinite(m)) {  // every key masked: the row attends to nothing
      std::memset(p, 0, SK);
      w.pnorm[i] = 0.f;
      continue;
    }
    __m512 sum = _mm512_setzero_ps();
    const __m512 vm = _mm512_set1_ps(m), k255 = _mm512_set1_ps(255.f);
    for (int64_t j = 0; j < SK; j += 16) {
      const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
      sum = _mm512_add_ps(sum, e);
      const __m512i b = _mm512_cvtps_epi32(_mm512_mul_ps(e, k255));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p + j), _mm512_cvtusepi32_epi8(b));
    }
    w.pnorm[i] = 1.f / (255.f * _mm512_reduce_add_ps(sum));
  }
}

// out rows i0..i0+R-1 for channel blocks cb0..cb0+C-1.
template <int R, int C>
DP_VNNI void output_rows(int64_t i0, int64_t cb0, int64_t SK, int64_t D, float* out, int64_t out_s,
                         const HeadPack& hp, const Scratch& w) {
  const int64_t CB = D / 16;
  __m512i acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  for (int64_t jg = 0; jg < SK / 4; ++jg) {
    __m512i vv[C];
    for (int c = 0; c < C; ++c) vv[c] = _mm512_loadu_si512(hp.vpack.data() + (jg * CB + cb0 + c) * 64);
    for (int r = 0; r < R; ++r) {
      int32_t quad;
      std::memcpy(&quad, w.p8.data() + (i0 + r) * SK + 4 * jg, 4);
      const __m512i pb = _mm512_set1_epi32(quad);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], pb, vv[c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 norm = _mm512_set1_ps(w.pnorm[i0 + r]);
    for (int c = 0; c < C; ++c) {
      const int64_t ch = (cb0 + c) * 16;
      const __m512 o = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][c]), norm),
                                     _mm512_loadu_ps(hp.vscale.data() + ch));
      _mm512_storeu_ps(out + (i0 + r) * out_s + ch, o);
    }
  }
}

template <int R>
DP_VNNI void output_block(int64_t i0, int64_t SK, int64_t D, float* out, int64_t out_s,
                          const HeadPack& hp, const Scratch& w) {
  int64_t cb = 0;
  for (; cb + 4 <= D / 16; cb += 4) output_rows<R, 4>(i0, cb, SK, D, out, out_s, hp, w);
  for (; cb < D / 16; ++cb) output_rows<R, 1>(i0, cb, SK, D, out, out_s, hp, w);
}

DP_VNNI void attend_head(const HeadPack& hp, int64_t S, int64_t SK, int64_t D, float* out,
                         int64_t out_s, Scratch& w) {
  int64_t i = 0;
  for (; i + 4 <= S; i += 4) score_rows<4>(i, SK, D, hp, w);
  for (; i < S; ++i) score_rows<1>(i, SK, D, hp, w);
  softmax_rows(S, SK, w);
  for (i = 0; i + 4 <= S; i += 4) output_block<4>(i, SK, D, out, out_s, hp, w);
  for (; i < S; ++i) output_block<1>(i, SK, D, out, out_s, hp, w);
}

// Heads [h0, h1) of one batch element: pack them in one pass over the tokens, then attend.
DP_VNNI void attend_heads(const Block& x, const float* key_bias, float scaling, float* out,
                          int64_t out_s, Scratch& w) {
  w.reserve(x.heads, x.S, x.SK, x.D);
  pack_keys(x, key_bias, w);
  pack_values(x, w);
  pack_queries(x, scaling, w);
  for (int64_t h = 0; h < x.heads; ++h) attend_head(w.heads[h], x.S, x.SK, x.D, out + h * x.D, out_s, w);
}
#endif

}  // namespace

// q, k, v: (B, H, S, D) float32 with a contiguous last dim; key_bias: (B, S) float32 (additive,
// -inf = masked). Returns (B, S, H, D) float32, the layout transformers expects back.
torch::Tensor int8_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                             torch::Tensor key_bias, double scaling) {
#ifdef DP_ATTN_X86
  TORCH_CHECK(has_vnni(), "int8 attention needs AVX-512 VNNI");
  TORCH_CHECK(q.dim() == 4 && q.sizes() == k.sizes() && q.sizes() == v.sizes(),
              "q, k and v must have the same (batch, heads, tokens, head_dim) shape");
  TORCH_CHECK(q.scalar_type() == torch::kFloat && k.scalar_type() == torch::kFloat &&
                  v.scalar_type() == torch::kFloat, "int8 attention takes float32 inputs");
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3);
  TORCH_CHECK(D % 16 == 0 && D > 0, "head dim must be a multiple of 16, got ", D);
  TORCH_CHECK(key_bias.dim() == 2 && key_bias.size(0) == B && key_bias.size(1) == S,
              "key_bias must be (batch, tokens)");
  auto last_contiguous = [](torch::Tensor t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  q = last_contiguous(q); k = last_contiguous(k); v = last_contiguous(v);
  TORCH_CHECK(q.strides() == k.strides() && q.strides() == v.strides(),
              "q, k and v must share one memory layout");
  auto bias = key_bias.to(torch::kFloat).contiguous();
  auto out = torch::empty({B, S, H, D}, q.options());
  const Strides st{q.stride(0), q.stride(1), q.stride(2)};
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float scale = static_cast<float>(scaling);
  const int64_t SK = (S + 15) / 16 * 16;
  // Each thread takes a contiguous range of (batch, head) pairs and packs the heads of one
  // batch element together.
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    thread_local Scratch scratch;
    for (int64_t t = begin; t < end;) {
      const int64_t b = t / H, h0 = t % H, h1 = std::min(H, h0 + (end - t));
      const int64_t base = b * st.b + h0 * st.h;
      const Block x{qp + base, kp + base, vp + base, st, h1 - h0, S, SK, D};
      attend_heads(x, bp + b * S, scale, op + (b * S * H + h0) * D, H * D, scratch);
      t += h1 - h0;
    }
  });
  return out;
#else
  TORCH_CHECK(false, "int8 attention needs an x86-64 CPU with AVX-512 VNNI");
#endif
}
