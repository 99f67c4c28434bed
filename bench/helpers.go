package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Per-helper costs, measured with BPF_PROG_TEST_RUN (BenchmarkBPFHelper,
// `make bench-micro`): for each case, two socket-filter programs built with
// the asm package, identical but for a body repeated MicroCalls times in
// one of them; the kernel times both over many runs, and the difference per
// run divided by MicroCalls is the cost of one body: one helper call with
// what it needs around it (a key derived, a NULL check), as cttrace's hot
// path makes them. Frame of every program:
//
//	R9 = &counter (a per-CPU array value {u64 next, u64 tally})
//	R6 = counter.next: a per-run base for the keys (each body derives its
//	     key from R6 + its index, so that no key repeats across runs)
//	R8 = tally: hits, or failures, counted by the bodies
//	stack: fp-32..fp-8 the 24-byte key {a, b, c}; fp-112..fp-33 an 80-byte
//	       value (cttrace's per-source value is 80 bytes); fp-256..fp-129
//	       a 128-byte record; fp-272..fp-257 a 16-byte buffer
//	epilogue: counter.next += MicroCalls; counter.tally += R8
const MicroCalls = 32

// Micro-benchmark map shapes, as cttrace's per-source map.
const (
	MicroEntries   = 65536
	MicroKeySize   = 24
	MicroValueSize = 80
	microRecord    = 128
	microRingSize  = 16 << 20
)

// Stack offsets of the frame.
const (
	offKey    = -32
	offValue  = -112
	offRecord = -256
	offBuf    = -272
	offZero   = -276 // a u32 0, the key of one-entry arrays
)

// Key fields' b values: filled keys have microKeyB; misses and inserts use
// others, so that they never meet a filled key.
const (
	microKeyB    = 0x1111
	microMissB   = 0x3333
	microInsertB = 0x4444
	// 0x9e3779b97f4a7c15 (2^64 / the golden ratio, odd) as an int64.
	microGolden = -0x61c8864680b583eb
)

// MicroMaps are the maps the cases use; Close releases them.
type MicroMaps struct {
	Counter *ebpf.Map // per-CPU array, 1 × {next, tally}
	PerCPU  *ebpf.Map // per-CPU array, 1 × u64
	Shared  *ebpf.Map // array, 1 × u64
	Hash    *ebpf.Map // HASH, MicroEntries × (24-byte key → 80-byte value), filled
	LRU     *ebpf.Map // LRU_HASH, the same, filled
	Ring    *ebpf.Map // RINGBUF, microRingSize
	// LRU_PERCPU_HASH, 1024 × (u32 → 64 bytes), holding key 1: cttrace's
	// per-namespace totals.
	Netns *ebpf.Map
}

// NewMicroMaps creates the maps, the hash maps filled with keys {i,
// microKeyB, 0x2222} for i < MicroEntries.
func NewMicroMaps() (*MicroMaps, error) {
	m := &MicroMaps{}
	var err error
	mk := func(spec *ebpf.MapSpec) *ebpf.Map {
		if err != nil {
			return nil
		}
		var mp *ebpf.Map
		mp, err = ebpf.NewMap(spec)
		if err != nil {
			err = fmt.Errorf("map %s: %w", spec.Name, err)
		}
		return mp
	}
	m.Counter = mk(&ebpf.MapSpec{Name: "micro_counter", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	m.PerCPU = mk(&ebpf.MapSpec{Name: "micro_percpu", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	m.Shared = mk(&ebpf.MapSpec{Name: "micro_shared", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	m.Hash = mk(&ebpf.MapSpec{Name: "micro_hash", Type: ebpf.Hash, KeySize: MicroKeySize, ValueSize: MicroValueSize, MaxEntries: MicroEntries})
	m.LRU = mk(&ebpf.MapSpec{Name: "micro_lru", Type: ebpf.LRUHash, KeySize: MicroKeySize, ValueSize: MicroValueSize, MaxEntries: MicroEntries})
	m.Ring = mk(&ebpf.MapSpec{Name: "micro_ring", Type: ebpf.RingBuf, MaxEntries: microRingSize})
	m.Netns = mk(&ebpf.MapSpec{Name: "micro_netns", Type: ebpf.LRUCPUHash, KeySize: 4, ValueSize: 64, MaxEntries: 1024})
	if err == nil {
		err = m.Fill()
	}
	if err == nil {
		n, perr := ebpf.PossibleCPU()
		if err = perr; err == nil {
			vals := make([][]byte, n)
			for i := range vals {
				vals[i] = make([]byte, 64)
			}
			err = m.Netns.Put(uint32(1), vals)
		}
	}
	if err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Fill (re)writes keys 0..MicroEntries-1 into both hash maps.
func (m *MicroMaps) Fill() error {
	keys := make([]byte, MicroEntries*MicroKeySize)
	vals := make([]byte, MicroEntries*MicroValueSize)
	for i := range MicroEntries {
		k := keys[i*MicroKeySize:]
		binary.NativeEndian.PutUint64(k[0:], uint64(i))
		binary.NativeEndian.PutUint64(k[8:], microKeyB)
		binary.NativeEndian.PutUint64(k[16:], 0x2222)
	}
	for _, mp := range []*ebpf.Map{m.Hash, m.LRU} {
		if _, err := mp.BatchUpdate(keys, vals, nil); err != nil {
			// Kernels or map types without batch updates: one by one.
			for i := range MicroEntries {
				if err := mp.Put(keys[i*MicroKeySize:(i+1)*MicroKeySize], vals[i*MicroValueSize:(i+1)*MicroValueSize]); err != nil {
					return fmt.Errorf("fill %v: %w", mp, err)
				}
			}
		}
	}
	return nil
}

// Present counts the filled keys the map holds now.
func (m *MicroMaps) Present(mp *ebpf.Map) int {
	k := make([]byte, MicroKeySize)
	v := make([]byte, MicroValueSize)
	n := 0
	for i := range MicroEntries {
		binary.NativeEndian.PutUint64(k[0:], uint64(i))
		binary.NativeEndian.PutUint64(k[8:], microKeyB)
		binary.NativeEndian.PutUint64(k[16:], 0x2222)
		if mp.Lookup(k, v) == nil {
			n++
		}
	}
	return n
}

// Tally is the sum over CPUs of the bodies' tallies so far, and of the
// counter's next (calls made).
func (m *MicroMaps) Tally() (calls, tally uint64, err error) {
	var per [][]byte
	if err := m.Counter.Lookup(uint32(0), &per); err != nil {
		return 0, 0, err
	}
	for _, v := range per {
		calls += binary.NativeEndian.Uint64(v[0:])
		tally += binary.NativeEndian.Uint64(v[8:])
	}
	return calls, tally, nil
}

// ResetTally zeroes the counter on every CPU.
func (m *MicroMaps) ResetTally() error {
	per := make([][]byte, 0, runtime.NumCPU())
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	for range n {
		per = append(per, make([]byte, 16))
	}
	return m.Counter.Put(uint32(0), per)
}

// Close releases the maps.
func (m *MicroMaps) Close() {
	for _, mp := range []*ebpf.Map{m.Counter, m.PerCPU, m.Shared, m.Hash, m.LRU, m.Ring, m.Netns} {
		if mp != nil {
			mp.Close()
		}
	}
}

// MicroCase is one measured body.
type MicroCase struct {
	ID   string // the sub-benchmark's name
	Name string
	// Setup runs once per program, after the frame's prologue (the key
	// area holds {0, microKeyB, 0x2222}, the value and record areas are
	// zero).
	Setup func(m *MicroMaps) asm.Instructions
	// Body is the i-th of the repeated bodies.
	Body func(m *MicroMaps, i int) asm.Instructions
	// Tally says what R8 counts ("hit", "fail"), "" for nothing.
	Tally string
	// Parallel: run on every CPU at once (contention on shared state).
	Parallel bool
	// Ring: the case writes into the ring buffer, drained between runs
	// (Reader: a reader waits in epoll meanwhile, woken by wakeups).
	Ring, Reader bool
}

// storeImm64 emits *(u64 *)(fp + off) = imm (sign-extended), which the
// kernel allows but asm.StoreImm refuses for DWord.
func storeImm64(off int16, imm int64) asm.Instruction {
	return asm.Instruction{OpCode: asm.StoreImmOp(asm.DWord), Dst: asm.RFP, Offset: off, Constant: imm}
}

// deriveKey emits R1 = mix(R6 + i): a multiply by the golden ratio and an
// xor-shift, a bijection of uint64, so that keys spread over the hash and
// never repeat. Clobbers R2.
func deriveKey(i int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Add.Imm(asm.R1, int32(i)),
		asm.LoadImm(asm.R2, microGolden, asm.DWord),
		asm.Mul.Reg(asm.R1, asm.R2),
		asm.Mov.Reg(asm.R2, asm.R1),
		asm.RSh.Imm(asm.R2, 29),
		asm.Xor.Reg(asm.R1, asm.R2),
	}
}

// lookup emits a lookup of the key area in mp, R8++ when found.
func lookup(mp *ebpf.Map, i int) asm.Instructions {
	skip := fmt.Sprintf("miss%d", i)
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, mp.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, offKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, skip),
		asm.Add.Imm(asm.R8, 1),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(skip),
	}
}

// countFail emits R8++ when R0 != 0 (a helper's error).
func countFail(i int) asm.Instructions {
	ok := fmt.Sprintf("ok%d", i)
	return asm.Instructions{
		asm.JEq.Imm(asm.R0, 0, ok),
		asm.Add.Imm(asm.R8, 1),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(ok),
	}
}

func call(fn asm.BuiltinFunc) func(*MicroMaps, int) asm.Instructions {
	return func(*MicroMaps, int) asm.Instructions { return asm.Instructions{fn.Call()} }
}

// lastKey is the filled key inserted last, which an LRU map surely holds
// (its first keys may have been evicted while it was filled: the LRU lists
// keep free nodes per CPU).
func lastKey(*MicroMaps) asm.Instructions {
	return asm.Instructions{storeImm64(offKey, MicroEntries-1)}
}

// netnsKey puts u32 1 at the buffer (the key the netns map holds).
func netnsKey(*MicroMaps) asm.Instructions {
	return asm.Instructions{asm.StoreImm(asm.RFP, offBuf, 1, asm.Word)}
}

func setKeyB(b int32) func(*MicroMaps) asm.Instructions {
	return func(*MicroMaps) asm.Instructions {
		return asm.Instructions{storeImm64(offKey+8, int64(b))}
	}
}

func ringOutput(flags int32) func(*MicroMaps, int) asm.Instructions {
	return func(m *MicroMaps, i int) asm.Instructions {
		return append(asm.Instructions{
			asm.LoadMapPtr(asm.R1, m.Ring.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, offRecord),
			asm.Mov.Imm(asm.R3, microRecord),
			asm.Mov.Imm(asm.R4, flags),
			asm.FnRingbufOutput.Call(),
		}, countFail(i)...)
	}
}

// BPF_RB_* flags of bpf_ringbuf_output.
const (
	rbNoWakeup    = 1
	rbForceWakeup = 2
)

// MicroCases are the cases of BenchmarkBPFHelper, in the order of the
// README's table.
var MicroCases = []MicroCase{
	{ID: "frame", Name: "frame only (no body; ns/run of the frame, not a difference)"},
	{ID: "key_derivation", Name: "key derivation only (mix of a counter, the keyed cases' overhead)", Body: func(_ *MicroMaps, i int) asm.Instructions {
		return append(deriveKey(i), asm.StoreMem(asm.RFP, offKey, asm.R1, asm.DWord))
	}},
	{ID: "ktime_get_boot_ns", Name: "bpf_ktime_get_boot_ns", Body: call(asm.FnKtimeGetBootNs)},
	{ID: "ktime_get_ns", Name: "bpf_ktime_get_ns", Body: call(asm.FnKtimeGetNs)},
	{ID: "ktime_get_coarse_ns", Name: "bpf_ktime_get_coarse_ns", Body: call(asm.FnKtimeGetCoarseNs)},
	{ID: "jiffies64", Name: "bpf_jiffies64", Body: call(asm.FnJiffies64)},
	{ID: "get_prandom_u32", Name: "bpf_get_prandom_u32", Body: call(asm.FnGetPrandomU32)},
	{ID: "get_smp_processor_id", Name: "bpf_get_smp_processor_id", Body: call(asm.FnGetSmpProcessorId)},
	{ID: "probe_read_kernel_16", Name: "bpf_probe_read_kernel, 16 bytes", Body: func(_ *MicroMaps, i int) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, asm.RFP), asm.Add.Imm(asm.R1, offBuf),
			asm.Mov.Imm(asm.R2, 16),
			asm.Mov.Reg(asm.R3, asm.RFP), asm.Add.Imm(asm.R3, offKey),
			asm.FnProbeReadKernel.Call(),
		}
	}},
	{ID: "percpu_array_inc", Name: "per-CPU array lookup + increment", Body: func(m *MicroMaps, i int) asm.Instructions {
		skip := fmt.Sprintf("null%d", i)
		return asm.Instructions{
			asm.LoadMapPtr(asm.R1, m.PerCPU.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, offZero),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, skip),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 0).WithSymbol(skip),
		}
	}},
	{ID: "atomic_add", Name: "atomic add to a shared array value (one CPU)", Setup: sharedValue, Body: atomicAdd},
	{ID: "atomic_add_2cpus", Name: "atomic add to a shared array value (2 CPUs at once)", Setup: sharedValue, Body: atomicAdd, Parallel: true},
	{ID: "hash_hit_same", Name: "HASH lookup hit, same key", Tally: "hit", Setup: lastKey, Body: func(m *MicroMaps, i int) asm.Instructions { return lookup(m.Hash, i) }},
	{ID: "hash_hit_varied", Name: "HASH lookup hit, key varies (65,536 keys)", Tally: "hit", Body: func(m *MicroMaps, i int) asm.Instructions {
		return append(append(deriveKey(i), asm.And.Imm(asm.R1, MicroEntries-1), asm.StoreMem(asm.RFP, offKey, asm.R1, asm.DWord)), lookup(m.Hash, i)...)
	}},
	{ID: "hash_miss", Name: "HASH lookup miss, random key", Tally: "hit", Setup: setKeyB(microMissB), Body: func(m *MicroMaps, i int) asm.Instructions {
		return append(append(deriveKey(i), asm.StoreMem(asm.RFP, offKey, asm.R1, asm.DWord)), lookup(m.Hash, i)...)
	}},
	{ID: "lru_percpu_hit_4", Name: "LRU_PERCPU_HASH lookup hit, 4-byte key (cttrace's per-namespace totals)", Tally: "hit", Setup: netnsKey, Body: func(m *MicroMaps, i int) asm.Instructions {
		skip := fmt.Sprintf("miss%d", i)
		return asm.Instructions{
			asm.LoadMapPtr(asm.R1, m.Netns.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, offBuf),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, skip),
			asm.Add.Imm(asm.R8, 1),
			asm.Mov.Imm(asm.R0, 0).WithSymbol(skip),
		}
	}},
	{ID: "lru_hit_same", Name: "LRU_HASH lookup hit, same key", Tally: "hit", Setup: lastKey, Body: func(m *MicroMaps, i int) asm.Instructions { return lookup(m.LRU, i) }},
	{ID: "lru_hit_same_2cpus", Name: "LRU_HASH lookup hit, same key (2 CPUs at once)", Tally: "hit", Setup: lastKey, Parallel: true, Body: func(m *MicroMaps, i int) asm.Instructions { return lookup(m.LRU, i) }},
	{ID: "lru_hit_varied", Name: "LRU_HASH lookup hit, key varies (65,536 keys)", Tally: "hit", Body: func(m *MicroMaps, i int) asm.Instructions {
		return append(append(deriveKey(i), asm.And.Imm(asm.R1, MicroEntries-1), asm.StoreMem(asm.RFP, offKey, asm.R1, asm.DWord)), lookup(m.LRU, i)...)
	}},
	{ID: "lru_miss", Name: "LRU_HASH lookup miss, random key", Tally: "hit", Setup: setKeyB(microMissB), Body: func(m *MicroMaps, i int) asm.Instructions {
		return append(append(deriveKey(i), asm.StoreMem(asm.RFP, offKey, asm.R1, asm.DWord)), lookup(m.LRU, i)...)
	}},
	{ID: "lru_insert_full", Name: "LRU_HASH insert of a new key into the full map", Tally: "fail", Setup: setKeyB(microInsertB), Body: lruInsert},
	{ID: "lru_insert_full_2cpus", Name: "LRU_HASH insert of a new key into the full map (2 CPUs at once)", Tally: "fail", Setup: setKeyB(microInsertB), Body: lruInsert, Parallel: true},
	{ID: "ringbuf_query", Name: "bpf_ringbuf_query(BPF_RB_AVAIL_DATA)", Body: func(m *MicroMaps, i int) asm.Instructions {
		return asm.Instructions{asm.LoadMapPtr(asm.R1, m.Ring.FD()), asm.Mov.Imm(asm.R2, 0), asm.FnRingbufQuery.Call()}
	}},
	{ID: "ringbuf_output_no_wakeup", Name: "bpf_ringbuf_output 128 B, BPF_RB_NO_WAKEUP", Tally: "fail", Ring: true, Body: ringOutput(rbNoWakeup)},
	{ID: "ringbuf_output_0", Name: "bpf_ringbuf_output 128 B, flags 0, no reader waiting", Tally: "fail", Ring: true, Body: ringOutput(0)},
	{ID: "ringbuf_output_wakeup", Name: "bpf_ringbuf_output 128 B, flags 0, reader waiting: BPF_RB_FORCE_WAKEUP (a wakeup per record, as flags 0 when the reader keeps up)", Tally: "fail", Ring: true, Reader: true, Body: ringOutput(rbForceWakeup)},
}

func sharedValue(m *MicroMaps) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.Shared.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, offZero),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R7, asm.R0),
	}
}

func atomicAdd(_ *MicroMaps, _ int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R7, asm.R1, asm.DWord),
	}
}

func lruInsert(m *MicroMaps, i int) asm.Instructions {
	return append(append(deriveKey(i),
		asm.StoreMem(asm.RFP, offKey, asm.R1, asm.DWord),
		asm.LoadMapPtr(asm.R1, m.LRU.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, offKey),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, offValue),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
	), countFail(i)...)
}

// MicroProgram builds c's program with the body repeated calls times.
func MicroProgram(m *MicroMaps, c MicroCase, calls int) (*ebpf.Program, error) {
	insns := asm.Instructions{
		// The frame's stack: key, value, record, buffer, a u32 0.
		asm.StoreImm(asm.RFP, offZero, 0, asm.Word),
		storeImm64(offKey, 0),
		storeImm64(offKey+8, microKeyB),
		storeImm64(offKey+16, 0x2222),
	}
	for off := offValue; off < offValue+MicroValueSize; off += 8 {
		insns = append(insns, storeImm64(int16(off), 0))
	}
	for off := offRecord; off < offRecord+microRecord; off += 8 {
		insns = append(insns, storeImm64(int16(off), 0))
	}
	insns = append(insns,
		storeImm64(offBuf, 0),
		storeImm64(offBuf+8, 0),
		// R9 = &counter, R6 = counter.next, R8 = 0.
		asm.LoadMapPtr(asm.R1, m.Counter.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, offZero),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.LoadMem(asm.R6, asm.R9, 0, asm.DWord),
		asm.Mov.Imm(asm.R8, 0),
		asm.Mov.Imm(asm.R7, 0),
	)
	if c.Setup != nil {
		insns = append(insns, c.Setup(m)...)
	}
	if c.Body != nil {
		for i := range calls {
			insns = append(insns, c.Body(m, i)...)
		}
	}
	insns = append(insns,
		asm.Add.Imm(asm.R6, int32(calls)),
		asm.StoreMem(asm.R9, 0, asm.R6, asm.DWord),
		asm.LoadMem(asm.R1, asm.R9, 8, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R8),
		asm.StoreMem(asm.R9, 8, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	)
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "micro",
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: insns,
	})
}

// microInput is the packet the socket filters run on.
var microInput = make([]byte, 64)

// MicroResult is one measurement of a case.
type MicroResult struct {
	NsPerCall float64 // (body program - frame program) per run / calls
	FrameNs   float64 // the frame program's ns per run
	Calls     uint64  // bodies run (all CPUs)
	Tally     uint64  // what R8 counted
}

// MicroRunner runs one case's pair of programs.
type MicroRunner struct {
	m            *MicroMaps
	c            MicroCase
	frame, body  *ebpf.Program
	reader       *ringbuf.Reader
	readerDone   chan struct{}
	perRunRecord int // bytes a body run writes into the ring
}

// NewMicroRunner loads c's programs (and starts a waiting reader for
// c.Reader).
func NewMicroRunner(m *MicroMaps, c MicroCase) (*MicroRunner, error) {
	r := &MicroRunner{m: m, c: c}
	var err error
	if r.frame, err = MicroProgram(m, MicroCase{Setup: c.Setup}, 0); err != nil {
		return nil, fmt.Errorf("load frame program: %w", err)
	}
	if r.body, err = MicroProgram(m, c, MicroCalls); err != nil {
		r.frame.Close()
		return nil, fmt.Errorf("load program: %w", err)
	}
	if c.Ring {
		r.perRunRecord = MicroCalls * (microRecord + 8)
		if r.reader, err = ringbuf.NewReader(m.Ring); err != nil {
			r.Close()
			return nil, err
		}
		if c.Reader {
			// Blocked in epoll_wait, woken by every wakeup, reading
			// whatever is there: a cttrace that keeps up.
			r.readerDone = make(chan struct{})
			go func() {
				defer close(r.readerDone)
				var rec ringbuf.Record
				for {
					if err := r.reader.ReadInto(&rec); errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed) {
						return
					}
				}
			}()
		}
	}
	return r, nil
}

// Close unloads the programs and stops the reader.
func (r *MicroRunner) Close() {
	if r.reader != nil {
		r.reader.Close()
		if r.readerDone != nil {
			<-r.readerDone
		}
	}
	if r.frame != nil {
		r.frame.Close()
	}
	if r.body != nil {
		r.body.Close()
	}
}

// drain empties the ring buffer (when no reader goroutine does).
func (r *MicroRunner) drain() error {
	if r.reader == nil {
		return nil
	}
	if r.readerDone != nil {
		for deadline := time.Now().Add(10 * time.Second); r.reader.AvailableBytes() > 0; {
			if time.Now().After(deadline) {
				return errors.New("reader did not drain the ring in 10 s")
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	r.reader.SetDeadline(time.Now())
	var rec ringbuf.Record
	for {
		err := r.reader.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// run runs p repeat times (in chunks that fit the ring for ring cases) and
// returns the kernel's mean ns per run.
func (r *MicroRunner) run(p *ebpf.Program, repeat int, writes bool) (float64, error) {
	chunk := repeat
	if writes && r.perRunRecord > 0 {
		chunk = max(1, microRingSize/2/r.perRunRecord)
	}
	var total float64
	for done := 0; done < repeat; {
		n := min(chunk, repeat-done)
		if err := r.drain(); err != nil {
			return 0, err
		}
		_, d, err := p.Benchmark(microInput, n, nil)
		if err != nil {
			return 0, err
		}
		total += float64(d.Nanoseconds()) * float64(n)
		done += n
	}
	return total / float64(repeat), nil
}

// Measure runs the frame and the body programs repeat times each (on
// every CPU at once for Parallel cases, averaged) and returns the cost per
// body.
func (r *MicroRunner) Measure(repeat int) (MicroResult, error) {
	var res MicroResult
	if err := r.m.ResetTally(); err != nil {
		return res, err
	}
	cpus := []int{-1}
	if r.c.Parallel {
		cpus = nil
		for cpu := range runtime.NumCPU() {
			cpus = append(cpus, cpu)
		}
	}
	type result struct {
		frame, body float64
		err         error
	}
	results := make([]result, len(cpus))
	var wg sync.WaitGroup
	for j, cpu := range cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if cpu >= 0 {
				var set unix.CPUSet
				set.Set(cpu)
				if err := unix.SchedSetaffinity(0, &set); err != nil {
					results[j].err = err
					return
				}
				// Restored before the thread goes back to the scheduler.
				defer func() {
					var all unix.CPUSet
					for c := range runtime.NumCPU() {
						all.Set(c)
					}
					unix.SchedSetaffinity(0, &all)
				}()
			}
			f, err := r.run(r.frame, repeat, false)
			if err != nil {
				results[j].err = err
				return
			}
			b, err := r.run(r.body, repeat, true)
			results[j] = result{frame: f, body: b, err: err}
		}()
	}
	wg.Wait()
	var frame, body float64
	for _, x := range results {
		if x.err != nil {
			return res, x.err
		}
		frame += x.frame / float64(len(results))
		body += x.body / float64(len(results))
	}
	res.FrameNs = frame
	res.NsPerCall = (body - frame) / MicroCalls
	if r.c.Body == nil {
		res.NsPerCall = frame // the frame case reports the frame itself
	}
	calls, tally, err := r.m.Tally()
	if err != nil {
		return res, err
	}
	res.Calls, res.Tally = calls, tally
	return res, nil
}
