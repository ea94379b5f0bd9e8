
// ---- prelude: the kernel bodies, instantiated once per step below -------------------------
// A step description S holds every shape and offset as `static constexpr` (offsets in floats;
// a buffer lives at a + OFFSET * batch + n * PER_IMAGE) and `S::x(a, w, B, n, c, hw)`, the
// value of input channel c at plane position hw of image n: pieces read in place (concatenated
// or summed), the folded BN prologue and its ReLU applied. blockIdx.z is the image. Every
// thread of a block reaches every __syncthreads().
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#define SPARSEC_THREADS 256u
#define SPARSEC_BN 64u
#define SPARSEC_BK 64u

// Convolution as an implicit GEMM: out[m][p] = sum_k W[k][m] * X[k][p], k = (c, kh, kw).
// A block computes BM output channels x 64 pixels of one image; each of its 256 threads
// owns (BM / 16) x 4 outputs. For each 64-deep slice of k, the block stages the weight tile
// and the im2col input tile (zero padding after the prologue) in shared memory.
template <class S>
__device__ __forceinline__ void sparsec_conv(float* __restrict__ a, const float* __restrict__ w,
                                             unsigned batch) {
  constexpr unsigned BM = S::BM, TM = BM / 16u, TN = SPARSEC_BN / 16u;
  constexpr unsigned K = S::CIN * S::KH * S::KW, P = S::OH * S::OW;
  __shared__ float ws[SPARSEC_BK][BM];
  __shared__ float xs[SPARSEC_BK][SPARSEC_BN];
  const unsigned tid = threadIdx.x, tx = tid % 16u, ty = tid / 16u;
  const unsigned p0 = blockIdx.x * SPARSEC_BN, m0 = blockIdx.y * BM, n = blockIdx.z;
  const size_t B = batch;
  float acc[TM][TN];
  for (unsigned i = 0; i < TM; ++i)
    for (unsigned j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  for (unsigned k0 = 0; k0 < K; k0 += SPARSEC_BK) {
    for (unsigned e = tid; e < SPARSEC_BK * BM; e += SPARSEC_THREADS) {
      const unsigned k = k0 + e / BM, m = m0 + e % BM;
      ws[e / BM][e % BM] = (k < K && m < S::OC) ? w[S::WEIGHT + (size_t)k * S::OC + m] : 0.0f;
    }
    for (unsigned e = tid; e < SPARSEC_BK * SPARSEC_BN; e += SPARSEC_THREADS) {
      const unsigned k = k0 + e / SPARSEC_BN, p = p0 + e % SPARSEC_BN;
      float v = 0.0f;
      if (k < K && p < P) {
        if (S::KH == 1 && S::KW == 1 && S::SH == 1 && S::SW == 1 && S::PH == 0 && S::PW == 0) {
          v = S::x(a, w, B, n, k, p);
        } else {
          const unsigned c = k / (S::KH * S::KW), r = k % (S::KH * S::KW);
          const int ih = (int)(p / S::OW) * (int)S::SH - (int)S::PH + (int)(r / S::KW);
          const int iw = (int)(p % S::OW) * (int)S::SW - (int)S::PW + (int)(r % S::KW);
          if (ih >= 0 && ih < (int)S::IH && iw >= 0 && iw < (int)S::IW)
            v = S::x(a, w, B, n, c, (unsigned)(ih * (int)S::IW + iw));
        }
      }
      xs[e / SPARSEC_BN][e % SPARSEC_BN] = v;
    }
    __syncthreads();
    for (unsigned kk = 0; kk < SPARSEC_BK; ++kk) {
      float xv[TN];
      for (unsigned j = 0; j < TN; ++j) xv[j] = xs[kk][tx + 16u * j];
      for (unsigned i = 0; i < TM; ++i) {
        const float wv = ws[kk][ty + 16u * i];
        for (unsigned j = 0; j < TN; ++j) acc[i][j] += wv * xv[j];
      }
    }
    __syncthreads();
  }
  float* out = a + S::OUT * B + (size_t)n * S::OUT_PER_IMAGE;
  for (unsigned i = 0; i < TM; ++i) {
    const unsigned m = m0 + ty + 16u * i;
    if (m >= S::OC) continue;
    const float b = S::BIAS >= 0 ? w[S::BIAS + m] : 0.0f;
    for (unsigned j = 0; j < TN; ++j) {
      const unsigned p = p0 + tx + 16u * j;
      if (p >= P) continue;
      float v = acc[i][j] + b;
      if (S::RELU) v = fmaxf(v, 0.0f);
      out[(size_t)m * P + p] = v;
    }
  }
}

// Pooling: one thread per output value (channel, row, column) of one image. Average pools
// count padding in the divisor; padding never wins a max. GLOBAL pools the whole plane.
template <class S>
__device__ __forceinline__ void sparsec_pool(float* __restrict__ a, const float* __restrict__ w,
                                             unsigned batch) {
  constexpr unsigned Q = S::OH * S::OW;
  const unsigned i = blockIdx.x * SPARSEC_THREADS + threadIdx.x, n = blockIdx.z;
  if (i >= S::C * Q) return;
  const size_t B = batch;
  const unsigned c = i / Q, q = i % Q;
  float s = S::MAX ? -INFINITY : 0.0f;
  if (S::GLOBAL) {
    for (unsigned hw = 0; hw < S::IH * S::IW; ++hw) {
      const float v = S::x(a, w, B, n, c, hw);
      s = S::MAX ? fmaxf(s, v) : s + v;
    }
    if (!S::MAX) s = s / (float)(S::IH * S::IW);
  } else {
    const int h0 = (int)(q / S::OW) * (int)S::SH - (int)S::PH;
    const int w0 = (int)(q % S::OW) * (int)S::SW - (int)S::PW;
    for (int r = 0; r < (int)S::KH; ++r)
      for (int t = 0; t < (int)S::KW; ++t) {
        const int ih = h0 + r, iw = w0 + t;
        if (ih < 0 || ih >= (int)S::IH || iw < 0 || iw >= (int)S::IW) continue;
        const float v = S::x(a, w, B, n, c, (unsigned)(ih * (int)S::IW + iw));
        s = S::MAX ? fmaxf(s, v) : s + v;
      }
    if (!S::MAX) s = s / (float)(S::KH * S::KW);
  }
  a[S::OUT * B + (size_t)n * S::OUT_PER_IMAGE + i] = s;
}

// Fully connected (the fused head when PLANE > 1: global average first): one block per
// image; the averaged, prologued input is staged in shared memory, then each thread computes
// output features from the [in][out] weights.
template <class S>
__device__ __forceinline__ void sparsec_linear(float* __restrict__ a,
                                               const float* __restrict__ w, unsigned batch) {
  __shared__ float xs[S::CIN];
  const unsigned n = blockIdx.z;
  const size_t B = batch;
  for (unsigned c = threadIdx.x; c < S::CIN; c += SPARSEC_THREADS) {
    float s = 0.0f;
    for (unsigned hw = 0; hw < S::PLANE; ++hw) s += S::x(a, w, B, n, c, hw);
    xs[c] = s / (float)S::PLANE;
  }
  __syncthreads();
  float* y = a + S::OUT * B + (size_t)n * S::OUT_PER_IMAGE;
  for (unsigned o = threadIdx.x; o < S::OUTF; o += SPARSEC_THREADS) {
    float acc = 0.0f;
    for (unsigned c = 0; c < S::CIN; ++c) acc += w[S::WEIGHT + (size_t)c * S::OUTF + o] * xs[c];
    y[o] = acc + (S::BIAS >= 0 ? w[S::BIAS + o] : 0.0f);
  }
}
// ---- end of prelude ---------------------------------------------------------------------
