package status

import (
	"strings"
	"testing"

	"github.com/cttrace/cttrace/pkg/table"
)

// The kernel's default sizing (nf_conntrack_init_start), for machines on
// both sides of its thresholds and of the 5.15 change.
func TestDefaultSizing(t *testing.T) {
	const gb = int64(1) << 30
	for _, tt := range []struct {
		ram          int64
		kernel       string
		max, buckets int64
	}{
		{24 * gb, "6.18.44", 262144, 262144},      // this machine: 262144 both, as its sysctls say
		{2 * gb, "6.1.0-56-amd64", 65536, 65536},  // past 1 GB
		{512 << 20, "6.12.1", 4096, 4096},         // 512 MB / 16384 / 8
		{64 << 20, "6.12.1", 1024, 1024},          // the floor
		{2 * gb, "5.10.0-46-amd64", 65536, 16384}, // before 5.15: 16384 buckets, max four times
		{512 << 20, "5.10.0", 16384, 4096},
	} {
		max, buckets := defaultSizing(tt.ram, tt.kernel)
		if max != tt.max || buckets != tt.buckets {
			t.Errorf("%d MB on %s: max %d, buckets %d; want %d, %d", tt.ram>>20, tt.kernel, max, buckets, tt.max, tt.buckets)
		}
	}
}

func report(max, buckets int64, entries ...int64) *Report {
	r := &Report{Max: max, Buckets: buckets, Memory: Memory{EntryBytes: 256, BucketBytes: 8, RAMBytes: 16 << 30}}
	for i, n := range entries {
		r.Namespaces = append(r.Namespaces, Namespace{Namespace: table.Namespace{Inode: uint32(4026531840 + i)},
			Stats: table.Stats{Entries: n, Max: max}})
	}
	r.Memory.AllFull = int64(len(entries))*max*256 + buckets*8
	return r
}

func adviceOf(r *Report, kind string) []Advice {
	var out []Advice
	for _, a := range advise(r) {
		if a.Kind == kind {
			out = append(out, a)
		}
	}
	return out
}

// Each piece of advice appears when its figure calls for it, names that
// figure, and stays away otherwise.
func TestAdvice(t *testing.T) {
	quiet := report(262144, 262144, 100, 2000)
	for _, kind := range []string{"fill", "refusals", "buckets", "memory"} {
		if a := adviceOf(quiet, kind); len(a) != 0 {
			t.Errorf("a quiet host gets %s advice: %+v", kind, a)
		}
	}
	if a := adviceOf(quiet, "size"); len(a) != 1 || !strings.Contains(a[0].Text, "leaves room") {
		t.Errorf("size advice on a quiet host: %+v", a)
	}

	busy := report(65536, 8192, 100, 60000)
	busy.Namespaces[1].Stats.Drop = 7
	if a := adviceOf(busy, "fill"); len(a) != 1 || a[0].Netns != busy.Namespaces[1].Inode || !strings.Contains(a[0].Basis, "entries 60000 of max 65536") {
		t.Errorf("fill advice: %+v", a)
	}
	if a := adviceOf(busy, "refusals"); len(a) != 1 || !strings.Contains(a[0].Basis, "drop 7") {
		t.Errorf("refusals advice: %+v", a)
	}
	// 60000 entries, room to double: 2^17 = 131072 (45.8 % full).
	if a := adviceOf(busy, "size"); len(a) != 1 || !strings.Contains(a[0].Text, "max to 131072 and nf_conntrack_buckets to 131072") || !strings.Contains(a[0].Text, "46%") {
		t.Errorf("size advice: %+v", a)
	}
	if a := adviceOf(busy, "buckets"); len(a) != 1 || !strings.Contains(a[0].Text, "nf_conntrack_buckets=65536") {
		t.Errorf("buckets advice (max 8 × buckets): %+v", a)
	}
	huge := report(4<<20, 4<<20, 10, 10) // two namespaces of 4M entries: 2 GiB of 16
	if a := adviceOf(huge, "memory"); len(a) != 1 || !strings.Contains(a[0].Text, "% of RAM") {
		t.Errorf("memory advice: %+v", a)
	}
}

func TestBytesAndPowers(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 64 << 20: "64 MiB", 3 << 30: "3.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]int64{0: 1, 1: 1, 2: 2, 3: 4, 120000: 131072, 131072: 131072} {
		if got := nextPow2(n); got != want {
			t.Errorf("nextPow2(%d) = %d, want %d", n, got, want)
		}
	}
}
