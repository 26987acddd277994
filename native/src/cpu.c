/* cpu.c - runtime CPU feature detection: cpuid + xgetbv on x86-64,
 * getauxval(AT_HWCAP) on Linux aarch64 and 32-bit ARM, riscv_hwprobe (or the
 * HWCAP 'V' bit on kernels before 6.4) on Linux RISC-V. */
#if defined(__riscv) && defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1 /* syscall() under -std=c11 */
#endif
#include "bne_internal.h"

#if defined(__x86_64__)
#include <cpuid.h>

static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

uint32_t bne_detect_cpu(void) {
    uint32_t a, b, c, d, f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return 0;
    uint64_t xcr0 = xgetbv0();
    int os_avx = (xcr0 & 0x6) == 0x6;       /* XMM + YMM state */
    int os_avx512 = (xcr0 & 0xe6) == 0xe6;  /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (!os_avx) return 0;
    if (fma) f |= BNE_CPU_FMA;
    if (__get_cpuid_max(0, 0) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    if (((b >> 5) & 1) && f16c) f |= BNE_CPU_AVX2; /* the avx2 variant converts halves with F16C */
    if (os_avx512) {
        if ((b >> 16) & 1) f |= BNE_CPU_AVX512F;
        if ((b >> 30) & 1) f |= BNE_CPU_AVX512BW;
        if ((b >> 31) & 1) f |= BNE_CPU_AVX512VL;
        if ((c >> 11) & 1) f |= BNE_CPU_AVX512VNNI;
    }
    return f;
}
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
uint32_t bne_detect_cpu(void) {
    unsigned long hw = getauxval(AT_HWCAP);
    uint32_t f = 0;
    if (hw & HWCAP_ASIMD) f |= BNE_CPU_NEON;
    if (hw & HWCAP_ASIMDDP) f |= BNE_CPU_DOTPROD;
    return f;
}
#elif defined(__aarch64__) && defined(__APPLE__)
/* Every Apple Silicon core has NEON and dotprod (ARMv8.4+). */
uint32_t bne_detect_cpu(void) { return BNE_CPU_NEON | BNE_CPU_DOTPROD; }
#elif defined(__aarch64__)
uint32_t bne_detect_cpu(void) { return BNE_CPU_NEON; }
#elif defined(__arm__) && defined(__linux__)
/* ARMv7-A: NEON is optional (Cortex-A9 without it: Tegra 2, Armada 370); the
 * kernel reports it in AT_HWCAP. */
#include <sys/auxv.h>
#ifndef HWCAP_ARM_NEON
#define HWCAP_ARM_NEON (1 << 12)
#endif
uint32_t bne_detect_cpu(void) {
    return (getauxval(AT_HWCAP) & HWCAP_ARM_NEON) ? BNE_CPU_NEON : 0;
}
#elif defined(__riscv) && __riscv_xlen == 64 && defined(__linux__)
/* RISC-V "V" 1.0 counts only when the kernel enables the vector unit for user
 * space (Linux >= 6.5).  riscv_hwprobe (Linux >= 6.4) answers for every online
 * hart at once; older kernels (and vendor kernels with V backported) only have
 * the HWCAP letter bits, where 'V' is bit 21. */
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef __NR_riscv_hwprobe
#define __NR_riscv_hwprobe 258
#endif
#define BNE_HWPROBE_KEY_IMA_EXT_0 4
#define BNE_HWPROBE_IMA_V (1ull << 2)
#define BNE_HWCAP_ISA_V (1ul << ('V' - 'A'))
struct bne_hwprobe { int64_t key; uint64_t value; };
uint32_t bne_detect_cpu(void) {
    struct bne_hwprobe pair = {BNE_HWPROBE_KEY_IMA_EXT_0, 0};
    /* cpusetsize 0 and cpus NULL: the answer holds for all online harts */
    if (syscall(__NR_riscv_hwprobe, &pair, (size_t)1, (size_t)0, (void *)0, 0u) == 0 && pair.key >= 0)
        return (pair.value & BNE_HWPROBE_IMA_V) ? BNE_CPU_RVV : 0;
    return (getauxval(AT_HWCAP) & BNE_HWCAP_ISA_V) ? BNE_CPU_RVV : 0;
}
#else
uint32_t bne_detect_cpu(void) { return 0; }
#endif
