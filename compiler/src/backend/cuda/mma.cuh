
// ---- tensor cores (mma.cuh): TF32 and BF16 convolutions, FP32 accumulate -----------------
// Written after the prelude only when a step runs on tensor cores (`precision.rs` chooses per
// layer). Inputs and weights are rounded to the precision when staged in shared memory, the
// products are accumulated in FP32, and the output is written in FP32, or in BF16 where the
// plan stores the buffer so (H: the instance reads and writes BF16 buffers,
// backend/cuda/storage.rs). The staging reuses the prelude's step record, piece cursor
// (`sparsec_input`) and batch-norm prologue (`sparsec_pro`). On the GPU the warp-level product
// is PTX `mma.sync` (sm_80 and later, no header); the shim (`mma_shim.h`) emulates the same
// fragments lane by lane, so the layouts below are checked without a GPU.
#define SPARSEC_TF32 1u
#define SPARSEC_BF16 2u

#ifndef SPARSEC_SHIM
// Bit casts under our own names (the shim defines them with memcpy: whether or not shim.h
// also provides CUDA's __float_as_uint, the names never clash).
__device__ __forceinline__ unsigned sparsec_f2u(float x) { return __float_as_uint(x); }
__device__ __forceinline__ float sparsec_u2f(unsigned u) { return __uint_as_float(u); }
#endif

// Rounding an FP32 value to the precision's input format, in integer operations (the same
// code runs on the GPU and in the shim, so the shim checks exactly what the GPU computes):
// TF32 keeps 10 mantissa bits, to nearest with ties away from zero (PTX cvt.rna.tf32.f32);
// BF16 keeps 7, to nearest even (cvt.rn.bf16.f32, __float2bfloat16_rn). Infinities pass
// through, a NaN stays a NaN. The result is an FP32 value whose dropped bits are zero, which
// the tensor core reads exactly (mma itself would truncate the dropped bits of TF32 inputs).
__device__ __forceinline__ float sparsec_round_tf32(float x) {
  unsigned u = sparsec_f2u(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  return sparsec_u2f(u);
}
__device__ __forceinline__ float sparsec_round_bf16(float x) {
  unsigned u = sparsec_f2u(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return sparsec_u2f((u | 0x00400000u) & 0xffff0000u);
  return sparsec_u2f((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);
}

// A staged operand value, rounded to the precision, into a block's shared tile of 32-bit
// words with `ld` words a row: TF32 one value a word, row k; BF16 two values a word, the
// k-pair (2r, 2r + 1) of a column in word [r][column], the even k in the low half: how an mma
// operand register holds two BF16 values, so each fragment register is one 32-bit load.
template <unsigned PREC>
__device__ __forceinline__ void sparsec_mma_stage(unsigned* s, unsigned ld, unsigned k,
                                                  unsigned col, float v) {
  if (PREC == SPARSEC_BF16)
    reinterpret_cast<unsigned short*>(s)[2u * ((k / 2u) * ld + col) + (k & 1u)] =
        (unsigned short)(sparsec_f2u(sparsec_round_bf16(v)) >> 16);
  else
    s[k * ld + col] = sparsec_f2u(sparsec_round_tf32(v));
}

#ifndef SPARSEC_SHIM
// A warp's MT x NT tensor-core products of one k-step: acc[i][j] += A_i * B_j with A_i a
// 16 x KSTEP fragment (4 registers) and B_j a KSTEP x 8 one (2 registers), in the PTX ISA's
// fragment layouts for mma.m16n8k8 .tf32 and mma.m16n8k16 .bf16 (row.col, FP32 accumulate).
template <unsigned PREC, unsigned MT, unsigned NT>
__device__ __forceinline__ void sparsec_warp_mma(float (&acc)[MT][NT][4],
                                                 const unsigned (&af)[MT][4],
                                                 const unsigned (&bf)[NT][2]) {
  #pragma unroll
  for (unsigned i = 0; i < MT; ++i)
    #pragma unroll
    for (unsigned j = 0; j < NT; ++j) {
      if (PREC == SPARSEC_TF32)
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
            : "r"(af[i][0]), "r"(af[i][1]), "r"(af[i][2]), "r"(af[i][3]), "r"(bf[j][0]),
              "r"(bf[j][1]));
      else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
            : "r"(af[i][0]), "r"(af[i][1]), "r"(af[i][2]), "r"(af[i][3]), "r"(bf[j][0]),
              "r"(bf[j][1]));
    }
}
#endif

// A tensor-core tile: MW x NW warps (eight), each computing MT x NT fragments of 16 output
// channels x 8 pixels; BK is the depth of the k-slice staged per step.
template <unsigned MW_, unsigned NW_, unsigned MT_, unsigned NT_, unsigned BK_>
struct sparsec_mma_tile {
  static constexpr unsigned MW = MW_, NW = NW_, MT = MT_, NT = NT_, BK = BK_;
  static constexpr unsigned BM = MW * MT * 16, BN = NW * NT * 8;
};

// Convolution as an implicit GEMM on tensor cores: out[m][q] = sum_k W[k][m] * X[k][q] as in
// sparsec_conv (same grid: x walks BN-pixel tiles of the whole batch, y BM-channel tiles; same
// record checks). Per k-slice the block stages W as A (row-major 16-row fragments, [k][m] in
// shared memory) and the im2col input as B ([k][q]), both rounded to PREC; each warp then loads
// its fragments and issues its mma.sync products. The accumulators stay in the mma C layout:
// lane (g, t) = (lane / 4, lane % 4) holds rows g and g + 8, columns 2t and 2t + 1 of each
// 16 x 8 fragment, which the epilogue writes with bias and ReLU. Every thread makes the same
// calls (the shim's fragment exchange is a block-wide rendezvous). H: input pieces and the
// output may be BF16 (each piece says; a BF16 input value is exact in FP32, and rounding it
// to BF16 again after the prologue is the tensor core's own rounding).
template <class T, unsigned PREC, unsigned KH, unsigned KW, bool POINTWISE, bool SUM, bool H>
__device__ __forceinline__ void sparsec_conv_mma(float* __restrict__ a,
                                                 const float* __restrict__ w, unsigned batch,
                                                 const sparsec_u64* __restrict__ d) {
  static_assert(T::MW * T::NW * 32 == SPARSEC_THREADS, "eight warps");
  constexpr unsigned KSTEP = PREC == SPARSEC_TF32 ? 8u : 16u, TAPS = KH * KW;
  constexpr unsigned BM = T::BM, BN = T::BN, BK = T::BK;
  static_assert(BK % KSTEP == 0, "whole k-steps per slice");
  static_assert(SPARSEC_THREADS % BN == 0 && (BK * BN) % SPARSEC_THREADS == 0,
                "a thread stages one pixel column");
  // Padded rows: the eight row groups of a fragment load fall in different banks.
  constexpr unsigned LDA = BM + 8, LDB = BN + 8;
  constexpr unsigned XN = BK * BN / SPARSEC_THREADS, RSTEP = SPARSEC_THREADS / BN;
  constexpr unsigned WNUM = (BK * BM + SPARSEC_THREADS - 1) / SPARSEC_THREADS;
  // Rows of 32-bit words per staged slice (sparsec_mma_stage): BF16 packs two k a word.
  constexpr unsigned KROWS = PREC == SPARSEC_BF16 ? BK / 2u : BK;
  __shared__ unsigned ws[KROWS * LDA];
  __shared__ unsigned xs[KROWS * LDB];
  const sparsec_step S = sparsec_read_step(d);
  // A record this instance was not made for computes nothing (uniform: no barrier diverges).
  if (S.kh != KH || S.kw != KW || ((S.flags & SPARSEC_F_SUM) != 0) != SUM ||
      (POINTWISE && (S.sh != 1u || S.sw != 1u || S.ph != 0u || S.pw != 0u)) ||
      sparsec_refuses<H, true>(S.flags))
    return;
  sparsec_input in;
  in.init(S, batch);
  const unsigned K = S.cin * TAPS, P = S.oh * S.ow, OC = S.oc;
  const unsigned tid = threadIdx.x, lane = tid % 32u, warp = tid / 32u;
  const unsigned g = lane / 4u, t = lane % 4u;
  const unsigned wm0 = (warp / T::NW) * T::MT * 16u, wn0 = (warp % T::NW) * T::NT * 8u;
  const size_t B = batch;
  const unsigned Q = batch * P, q0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
  // This thread stages one pixel column in every slice: decomposed once.
  const unsigned col = tid % BN, q = q0 + col;
  const bool live = q < Q;
  const unsigned img = live ? q / P : 0u, pos = live ? q % P : 0u;
  const int y0 = (int)(pos / S.ow) * (int)S.sh - (int)S.ph;
  const int x0 = (int)(pos % S.ow) * (int)S.sw - (int)S.pw;
  float acc[T::MT][T::NT][4];
  #pragma unroll
  for (unsigned i = 0; i < T::MT; ++i)
    #pragma unroll
    for (unsigned j = 0; j < T::NT; ++j)
      #pragma unroll
      for (unsigned r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
  // The next slice's raw values in registers (weights, and inputs before the prologue) and
  // which inputs are real (inside K, the batch and the image; the rest are zeros after the
  // prologue): iteration s stores slice s - 1 to shared memory (prologue and rounding
  // applied), loads slice s into registers, then multiplies slice s - 1 while those loads are
  // in flight, as sparsec_conv does.
  float wr[WNUM], xr[XN];
  unsigned long long valid = 0;
  static_assert(XN <= 64, "one validity bit per staged input");
  const unsigned SLICES = (K + BK - 1) / BK;
  #pragma unroll 1
  for (unsigned s = 0; s <= SLICES; ++s) {
    if (s > 0) {
      const unsigned k0 = (s - 1) * BK;
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS;
        if (e < BK * BM) sparsec_mma_stage<PREC>(ws, LDA, e / BM, e % BM, wr[i]);
      }
      #pragma unroll
      for (unsigned i = 0; i < XN; ++i) {
        const unsigned row = tid / BN + i * RSTEP, k = k0 + row;
        const float v = (valid >> i & 1ull) ? sparsec_pro(S, w, POINTWISE ? k : k / TAPS, xr[i])
                                            : 0.0f;
        sparsec_mma_stage<PREC>(xs, LDB, row, col, v);
      }
    }
    __syncthreads();
    if (s < SLICES) {
      const unsigned k0 = s * BK;
      valid = 0;
      #pragma unroll
      for (unsigned i = 0; i < WNUM; ++i) {
        const unsigned e = tid + i * SPARSEC_THREADS, k = k0 + e / BM, m = m0 + e % BM;
        wr[i] = (e < BK * BM && k < K && m < OC) ? w[S.weight + (size_t)k * OC + m] : 0.0f;
      }
      // Rows tid / BN + i * RSTEP: a thread's channels never decrease (the piece cursor's
      // rule), slice after slice.
      #pragma unroll
      for (unsigned i = 0; i < XN; ++i) {
        const unsigned row = tid / BN + i * RSTEP, k = k0 + row;
        float raw = 0.0f;
        if (k < K && live) {
          const unsigned c = POINTWISE ? k : k / TAPS, tap = POINTWISE ? 0u : k % TAPS;
          const int ih = y0 + (int)(tap / KW), iw = x0 + (int)(tap % KW);
          if (POINTWISE || (ih >= 0 && ih < (int)S.ih && iw >= 0 && iw < (int)S.iw)) {
            const unsigned hw = POINTWISE ? pos : (unsigned)(ih * (int)S.iw + iw);
            if (SUM) {
              raw = in.raw<true, H>(a, img, c, hw);
            } else {
              size_t base, stride;
              in.at(c, base, stride);
              raw = sparsec_ld<H>(a, in.half, base + (size_t)img * stride + hw);
            }
            valid |= 1ull << i;
          }
        }
        xr[i] = raw;
      }
    }
    if (s > 0) {
      #pragma unroll
      for (unsigned kk = 0; kk < BK; kk += KSTEP) {
        unsigned af[T::MT][4], bf[T::NT][2];
        // The fragments, one 32-bit word a register (sparsec_mma_stage's layout), row r of the
        // shared tiles the k-step's first (TF32: k; BF16: the k-pair 2r, 2r + 1). TF32: A (16 x
        // 8) a0 = A[g][t], a1 = A[g + 8][t], a2 = A[g][t + 4], a3 = A[g + 8][t + 4]; B (8 x 8)
        // b0 = B[t][g], b1 = B[t + 4][g]. BF16, two values a register: A (16 x 16) {A[g][2t],
        // A[g][2t + 1]}, the same for row g + 8, then both for columns 2t + 8 and 2t + 9;
        // B (16 x 8) {B[2t][g], B[2t + 1][g]}, {B[2t + 8][g], B[2t + 9][g]}. The same word
        // offsets in both: t (and t + 4) rows down, g (and g + 8) columns across.
        const unsigned r = PREC == SPARSEC_BF16 ? kk / 2u : kk;
        #pragma unroll
        for (unsigned i = 0; i < T::MT; ++i) {
          const unsigned* p = ws + (r + t) * LDA + wm0 + i * 16u + g;
          af[i][0] = p[0];
          af[i][1] = p[8];
          af[i][2] = p[4 * LDA];
          af[i][3] = p[4 * LDA + 8];
        }
        #pragma unroll
        for (unsigned j = 0; j < T::NT; ++j) {
          const unsigned* p = xs + (r + t) * LDB + wn0 + j * 8u + g;
          bf[j][0] = p[0];
          bf[j][1] = p[4 * LDB];
        }
        sparsec_warp_mma<PREC, T::MT, T::NT>(acc, af, bf);
      }
    }
    __syncthreads();
  }
  const size_t out = S.out * B;  // in the output's elements (halves when BF16)
  const bool hout = H && (S.flags & SPARSEC_F_BF16_OUT) != 0;
  // As in sparsec_conv: bias and ReLU without branches.
  const bool bias = (S.flags & SPARSEC_F_BIAS) != 0;
  const float lo = (S.flags & SPARSEC_F_RELU) ? 0.0f : -INFINITY;
  #pragma unroll
  for (unsigned j = 0; j < T::NT; ++j)
    #pragma unroll
    for (unsigned c = 0; c < 2; ++c) {
      const unsigned qq = q0 + wn0 + j * 8u + 2u * t + c;
      if (qq >= Q) continue;
      const size_t at = (size_t)(qq / P) * S.out_per_image + qq % P;
      #pragma unroll
      for (unsigned i = 0; i < T::MT; ++i)
        #pragma unroll
        for (unsigned h = 0; h < 2; ++h) {
          const unsigned m = m0 + wm0 + i * 16u + g + 8u * h;
          if (m >= OC) continue;
          const float bw = w[S.bias + (bias ? m : 0u)], b = bias ? bw : 0.0f;
          sparsec_st<H>(a, hout, out + (size_t)m * P + at, fmaxf(acc[i][j][2 * h + c] + b, lo));
        }
    }
}
// ---- end of tensor cores ----------------------------------------------------------------
