package status

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/cttrace/cttrace/pkg/host"
)

// Memory is what the table costs in unswappable kernel memory, priced
// with the running kernel's own entry size.
type Memory struct {
	// EntryBytes is what one entry takes in its slab cache, and
	// EntrySource where that was read.
	EntryBytes  int64
	EntrySource string
	// BucketBytes is one hash bucket: a pointer (struct hlist_nulls_head).
	BucketBytes int64
	// Entries is every namespace's entries now; TableBytes the hash table
	// (one for the host, whatever the namespaces).
	Entries, TableBytes int64
	// Now is Entries × EntryBytes + TableBytes.
	Now int64
	// SlabObjects is the slab cache's own count of objects in use (with
	// what its per-CPU caches hold), -1 when the kernel does not say: the
	// figure Now's entries are checked against.
	SlabObjects int64
	// FullNamespace is one namespace at the max; the max applies to each
	// namespace's count, so the host's worst case is that times the
	// namespaces in use, plus the table.
	FullNamespace, AllFull int64
	// RAMBytes is the machine's memory (MemTotal), and Default the table
	// the kernel sizes for it when nothing is set.
	RAMBytes int64
	Default  Sizing
	// WhatIf prices the operator's --what-if-max (nil without).
	WhatIf *Sizing
}

// Sizing is a table size and what one full namespace of it costs.
type Sizing struct {
	Max, Buckets int64
	Bytes        int64 // Max entries and Buckets buckets
}

func (m *Memory) price(max, buckets int64) Sizing {
	return Sizing{Max: max, Buckets: buckets, Bytes: max*m.EntryBytes + buckets*m.BucketBytes}
}

// Where the kernel says how big an entry is: SLUB's sysfs, /proc/slabinfo,
// or, where neither is readable, struct nf_conn in the kernel's BTF.
var (
	slabDir      = "/sys/kernel/slab/nf_conntrack"
	slabinfoPath = "/proc/slabinfo"
	meminfoPath  = "/proc/meminfo"
)

func priceMemory(r *Report, opts Options) (Memory, error) {
	m := Memory{BucketBytes: int64(unsafe.Sizeof(uintptr(0))), SlabObjects: -1}
	var err error
	if m.EntryBytes, m.SlabObjects, m.EntrySource, err = entrySize(); err != nil {
		return m, err
	}
	for _, ns := range r.Namespaces {
		m.Entries += ns.Stats.Entries
	}
	m.TableBytes = r.Buckets * m.BucketBytes
	m.Now = m.Entries*m.EntryBytes + m.TableBytes
	m.FullNamespace = r.Max * m.EntryBytes
	m.AllFull = int64(len(r.Namespaces))*m.FullNamespace + m.TableBytes
	if m.RAMBytes, err = ramBytes(); err != nil {
		return m, err
	}
	max, buckets := defaultSizing(m.RAMBytes, r.Kernel)
	m.Default = m.price(max, buckets)
	if opts.WhatIfMax > 0 {
		b := opts.WhatIfBuckets
		if b <= 0 {
			b = opts.WhatIfMax
		}
		w := m.price(opts.WhatIfMax, b)
		m.WhatIf = &w
	}
	return m, nil
}

// entrySize returns the bytes an entry takes, the objects the cache has in
// use (-1 if unknown), and where the size was read.
func entrySize() (size, inUse int64, source string, err error) {
	if size, err = host.ReadInt(slabDir + "/slab_size"); err == nil {
		inUse = -1
		if b, err := os.ReadFile(slabDir + "/objects"); err == nil {
			// "160 N0=160": the total, then per NUMA node.
			if f := strings.Fields(string(b)); len(f) > 0 {
				inUse, _ = strconv.ParseInt(f[0], 10, 64)
			}
		}
		return size, inUse, slabDir + "/slab_size", nil
	}
	if size, inUse, err = slabinfo(); err == nil {
		return size, inUse, slabinfoPath, nil
	}
	size, err = btfSize()
	if err != nil {
		return 0, -1, "", fmt.Errorf("the size of a conntrack entry: no slab information (%s, %s) and %w", slabDir, slabinfoPath, err)
	}
	return size, -1, "BTF struct nf_conn (without the slab's rounding)", nil
}

// slabinfo reads the nf_conntrack line of /proc/slabinfo: name,
// active_objs, num_objs, objsize, ...
func slabinfo() (size, inUse int64, err error) {
	f, err := os.Open(slabinfoPath)
	if err != nil {
		return 0, -1, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[0] != "nf_conntrack" {
			continue
		}
		inUse, err1 := strconv.ParseInt(fields[1], 10, 64)
		size, err2 := strconv.ParseInt(fields[3], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, -1, fmt.Errorf("%s: %w", slabinfoPath, err)
		}
		return size, inUse, nil
	}
	return 0, -1, fmt.Errorf("%s: no nf_conntrack cache", slabinfoPath)
}

// btfSize is sizeof(struct nf_conn), from nf_conntrack's split BTF when it
// is a module, else from vmlinux's.
func btfSize() (int64, error) {
	spec, err := btf.LoadKernelModuleSpec("nf_conntrack")
	if err != nil {
		if spec, err = btf.LoadKernelSpec(); err != nil {
			return 0, fmt.Errorf("kernel btf: %w", err)
		}
	}
	var s *btf.Struct
	if err := spec.TypeByName("nf_conn", &s); err != nil {
		return 0, fmt.Errorf("struct nf_conn in the kernel's btf: %w", err)
	}
	return int64(s.Size), nil
}

func ramBytes() (int64, error) {
	f, err := os.Open(meminfoPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if kb, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", meminfoPath, err)
			}
			return n << 10, nil
		}
	}
	return 0, fmt.Errorf("%s: no MemTotal", meminfoPath)
}

// defaultSizing is the table the kernel sizes for ram bytes of memory when
// neither nf_conntrack_max nor the hashsize module parameter is set
// (nf_conntrack_init_start): 1/16384 of memory in buckets, at least 1024,
// capped at 65536 past 1 GB and 262144 past 4 GB on 64-bit machines, and a
// max equal to the buckets, since Linux 5.15 (commit d532bcd0b269,
// "netfilter: conntrack: sanitize table size default settings"). Before,
// 16384 buckets past 1 GB, and a max four times the buckets.
func defaultSizing(ram int64, kernel string) (limit, buckets int64) {
	const gb = 1 << 30
	buckets = ram / 16384 / int64(unsafe.Sizeof(uintptr(0)))
	if kernelBefore(kernel, 5, 15) {
		if ram > gb {
			buckets = 16384
		}
		buckets = max(buckets, 32)
		return 4 * buckets, buckets
	}
	switch {
	case unsafe.Sizeof(uintptr(0)) == 8 && ram > 4*gb:
		buckets = 262144
	case ram > gb:
		buckets = 65536
	}
	buckets = max(buckets, 1024)
	return buckets, buckets
}

// kernelBefore says whether release (6.1.0-56-amd64) is older than
// major.minor.
func kernelBefore(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma < major || ma == major && mi < minor
}
