package probe

// The BPF objects are generated with Debian's clang (make generate) and
// committed, so that go build and go install need no clang. The second is
// the test programs of bpf/selftest.bpf.c, built from the same headers and
// written as _test.go files, so that only this package's tests carry them.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/bpf" -target amd64,arm64 -type ct_event -type ct_tuple -type ct_event_type -type ct_detail -type ct_confidence -type src_stat cttrace ../../bpf/cttrace.bpf.c -- -I../../bpf
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/bpf" -target amd64,arm64 -no-global-types -output-suffix _test selftest ../../bpf/selftest.bpf.c -- -I../../bpf
