
// ---- tensor-core emulation (mma_shim.h, appended to shim.h) --------------------------------
// What `mma.cuh` needs beyond the shim: the bit casts (`sparsec_f2u`, `sparsec_u2f`: our own
// names, so they never clash with bit casts shim.h may define), and `sparsec_warp_mma`, the warp's
// mma.sync products emulated from the lanes' fragments. A warp-collective operation needs the
// fragments of all 32 lanes, so each lane stores its registers in an exchange slot and waits
// at the block's barrier (every thread of a tensor-core kernel makes the same calls, so the
// block-wide rendezvous is also the warp's); then each lane rebuilds the A and B fragments of
// its warp from the PTX ISA fragment layouts (mma.m16n8k8 .tf32, mma.m16n8k16 .bf16, row.col)
// and computes its own four accumulators. Two slot sets are used alternately, so a lane that
// has gone on to the next call cannot overwrite a set a slower lane still reads.
// Numerics: the inputs are read as the hardware reads them (TF32: the top 19 bits of the
// register, the low 13 ignored; BF16: the 16-bit halves), products are exact in FP32 for both
// formats, and they are added to the accumulator in FP32 in k order. The tensor core's own
// order and rounding of that sum are not specified bit for bit by NVIDIA; the tests compare
// with a tolerance of the precision's size, never bit for bit.
#define SPARSEC_SHIM 1
#ifndef SPARSEC_TF32
#define SPARSEC_TF32 1u
#define SPARSEC_BF16 2u
#endif

static inline unsigned sparsec_f2u(float x) {
  unsigned u;
  memcpy(&u, &x, sizeof u);
  return u;
}
static inline float sparsec_u2f(unsigned u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

namespace sparsec_shim {
static const unsigned MMA_THREADS = 1024, MMA_WORDS = 64;
static unsigned mma_slots[2][MMA_THREADS][MMA_WORDS];
static unsigned char mma_parity[MMA_THREADS];
}  // namespace sparsec_shim

template <unsigned PREC, unsigned MT, unsigned NT>
static inline void sparsec_warp_mma(float (&acc)[MT][NT][4], const unsigned (&af)[MT][4],
                                    const unsigned (&bf)[NT][2]) {
  using namespace sparsec_shim;
  static_assert(MT * 4 + NT * 2 <= MMA_WORDS, "fragments fit an exchange slot");
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  if (tid >= MMA_THREADS) abort();
  const unsigned set = mma_parity[tid];
  mma_parity[tid] ^= 1u;
  unsigned* mine = mma_slots[set][tid];
  for (unsigned i = 0; i < MT; ++i)
    for (unsigned r = 0; r < 4; ++r) mine[i * 4 + r] = af[i][r];
  for (unsigned j = 0; j < NT; ++j)
    for (unsigned r = 0; r < 2; ++r) mine[MT * 4 + j * 2 + r] = bf[j][r];
  __syncthreads();
  const unsigned lane = tid % 32u, warp0 = tid - lane, g = lane / 4u, t = lane % 4u;
  const unsigned KSTEP = PREC == SPARSEC_TF32 ? 8u : 16u;
  // Element (row, k) of fragment A_i and (k, col) of B_j, as the hardware reads them.
  auto a_at = [&](unsigned i, unsigned row, unsigned k) -> float {
    if (PREC == SPARSEC_TF32) {
      // a0: (g, t), a1: (g + 8, t), a2: (g, t + 4), a3: (g + 8, t + 4)
      const unsigned l = (row % 8u) * 4u + k % 4u, r = (row / 8u) + 2u * (k / 4u);
      return sparsec_u2f(mma_slots[set][warp0 + l][i * 4 + r] & 0xffffe000u);
    }
    // a0, a1: (g, 2t + {0, 1}); a2, a3: (g + 8, ...); a4..a7: the same at columns + 8
    const unsigned l = (row % 8u) * 4u + (k % 8u) / 2u, r = (row / 8u) + 2u * (k / 8u);
    const unsigned v = mma_slots[set][warp0 + l][i * 4 + r];
    return sparsec_u2f(((k % 2u) ? v >> 16 : v & 0xffffu) << 16);
  };
  auto b_at = [&](unsigned j, unsigned k, unsigned col) -> float {
    if (PREC == SPARSEC_TF32) {
      // b0: (t, g), b1: (t + 4, g)
      const unsigned l = col * 4u + k % 4u, r = k / 4u;
      return sparsec_u2f(mma_slots[set][warp0 + l][MT * 4 + j * 2 + r] & 0xffffe000u);
    }
    // b0, b1: (2t + {0, 1}, g); b2, b3: (2t + 8 + {0, 1}, g)
    const unsigned l = col * 4u + (k % 8u) / 2u, r = k / 8u;
    const unsigned v = mma_slots[set][warp0 + l][MT * 4 + j * 2 + r];
    return sparsec_u2f(((k % 2u) ? v >> 16 : v & 0xffffu) << 16);
  };
  // This lane's accumulators: c0, c1 at (g, 2t + {0, 1}), c2, c3 at (g + 8, 2t + {0, 1}).
  for (unsigned i = 0; i < MT; ++i)
    for (unsigned j = 0; j < NT; ++j)
      for (unsigned r = 0; r < 4; ++r) {
        const unsigned row = g + 8u * (r / 2u), col = 2u * t + r % 2u;
        float s = acc[i][j][r];
        for (unsigned k = 0; k < KSTEP; ++k) s += a_at(i, row, k) * b_at(j, k, col);
        acc[i][j][r] = s;
      }
}
// ---- end of tensor-core emulation -------------------------------------------------------
