// Package top is where the path of one event ends for `cttrace
// top-sources` (and serve's per-source series): the kernel counts each
// event per source in a bounded map (bpf/accounting.bpf.h), the session
// reads the map, and this package turns those reads into what an operator
// under attack asks: who is being refused, who fills the table, how fast.
//
//   - Ranking (ranking.go) makes one Snapshot per interval: rows ranked
//     from the History, a header line per namespace from the kernel's exact
//     per-namespace totals, and "other" for the rest, so that rows + other
//     add up to the kernel's counts.
//   - History (history.go) remembers what each source did across reads,
//     in bounded memory (below).
//   - Tables (tables.go) reads each namespace's table: entries and max, and
//     the entries each source holds, from ctnetlink.
//   - Watch and Replay (watch.go) are the live view and its replay from a
//     recording (Recording, recording.go, stands in for the kernel's map).
//
// Rendering is pkg/output's (output.NewTop).
//
// # Why a bound
//
// A spoofed flood brings a new source address with nearly every packet. A
// map with one entry per source would grow with the attacker's traffic and
// take the host's memory with it, at the moment the host can least spare
// it. A History follows at most its capacity of sources (HistoryCapacity), one row each, and adds everything else to one "other"
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
// open-addressing index with a per-history random hash seed, so an event
// costs O(log capacity) at worst (about O(1) for a busy key, which sits at
// the bottom of the heap), and allocates nothing: the memory AddCounts
// uses is all allocated by NewHistory.
//
// # Guarantees
//
// Let N be the total weight added (Totals.Drops() + Totals.Inserts() + held
// entries seeded). Then:
//
//   - Every key whose true activity exceeds N/capacity has a row: the
//     lightest row weighs at most N/capacity, and a key without a row has
//     done at most as much as the lightest row. Heavy hitters are never
//     pushed out by a flood of one-event sources.
//   - For a row, each weighed count (table_full, alloc_failed, insert_failed,
//     insert) counts exactly what the key did since it got its row, and the
//     truth is between that count and that count + Err.
//   - A row with Err == 0 has been tracked since the key's first event: its
//     counts are exact (given no events lost by the kernel; Held also needs
//     the seeding below).
//   - Evictions count evictions seen since the key got its row: exact
//     when Err == 0, a lower bound otherwise.
//   - Held never goes below zero for a row, and is a lower bound of the
//     entries the key holds (exact when Err == 0 and the key's entries at
//     start were seeded with AddHeld). A delete for an entry the row did not
//     count (inserted before the key got its row) is taken from "other",
//     which is where that entry was counted. "Other" and Totals may go below
//     zero if entries present at start were not seeded.
//   - Totals are exact: every event is counted there, whatever the bound.
//   - Every interval (from one Read to the next) obeys the same sum:
//     rows' Rate + Other.Rate == Totals.Rate, because a row moved to
//     "other" takes both its counts and its counts at the previous read
//     with it.
//
// # Memory
//
// The bound is MemoryBound(capacity), all of it allocated by NewHistory:
//
//	bytes ≈ 280 × capacity + 8 × 2^ceil(log2(2 × capacity)) + 576
//
// (each of the four arrays rounded up to whole 8 KiB pages): 272 bytes a
// row (key 48, counts now and at the last read 160, last drop 40, weight,
// error, heap position and the forgotten flag 24), 4 for the heap, 4 for
// the rows Forget frees, and an index of 8-byte slots at most half full.
// That is 307 bytes a tracked source at the default capacity of 10,000
// (3.1 MB) and 301 at 100,000 (30 MB).
// TestMemoryBound measures a full history after a flood against it.
// Read also returns its rows, which are the caller's.
package top
