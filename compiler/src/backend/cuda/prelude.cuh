
// ---- prelude: the kernel bodies, instantiated once per step below -------------------------
// A step description S holds every shape and offset as `static constexpr` (offsets in floats;
// a buffer lives at a + OFFSET * batch + n * PER_IMAGE) and `S::x(a, w, B, n, c, hw)`, the
// value of input channel c at plane position hw of image n: pieces read in place (concatenated
// or summed), the folded BN prologue and its ReLU applied. Every
// thread of a block reaches every __syncthreads(). Grid x walks the work items of the whole
// batch (see each template).
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#define SPARSEC_THREADS 256u

// A convolution tile: each of the block's KS k-groups holds WM x WN threads; a thread owns TM
// consecutive output channels x TN pixels strided by WN (so a warp reads 32 consecutive pixels
// from shared memory and stores 32 consecutive ones). BK is the depth of the k-slice staged
// per step; k-group g reduces rows [g * KG, (g + 1) * KG) of every slice, and the groups'
// partial sums are added in a fixed order at the end (deterministic split-K inside a block).
template <unsigned TM_, unsigned WM_, unsigned TN_, unsigned WN_, unsigned KS_, unsigned BK_>
struct sparsec_tile {
  static constexpr unsigned TM = TM_, WM = WM_, TN = TN_, WN = WN_, KS = KS_, BK = BK_;
  static constexpr unsigned BM = TM * WM, BN = TN * WN, G = WM * WN, KG = BK / KS;
};

// Convolution as an implicit GEMM: out[m][q] = sum_k W[k][m] * X[k][q], k = (c, kh, kw), q a
// pixel of the whole batch (image q / P, position q % P). A block computes BM output channels
// x BN pixels. Per k-slice every thread loads its share of the next slice into registers
// (weights, and the im2col input with the pieces read in place, the prologue applied and
// zero padding after it) while the block multiplies the current slice from shared memory.
template <class S, class T>
__device__ __forceinline__ void sparsec_conv(float* __restrict__ a, const float* __restrict__ w,
                                             unsigned batch) {
  static_assert(T::G * T::KS == SPARSEC_THREADS, "a tile has 256 threads");
  static_assert(T::BK % T::KS == 0, "k-groups split a slice evenly");
  constexpr unsigned K = S::CIN * S::KH * S::KW, P = S::OH * S::OW, BM = T::BM, BN = T::BN;
  constexpr unsigned XN = (T::BK * BN + SPARSEC_THREADS - 1) / SPARSEC_THREADS;
  constexpr unsigned WNUM = (T::BK * BM + SPARSEC_THREADS - 1) / SPARSEC_THREADS;
  constexpr unsigned STAGE = T::BK * (BM + BN), RED = T::KS > 1 ? T::KS * BM * BN : 0;
  constexpr bool POINTWISE =
      S::KH == 1 && S::KW == 1 && S::SH == 1 && S::SW == 1 && S::PH == 0 && S::PW == 0;
  static_assert(XN <= 64, "one validity bit per staged input");
  __shared__ float smem[STAGE > RED ? STAGE : RED];
  float* ws = smem;               // [BK][BM]
  float* xs = smem + T::BK * BM;  // [BK][BN]
  const unsigned tid = threadIdx.x, g = tid / T::G, r = tid % T::G;
  const unsigned tm = r / T::WN, tn = r % T::WN;
  const size_t B = batch;
  const unsigned Q = batch * P, q0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
  // The next slice's weights and raw inputs, and which inputs are real (not padding): the
  // prologue is applied when they are stored to shared memory, a slice later.
  float wr[WNUM], xr[XN];
  unsigned long long valid = 0;
  float acc[T::TM][T::TN];
  #pragma unroll
  for (unsigned i = 0; i < T::TM; ++i)
    #pragma unroll
    for (unsigned j = 0; j < T::TN; ++j) acc[i][j] = 0.0f;
  // Iteration s stores slice s - 1 (loaded into registers during the previous iteration),
  // loads slice s into registers and multiplies slice s - 1 while those loads are in flight.
  constexpr unsigned SLICES = (K + T::BK - 1) / T::BK;
  for (unsigned s = 0; s <= SLICES; ++s) {
    if (s > 0) {
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS;
        if (e < T::BK * BM) ws[e] = wr[i];
      }
      #pragma unroll
      for (unsigned i = 0; i < XN; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, k = (s - 1) * T::BK + e / BN;
        const unsigned c = POINTWISE ? k : k / (S::KH * S::KW);
        if (e < T::BK * BN) xs[e] = (valid >> i & 1ull) ? S::pro(w, c, xr[i]) : 0.0f;
      }
    }
    __syncthreads();
    if (s < SLICES) {
      const unsigned k0 = s * T::BK;
      valid = 0;
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, k = k0 + e / BM, m = m0 + e % BM;
        wr[i] = (e < T::BK * BM && k < K && m < S::OC) ? w[S::WEIGHT + (size_t)k * S::OC + m]
                                                       : 0.0f;
      }
      #pragma unroll
      for (unsigned i = 0; i < XN; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, k = k0 + e / BN, q = q0 + e % BN;
        float v = 0.0f;
        if (e < T::BK * BN && k < K && q < Q) {
          const unsigned n = q / P, hw = q % P;
          if (POINTWISE) {
            v = S::raw(a, B, n, k, hw);
            valid |= 1ull << i;
          } else {
            const unsigned c = k / (S::KH * S::KW), rr = k % (S::KH * S::KW);
            const int ih = (int)(hw / S::OW) * (int)S::SH - (int)S::PH + (int)(rr / S::KW);
            const int iw = (int)(hw % S::OW) * (int)S::SW - (int)S::PW + (int)(rr % S::KW);
            if (ih >= 0 && ih < (int)S::IH && iw >= 0 && iw < (int)S::IW) {
              v = S::raw(a, B, n, c, (unsigned)(ih * (int)S::IW + iw));
              valid |= 1ull << i;
            }
          }
        }
        xr[i] = v;
      }
    }
    if (s > 0) {
      // Unrolled by 4 only: the register tile is indexed by i and j, never by u, so a
      // longer unroll would only grow the code (PTX and NVRTC time).
      #pragma unroll 4
      for (unsigned u = 0; u < T::KG; ++u) {
        const unsigned kk = g * T::KG + u;
        float xv[T::TN], wv[T::TM];
        #pragma unroll
        for (unsigned j = 0; j < T::TN; ++j) xv[j] = xs[kk * BN + tn + T::WN * j];
        #pragma unroll
        for (unsigned i = 0; i < T::TM; ++i) wv[i] = ws[kk * BM + tm * T::TM + i];
        #pragma unroll
        for (unsigned i = 0; i < T::TM; ++i)
          #pragma unroll
          for (unsigned j = 0; j < T::TN; ++j) acc[i][j] += wv[i] * xv[j];
      }
    }
    __syncthreads();
  }
  float* out = a + S::OUT * B;
  if (T::KS == 1) {
    #pragma unroll
    for (unsigned i = 0; i < T::TM; ++i) {
      const unsigned m = m0 + tm * T::TM + i;
      if (m >= S::OC) continue;
      const float b = S::BIAS >= 0 ? w[S::BIAS + m] : 0.0f;
      #pragma unroll
      for (unsigned j = 0; j < T::TN; ++j) {
        const unsigned q = q0 + tn + T::WN * j;
        if (q >= Q) continue;
        float v = acc[i][j] + b;
        if (S::RELU) v = fmaxf(v, 0.0f);
        out[(size_t)(q / P) * S::OUT_PER_IMAGE + (size_t)m * P + q % P] = v;
      }
    }
  } else {
    float* red = smem;  // [KS][BM][BN], after the loop's last barrier
    #pragma unroll
    for (unsigned i = 0; i < T::TM; ++i)
      #pragma unroll
      for (unsigned j = 0; j < T::TN; ++j)
        red[(g * BM + tm * T::TM + i) * BN + tn + T::WN * j] = acc[i][j];
    __syncthreads();
    for (unsigned e = tid; e < BM * BN; e += SPARSEC_THREADS) {
      const unsigned m = m0 + e / BN, q = q0 + e % BN;
      if (m >= S::OC || q >= Q) continue;
      float v = red[e];
      #pragma unroll
      for (unsigned h = 1; h < T::KS; ++h) v += red[h * BM * BN + e];
      v += S::BIAS >= 0 ? w[S::BIAS + m] : 0.0f;
      if (S::RELU) v = fmaxf(v, 0.0f);
      out[(size_t)(q / P) * S::OUT_PER_IMAGE + (size_t)m * P + q % P] = v;
    }
  }
}

// A direct-convolution tile (stride 1): WM x WN threads; a thread owns TM consecutive output
// channels x TN pixels strided by WN within the block's TH x TW pixel tile; CB input channels
// are staged per slice.
template <unsigned TM_, unsigned WM_, unsigned TN_, unsigned WN_, unsigned TW_, unsigned CB_>
struct sparsec_direct_tile {
  static constexpr unsigned TM = TM_, WM = WM_, TN = TN_, WN = WN_, TW = TW_, CB = CB_;
  static constexpr unsigned BM = TM * WM, BN = TN * WN, TH = BN / TW;
};

// Direct convolution for stride 1 (any kernel and padding): a block computes BM output
// channels x one TH x TW pixel tile of one image (grid x = image x tile). Per slice of CB
// input channels it stages the input patch [CB][TH + KH - 1][TW + KW - 1] (pieces read in
// place, the prologue applied once per element, zero padding after it) and the weights
// [CB * KH * KW][BM]; each thread reads its inputs at the taps' shifted offsets, so an input
// value is loaded and prologued once per slice instead of once per tap. The next slice is
// loaded into registers while this one is multiplied.
template <class S, class T>
__device__ __forceinline__ void sparsec_conv_direct(float* __restrict__ a,
                                                    const float* __restrict__ w, unsigned batch) {
  static_assert(T::WM * T::WN == SPARSEC_THREADS, "a tile has 256 threads");
  static_assert(T::BN % T::TW == 0, "whole tile rows");
  static_assert(S::SH == 1 && S::SW == 1, "stride 1");
  constexpr unsigned RW = T::TW + S::KW - 1, RH = T::TH + S::KH - 1, PATCH = RH * RW;
  constexpr unsigned TAPS = S::KH * S::KW, KB = T::CB * TAPS, BM = T::BM, P = S::OH * S::OW;
  constexpr unsigned TILES_W = (S::OW + T::TW - 1) / T::TW;
  constexpr unsigned TILES = TILES_W * ((S::OH + T::TH - 1) / T::TH);
  constexpr unsigned XN = (T::CB * PATCH + SPARSEC_THREADS - 1) / SPARSEC_THREADS;
  constexpr unsigned WNUM = (KB * BM + SPARSEC_THREADS - 1) / SPARSEC_THREADS;
  static_assert(XN <= 64, "one validity bit per staged input");
  __shared__ float xs[T::CB * PATCH];
  __shared__ float ws[KB * BM];
  const unsigned tid = threadIdx.x, tm = tid / T::WN, tn = tid % T::WN;
  const unsigned n = blockIdx.x / TILES, tile = blockIdx.x % TILES;
  const int oy0 = (int)((tile / TILES_W) * T::TH), ox0 = (int)((tile % TILES_W) * T::TW);
  const unsigned m0 = blockIdx.y * BM;
  const size_t B = batch;
  float wr[WNUM], xr[XN];  // the next slice, raw; the prologue is applied when stored
  unsigned long long valid = 0;
  unsigned base[T::TN];
  #pragma unroll
  for (unsigned j = 0; j < T::TN; ++j) {
    const unsigned t = tn + T::WN * j;
    base[j] = (t / T::TW) * RW + t % T::TW;
  }
  float acc[T::TM][T::TN];
  #pragma unroll
  for (unsigned i = 0; i < T::TM; ++i)
    #pragma unroll
    for (unsigned j = 0; j < T::TN; ++j) acc[i][j] = 0.0f;
  // As in sparsec_conv: iteration s stores slice s - 1, loads slice s, multiplies slice s - 1.
  constexpr unsigned SLICES = (S::CIN + T::CB - 1) / T::CB;
  for (unsigned s = 0; s <= SLICES; ++s) {
    if (s > 0) {
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS;
        if (e < KB * BM) ws[e] = wr[i];
      }
      #pragma unroll
      for (unsigned i = 0; i < XN; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, c = (s - 1) * T::CB + e / PATCH;
        if (e < T::CB * PATCH) xs[e] = (valid >> i & 1ull) ? S::pro(w, c, xr[i]) : 0.0f;
      }
    }
    __syncthreads();
    if (s < SLICES) {
      const unsigned c0 = s * T::CB;
      valid = 0;
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, kk = e / BM, m = m0 + e % BM;
        const unsigned c = c0 + kk / TAPS;
        wr[i] = (e < KB * BM && c < S::CIN && m < S::OC)
                    ? w[S::WEIGHT + (size_t)(c * TAPS + kk % TAPS) * S::OC + m]
                    : 0.0f;
      }
      #pragma unroll
      for (unsigned i = 0; i < XN; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, c = c0 + e / PATCH, pp = e % PATCH;
        const int ih = oy0 + (int)(pp / RW) - (int)S::PH, iw = ox0 + (int)(pp % RW) - (int)S::PW;
        float v = 0.0f;
        if (e < T::CB * PATCH && c < S::CIN && ih >= 0 && ih < (int)S::IH && iw >= 0 &&
            iw < (int)S::IW) {
          v = S::raw(a, B, n, c, (unsigned)(ih * (int)S::IW + iw));
          valid |= 1ull << i;
        }
        xr[i] = v;
      }
    }
    if (s > 0) {
      for (unsigned cc = 0; cc < T::CB; ++cc)
        #pragma unroll
        for (unsigned kh = 0; kh < S::KH; ++kh)
          #pragma unroll
          for (unsigned kw = 0; kw < S::KW; ++kw) {
            float xv[T::TN], wv[T::TM];
            #pragma unroll
            for (unsigned j = 0; j < T::TN; ++j) xv[j] = xs[cc * PATCH + kh * RW + kw + base[j]];
            const unsigned row = (cc * TAPS + kh * S::KW + kw) * BM + tm * T::TM;
            #pragma unroll
            for (unsigned i = 0; i < T::TM; ++i) wv[i] = ws[row + i];
            #pragma unroll
            for (unsigned i = 0; i < T::TM; ++i)
              #pragma unroll
              for (unsigned j = 0; j < T::TN; ++j) acc[i][j] += wv[i] * xv[j];
          }
    }
    __syncthreads();
  }
  float* out = a + S::OUT * B + (size_t)n * S::OUT_PER_IMAGE;
  #pragma unroll
  for (unsigned i = 0; i < T::TM; ++i) {
    const unsigned m = m0 + tm * T::TM + i;
    if (m >= S::OC) continue;
    const float b = S::BIAS >= 0 ? w[S::BIAS + m] : 0.0f;
    #pragma unroll
    for (unsigned j = 0; j < T::TN; ++j) {
      const unsigned t = tn + T::WN * j;
      const unsigned oy = (unsigned)oy0 + t / T::TW, ox = (unsigned)ox0 + t % T::TW;
      if (oy >= S::OH || ox >= S::OW) continue;
      float v = acc[i][j] + b;
      if (S::RELU) v = fmaxf(v, 0.0f);
      out[(size_t)m * P + oy * S::OW + ox] = v;
    }
  }
}

// Pooling: one thread per output value (image, channel, row, column). Average pools
// count padding in the divisor; padding never wins a max. GLOBAL pools the whole plane.
template <class S>
__device__ __forceinline__ void sparsec_pool(float* __restrict__ a, const float* __restrict__ w,
                                             unsigned batch) {
  constexpr unsigned Q = S::OH * S::OW;
  const unsigned item = blockIdx.x * SPARSEC_THREADS + threadIdx.x;
  if (item >= batch * (S::C * Q)) return;
  const unsigned n = item / (S::C * Q), i = item % (S::C * Q);
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
// output features from the [in][out] weights. blockIdx.x is the image.
template <class S>
__device__ __forceinline__ void sparsec_linear(float* __restrict__ a,
                                               const float* __restrict__ w, unsigned batch) {
  __shared__ float xs[S::CIN];
  const unsigned n = blockIdx.x;
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
