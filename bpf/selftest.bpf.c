//go:build ignore
// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Test programs for the kernel side's logic, as cilium/tetragon's bpf/tests:
 * each wraps one of the headers' functions, user space runs it with
 * BPF_PROG_TEST_RUN (raw tracepoint programs take test runs since 5.10,
 * commit 1b4d60ec162f, "bpf: Enable BPF_PROG_TEST_RUN for raw_tracepoint")
 * and holds the result to its own definition (pkg/probe,
 * selftest_privileged_test.go). A separate object built from the same
 * headers: bpf2go writes its Go files as _test.go, so cttrace's own object
 * and binary never carry these programs, and no backend can load them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "cttrace.h"
#include "accounting.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* is_drop(args[0]): whether the kernel side counts that event type as a
 * drop (a source's last drop), which user space calls event.Reason.IsDrop. */
SEC("raw_tp")
int test_is_drop(struct bpf_raw_tracepoint_args *ctx)
{
	return is_drop(ctx->args[0]);
}
