package top

import (
	"encoding/binary"
	"hash/maphash"
	"math/bits"
)

// index finds a key's row. It is an open-addressing hash table of fixed
// size with linear probing, rather than a Go map, for two reasons: a
// tracker at capacity deletes and inserts a key for every new source, and
// a fixed table does that with no allocation and no tombstones; and its
// size is known in advance, so the memory bound is a formula, not a
// runtime detail. The seed is random per tracker, so an attacker choosing
// source addresses cannot aim them at one probe chain.
type index struct {
	seed  maphash.Seed
	slots []slot // a power of two, at least twice the rows: probes stay short
	mask  uint32
}

// slot holds a row number plus one (0: empty) and the key's hash, which
// spares reading the row on most mismatches and gives the home slot when
// a deletion shifts entries back.
type slot struct {
	hash uint32
	ref  int32
}

func newIndex(capacity int) index {
	n := slotsFor(capacity)
	return index{seed: maphash.MakeSeed(), slots: make([]slot, n), mask: uint32(n - 1)}
}

// slotsFor keeps the load at or under one half.
func slotsFor(capacity int) int {
	return 1 << bits.Len(uint(2*capacity-1))
}

func (x *index) hash(k Key) uint32 {
	var b [26]byte
	a := k.Prefix.Addr().As16()
	copy(b[:16], a[:])
	binary.LittleEndian.PutUint64(b[16:], k.Netns.ID) // the identity: the inode follows from it
	b[24] = byte(k.Prefix.Bits())
	if k.Prefix.Addr().Is4() {
		b[25] = 1 // 10.0.0.1 and ::ffff:10.0.0.1 are different keys
	}
	return uint32(maphash.Bytes(x.seed, b[:]))
}

// find returns the row holding k.
func (x *index) find(k Key, rows []tracked) (int32, bool) {
	_, ref := x.lookup(k, rows)
	return ref - 1, ref != 0
}

// lookup returns k's slot and its ref, or the empty slot ending its probe
// chain and 0.
func (x *index) lookup(k Key, rows []tracked) (uint32, int32) {
	h := x.hash(k)
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		s := x.slots[i]
		if s.ref == 0 || (s.hash == h && rows[s.ref-1].key == k) {
			return i, s.ref
		}
	}
}

// insert records that row r holds k, which must not be in the index.
func (x *index) insert(k Key, r int32) {
	h := x.hash(k)
	i := h & x.mask
	for x.slots[i].ref != 0 {
		i = (i + 1) & x.mask
	}
	x.slots[i] = slot{hash: h, ref: r + 1}
}

// remove forgets k. Entries after it in the probe chain are shifted back
// into the hole (Knuth's algorithm R), so no tombstone is left to lengthen
// later probes.
func (x *index) remove(k Key, rows []tracked) {
	hole, ref := x.lookup(k, rows)
	if ref == 0 {
		return
	}
	for j := (hole + 1) & x.mask; x.slots[j].ref != 0; j = (j + 1) & x.mask {
		if !x.canFill(hole, j) {
			continue
		}
		x.slots[hole] = x.slots[j]
		hole = j
	}
	x.slots[hole] = slot{}
}

// canFill reports whether the entry in slot j may move back to the hole:
// only if its home slot is not cyclically within (hole, j], or a lookup
// starting at its home would meet the hole first and stop.
func (x *index) canFill(hole, j uint32) bool {
	home := x.slots[j].hash & x.mask
	if hole <= j {
		return home <= hole || home > j
	}
	return home <= hole && home > j
}
