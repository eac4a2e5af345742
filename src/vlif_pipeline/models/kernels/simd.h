/*
 * The vector type of the build's ISA level, and the register blocking that fits its register file.
 *
 * GCC splits a vector type wider than the target's registers into pieces and, in blocked loops,
 * spills them: the 64-byte vectors written for AVX-512 made an AVX2 (-march=x86-64-v3) build of
 * the block kernels 9x slower than PyTorch. So the width follows the target: 16 floats with
 * AVX-512 (32 registers: 4 rows x 4 vectors of accumulators), 8 with AVX (16 registers: 4 x 2,
 * leaving room for the loaded row and the broadcast), 4 otherwise (SSE, NEON: 4 x 2).
 */
#if defined(__AVX512F__)
#define VL 16
#define NB 4
#elif defined(__AVX__)
#define VL 8
#define NB 2
#else
#define VL 4
#define NB 2
#endif
#define RB 4 /* rows per register block: InfoNCE multiplies 4 rows at a time; 2 x 4 and 8 x 1 were no faster on AVX2 */
#define BW (VL * NB) /* output columns per register block; divides 64 */

typedef float vf __attribute__((vector_size(VL * sizeof(float)), aligned(4)));
