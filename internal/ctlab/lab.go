// Package ctlab produces known conntrack pressure, for tests and for
// `cttrace demo`, and reads the kernel's own ground truth about it.
//
// A Lab is a fresh network namespace (named ctlab-<random>) whose loopback is
// up and whose traffic conntrack tracks (an nft table with a `ct state new`
// rule in an output chain). Traffic is sent only over that namespace's
// loopback, so nothing of the host's is touched. Every method that sends
// packets accounts for each one: sent (admitted by netfilter) or refused (the
// sender saw EPERM, i.e. netfilter dropped it). The kernel's counters are read
// per network namespace.
//
// The conntrack limits are global (nf_conntrack_max, nf_conntrack_buckets):
// SetMax and SetBuckets change them under a process-wide and cross-process
// lock and restore them when the test ends.
//
// Address plan inside a Lab (lo owns 127.0.0.0/8):
//   - HoldEstablished connects from 127.253.0.0/16 to a listener on 127.0.0.1;
//   - FillUnassured sends from 127.254.0.0/16 to FillDst;
//   - everything else is the caller's choice (127.x.y.z, or ::1 for IPv6).
//
// A Lab's methods are safe for concurrent use. The package needs root
// (CAP_NET_ADMIN, CAP_SYS_ADMIN), ip(8) and nft(8).
package ctlab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/table"
	"golang.org/x/sys/unix"
)

// nftTable is the nft table New installs in each Lab. Using `ct state` in an
// inet table makes the namespace register conntrack's IPv4 and IPv6 hooks
// (all of them: prerouting, output, input and postrouting confirmation), so
// one output chain is enough for loopback traffic.
const (
	nftTable   = "ctlab"
	nftRuleset = `table inet ctlab {
	chain output {
		type filter hook output priority 0; policy accept;
		ct state new accept
	}
}
`
)

// Per-namespace settings New applies so that the ground truth cannot drift
// while a test runs: one-way UDP entries would otherwise expire after 30 s
// (much less than a slow emulated run), and listeners may queue many
// connections.
var labSysctls = [][2]string{
	{"net.netfilter.nf_conntrack_udp_timeout", "3600"},
	{"net.netfilter.nf_conntrack_udp_timeout_stream", "3600"},
	{"net.core.somaxconn", "65535"},
}

// Lab is a network namespace with conntrack enabled. Create it with New
// (tests) or Open.
type Lab struct {
	name  string
	ns    *os.File // /run/netns/<name>, the handle Do setns()es to
	inode uint32

	mu     sync.Mutex
	closed bool
	ports  map[flowKey]int // next free source port per (source, destination)
	fds    []int           // held sockets: TCP connections, listeners, UDP sinks
	sinks  map[netip.AddrPort]bool
}

type flowKey struct {
	src netip.Addr
	dst netip.AddrPort
}

// New creates a Lab and registers t.Cleanup to delete everything it made
// (sockets, nft table, the namespace). It fails the test on set-up errors.
// Call it from the test's goroutine.
func New(t testing.TB) *Lab {
	t.Helper()
	l, err := Open("ctlab")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("ctlab: cleanup of %s: %v", l.name, err)
		}
	})
	return l
}

// Open creates a Lab named prefix-<random>, outside any test (cttrace
// demo); Close deletes everything it made. On error nothing is left.
func Open(prefix string) (*Lab, error) {
	name := prefix + "-" + randomHex(4)
	if out, err := run(nil, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("ctlab: create network namespace %s: %v: %s", name, err, out)
	}
	l := &Lab{name: name, ports: map[flowKey]int{}, sinks: map[netip.AddrPort]bool{}}
	if err := l.setUp(); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// OpenWithInode opens Labs until one gets that inode number, for at most
// within: the kernel hands a dead namespace's number to the next one once
// its cleanup of the dead one ran (a workqueue).
func OpenWithInode(prefix string, inode uint32, within time.Duration) (*Lab, error) {
	deadline := time.Now().Add(within)
	for {
		l, err := Open(prefix)
		if err != nil {
			return nil, err
		}
		if l.Inode() == inode {
			return l, nil
		}
		if err := l.Close(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("ctlab: no new namespace got inode %d within %s", inode, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (l *Lab) setUp() error {
	f, err := os.Open(filepath.Join("/run/netns", l.name))
	if err != nil {
		return fmt.Errorf("ctlab: open namespace %s: %w", l.name, err)
	}
	l.ns = f
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("ctlab: stat namespace %s: %w", l.name, err)
	}
	l.inode = uint32(st.Ino)

	if out, err := run(nil, "ip", "-n", l.name, "link", "set", "lo", "up"); err != nil {
		return fmt.Errorf("ctlab: bring lo up in %s: %v: %s", l.name, err, out)
	}
	if out, err := run(strings.NewReader(nftRuleset), "ip", "netns", "exec", l.name, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("ctlab: install nft table in %s: %v: %s", l.name, err, out)
	}
	for _, kv := range labSysctls {
		if err := l.SetSysctl(kv[0], kv[1]); err != nil {
			return fmt.Errorf("ctlab: %w", err)
		}
	}
	return nil
}

// Close deletes what Open or New made: sockets, nft table, namespace. It
// reports every failure rather than stopping at the first.
func (l *Lab) Close() error { return errors.Join(l.close()...) }

// Name is the namespace's name (as `ip netns list` shows it).
func (l *Lab) Name() string { return l.name }

// Inode is the namespace's inode number, which is what BPF programs see as
// net->ns.inum (and what 6.18 prints in "table full in netns %u").
func (l *Lab) Inode() uint32 { return l.inode }

// Namespace is the Lab's namespace as package table reaches it.
func (l *Lab) Namespace() table.Namespace {
	return table.Namespace{Inode: l.inode, Path: filepath.Join("/run/netns", l.name), Name: l.name}
}

// Do runs fn on a fresh OS thread that has joined the Lab's namespace.
// Sockets fn creates belong to the namespace and may be used from any thread
// afterwards. The thread is discarded when fn returns (it is never handed
// back to the Go scheduler). fn must not call t.Fatal; a panic in fn is
// returned as an error.
func (l *Lab) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		done := false
		defer func() {
			if !done {
				if r := recover(); r != nil {
					errc <- fmt.Errorf("ctlab: panic in Do: %v\n%s", r, debug.Stack())
				} else {
					errc <- errors.New("ctlab: function run by Do exited through runtime.Goexit (t.Fatal?)")
				}
			}
		}()
		// Never unlocked: the thread dies with this goroutine, so no other
		// goroutine ever runs in the namespace by accident.
		runtime.LockOSThread()
		// Go cannot end the process's main thread: when this goroutine
		// happens to run on it, the runtime parks ("wedges") the thread
		// instead. Leave it in its own namespace then, or it would keep the
		// Lab's namespace alive after deletion and make /proc/self/net (the
		// thread-group leader's view) show the Lab.
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done = true
			errc <- fmt.Errorf("ctlab: open own network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(l.ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done = true
			errc <- fmt.Errorf("ctlab: setns to %s: %w", l.name, err)
			return
		}
		// Runs before the result is sent, also when fn panics.
		defer unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET)
		err = fn()
		done = true
		unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET)
		errc <- err
	}()
	return <-errc
}

// SetSysctl writes a per-namespace sysctl (for example
// "net.netfilter.nf_conntrack_udp_timeout") inside the Lab. It is undone by
// the namespace's deletion. Global sysctls are read-only from inside a
// namespace: use SetMax and SetBuckets for those.
func (l *Lab) SetSysctl(key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return l.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0); err != nil {
			return fmt.Errorf("set %s=%s in %s: %w", key, value, l.name, err)
		}
		return nil
	})
}

// hold keeps fd open until the Lab's cleanup.
func (l *Lab) hold(fds ...int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return errors.New("ctlab: lab already cleaned up")
	}
	l.fds = append(l.fds, fds...)
	return nil
}

// close undoes New, in reverse: sockets, nft table, namespace handle,
// namespace. It returns every error rather than stopping at the first.
func (l *Lab) close() []error {
	l.mu.Lock()
	l.closed = true
	fds := l.fds
	l.fds = nil
	l.mu.Unlock()

	var errs []error
	for _, fd := range fds {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, fmt.Errorf("close socket %d: %w", fd, err))
		}
	}
	if l.ns != nil {
		if out, err := run(nil, "ip", "netns", "exec", l.name, "nft", "delete", "table", "inet", nftTable); err != nil {
			errs = append(errs, fmt.Errorf("delete nft table: %v: %s", err, out))
		}
		// The kernel frees a deleted namespace's entries later, from a
		// work queue, and until then they sit in the global hash: a next
		// test that shrinks nf_conntrack_buckets would find chains grown
		// by this one's flood. A flush frees them now.
		if out, err := run(nil, "ip", "netns", "exec", l.name, "conntrack", "-F"); err != nil {
			errs = append(errs, fmt.Errorf("flush conntrack table: %v: %s", err, out))
		}
		if err := l.ns.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close namespace handle: %w", err))
		}
	}
	if out, err := run(nil, "ip", "netns", "delete", l.name); err != nil {
		errs = append(errs, fmt.Errorf("delete namespace: %v: %s", err, out))
	}
	return errs
}

// run runs a tool (ip, nft), looked up in PATH and then in the sbin
// directories a test's environment may lack.
func run(stdin *strings.Reader, name string, args ...string) ([]byte, error) {
	path, err := lookTool(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	out, err := cmd.CombinedOutput()
	return bytes.TrimSpace(out), err
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("ctlab: %s not found in PATH or sbin directories (install iproute2 and nftables)", name)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
