// sparsec CUDA shim: compiles the generated CUDA C as C++ (g++) and runs a launch on the CPU,
// so every generated kernel is checked without a GPU. Include it once, before the generated
// source, in one translation unit; build with -U_FORTIFY_SOURCE (the scheduler longjmps
// between stacks, which fortified longjmp rejects) and -fno-gnu-unique (the __shared__
// statics of the prelude's templates would otherwise be STB_GNU_UNIQUE symbols, one copy for
// every library loaded in the process, so two models run at once would share them).
//
// Semantics: the grid's blocks run one after another; inside a block every thread is a fiber
// with its own stack. A fiber runs until it calls __syncthreads() or returns; when every fiber
// of the block waits at the barrier, all are released; a block where some threads returned
// while others wait at a barrier is reported as an error (divergent barrier). __shared__
// variables are function-level statics: one copy, shared by the fibers of the running block,
// exactly like shared memory of one block (blocks never run at the same time here).
#pragma once
#include <math.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

struct dim3 {
  unsigned x, y, z;
};

extern "C" {
dim3 threadIdx, blockIdx, blockDim, gridDim;
void sparsec_shim_barrier(void);
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

static inline void __syncthreads() {
  __asm__ __volatile__("" ::: "memory");
  sparsec_shim_barrier();
  __asm__ __volatile__("" ::: "memory");
}

// CUDA's bit casts between float and unsigned (the prelude masks the bias with them).
static inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, sizeof u);
  return u;
}
static inline float __uint_as_float(unsigned u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

namespace sparsec_shim {

typedef void (*Kernel)(float*, const float*, unsigned, const unsigned long long*);

enum State { NEW, RUNNING, AT_BARRIER, DONE };

struct Fiber {
  ucontext_t context;
  jmp_buf resume;
  State state;
  char* stack;
};

static const size_t STACK_BYTES = 64 * 1024;
static jmp_buf scheduler;
static Fiber* fibers = nullptr;
static unsigned fiber_count = 0;
static Fiber* current = nullptr;
static Kernel kernel = nullptr;
static float* kernel_arena = nullptr;
static const float* kernel_weights = nullptr;
static unsigned kernel_batch = 0;
static const unsigned long long* kernel_step = nullptr;

// Every fiber runs the kernel once per block, then parks as DONE until the next block.
static void fiber_main() {
  for (;;) {
    kernel(kernel_arena, kernel_weights, kernel_batch, kernel_step);
    current->state = DONE;
    if (!_setjmp(current->resume)) _longjmp(scheduler, 1);
  }
}

static void release() {
  for (unsigned i = 0; i < fiber_count; ++i) free(fibers[i].stack);
  free(fibers);
  fibers = nullptr;
  fiber_count = 0;
}

// Fibers are kept between launches of the same block size: a parked fiber sits in
// fiber_main and only needs a longjmp to run the next block.
static int prepare(unsigned count) {
  if (fiber_count == count) return 0;
  release();
  fibers = (Fiber*)calloc(count, sizeof(Fiber));
  if (!fibers) return -2;
  fiber_count = count;
  for (unsigned i = 0; i < count; ++i) {
    Fiber* f = &fibers[i];
    f->stack = (char*)malloc(STACK_BYTES);
    if (!f->stack || getcontext(&f->context) != 0) return -2;
    f->context.uc_stack.ss_sp = f->stack;
    f->context.uc_stack.ss_size = STACK_BYTES;
    f->context.uc_link = nullptr;
    makecontext(&f->context, fiber_main, 0);
    f->state = NEW;
  }
  return 0;
}

static void resume(unsigned i) {
  Fiber* f = &fibers[i];
  current = f;
  threadIdx = dim3{i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y)};
  if (!_setjmp(scheduler)) {
    State was = f->state;
    f->state = RUNNING;
    if (was == NEW) setcontext(&f->context);
    _longjmp(f->resume, 1);
  }
}

// Runs one block; 0, or -1 for a divergent barrier.
static int run_block() {
  for (unsigned i = 0; i < fiber_count; ++i)
    if (fibers[i].state == DONE) fibers[i].state = AT_BARRIER;  // start the next block
  for (;;) {
    for (unsigned i = 0; i < fiber_count; ++i)
      if (fibers[i].state != DONE) resume(i);
    unsigned done = 0;
    for (unsigned i = 0; i < fiber_count; ++i) done += fibers[i].state == DONE;
    if (done == fiber_count) return 0;
    if (done != 0) {
      // Park the waiting fibers: they are abandoned mid-kernel, so rebuild all next launch.
      release();
      return -1;
    }
  }
}

}  // namespace sparsec_shim

extern "C" void sparsec_shim_barrier(void) {
  using namespace sparsec_shim;
  Fiber* f = current;
  f->state = AT_BARRIER;
  if (!_setjmp(f->resume)) _longjmp(scheduler, 1);
}

// Runs `kernel` over grid (gx, gy, gz) with `block` threads per block (x only), passing the
// step record `step` (runtime::cuda::table). Returns 0, -1 for a divergent barrier, -2 when
// memory runs out.
extern "C" int sparsec_shim_launch(void (*k)(float*, const float*, unsigned,
                                             const unsigned long long*),
                                   unsigned gx, unsigned gy, unsigned gz, unsigned block,
                                   float* arena, const float* weights, unsigned batch,
                                   const unsigned long long* step) {
  using namespace sparsec_shim;
  if (block == 0) return -2;
  int status = prepare(block);
  if (status != 0) {
    release();
    return status;
  }
  kernel = k;
  kernel_arena = arena;
  kernel_weights = weights;
  kernel_batch = batch;
  kernel_step = step;
  blockDim = dim3{block, 1, 1};
  gridDim = dim3{gx, gy, gz};
  for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
      for (unsigned x = 0; x < gx; ++x) {
        blockIdx = dim3{x, y, z};
        status = run_block();
        if (status != 0) return status;
      }
  return 0;
}
