// Package probe is the loader and reader on the path of one event: between
// the kernel side (bpf/, compiled by bpf2go into the objects committed
// here) and the session that runs it (pkg/session).
//
//   - Features and Backend (features.go, backend.go, preempt.go) decide, by
//     trial loads and attaches rather than version numbers, which backend
//     this kernel allows: fentry, kprobe or the kfree_skb tracepoint.
//   - Attach (probe.go) loads one backend's programs, configured once for
//     the whole load (config.go, bpf/config.bpf.h), relocated against the
//     running kernel's BTF and nf_conntrack's, and attaches them.
//   - Reader (reader.go) turns ring buffer records into event.Event with no
//     allocation; Sources, NamespaceCounts, Produced and Aggregated
//     (sources.go, stream.go) read the kernel's maps into the model's
//     counts; Sampler keeps the bounded maps from churning under a flood.
//
// Nothing here knows about commands, flags or output.
package probe
