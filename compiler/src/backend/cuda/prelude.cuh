
// ---- prelude: the kernel bodies, instantiated once per tile configuration -----------------
// Every kernel takes (float* arena, const float* weights, unsigned batch, const u64* step):
// `step` points at the step's descriptor in the runtime's descriptor table (u64 words, laid
// out by `runtime/src/cuda/table.rs`, which builds it from the validated file): shapes,
// flags, float offsets of the weights, bias, BN scale and shift and of the output buffer, and
// the piece table. A buffer lives at a + OFFSET * batch + n * PER_IMAGE (floats). So one
// kernel serves every step with the same tile; only the tile, the kernel size and the kind of
// input indexing are compiled in. Every thread of a block reaches every __syncthreads(). Grid x
// walks the work items of the whole batch (see each template).
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#define SPARSEC_THREADS 256u
typedef unsigned long long sparsec_u64;

// Word indices of a step descriptor (runtime/src/cuda/table.rs: keep in step).
enum {
  SPARSEC_CIN, SPARSEC_IH, SPARSEC_IW, SPARSEC_OC, SPARSEC_OH, SPARSEC_OW, SPARSEC_KH,
  SPARSEC_KW, SPARSEC_SH, SPARSEC_SW, SPARSEC_PH, SPARSEC_PW, SPARSEC_FLAGS, SPARSEC_NPIECES,
  SPARSEC_WEIGHT, SPARSEC_BIAS, SPARSEC_SCALE, SPARSEC_SHIFT, SPARSEC_OUT, SPARSEC_OUT_PER_IMAGE,
  SPARSEC_PIECES
};
// Flags (the abi's prologue, bias, ReLU and global bits, plus the pool kind and combine).
#define SPARSEC_F_PROLOGUE 1u
#define SPARSEC_F_PROLOGUE_RELU 2u
#define SPARSEC_F_BIAS 4u
#define SPARSEC_F_RELU 8u
#define SPARSEC_F_GLOBAL 16u
#define SPARSEC_F_MAX 128u
#define SPARSEC_F_SUM 256u
// BF16 activation storage (`--precision bf16`; the plan decides per buffer,
// backend/cuda/storage.rs): the output buffer holds BF16 (OUT and OUT_PER_IMAGE count halves);
// some input piece holds BF16 (its first word has bit 32 set; its offsets count halves). A
// kernel instance built without BF16 support (H = false) computes nothing for such a record.
#define SPARSEC_F_BF16_OUT 512u
#define SPARSEC_F_BF16_IN 1024u

// A BF16 value of the arena (index i counts halves) as FP32: exact.
__device__ __forceinline__ float sparsec_bf16_load(const float* __restrict__ a, size_t i) {
  return __uint_as_float((unsigned)reinterpret_cast<const unsigned short*>(a)[i] << 16);
}
// An FP32 value rounded to BF16, to nearest even (cvt.rn.bf16.f32); a NaN stays a NaN.
__device__ __forceinline__ unsigned short sparsec_bf16_bits(float x) {
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u | 0x00400000u) >> 16);
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
// Element i of a buffer that may be BF16 (H: the kernel supports it; half: this one is).
template <bool H>
__device__ __forceinline__ float sparsec_ld(const float* __restrict__ a, bool half, size_t i) {
  return (H && half) ? sparsec_bf16_load(a, i) : a[i];
}
template <bool H>
__device__ __forceinline__ void sparsec_st(float* __restrict__ a, bool half, size_t i, float v) {
  if (H && half)
    reinterpret_cast<unsigned short*>(a)[i] = sparsec_bf16_bits(v);
  else
    a[i] = v;
}
// Whether a kernel instance (H: with BF16 support for what it reads, IN, and writes) accepts
// a record's flags: without it, a record with a BF16 side is refused.
template <bool H, bool IN>
__device__ __forceinline__ bool sparsec_refuses(unsigned flags) {
  const unsigned both = SPARSEC_F_BF16_IN | SPARSEC_F_BF16_OUT;
  return (flags & (H ? (IN ? 0u : SPARSEC_F_BF16_IN) : both)) != 0;
}

// A step's descriptor, read once into registers.
struct sparsec_step {
  unsigned cin, ih, iw, oc, oh, ow, kh, kw, sh, sw, ph, pw, flags, npieces;
  sparsec_u64 weight, bias, scale, shift, out, out_per_image;
  // Per piece: channel end (cumulative; bit 32: BF16), offset, per image.
  const sparsec_u64* pieces;
};

__device__ __forceinline__ sparsec_step sparsec_read_step(const sparsec_u64* __restrict__ d) {
  sparsec_step s;
  s.cin = (unsigned)d[SPARSEC_CIN];
  s.ih = (unsigned)d[SPARSEC_IH];
  s.iw = (unsigned)d[SPARSEC_IW];
  s.oc = (unsigned)d[SPARSEC_OC];
  s.oh = (unsigned)d[SPARSEC_OH];
  s.ow = (unsigned)d[SPARSEC_OW];
  s.kh = (unsigned)d[SPARSEC_KH];
  s.kw = (unsigned)d[SPARSEC_KW];
  s.sh = (unsigned)d[SPARSEC_SH];
  s.sw = (unsigned)d[SPARSEC_SW];
  s.ph = (unsigned)d[SPARSEC_PH];
  s.pw = (unsigned)d[SPARSEC_PW];
  s.flags = (unsigned)d[SPARSEC_FLAGS];
  s.npieces = (unsigned)d[SPARSEC_NPIECES];
  s.weight = d[SPARSEC_WEIGHT];
  s.bias = d[SPARSEC_BIAS];
  s.scale = d[SPARSEC_SCALE];
  s.shift = d[SPARSEC_SHIFT];
  s.out = d[SPARSEC_OUT];
  s.out_per_image = d[SPARSEC_OUT_PER_IMAGE];
  s.pieces = d + SPARSEC_PIECES;
  return s;
}

// The input of a step, read in place: a concatenation walks its piece table with a cursor
// (the channels one thread asks for never decrease, so it only moves forward: each value is
// one load from its piece, no select over all pieces), a sum adds every piece.
struct sparsec_input {
  const sparsec_u64* t;
  size_t B, plane, off, per;
  unsigned n, p, c0, c1;
  bool sum, half;  // half: the current piece holds BF16 (offsets in halves)
  __device__ __forceinline__ void init(const sparsec_step& s, size_t batch) {
    t = s.pieces;
    B = batch;
    plane = (size_t)s.ih * s.iw;
    n = s.npieces;
    sum = (s.flags & SPARSEC_F_SUM) != 0;
    p = 0;
    c0 = 0;
    piece();
  }
  __device__ __forceinline__ void piece() {
    c1 = (unsigned)t[3 * p];
    half = (t[3 * p] >> 32 & 1ull) != 0;
    off = (size_t)t[3 * p + 1] * B;
    per = (size_t)t[3 * p + 2];
  }
  // Where channel c of a concatenation lives: image img's plane of it starts at
  // a + base + img * stride.
  __device__ __forceinline__ void at(unsigned c, size_t& base, size_t& stride) {
    while (c >= c1 && p + 1 < n) {
      c0 = c1;
      ++p;
      piece();
    }
    base = off + (size_t)(c - c0) * plane;
    stride = per;
  }
  // Channel c of image img at plane position hw, before the prologue; SUM: the record's
  // input is a sum of its pieces (the kernels check the flag matches); H: pieces may be BF16.
  template <bool SUM, bool H = false>
  __device__ __forceinline__ float raw(const float* __restrict__ a, unsigned img, unsigned c,
                                       unsigned hw) {
    if (SUM) {
      float v = 0.0f;
      for (unsigned i = 0; i < n; ++i)
        v += sparsec_ld<H>(a, (t[3 * i] >> 32 & 1ull) != 0,
                           (size_t)t[3 * i + 1] * B + (size_t)img * t[3 * i + 2] +
                               (size_t)c * plane + hw);
      return v;
    }
    size_t base, stride;
    at(c, base, stride);
    return sparsec_ld<H>(a, half, base + (size_t)img * stride + hw);
  }
};

// The folded batch-norm prologue of input channel c and its ReLU.
__device__ __forceinline__ float sparsec_pro(const sparsec_step& s, const float* __restrict__ w,
                                             unsigned c, float v) {
  if (s.flags & SPARSEC_F_PROLOGUE) {
    v = v * w[s.scale + c] + w[s.shift + c];
    v = (s.flags & SPARSEC_F_PROLOGUE_RELU) ? fmaxf(v, 0.0f) : v;
  }
  return v;
}

// The prologue of input channel c as coefficients, looked up once per staged channel (row)
// instead of once per staged value: v * scale + shift (1 and 0 without a prologue: exact,
// but for the sign of a zero), then the ReLU when the prologue has one, chosen by a bit mask
// (all ones: the ReLU's result): a branch or a select on the flag would make the compiler
// copy the whole unrolled staging once per value of it.
struct sparsec_coef {
  float scale, shift;
  unsigned relu;
  __device__ __forceinline__ float apply(float v) const {
    v = v * scale + shift;
    const unsigned r = __float_as_uint(fmaxf(v, 0.0f)), x = __float_as_uint(v);
    return __uint_as_float((r & relu) | (x & ~relu));
  }
};

// c < the step's input channels (a convolution). Without a prologue the loads read the
// step's weights (at least that many floats) and the masks turn them into 1 and 0: a branch
// on the flag here made the compiler copy the whole unrolled staging once per value of it.
__device__ __forceinline__ sparsec_coef sparsec_coef_of(const sparsec_step& s,
                                                        const float* __restrict__ w, unsigned c) {
  const unsigned keep = 0u - (s.flags / SPARSEC_F_PROLOGUE & 1u);
  const sparsec_u64 keep64 = 0ull - (sparsec_u64)(s.flags / SPARSEC_F_PROLOGUE & 1u);
  const sparsec_u64 sc = (s.scale & keep64) | (s.weight & ~keep64);
  const sparsec_u64 sh = (s.shift & keep64) | (s.weight & ~keep64);
  sparsec_coef p;
  p.scale = __uint_as_float((__float_as_uint(w[sc + c]) & keep) | (0x3f800000u & ~keep));
  p.shift = __uint_as_float(__float_as_uint(w[sh + c]) & keep);
  p.relu = keep & (0u - (s.flags / SPARSEC_F_PROLOGUE_RELU & 1u));
  return p;
}

// The bias of output channel m < oc as a bit mask away from zero: the record's BIAS points at
// real weights (at least oc floats) even without a bias, so the load is unconditional, and
// `mask` (all ones with a bias, else zero) keeps or clears it. Neither a branch nor a select
// on the flag: either would make the compiler copy the whole unrolled epilogue per value.
__device__ __forceinline__ float sparsec_bias(const sparsec_step& s, const float* __restrict__ w,
                                              unsigned m, unsigned mask) {
  return __uint_as_float(__float_as_uint(w[s.bias + m]) & mask);
}

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

// The epilogue of one output value: bias, ReLU (the split-K path, not unrolled).
__device__ __forceinline__ float sparsec_epilogue(const sparsec_step& s,
                                                  const float* __restrict__ w, unsigned m,
                                                  float v) {
  if (s.flags & SPARSEC_F_BIAS) v += w[s.bias + m];
  if (s.flags & SPARSEC_F_RELU) v = fmaxf(v, 0.0f);
  return v;
}

// Convolution as an implicit GEMM: out[m][q] = sum_k W[k][m] * X[k][q], k = (c, kh, kw), q a
// pixel of the whole batch (image q / P, position q % P). A block computes BM output channels
// x BN pixels. Per k-slice every thread loads its share of the next slice into registers
// (weights, and the im2col input with the pieces read in place, the prologue applied and
// zero padding after it) while the block multiplies the current slice from shared memory.
// KH x KW is the kernel size (the step's must match); POINTWISE: 1x1, stride 1, no padding;
// SUM: the input is a sum of pieces; H: the output may be BF16 (the input never is). A thread's staging columns (pixels) are the same in
// every slice: they are decomposed into image and position once per block, and the rows
// (channels) of a slice find their piece once, one row per thread, in a table in shared memory
// that every thread reads, so the unrolled staging holds no division by a run-time shape, no
// select over pieces and no walk of the piece table.
template <class T, unsigned KH, unsigned KW, bool POINTWISE, bool SUM, bool H>
__device__ __forceinline__ void sparsec_conv(float* __restrict__ a, const float* __restrict__ w,
                                             unsigned batch, const sparsec_u64* __restrict__ d) {
  static_assert(T::G * T::KS == SPARSEC_THREADS, "a tile has 256 threads");
  static_assert(T::BK % T::KS == 0, "k-groups split a slice evenly");
  constexpr unsigned BM = T::BM, BN = T::BN, TAPS = KH * KW;
  constexpr unsigned XN = (T::BK * BN + SPARSEC_THREADS - 1) / SPARSEC_THREADS;
  constexpr unsigned WNUM = (T::BK * BM + SPARSEC_THREADS - 1) / SPARSEC_THREADS;
  // The loop's shared memory: the staged slice, then (a concatenation) the row table; after
  // the loop the split-K partial sums reuse it.
  constexpr unsigned STAGE = T::BK * (BM + BN), ROWF = SUM ? 0 : 4 * T::BK;
  constexpr unsigned LOOP = STAGE + ROWF, RED = T::KS > 1 ? T::KS * BM * BN : 0;
  static_assert(XN <= 64, "one validity bit per staged input");
  static_assert(STAGE % 2 == 0, "the row table is 8-byte aligned");
  alignas(16) __shared__ float smem[LOOP > RED ? LOOP : RED];
  // Per row of the slice being loaded (a concatenation): where its channel's plane starts and
  // the piece's floats per image.
  sparsec_u64* rows = reinterpret_cast<sparsec_u64*>(smem + STAGE);
  const sparsec_step S = sparsec_read_step(d);
  // A record this instance was not made for computes nothing (uniform: no barrier diverges).
  if (S.kh != KH || S.kw != KW || ((S.flags & SPARSEC_F_SUM) != 0) != SUM ||
      (POINTWISE && (S.sh != 1u || S.sw != 1u || S.ph != 0u || S.pw != 0u)) ||
      sparsec_refuses<H, false>(S.flags))
    return;
  sparsec_input in;
  in.init(S, batch);
  const unsigned K = S.cin * TAPS, P = S.oh * S.ow, OC = S.oc;
  float* ws = smem;               // [BK][BM]
  float* xs = smem + T::BK * BM;  // [BK][BN]
  const unsigned tid = threadIdx.x, g = tid / T::G, r = tid % T::G;
  const unsigned tm = r / T::WN, tn = r % T::WN;
  const size_t B = batch;
  const unsigned Q = batch * P, q0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
  // Staged element i of a slice is row tid / BN + (i / CPT) * RSTEP, column
  // tid % BN + (i % CPT) * 256 (the same as e = tid + i * 256 in a [BK][BN] tile).
  constexpr unsigned CPT = BN > SPARSEC_THREADS ? BN / SPARSEC_THREADS : 1;
  constexpr unsigned RSTEP = BN >= SPARSEC_THREADS ? 1 : SPARSEC_THREADS / BN;
  constexpr unsigned ROWS = (XN + CPT - 1) / CPT;
  unsigned img[CPT], pos[CPT];
  int y0[CPT], x0[CPT];
  bool live[CPT];
  #pragma unroll
  for (unsigned j = 0; j < CPT; ++j) {
    const unsigned q = q0 + tid % BN + j * SPARSEC_THREADS;
    live[j] = q < Q;
    img[j] = live[j] ? q / P : 0u;
    pos[j] = live[j] ? q % P : 0u;
    y0[j] = (int)(pos[j] / S.ow) * (int)S.sh - (int)S.ph;
    x0[j] = (int)(pos[j] % S.ow) * (int)S.sw - (int)S.pw;
  }
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
  const unsigned SLICES = (K + T::BK - 1) / T::BK;
  #pragma unroll 1
  for (unsigned s = 0; s <= SLICES; ++s) {
    if (s > 0) {
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS;
        if (e < T::BK * BM) ws[e] = wr[i];
      }
      #pragma unroll
      for (unsigned rr = 0; rr < ROWS; ++rr) {
        const unsigned row = tid / BN + rr * RSTEP, k = (s - 1) * T::BK + row;
        const sparsec_coef pro = sparsec_coef_of(S, w, k < K ? (POINTWISE ? k : k / TAPS) : 0u);
        #pragma unroll
        for (unsigned j = 0; j < CPT; ++j) {
          const unsigned i = rr * CPT + j;
          if (i < XN && row < T::BK)
            xs[row * BN + tid % BN + j * SPARSEC_THREADS] =
                (valid >> i & 1ull) ? pro.apply(xr[i]) : 0.0f;
        }
      }
    }
    if (!SUM && s < SLICES && tid < T::BK) {
      const unsigned k = s * T::BK + tid;
      size_t at = 0, stride = 0;
      if (k < K) in.at(POINTWISE ? k : k / TAPS, at, stride);
      rows[2 * tid] = at;
      rows[2 * tid + 1] = stride;
    }
    __syncthreads();
    if (s < SLICES) {
      const unsigned k0 = s * T::BK;
      valid = 0;
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, k = k0 + e / BM, m = m0 + e % BM;
        wr[i] = (e < T::BK * BM && k < K && m < OC) ? w[S.weight + (size_t)k * OC + m] : 0.0f;
      }
      #pragma unroll
      for (unsigned rr = 0; rr < ROWS; ++rr) {
        const unsigned row = tid / BN + rr * RSTEP, k = k0 + row;
        const bool real = row < T::BK && k < K;
        const unsigned c = POINTWISE ? k : k / TAPS, tap = POINTWISE ? 0u : k % TAPS;
        size_t base = 0, stride = 0;
        if (!SUM && real) {
          base = rows[2 * row];
          stride = rows[2 * row + 1];
        }
        #pragma unroll
        for (unsigned j = 0; j < CPT; ++j) {
          const unsigned i = rr * CPT + j;
          float v = 0.0f;
          if (i < XN && real && live[j]) {
            const int ih = y0[j] + (int)(tap / KW), iw = x0[j] + (int)(tap % KW);
            if (POINTWISE || (ih >= 0 && ih < (int)S.ih && iw >= 0 && iw < (int)S.iw)) {
              const unsigned hw = POINTWISE ? pos[j] : (unsigned)(ih * (int)S.iw + iw);
              v = SUM ? in.raw<true>(a, img[j], c, hw) : a[base + (size_t)img[j] * stride + hw];
              valid |= 1ull << i;
            }
          }
          if (i < XN) xr[i] = v;
        }
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
  const size_t out = S.out * B;  // in the output's elements (halves when BF16)
  const bool hout = H && (S.flags & SPARSEC_F_BF16_OUT) != 0;
  // Bias and ReLU without branches (a branch on a flag would make the compiler copy the
  // whole unrolled epilogue once per combination of flags): the record's BIAS points at real
  // weights even without a bias (the table checks it), and the ReLU is a max with -inf.
  const unsigned bmask = 0u - (S.flags / SPARSEC_F_BIAS & 1u);  // arithmetic, not a select
  const float lo = (S.flags & SPARSEC_F_RELU) ? 0.0f : -INFINITY;
  if (T::KS == 1) {
    // Each pixel's place in the output, once; then per channel one bias load.
    size_t at[T::TN];  // channel 0's output of each pixel; channel m is m * P further
    bool ok[T::TN];
    #pragma unroll
    for (unsigned j = 0; j < T::TN; ++j) {
      const unsigned q = q0 + tn + T::WN * j;
      ok[j] = q < Q;
      at[j] = out + (ok[j] ? (size_t)(q / P) * S.out_per_image + q % P : 0);
    }
    #pragma unroll
    for (unsigned i = 0; i < T::TM; ++i) {
      const unsigned m = m0 + tm * T::TM + i;
      if (m >= OC) continue;
      const float b = sparsec_bias(S, w, m, bmask);
      const size_t mp = (size_t)m * P;
      #pragma unroll
      for (unsigned j = 0; j < T::TN; ++j)
        if (ok[j]) sparsec_st<H>(a, hout, at[j] + mp, fmaxf(acc[i][j] + b, lo));
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
      if (m >= OC || q >= Q) continue;
      float v = red[e];
      #pragma unroll
      for (unsigned h = 1; h < T::KS; ++h) v += red[h * BM * BN + e];
      sparsec_st<H>(a, hout, out + (size_t)(q / P) * S.out_per_image + (size_t)m * P + q % P,
                    sparsec_epilogue(S, w, m, v));
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

// Direct convolution for stride 1 and a KH x KW kernel (any padding): a block computes BM
// output channels x one TH x TW pixel tile of one image (grid x = image x tile). Per slice of
// CB input channels it stages the input patch [CB][TH + KH - 1][TW + KW - 1] (pieces read in
// place, the prologue applied once per element, zero padding after it) and the weights
// [CB * KH * KW][BM]; each thread reads its inputs at the taps' shifted offsets, so an input
// value is loaded and prologued once per slice instead of once per tap. The next slice is
// loaded into registers while this one is multiplied. H: the output may be BF16.
template <class T, unsigned KH, unsigned KW, bool SUM, bool H>
__device__ __forceinline__ void sparsec_conv_direct(float* __restrict__ a,
                                                    const float* __restrict__ w, unsigned batch,
                                                    const sparsec_u64* __restrict__ d) {
  static_assert(T::WM * T::WN == SPARSEC_THREADS, "a tile has 256 threads");
  static_assert(T::BN % T::TW == 0, "whole tile rows");
  constexpr unsigned RW = T::TW + KW - 1, RH = T::TH + KH - 1, PATCH = RH * RW;
  constexpr unsigned TAPS = KH * KW, KB = T::CB * TAPS, BM = T::BM;
  // A thread stages patch positions tid + j * 256 (j < PN) of each of the slice's CB channels.
  constexpr unsigned PN = (PATCH + SPARSEC_THREADS - 1) / SPARSEC_THREADS, XN = T::CB * PN;
  constexpr unsigned WNUM = (KB * BM + SPARSEC_THREADS - 1) / SPARSEC_THREADS;
  static_assert(PN <= 32, "one bit per staged patch position");
  __shared__ float xs[T::CB * PATCH];
  __shared__ float ws[KB * BM];
  // Per channel of the slice being loaded (a concatenation), as in sparsec_conv: where its
  // plane starts and the piece's floats per image.
  __shared__ sparsec_u64 rows[SUM ? 1 : 2 * T::CB];
  const sparsec_step S = sparsec_read_step(d);
  sparsec_input in;
  in.init(S, batch);
  const unsigned P = S.oh * S.ow, OC = S.oc, CIN = S.cin;
  const unsigned TILES_W = (S.ow + T::TW - 1) / T::TW;
  const unsigned TILES = TILES_W * ((S.oh + T::TH - 1) / T::TH);
  const unsigned tid = threadIdx.x, tm = tid / T::WN, tn = tid % T::WN;
  const unsigned n = blockIdx.x / TILES, tile = blockIdx.x % TILES;
  // A record this instance was not made for, or a block past the batch, computes nothing.
  if (S.kh != KH || S.kw != KW || S.sh != 1u || S.sw != 1u || n >= batch ||
      ((S.flags & SPARSEC_F_SUM) != 0) != SUM || sparsec_refuses<H, false>(S.flags))
    return;
  const int oy0 = (int)((tile / TILES_W) * T::TH), ox0 = (int)((tile % TILES_W) * T::TW);
  const unsigned m0 = blockIdx.y * BM;
  const size_t B = batch;
  float wr[WNUM], xr[XN];  // the next slice, raw; the prologue is applied when stored
  // The thread's patch positions, the same in every channel and slice: where each is in the
  // input plane, and which are inside it (the others are zero padding, or past the patch).
  unsigned hw[PN], inside = 0;
  #pragma unroll
  for (unsigned j = 0; j < PN; ++j) {
    const unsigned pp = tid + j * SPARSEC_THREADS;
    const int ih = oy0 + (int)(pp / RW) - (int)S.ph, iw = ox0 + (int)(pp % RW) - (int)S.pw;
    const bool ok = pp < PATCH && ih >= 0 && ih < (int)S.ih && iw >= 0 && iw < (int)S.iw;
    hw[j] = ok ? (unsigned)(ih * (int)S.iw + iw) : 0u;
    inside |= (ok ? 1u : 0u) << j;
  }
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
  const unsigned SLICES = (CIN + T::CB - 1) / T::CB;
  #pragma unroll 1
  for (unsigned s = 0; s <= SLICES; ++s) {
    if (s > 0) {
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS;
        if (e < KB * BM) ws[e] = wr[i];
      }
      #pragma unroll
      for (unsigned cc = 0; cc < T::CB; ++cc) {
        const unsigned c = (s - 1) * T::CB + cc;
        const sparsec_coef pro = sparsec_coef_of(S, w, c < CIN ? c : 0u);
        const unsigned real = inside & (0u - (c < CIN ? 1u : 0u));  // zero padding, or no channel
        #pragma unroll
        for (unsigned j = 0; j < PN; ++j) {
          const unsigned pp = tid + j * SPARSEC_THREADS;
          if (pp < PATCH) xs[cc * PATCH + pp] = (real >> j & 1u) ? pro.apply(xr[cc * PN + j]) : 0.0f;
        }
      }
    }
    if (!SUM && s < SLICES && tid < T::CB) {
      const unsigned c = s * T::CB + tid;
      size_t at = 0, stride = 0;
      if (c < CIN) in.at(c, at, stride);
      rows[2 * tid] = at;
      rows[2 * tid + 1] = stride;
    }
    __syncthreads();
    if (s < SLICES) {
      const unsigned c0 = s * T::CB;
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, kk = e / BM, m = m0 + e % BM;
        const unsigned c = c0 + kk / TAPS;
        wr[i] = (e < KB * BM && c < CIN && m < OC)
                    ? w[S.weight + (size_t)(c * TAPS + kk % TAPS) * OC + m]
                    : 0.0f;
      }
      // Per channel, its plane (a concatenation: from the table) read at the thread's
      // positions.
      #pragma unroll
      for (unsigned cc = 0; cc < T::CB; ++cc) {
        const unsigned c = c0 + cc;
        const float* src = a + (SUM ? 0 : rows[2 * cc] + (size_t)n * rows[2 * cc + 1]);
        #pragma unroll
        for (unsigned j = 0; j < PN; ++j) {
          float v = 0.0f;
          if (c < CIN && (inside >> j & 1u)) v = SUM ? in.raw<true>(a, n, c, hw[j]) : src[hw[j]];
          xr[cc * PN + j] = v;
        }
      }
    }
    if (s > 0) {
      for (unsigned cc = 0; cc < T::CB; ++cc)
        #pragma unroll
        for (unsigned kh = 0; kh < KH; ++kh)
          #pragma unroll
          for (unsigned kw = 0; kw < KW; ++kw) {
            float xv[T::TN], wv[T::TM];
            #pragma unroll
            for (unsigned j = 0; j < T::TN; ++j) xv[j] = xs[cc * PATCH + kh * RW + kw + base[j]];
            const unsigned row = (cc * TAPS + kh * KW + kw) * BM + tm * T::TM;
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
  const size_t out = S.out * B + (size_t)n * S.out_per_image;  // in the output's elements
  const bool hout = H && (S.flags & SPARSEC_F_BF16_OUT) != 0;
  // As in sparsec_conv: bias and ReLU without branches.
  const unsigned bmask = 0u - (S.flags / SPARSEC_F_BIAS & 1u);  // arithmetic, not a select
  const float lo = (S.flags & SPARSEC_F_RELU) ? 0.0f : -INFINITY;
  size_t at[T::TN];  // channel 0's output of each pixel; channel m is m * P further
  bool ok[T::TN];
  #pragma unroll
  for (unsigned j = 0; j < T::TN; ++j) {
    const unsigned t = tn + T::WN * j;
    const unsigned oy = (unsigned)oy0 + t / T::TW, ox = (unsigned)ox0 + t % T::TW;
    ok[j] = oy < S.oh && ox < S.ow;
    at[j] = out + (ok[j] ? oy * S.ow + ox : 0u);
  }
  #pragma unroll
  for (unsigned i = 0; i < T::TM; ++i) {
    const unsigned m = m0 + tm * T::TM + i;
    if (m >= OC) continue;
    const float b = sparsec_bias(S, w, m, bmask);
    const size_t mp = (size_t)m * P;
    #pragma unroll
    for (unsigned j = 0; j < T::TN; ++j)
      if (ok[j]) sparsec_st<H>(a, hout, at[j] + mp, fmaxf(acc[i][j] + b, lo));
  }
}

// Pooling: one thread per output value (image, channel, row, column). Average pools count
// padding in the divisor; padding never wins a max. GLOBAL pools the whole plane. H: input
// pieces and the output may be BF16.
template <bool H>
__device__ __forceinline__ void sparsec_pool(float* __restrict__ a, const float* __restrict__ w,
                                             unsigned batch, const sparsec_u64* __restrict__ d) {
  const sparsec_step S = sparsec_read_step(d);
  const unsigned Q = S.oh * S.ow, C = S.oc;
  const unsigned item = blockIdx.x * SPARSEC_THREADS + threadIdx.x;
  if (item >= batch * (C * Q) || sparsec_refuses<H, true>(S.flags)) return;
  sparsec_input in;
  in.init(S, batch);
  const bool MAX = (S.flags & SPARSEC_F_MAX) != 0;
  const unsigned n = item / (C * Q), i = item % (C * Q);
  const size_t B = batch;
  const unsigned c = i / Q, q = i % Q;
  float s = MAX ? -INFINITY : 0.0f;
  if (S.flags & SPARSEC_F_GLOBAL) {
    for (unsigned hw = 0; hw < S.ih * S.iw; ++hw) {
      const float v = sparsec_pro(
          S, w, c, in.sum ? in.raw<true, H>(a, n, c, hw) : in.raw<false, H>(a, n, c, hw));
      s = MAX ? fmaxf(s, v) : s + v;
    }
    if (!MAX) s = s / (float)(S.ih * S.iw);
  } else {
    const int h0 = (int)(q / S.ow) * (int)S.sh - (int)S.ph;
    const int w0 = (int)(q % S.ow) * (int)S.sw - (int)S.pw;
    for (int r = 0; r < (int)S.kh; ++r)
      for (int t = 0; t < (int)S.kw; ++t) {
        const int ih = h0 + r, iw = w0 + t;
        if (ih < 0 || ih >= (int)S.ih || iw < 0 || iw >= (int)S.iw) continue;
        const unsigned hw = (unsigned)(ih * (int)S.iw + iw);
        const float v = sparsec_pro(
            S, w, c, in.sum ? in.raw<true, H>(a, n, c, hw) : in.raw<false, H>(a, n, c, hw));
        s = MAX ? fmaxf(s, v) : s + v;
      }
    if (!MAX) s = s / (float)(S.kh * S.kw);
  }
  sparsec_st<H>(a, H && (S.flags & SPARSEC_F_BF16_OUT) != 0,
                S.out * B + (size_t)n * S.out_per_image + i, s);
}

// The most input channels the head stages in shared memory (the compiler and the runtime's
// descriptor check enforce it).
#define SPARSEC_LINEAR_MAX_IN 12288u

// Fully connected (the fused head when the plane is larger than 1x1: global average first):
// one block per image; the averaged, prologued input is staged in shared memory, then each
// thread computes output features from the [in][out] weights. blockIdx.x is the image.
__device__ __forceinline__ void sparsec_linear(float* __restrict__ a,
                                               const float* __restrict__ w, unsigned batch,
                                               const sparsec_u64* __restrict__ d) {
  __shared__ float xs[SPARSEC_LINEAR_MAX_IN];
  const sparsec_step S = sparsec_read_step(d);
  sparsec_input in;
  in.init(S, batch);
  const unsigned n = blockIdx.x, CIN = S.cin, OUTF = S.oc, PLANE = S.ih * S.iw;
  if (n >= batch || CIN > SPARSEC_LINEAR_MAX_IN || sparsec_refuses<false, false>(S.flags)) return;
  const size_t B = batch;
  for (unsigned c = threadIdx.x; c < CIN; c += SPARSEC_THREADS) {
    float s = 0.0f;
    for (unsigned hw = 0; hw < PLANE; ++hw)
      s += sparsec_pro(S, w, c, in.sum ? in.raw<true>(a, n, c, hw) : in.raw<false>(a, n, c, hw));
    xs[c] = s / (float)PLANE;
  }
  __syncthreads();
  float* y = a + S.out * B + (size_t)n * S.out_per_image;
  for (unsigned o = threadIdx.x; o < OUTF; o += SPARSEC_THREADS) {
    float acc = 0.0f;
    for (unsigned c = 0; c < CIN; ++c) acc += w[S.weight + (size_t)c * OUTF + o] * xs[c];
    y[o] = acc + ((S.flags & SPARSEC_F_BIAS) ? w[S.bias + o] : 0.0f);
  }
}
// ---- end of prelude ---------------------------------------------------------------------
