package ctlab

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cttrace/cttrace/pkg/host"
)

// LockPath is the file whose flock serialises changes of the global conntrack
// sysctls between test binaries. While held it also records the values to
// restore, so that a holder that died without cleaning up is repaired by the
// next one.
const LockPath = "/run/cttrace-ctlab.lock"

// Global conntrack sysctls (writable only from the initial namespace).
const (
	MaxPath     = host.MaxPath
	BucketsPath = host.BucketsPath
)

// globalLock is held by at most one test of this process at a time (sem) and,
// through the flock, by at most one process.
var globalLock = struct {
	sem chan struct{}

	mu    sync.Mutex // guards the fields below
	owner testing.TB
	f     *os.File
	orig  map[string]string // path -> value to restore
	order []string          // paths in the order they were first changed
}{sem: make(chan struct{}, 1)}

// SetMax sets the global nf_conntrack_max to n until the end of the test.
// The limit is global but the count it is compared with is per namespace: the
// initial namespace and every other one (a Lab, a container) each may hold up
// to n entries. Tests changing it must not overlap; SetMax makes them wait for
// each other, within this process and across processes (flock on LockPath).
// Call it from the test's goroutine, and not from both a test and its
// subtest (the subtest would wait for its parent forever).
func SetMax(t testing.TB, n int) {
	t.Helper()
	setGlobal(t, MaxPath, n)
}

// SetBuckets sets the global nf_conntrack_buckets (the hash table's size;
// changing it rehashes every entry of every namespace) until the end of the
// test. Same locking as SetMax. Kernels refuse sizes below their minimum:
// SetBuckets fails the test when the value read back differs.
func SetBuckets(t testing.TB, n int) {
	t.Helper()
	setGlobal(t, BucketsPath, n)
}

// ReadGlobal reads one of the global sysctls (MaxPath, BucketsPath).
func ReadGlobal(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func setGlobal(t testing.TB, path string, n int) {
	t.Helper()
	acquireGlobal(t)
	cur, err := ReadGlobal(path)
	if err != nil {
		t.Fatalf("ctlab: read %s: %v", path, err)
	}
	globalLock.mu.Lock()
	if _, ok := globalLock.orig[path]; !ok {
		globalLock.orig[path] = strconv.Itoa(cur)
		globalLock.order = append(globalLock.order, path)
		err = writeLockState()
	}
	globalLock.mu.Unlock()
	if err != nil {
		t.Fatalf("ctlab: record original %s in %s: %v", path, LockPath, err)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(n)), 0); err != nil {
		t.Fatalf("ctlab: set %s to %d: %v", path, n, err)
	}
	got, err := ReadGlobal(path)
	if err != nil {
		t.Fatalf("ctlab: read back %s: %v", path, err)
	}
	if got != n {
		t.Fatalf("ctlab: set %s to %d but the kernel kept %d", path, n, got)
	}
}

// acquireGlobal takes the lock for t (once per test) and registers its
// release, which restores what the test changed.
func acquireGlobal(t testing.TB) {
	t.Helper()
	globalLock.mu.Lock()
	mine := globalLock.owner == t
	globalLock.mu.Unlock()
	if mine {
		return
	}

	globalLock.sem <- struct{}{}
	f, err := os.OpenFile(LockPath, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		<-globalLock.sem
		t.Fatalf("ctlab: open %s: %v", LockPath, err)
	}
	start, logged := time.Now(), false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			f.Close()
			<-globalLock.sem
			t.Fatalf("ctlab: flock %s: %v", LockPath, err)
		}
		if !logged && time.Since(start) > time.Second {
			t.Logf("ctlab: waiting for another process holding %s (it changes global conntrack sysctls)", LockPath)
			logged = true
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A previous holder that died left the values it meant to restore.
	leftover, err := readLockState(f)
	if err != nil {
		t.Logf("ctlab: ignoring unreadable %s: %v", LockPath, err)
	}
	orig, order := map[string]string{}, []string(nil)
	for _, kv := range slices.Backward(leftover) {
		if err := os.WriteFile(kv[0], []byte(kv[1]), 0); err != nil {
			// Kept, so that this test's release (or the next holder) retries.
			t.Errorf("ctlab: restore %s=%s left by a previous run: %v", kv[0], kv[1], err)
			orig[kv[0]] = kv[1]
			order = append([]string{kv[0]}, order...)
		} else {
			t.Logf("ctlab: restored %s=%s left changed by a previous run", kv[0], kv[1])
		}
	}

	globalLock.mu.Lock()
	globalLock.owner, globalLock.f = t, f
	globalLock.orig, globalLock.order = orig, order
	err = writeLockState()
	globalLock.mu.Unlock()
	if err != nil {
		t.Errorf("ctlab: reset %s: %v", LockPath, err)
	}
	t.Cleanup(func() { releaseGlobal(t) })
}

// releaseGlobal restores the changed sysctls (in reverse order of change),
// clears the lock file if all went well, and releases the locks.
func releaseGlobal(t testing.TB) {
	globalLock.mu.Lock()
	defer globalLock.mu.Unlock()
	failed := false
	for _, path := range slices.Backward(globalLock.order) {
		val := globalLock.orig[path]
		if err := os.WriteFile(path, []byte(val), 0); err != nil {
			t.Errorf("ctlab: restore %s to %s: %v", path, val, err)
			failed = true
			continue
		}
		if got, err := ReadGlobal(path); err != nil || strconv.Itoa(got) != val {
			t.Errorf("ctlab: restore %s to %s: reads back %d (%v)", path, val, got, err)
			failed = true
			continue
		}
		delete(globalLock.orig, path)
	}
	if !failed {
		globalLock.order = nil
		if err := writeLockState(); err != nil {
			t.Errorf("ctlab: clear %s: %v", LockPath, err)
		}
	}
	// On failure the lock file keeps the values: the next holder retries.
	unix.Flock(int(globalLock.f.Fd()), unix.LOCK_UN)
	globalLock.f.Close()
	globalLock.owner, globalLock.f, globalLock.orig, globalLock.order = nil, nil, nil, nil
	<-globalLock.sem
}

// writeLockState writes "path value" lines for the values to restore.
// Caller holds globalLock.mu and the flock.
func writeLockState() error {
	var b bytes.Buffer
	for _, path := range globalLock.order {
		if v, ok := globalLock.orig[path]; ok {
			fmt.Fprintf(&b, "%s %s\n", path, v)
		}
	}
	f := globalLock.f
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt(b.Bytes(), 0); err != nil {
		return err
	}
	return f.Sync()
}

func readLockState(f *os.File) ([][2]string, error) {
	if _, err := f.Seek(0, 0); err != nil {
		return nil, err
	}
	var out [][2]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 || (fields[0] != MaxPath && fields[0] != BucketsPath) {
			return out, fmt.Errorf("unexpected line %q", sc.Text())
		}
		if _, err := strconv.Atoi(fields[1]); err != nil {
			return out, fmt.Errorf("unexpected line %q", sc.Text())
		}
		out = append(out, [2]string{fields[0], fields[1]})
	}
	return out, sc.Err()
}
