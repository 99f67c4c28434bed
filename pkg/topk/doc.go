// Package topk is the history behind `cttrace top-sources`: what each source
// did across reads of the kernel's per-source map (AddCounts), in memory
// bounded whatever the sources, so that a source the kernel's LRU map
// pushed out is still ranked. It keeps the counts and their error bounds;
// ranking and display are pkg/top's.
//
// # Why a bound
//
// A spoofed flood brings a new source address with nearly every packet. A
// map with one entry per source would grow with the attacker's traffic and
// take the host's memory with it, at the moment the host can least spare
// it. A Tracker follows at most its capacity of sources (--max-sources,
// DefaultCapacity), one row each, and adds everything else to one "other"
// row.
//
// # Algorithm: Space-Saving
//
// Which sources keep a row is decided by Space-Saving (Metwally, Agrawal,
// El Abbadi, "Efficient Computation of Frequent and Top-k Elements in Data
// Streams", 2005). Each row has a weight, the key's activity: its refused
// packets (table_full, alloc_failed, insert_failed) plus its inserts, plus
// the entries a table dump found it holding (AddHeld). These are the two
// things an operator ranks sources by, and each is something the source did.
// Deletes and evictions are not weighed: each ends an entry whose insert was
// already counted (weighing them would count a short-lived entry twice),
// and the victim of an early_drop did nothing.
//
// An event for a key with a row adds to its weight. An event for a key
// without one takes a free row while there are; when there are none it
// takes the row of the least weighty key, and inherits that weight as its
// error bound Err (its weight becomes that minimum plus the event's). The
// displaced key's counts, column by column, are not lost: they are moved to
// the "other" row, so that for every column
//
//	sum over all rows + Other == Totals == everything added
//
// exactly, as a reconciliation with the kernel's counters needs. Events
// that only remove entries (delete, early_drop) never create a row: for a
// key without one they count in "other", where its entries went.
//
// The rows are kept in a min-heap on weight and found through a fixed-size
// open-addressing index with a per-tracker random hash seed, so an event
// costs O(log capacity) at worst (about O(1) for a busy key, which sits at
// the bottom of the heap), and allocates nothing: the memory AddCounts
// uses is all allocated by NewTracker.
//
// # Guarantees
//
// Let N be the total weight added (Totals.Drops() + Totals.Inserts + held
// entries seeded). Then:
//
//   - Every key whose true activity exceeds N/capacity has a row: the
//     lightest row weighs at most N/capacity, and a key without a row has
//     done at most as much as the lightest row. Heavy hitters are never
//     pushed out by a flood of one-event sources.
//   - For a row, each weighed column (TableFull, AllocFailed, InsertFailed,
//     Inserts) counts exactly what the key did since it got its row, and the
//     truth is between that count and that count + Err.
//   - A row with Err == 0 has been tracked since the key's first event: its
//     counts are exact (given no events lost by the kernel; Held also needs
//     the seeding below).
//   - EarlyDropVictim counts evictions seen since the key got its row: exact
//     when Err == 0, a lower bound otherwise.
//   - Held never goes below zero for a row, and is a lower bound of the
//     entries the key holds (exact when Err == 0 and the key's entries at
//     start were seeded with AddHeld). A delete for an entry the row did not
//     count (inserted before the key got its row) is taken from "other",
//     which is where that entry was counted. "Other" and Totals may go below
//     zero if entries present at start were not seeded.
//   - Totals are exact: every event is counted there, whatever the bound.
//   - Every interval (from one Snapshot to the next) obeys the same sum:
//     rows' Interval + Other.Interval == Totals.Interval, because a row
//     moved to "other" takes both its counts and its counts at the previous
//     snapshot with it.
//
// # Memory
//
// The bound is MemoryBound(capacity), all of it allocated by NewTracker:
//
//	bytes ≈ 220 × capacity + 8 × 2^ceil(log2(2 × capacity)) + 450
//
// (each of the three arrays rounded up to whole 8 KiB pages): 216 bytes a
// row (key 40, counts now and at the last snapshot 112, last drop 40,
// weight, error and heap position 24), 4 for the heap, and an index of
// 8-byte slots at most half full. That is 247 bytes a tracked source at the
// default capacity of 10,000 (2.5 MB) and 241 at 100,000 (24 MB).
// TestMemoryBound measures a full tracker after a flood against it.
// Snapshot also returns its rows, which are the caller's.
package topk
