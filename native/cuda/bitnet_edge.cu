// bitnet_edge.cu - the one translation unit of the CUDA fatbin (nvcc -fatbin, see
// packagers/cuda.py): every kernel of native/cuda/ plus the globals the loader checks.
#include "bne_cuda.h"
#include "common.cuh"
#include "quant.cuh"
#include "gemv.cuh"
#include "gemm.cuh"
#include "glue.cuh"
#include "decode.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "bitnet-edge CUDA kernels need sm_80 or newer (int8 mma.sync)"
#endif

#ifdef __CUDA_ARCH__
#define BNE_ARCH __CUDA_ARCH__
#else
#define BNE_ARCH 0
#endif

// Read by bitnet_edge.sdk.cuda after cuModuleLoadData (cuModuleGetGlobal): the package and the
// fatbin must agree on the version, the ABI and the ternary block; the launch geometry comes from here.
extern "C" __device__ char bne_cuda_version[16] = BNE_CUDA_VERSION_STRING;
extern "C" __device__ int bne_cuda_info[9] = {BNE_CUDA_ABI, BNE_CUDA_BLOCK,   BNE_GEMV_WARPS,   BNE_GEMV_ROWS,
                                              BNE_GEMM_BM,  BNE_GEMM_BN,      BNE_NORM_THREADS, BNE_ATTN_THREADS,
                                              BNE_DECODE_THREADS};
extern "C" __device__ int bne_cuda_arch = BNE_ARCH;  // which image the driver picked: 870, 900, 1100, or 800 (PTX)
