package output

import (
	"bytes"
	"fmt"
	"os"
	"sync"
)

// RotatingFile is an events file for a SIEM shipper (Filebeat, Vector,
// Fluent Bit): appended to, rotated by size (PATH → PATH.1 → ... →
// PATH.keep, the oldest removed), and reopened on request (SIGHUP, after
// logrotate moved it). It rotates and reopens only between lines: a
// record is never split across two files, whatever sizes the writes come
// in. Written by hand: the rotating-file libraries in Go rotate inside a
// write, which splits lines, and do not reopen on a signal.
type RotatingFile struct {
	path  string
	limit int64 // rotate once the file holds this much (0: never)
	keep  int   // rotated files kept

	mu      sync.Mutex
	f       *os.File
	size    int64
	atLine  bool // the last byte written ended a line
	reopen  bool // reopen at the next line boundary
	Rotated int  // rotations done
}

// OpenRotating opens path for appending.
func OpenRotating(path string, limit int64, keep int) (*RotatingFile, error) {
	r := &RotatingFile{path: path, limit: limit, keep: keep, atLine: true}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *RotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open events file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open events file: %w", err)
	}
	r.f, r.size = f, st.Size()
	return nil
}

// Reopen makes the next write, at a line boundary, go to a fresh open of
// the path (logrotate's copy-free rotation: it moves the file and signals).
func (r *RotatingFile) Reopen() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reopen = true
}

// Write appends p. At each line boundary it rotates (past the size limit)
// or reopens (when asked), so a write that ends a line and starts the next
// one is split there.
func (r *RotatingFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	written := 0
	for len(p) > 0 {
		if r.atLine {
			if err := r.switchFile(); err != nil {
				return written, err
			}
		}
		chunk := r.upToSwitch(p)
		n, err := r.f.Write(chunk)
		written += n
		r.size += int64(n)
		if n > 0 {
			r.atLine = chunk[n-1] == '\n'
		}
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// upToSwitch is the part of p to write before the file is switched: up to
// the end of the line that reaches the size limit, or of the current line
// when a reopen is asked for; all of p otherwise.
func (r *RotatingFile) upToSwitch(p []byte) []byte {
	from := int64(len(p)) // where the line to end the chunk with starts
	if r.reopen {
		from = 0
	} else if r.limit > 0 {
		from = min(max(r.limit-r.size-1, 0), from)
	}
	if from >= int64(len(p)) {
		return p
	}
	if i := bytes.IndexByte(p[from:], '\n'); i >= 0 {
		return p[:from+int64(i)+1]
	}
	return p
}

// switchFile reopens (when asked: logrotate moved the file) or rotates
// (past the size limit), if due; called at a line boundary.
func (r *RotatingFile) switchFile() error {
	switch {
	case r.reopen:
		r.f.Close()
	case r.limit > 0 && r.size >= r.limit:
		r.f.Close()
		if err := r.shift(); err != nil {
			return err
		}
		r.Rotated++
	default:
		return nil
	}
	r.reopen = false
	return r.open()
}

// shift renames path.(keep-1) to path.keep, ..., path to path.1.
func (r *RotatingFile) shift() error {
	if r.keep < 1 {
		if err := os.Remove(r.path); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("rotate events file: %w", err)
		}
		return nil
	}
	for i := r.keep - 1; i >= 1; i-- {
		from := fmt.Sprintf("%s.%d", r.path, i)
		if _, err := os.Stat(from); err == nil {
			if err := os.Rename(from, fmt.Sprintf("%s.%d", r.path, i+1)); err != nil {
				return fmt.Errorf("rotate events file: %w", err)
			}
		}
	}
	// Gone already (moved by hand, or by logrotate before its signal):
	// nothing to keep, a new file starts.
	if err := os.Rename(r.path, r.path+".1"); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("rotate events file: %w", err)
	}
	return nil
}

// Close closes the current file.
func (r *RotatingFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Close()
}
