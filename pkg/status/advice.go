package status

import (
	"fmt"
	"math/bits"
)

// Advice is one thing the operator could do, or should know, and the
// figure it rests on. It is printed, never applied.
type Advice struct {
	Kind  string // fill, refusals, size, buckets, memory
	Netns uint32 // 0: the host
	Text  string
	// Basis is the reading the advice rests on, in the report's terms.
	Basis string
	// Rule is an nftables ruleset that would act on it, or "".
	Rule string
}

// Thresholds of the advice.
const (
	nearlyFull = 0.9 // a namespace this full refuses new flows soon
	// roomyFill is the fill a suggested max leaves the fullest namespace
	// at: room for the peak to double before anything is refused.
	roomyFill = 0.5
	// longChains is max / buckets past which chains get long: every entry
	// is hashed twice (both directions), so a max equal to the buckets
	// (the kernel's default) already means two a bucket on average.
	longChains = 4
	// ramShare is the share of RAM past which full tables are worth a
	// warning.
	ramShare = 0.1
)

func advise(r *Report) []Advice {
	var out []Advice
	var fullest *Namespace
	for i := range r.Namespaces {
		ns := &r.Namespaces[i]
		if ns.Err != nil {
			continue
		}
		if fullest == nil || ns.Stats.Entries > fullest.Stats.Entries {
			fullest = ns
		}
		if f := ns.Fill(); f >= nearlyFull {
			out = append(out, Advice{Kind: "fill", Netns: ns.Inode,
				Text:  fmt.Sprintf("%s is %.0f%% full: new flows are refused (or entries evicted) once it reaches the max", ns, 100*f),
				Basis: fmt.Sprintf("entries %d of max %d", ns.Stats.Entries, ns.Stats.Max)})
		}
		if ns.filler != nil {
			for _, advice := range []func(*Namespace, Filler) (Advice, bool){prefixAdvice, serviceAdvice} {
				if a, ok := advice(ns, *ns.filler); ok {
					out = append(out, a)
				}
			}
		}
		if ns.Stats.Drop > 0 || ns.Stats.EarlyDrop > 0 {
			out = append(out, Advice{Kind: "refusals", Netns: ns.Inode,
				Text: fmt.Sprintf("%s has refused flows or evicted entries since it was created: `cttrace top-sources --netns %d` shows who, `cttrace drops` when",
					ns, ns.Inode),
				Basis: fmt.Sprintf("drop %d, early_drop %d, insert_failed %d", ns.Stats.Drop, ns.Stats.EarlyDrop, ns.Stats.InsertFailed)})
		}
	}
	if fullest != nil {
		out = append(out, sizeAdvice(r, fullest))
	}
	if r.Buckets > 0 && r.Max > longChains*r.Buckets {
		out = append(out, Advice{Kind: "buckets",
			Text: fmt.Sprintf("raise nf_conntrack_buckets to %d (sysctl -w net.netfilter.nf_conntrack_buckets=%d): at the max, chains would be %d entries long on average, and every lookup walks one",
				r.Max, r.Max, 2*r.Max/r.Buckets),
			Basis: fmt.Sprintf("max %d, buckets %d", r.Max, r.Buckets)})
	}
	if m := r.Memory; m.RAMBytes > 0 && float64(m.AllFull) > ramShare*float64(m.RAMBytes) {
		out = append(out, Advice{Kind: "memory",
			Text: fmt.Sprintf("if every namespace in use filled its table, conntrack would take %s, %.0f%% of RAM, unswappable",
				Bytes(m.AllFull), 100*float64(m.AllFull)/float64(m.RAMBytes)),
			Basis: fmt.Sprintf("%d namespaces × max %d × %d bytes + buckets %d × %d bytes; RAM %s",
				len(r.Namespaces), r.Max, m.EntryBytes, r.Buckets, m.BucketBytes, Bytes(m.RAMBytes))})
	}
	return out
}

// sizeAdvice prices a max for the fullest namespace's peak with room to
// double, or says the max leaves room already.
func sizeAdvice(r *Report, fullest *Namespace) Advice {
	peak := fullest.Stats.Entries
	basis := fmt.Sprintf("fullest: %s, entries %d of max %d", fullest, peak, r.Max)
	if r.Max > 0 && float64(peak) <= roomyFill*float64(r.Max) {
		return Advice{Kind: "size", Text: fmt.Sprintf("the max leaves room: the fullest namespace is at %.0f%%", 100*float64(peak)/float64(r.Max)), Basis: basis}
	}
	want := nextPow2(int64(float64(peak) / roomyFill))
	// Never fewer buckets than now: shorter chains are never the problem.
	buckets := max(want, r.Buckets)
	s := r.Memory.price(want, buckets)
	return Advice{Kind: "size",
		Text: fmt.Sprintf("raise nf_conntrack_max to %d and nf_conntrack_buckets to %d (sysctl -w net.netfilter.nf_conntrack_max=%d net.netfilter.nf_conntrack_buckets=%d): the fullest namespace would be at %.0f%%; a full namespace would then take %s, the hash table %s",
			want, buckets, want, buckets, 100*float64(peak)/float64(want), Bytes(want*r.Memory.EntryBytes), Bytes(buckets*r.Memory.BucketBytes)),
		Basis: fmt.Sprintf("%s; %d bytes an entry, %d a bucket: %s in all", basis, r.Memory.EntryBytes, r.Memory.BucketBytes, Bytes(s.Bytes))}
}

func nextPow2(n int64) int64 {
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len64(uint64(n-1))
}

// Bytes writes n bytes as an operator reads them: 1.5 GiB, 64 MiB, 40 KiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, suffix := float64(n), ""
	for _, s := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= unit
		suffix = s
		if v < unit {
			break
		}
	}
	if v < 10 {
		return fmt.Sprintf("%.1f %s", v, suffix)
	}
	return fmt.Sprintf("%.0f %s", v, suffix)
}
