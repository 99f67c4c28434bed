package output

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/cttrace/cttrace/pkg/status"
)

// statusJSON is `cttrace status -o json` (docs/status.md, schema 1).
type statusJSON struct {
	Schema     int               `json:"schema"`
	Type       string            `json:"type"`
	Time       string            `json:"time"`
	Kernel     string            `json:"kernel"`
	Max        int64             `json:"max"`
	Buckets    int64             `json:"buckets"`
	Namespaces []statusNetnsJSON `json:"namespaces"`
	Memory     statusMemoryJSON  `json:"memory"`
	Holders    []string          `json:"holders"`
	Advice     []adviceJSON      `json:"advice"`
}

type statusNetnsJSON struct {
	Netns    uint32           `json:"netns"`
	Name     string           `json:"name"`
	Path     string           `json:"path"`
	Entries  int64            `json:"entries"`
	Max      int64            `json:"max"`
	Fill     float64          `json:"fill"`
	Counters map[string]int64 `json:"counters"`
	Error    string           `json:"error"`
	// Users are what in the namespace's ruleset needs conntrack.
	Users      []causeJSON `json:"conntrack_users"`
	UsersError string      `json:"conntrack_users_error"`
}

type causeJSON struct {
	Family string `json:"family"`
	Table  string `json:"table"`
	Chain  string `json:"chain"`
	Handle uint64 `json:"handle"`
	What   string `json:"what"`
}

type sizingJSON struct {
	Max     int64 `json:"max"`
	Buckets int64 `json:"buckets"`
	Bytes   int64 `json:"bytes"`
}

type statusMemoryJSON struct {
	EntryBytes         int64       `json:"entry_bytes"`
	EntrySource        string      `json:"entry_source"`
	BucketBytes        int64       `json:"bucket_bytes"`
	Entries            int64       `json:"entries"`
	TableBytes         int64       `json:"table_bytes"`
	NowBytes           int64       `json:"now_bytes"`
	SlabObjects        int64       `json:"slab_objects"`
	FullNamespaceBytes int64       `json:"full_namespace_bytes"`
	AllFullBytes       int64       `json:"all_full_bytes"`
	RAMBytes           int64       `json:"ram_bytes"`
	Default            sizingJSON  `json:"default"`
	WhatIf             *sizingJSON `json:"what_if"`
}

type adviceJSON struct {
	Kind  string `json:"kind"`
	Netns uint32 `json:"netns"`
	Text  string `json:"text"`
	Basis string `json:"basis"`
	Rule  string `json:"rule"`
}

// counterNames are the kernel's counters, named as conntrack -S names them.
func counters(s *status.Namespace) map[string]int64 {
	st := &s.Stats
	return map[string]int64{
		"found": st.Found, "invalid": st.Invalid, "insert": st.Insert, "insert_failed": st.InsertFailed,
		"drop": st.Drop, "early_drop": st.EarlyDrop, "error": st.Error, "search_restart": st.SearchRestart,
		"clash_resolve": st.ClashResolve, "chaintoolong": st.ChainTooLong,
	}
}

// NewStatus writes `cttrace status`'s report: for a person, the
// namespaces' tables and counters (as conntrack -S has them), the memory,
// the modules and the advice; or as one JSON document (docs/status.md).
func NewStatus(w io.Writer, f Format) Writer[*status.Report] {
	return newDocument(w, f, writeStatusText, statusRecord)
}

// statusRecord is the report's JSON document.
func statusRecord(r *status.Report) any {
	m := r.Memory
	rec := statusJSON{Schema: SchemaVersion, Type: "status", Time: r.Time.UTC().Format(jsonTime), Kernel: r.Kernel,
		Max: r.Max, Buckets: r.Buckets, Namespaces: []statusNetnsJSON{}, Holders: append([]string{}, r.Holders...), Advice: []adviceJSON{},
		Memory: statusMemoryJSON{EntryBytes: m.EntryBytes, EntrySource: m.EntrySource, BucketBytes: m.BucketBytes, Entries: m.Entries,
			TableBytes: m.TableBytes, NowBytes: m.Now, SlabObjects: m.SlabObjects, FullNamespaceBytes: m.FullNamespace,
			AllFullBytes: m.AllFull, RAMBytes: m.RAMBytes, Default: sizingJSON(m.Default)}}
	if m.WhatIf != nil {
		w := sizingJSON(*m.WhatIf)
		rec.Memory.WhatIf = &w
	}
	for i := range r.Namespaces {
		ns := &r.Namespaces[i]
		j := statusNetnsJSON{Netns: ns.Inode, Name: ns.Name, Path: ns.Path, Entries: ns.Stats.Entries, Max: ns.Stats.Max,
			Fill: ns.Fill(), Counters: counters(ns)}
		if ns.Err != nil {
			j.Error = ns.Err.Error()
		}
		j.Users = []causeJSON{}
		for _, c := range ns.Causes {
			j.Users = append(j.Users, causeJSON(c))
		}
		if ns.CausesErr != nil {
			j.UsersError = ns.CausesErr.Error()
		}
		rec.Namespaces = append(rec.Namespaces, j)
	}
	for _, a := range r.Advice {
		rec.Advice = append(rec.Advice, adviceJSON(a))
	}
	return rec
}

func writeStatusText(w io.Writer, r *status.Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "conntrack on Linux %s: nf_conntrack_max %d, nf_conntrack_buckets %d (both global; the max applies to each namespace's count)\n\n",
		r.Kernel, r.Max, r.Buckets)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "NETNS\tNAME\tENTRIES\tMAX\tFILL\tFOUND\tINVALID\tINSERT\tINSERT_FAILED\tDROP\tEARLY_DROP\tERROR\tSEARCH_RESTART\tCLASH_RESOLVE\tCHAINTOOLONG\t")
	for i := range r.Namespaces {
		ns := &r.Namespaces[i]
		name := ns.Name
		if name == "" {
			name = "-"
		}
		if ns.Err != nil {
			fmt.Fprintf(tw, "%d\t%s\t-\t-\t-\t\t\t\t\t\t\t\t\t\t\t(%v)\n", ns.Inode, name, ns.Err)
			continue
		}
		st := &ns.Stats
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", ns.Inode, name, st.Entries, st.Max, fill(ns.Fill()),
			st.Found, st.Invalid, st.Insert, st.InsertFailed, st.Drop, st.EarlyDrop, st.Error, st.SearchRestart, st.ClashResolve, st.ChainTooLong)
	}
	tw.Flush()

	m := r.Memory
	fmt.Fprintf(&b, "\nmemory (%d bytes an entry, from %s; %d bytes a bucket; unswappable kernel memory)\n", m.EntryBytes, m.EntrySource, m.BucketBytes)
	slab := ""
	if m.SlabObjects >= 0 {
		slab = fmt.Sprintf("  (the slab cache: %d objects in use, %s)", m.SlabObjects, status.Bytes(m.SlabObjects*m.EntryBytes))
	}
	fmt.Fprintf(&b, "  now        %d entries: %s + hash table %s = %s%s\n", m.Entries, status.Bytes(m.Entries*m.EntryBytes),
		status.Bytes(m.TableBytes), status.Bytes(m.Now), slab)
	fmt.Fprintf(&b, "  at the max %s a full namespace; %s if every namespace in use (%d) were full\n", status.Bytes(m.FullNamespace),
		status.Bytes(m.AllFull), len(r.Namespaces))
	fmt.Fprintf(&b, "  default    for this machine's %s of RAM the kernel would set max %d and buckets %d: %s a full namespace\n",
		status.Bytes(m.RAMBytes), m.Default.Max, m.Default.Buckets, status.Bytes(m.Default.Bytes))
	if m.WhatIf != nil {
		fmt.Fprintf(&b, "  what if    max %d and buckets %d: %s a full namespace (%s in entries, %s of hash table)\n", m.WhatIf.Max, m.WhatIf.Buckets,
			status.Bytes(m.WhatIf.Bytes), status.Bytes(m.WhatIf.Max*m.EntryBytes), status.Bytes(m.WhatIf.Buckets*m.BucketBytes))
	}
	b.WriteString("\nwhy conntrack is on (nftables rules and chains that need it; iptables-nft rules included, iptables-legacy not read):\n")
	for i := range r.Namespaces {
		ns := &r.Namespaces[i]
		switch {
		case ns.CausesErr != nil:
			fmt.Fprintf(&b, "  %s: %v\n", ns.Namespace, ns.CausesErr)
		case len(ns.Causes) == 0:
			fmt.Fprintf(&b, "  %s: no rule that needs it (a module, or rules nftables cannot see)\n", ns.Namespace)
		}
		for _, c := range ns.Causes {
			fmt.Fprintf(&b, "  %s: %s\n", ns.Namespace, c)
		}
	}
	if len(r.Holders) > 0 {
		fmt.Fprintf(&b, "modules holding nf_conntrack: %s\n", strings.Join(r.Holders, ", "))
	}
	if len(r.Advice) > 0 {
		b.WriteString("\nadvice (printed, never applied):\n")
		for _, a := range r.Advice {
			fmt.Fprintf(&b, "  - %s\n      because: %s\n", a.Text, a.Basis)
			if a.Rule != "" {
				for _, l := range strings.Split(strings.TrimRight(a.Rule, "\n"), "\n") {
					fmt.Fprintf(&b, "        %s\n", strings.ReplaceAll(l, "\t", "    "))
				}
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
