package probe

import "testing"

// The sampler's choice: the smallest shift that keeps admissions within
// what the map can take a second, and never past MaxAdmitShift.
func TestAdmitShiftFor(t *testing.T) {
	for _, tc := range []struct {
		missed, perSec float64
		want           uint32
	}{
		{0, 16384, 0},
		{16384, 16384, 0},
		{16385, 16384, 1},
		{250_000, 16384, 4}, // 15,625 admitted a second
		{1_000_000, 4096, 8},
		{1e12, 1, MaxAdmitShift},
	} {
		if got := admitShiftFor(tc.missed, tc.perSec); got != tc.want {
			t.Errorf("admitShiftFor(%v, %v) = %d, want %d", tc.missed, tc.perSec, got, tc.want)
		}
	}
}
