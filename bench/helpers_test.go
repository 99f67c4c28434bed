package bench

import (
	"os"
	"testing"

	"github.com/cilium/ebpf/rlimit"
)

// BenchmarkBPFHelper is the per-helper micro-benchmark (`make bench-micro`
// as root; see bench/README.md): ns/op is the cost of one call of the
// case's body, as the kernel timed it with BPF_PROG_TEST_RUN, the frame's
// cost subtracted.
func BenchmarkBPFHelper(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: loads BPF programs and runs them with BPF_PROG_TEST_RUN (sudo make bench-micro)")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		b.Fatal(err)
	}
	for _, c := range MicroCases {
		b.Run(c.ID, func(b *testing.B) {
			b.StopTimer()
			m, err := NewMicroMaps()
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			r, err := NewMicroRunner(m, c)
			if err != nil {
				b.Skipf("%s: %v", c.Name, err)
			}
			defer r.Close()
			// One op is one body: b.N bodies are b.N/MicroCalls runs.
			repeat := max(1, b.N/MicroCalls)
			b.StartTimer()
			res, err := r.Measure(repeat)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(res.NsPerCall, "ns/op")
			b.ReportMetric(res.FrameNs, "frame-ns/run")
			if c.Tally != "" && res.Calls > 0 {
				b.ReportMetric(100*float64(res.Tally)/float64(res.Calls), c.Tally+"-%")
			}
		})
	}
}
