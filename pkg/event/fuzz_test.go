package event

import (
	"testing"
)

// The parsers of what operators type (--src, --dst, --proto, --reason):
// an error or a value, never a panic, and a value that reads back as
// itself. `go test` runs the seeds; `-fuzz` explores.
func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.0.0.1", "::1", "2001:db8::/32", "::ffff:10.0.0.1", "300.1.1.1", "10.0.0.0/33", "fe80::1%eth0", "", "/", "1.2.3.4/", "::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCIDR(s)
		if err != nil {
			return
		}
		again, err := ParseCIDR(p.String())
		if err != nil || again != p {
			t.Fatalf("%q parsed as %s, which reads back as %s, %v", s, p, again, err)
		}
	})
}

func FuzzParseProtoAndReason(f *testing.F) {
	for _, s := range []string{"tcp", "UDP", "icmpv6", "6", "255", "256", "-1", "", "table_full", "Early_Drop", "gc_evict", " insert "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := ParseProto(s); err == nil {
			if again, err := ParseProto(ProtoName(p)); err != nil || again != p {
				t.Fatalf("%q parsed as %d (%q), which reads back as %d, %v", s, p, ProtoName(p), again, err)
			}
		}
		if r, err := ParseReason(s); err == nil && (!r.Valid() || r.KernelType() == 0) {
			t.Fatalf("%q parsed as reason %q, which is not one", s, r)
		}
	})
}
