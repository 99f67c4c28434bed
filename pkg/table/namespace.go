package table

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Namespace is a network namespace: each has its own conntrack table and
// count, compared with the same nf_conntrack_max.
type Namespace struct {
	// Inode is the namespace's identity: what /proc/PID/ns/net links to
	// (net:[Inode]) and what BPF programs read as net->ns.inum.
	Inode uint32
	// Path opens the namespace: /run/netns/NAME, or /proc/PID/ns/net of a
	// process inside it (valid while that process lives).
	Path string
	// Name is the name ip-netns(8) gave it under /run/netns, or "".
	Name string
}

// ErrNamespaceGone says a namespace's path no longer leads to it: the
// process exited (its PID may even be reused), or the name was deleted.
var ErrNamespaceGone = errors.New("network namespace gone")

func (ns Namespace) String() string {
	if ns.Name != "" {
		return fmt.Sprintf("netns %s (%d)", ns.Name, ns.Inode)
	}
	return fmt.Sprintf("netns %d", ns.Inode)
}

// Where Namespaces looks.
const (
	procDir  = "/proc"
	netnsDir = "/run/netns" // ip-netns(8) bind-mounts named namespaces here
)

// Namespaces returns every network namespace of the host that has conntrack
// in use, the initial one first (always included), then the named ones by
// name, then the others by inode. Each appears once, with its name when
// /run/netns has one.
//
// "In use" means the table holds entries or a counter moved: the kernel
// registers conntrack's hooks in a namespace only when a rule needs them,
// and only its hooks move the counters, but it shows no per-namespace flag
// to user space. A namespace whose hooks never saw a packet is left out;
// call again to pick up namespaces as they come and go.
//
// Processes that exit during the scan are skipped, and so are processes
// whose /proc/PID/ns/net may not be opened (an LSM or a non-dumpable task
// can refuse even root): their namespace could not be entered either.
func Namespaces() ([]Namespace, error) {
	inUse, err := InUse()
	if err != nil {
		return nil, err
	}
	used := make([]Namespace, len(inUse))
	for i, u := range inUse {
		used[i] = u.Namespace
	}
	return used, nil
}

// NamespaceStats is a namespace Namespaces lists and its statistics, read
// once for both purposes. Err is set, and Stats zero, when the initial
// namespace's could not be read (it is listed whatever its counters say).
type NamespaceStats struct {
	Namespace
	// Cookie is the namespace's netns cookie (SO_NETNS_COOKIE, 5.14+), its
	// identity, which the kernel never gives to another namespace where it
	// hands a dead one's inode to the next at once; 0 where the kernel
	// cannot tell.
	Cookie uint64
	Stats  Stats
	Err    error
	// InUse says that conntrack tracks in the namespace (Namespaces): its
	// table holds entries or a counter moved. The initial namespace always is.
	InUse bool
}

// InUse is Namespaces with each namespace's statistics: what a refresh of
// top-sources needs, in one ctnetlink exchange per namespace.
func InUse() ([]NamespaceStats, error) {
	all, err := Scan()
	if err != nil {
		return nil, err
	}
	used := all[:0]
	for _, ns := range all {
		if ns.InUse {
			used = append(used, ns)
		}
	}
	return used, nil
}

// Scan is every network namespace of the host that can be reached, with
// its statistics and cookie, and whether conntrack is in use there
// (NamespaceStats.InUse): what tells a namespace that lives from one that
// died, whether or not it tracks anything now.
func Scan() ([]NamespaceStats, error) {
	all, initIno, err := discover(procDir, netnsDir)
	if err != nil {
		return nil, err
	}
	var out []NamespaceStats
	for _, ns := range all {
		s, cookie, err := ns.read()
		inUse := ns.Inode == initIno // listed whatever its counters say
		if !inUse {
			if errors.Is(err, ErrNamespaceGone) {
				continue
			}
			if err != nil {
				return nil, err
			}
			inUse = s.inUse()
		}
		out = append(out, NamespaceStats{Namespace: ns, Cookie: cookie, Stats: s, Err: err, InUse: inUse})
	}
	return out, nil
}

// SharedScan hands one Scan to several readers that each want one about
// every second: the ranking, which must see every namespace that lives now
// (one missing from a few reads in a row is taken for dead), scans afresh
// (Fresh); the per-flow hooks' policy, which only reads the fill, takes a
// scan younger than maxAge (Scan). A scan walks /proc and asks every namespace's counters
// over ctnetlink, which on a node of a few hundred pods is what a healthy
// serve spends most of its CPU on.
type SharedScan struct {
	maxAge time.Duration
	read   func() ([]NamespaceStats, error) // Scan; tests count calls
	mu     sync.Mutex
	at     time.Time
	all    []NamespaceStats
	err    error
}

// NewSharedScan shares scans younger than maxAge.
func NewSharedScan(maxAge time.Duration) *SharedScan {
	return &SharedScan{maxAge: maxAge, read: Scan}
}

// Fresh scans now, and keeps the scan for Scan: a copy, which the caller
// may change.
func (s *SharedScan) Fresh() ([]NamespaceStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all, s.err = s.read()
	s.at = time.Now()
	return slices.Clone(s.all), s.err
}

// Scan is Scan's result, at most maxAge old: a copy, which the caller may
// change.
func (s *SharedScan) Scan() ([]NamespaceStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at.IsZero() || time.Since(s.at) >= s.maxAge {
		s.all, s.err = s.read()
		s.at = time.Now()
	}
	return slices.Clone(s.all), s.err
}

// discover lists the namespaces reachable through run (named) and proc
// (/proc/PID/ns/net), ordered as Namespaces documents, and returns the
// initial namespace's inode.
func discover(proc, run string) ([]Namespace, uint32, error) {
	initIno, err := initialInode(proc)
	if err != nil {
		return nil, 0, err
	}
	named, err := namedNamespaces(run)
	if err != nil {
		return nil, 0, err
	}
	seen := map[uint32]bool{}
	for _, ns := range named {
		seen[ns.Inode] = true
	}
	unnamed, err := processNamespaces(proc, seen)
	if err != nil {
		return nil, 0, err
	}
	all := append(named, unnamed...)
	slices.SortStableFunc(all, func(a, b Namespace) int {
		return rank(a, initIno) - rank(b, initIno)
	})
	return all, initIno, nil
}

// rank orders the initial namespace first, then named ones: namedNamespaces
// and processNamespaces already sort within each group.
func rank(ns Namespace, initIno uint32) int {
	switch {
	case ns.Inode == initIno:
		return 0
	case ns.Name != "":
		return 1
	}
	return 2
}

// initialInode finds the initial namespace: PID 1's, or else kthreadd's
// (PID 2), since kernel threads run in the initial namespaces. PID 1 may
// refuse inspection even to root (EACCES on our development machines).
func initialInode(proc string) (uint32, error) {
	var firstErr error
	for _, pid := range []string{"1", "2"} {
		ino, err := inode(filepath.Join(proc, pid, "ns", "net"))
		if err == nil {
			return ino, nil
		}
		firstErr = cmp.Or(firstErr, err)
	}
	return 0, fmt.Errorf("find the initial network namespace: %w", firstErr)
}

// namedNamespaces lists /run/netns, sorted by name. Entries that are not
// namespaces are skipped: ip-netns(8) creates the file before it
// bind-mounts the namespace on it, and a failed `ip netns add` leaves the
// plain file behind.
func namedNamespaces(run string) ([]Namespace, error) {
	ents, err := os.ReadDir(run)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list named network namespaces: %w", err)
	}
	var out []Namespace
	for _, e := range ents { // ReadDir sorts by name
		path := filepath.Join(run, e.Name())
		var sfs unix.Statfs_t
		if err := unix.Statfs(path, &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
			continue
		}
		ino, err := inode(path)
		if err != nil {
			continue // deleted meanwhile
		}
		out = append(out, Namespace{Inode: ino, Path: path, Name: e.Name()})
	}
	return out, nil
}

// processNamespaces returns the namespaces of the processes under proc not
// in seen, sorted by inode; it adds them to seen.
func processNamespaces(proc string, seen map[uint32]bool) ([]Namespace, error) {
	pids, err := pidNames(proc)
	if err != nil {
		return nil, err
	}
	var out []Namespace
	for _, pid := range pids {
		path := filepath.Join(proc, pid, "ns", "net")
		ino, err := inode(path)
		if skippable(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !seen[ino] {
			seen[ino] = true
			out = append(out, Namespace{Inode: ino, Path: path})
		}
	}
	slices.SortFunc(out, func(a, b Namespace) int { return cmp.Compare(a.Inode, b.Inode) })
	return out, nil
}

// pidNames lists the numeric entries of proc, lowest PID first, so that
// the longest-lived process of a namespace names it.
func pidNames(proc string) ([]string, error) {
	f, err := os.Open(proc)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	pids := slices.DeleteFunc(names, func(n string) bool {
		return n == "" || strings.TrimLeft(n, "0123456789") != ""
	})
	slices.SortFunc(pids, cmpNum)
	return pids, nil
}

// cmpNum compares decimal strings without leading zeros numerically.
func cmpNum(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

// skippable tells the errors of a process that exited during the scan
// (ENOENT; ESRCH for a zombie) or refuses inspection (EACCES, EPERM).
func skippable(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)
}

// inode stats a namespace file (following /proc's magic link).
func inode(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	// ns_common.inum is an unsigned int: nsfs inodes fit 32 bits.
	return uint32(st.Ino), nil
}

// open opens the namespace file and checks that it still is ns.
func (ns Namespace) open() (int, error) {
	fd, err := unix.Open(ns.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return -1, fmt.Errorf("%s: %w", ns, ErrNamespaceGone)
	}
	if err != nil {
		return -1, fmt.Errorf("open network namespace %s: %w", ns.Path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("stat network namespace %s: %w", ns.Path, err)
	}
	if uint32(st.Ino) != ns.Inode {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %s now leads to %d: %w", ns, ns.Path, st.Ino, ErrNamespaceGone)
	}
	return fd, nil
}

// Dial opens a ctnetlink connection to the namespace's conntrack table.
//
// A socket belongs for its whole life to the namespace its creator was in
// (sk_net is fixed at creation), so only the socket() call runs inside ns,
// on a locked OS thread that setns(2) moves there and back; the socket is
// then used from any goroutine.
func (ns Namespace) Dial() (*Conn, error) {
	target, err := ns.open()
	if err != nil {
		return nil, err
	}
	defer unix.Close(target)
	type result struct {
		fd  int
		err error
	}
	res := make(chan result, 1)
	// A goroutine of its own, so that a thread that cannot come back is
	// never the caller's (see socketIn).
	go func() {
		fd, err := socketIn(target)
		res <- result{fd, err}
	}()
	r := <-res
	if r.err != nil {
		return nil, fmt.Errorf("%s: %w", ns, r.err)
	}
	return &Conn{ns: ns, fd: r.fd, buf: make([]byte, recvBufSize)}, nil
}

// socketIn creates the socket inside the namespace open as target.
//
// setns(2) moves only the calling thread, and the Go scheduler runs any
// goroutine on any thread: the thread stays locked to this goroutine while
// it is elsewhere, and returns to the scheduler only once back home. If it
// cannot come back, it stays locked and the runtime ends it with the
// goroutine, except the process's main thread, which Go cannot end: the
// runtime parks it, and it would then keep the namespace alive and make
// /proc/self/net (the thread-group leader's view) show the wrong one.
func socketIn(target int) (int, error) {
	runtime.LockOSThread()
	home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("open own network namespace: %w", err)
	}
	defer unix.Close(home)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("setns: %w", err)
	}
	fd, err := newSocket()
	if rerr := unix.Setns(home, unix.CLONE_NEWNET); rerr != nil {
		if err == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("setns back to own network namespace: %w", rerr)
	}
	runtime.UnlockOSThread()
	return fd, err
}
