package status

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// BenchmarkGatherWithThousandNamespaces is `cttrace status`'s reading on a
// host with 1,000 network namespaces besides its own (issue 9 asks for
// under a second): each is entered and its statistics read over
// ctnetlink. It needs root (it creates the namespaces, and deletes them);
// without, it skips and says so. `sudo make bench-micro` runs it.
func BenchmarkGatherWithThousandNamespaces(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: it creates 1,000 network namespaces")
	}
	const n = 1000
	start := time.Now()
	for i := range n {
		name := fmt.Sprintf("cttrace-bench-%d-%d", os.Getpid(), i)
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			b.Fatalf("ip netns add: %v: %s", err, out)
		}
		b.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	}
	b.Logf("created %d namespaces in %s", n, time.Since(start).Round(time.Millisecond))
	b.ResetTimer()
	for b.Loop() {
		if _, err := Gather(Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/reading")
}
