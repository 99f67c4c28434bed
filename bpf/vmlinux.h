/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Kernel types for CO-RE, one dump per architecture (bpf/README.md says how
 * each was made). Offsets are relocated at load time against the running
 * kernel's BTF, so one dump serves every kernel of its architecture; the
 * architecture matters for what CO-RE does not relocate: struct pt_regs
 * (user_pt_regs on arm64), which bpf_tracing.h reads kprobe arguments from.
 * bpf2go defines __TARGET_ARCH_<arch> for each -target.
 */
#if defined(__TARGET_ARCH_x86)
#include "x86/vmlinux.h"
#elif defined(__TARGET_ARCH_arm64)
#include "arm64/vmlinux.h"
#else
#error "cttrace's BPF objects are built for -target amd64 or arm64 (bpf2go defines __TARGET_ARCH_*)"
#endif
