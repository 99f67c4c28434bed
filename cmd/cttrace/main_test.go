package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
)

// The test binary doubles as cttrace: with CTTRACE_TEST_AS_MAIN=1 it runs
// main() instead of the tests. Tests then exercise the real command, exit
// statuses included, without a Go toolchain (the VM tier has none it could
// afford to run under emulation).
func TestMain(m *testing.M) {
	if keep, ok := os.LookupEnv("CTTRACE_TEST_CAPS"); ok {
		execWithOnly(keep)
	}
	if os.Getenv("CTTRACE_TEST_AS_MAIN") == "1" {
		main()
		return
	}
	keepStartMemlock()
	os.Exit(m.Run())
}

// keepStartMemlock notes RLIMIT_MEMLOCK as the test binary started with it,
// for the cttrace processes started with fewer capabilities (execWithOnly):
// a test that loads BPF in this process raises it (probe's raiseMemlock),
// and children inherit what it raised, where a container's cttrace starts
// with the runtime's limit.
func keepStartMemlock() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) == nil {
		os.Setenv("CTTRACE_TEST_MEMLOCK", fmt.Sprintf("%d:%d", lim.Cur, lim.Max))
	}
}

// restoreStartMemlock lowers RLIMIT_MEMLOCK to the test binary's at start
// (keepStartMemlock): lowering needs no capability.
func restoreStartMemlock() error {
	var lim unix.Rlimit
	if _, err := fmt.Sscanf(os.Getenv("CTTRACE_TEST_MEMLOCK"), "%d:%d", &lim.Cur, &lim.Max); err != nil {
		return nil // not started by a test binary that noted it
	}
	return unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim)
}

// capabilityBits are the capabilities a test may keep, by the names a
// Kubernetes securityContext gives them.
var capabilityBits = map[string]int{
	"BPF": unix.CAP_BPF, "PERFMON": unix.CAP_PERFMON, "NET_ADMIN": unix.CAP_NET_ADMIN,
	"SYS_ADMIN": unix.CAP_SYS_ADMIN, "SYS_PTRACE": unix.CAP_SYS_PTRACE, "SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
}

// execWithOnly replaces this process by cttrace (this binary as main, or
// the one CTTRACE_TEST_EXEC names) holding only the capabilities listed in
// keep ("NET_ADMIN,SYS_ADMIN"): what root has in a container that drops ALL
// and adds those. Root's permitted set after execve is its bounding set,
// and the bounding set is a thread's, so the thread that drops it must be
// the one that calls execve.
func execWithOnly(keep string) {
	runtime.LockOSThread()
	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "cttrace test: run with capabilities %q: %v\n", keep, err)
		os.Exit(125)
	}
	if err := restoreStartMemlock(); err != nil {
		fail(fmt.Errorf("restore RLIMIT_MEMLOCK: %w", err))
	}
	kept := map[int]bool{}
	for _, name := range strings.FieldsFunc(keep, func(r rune) bool { return r == ',' }) {
		bit, ok := capabilityBits[name]
		if !ok {
			fail(fmt.Errorf("unknown capability %s", name))
		}
		kept[bit] = true
	}
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		fail(err)
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		fail(err)
	}
	for bit := 0; bit <= last; bit++ {
		if kept[bit] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(bit), 0, 0, 0); err != nil {
			fail(fmt.Errorf("drop capability %d: %w", bit, err))
		}
	}
	target := cmp.Or(os.Getenv("CTTRACE_TEST_EXEC"), os.Args[0])
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "CTTRACE_TEST_CAPS=") || strings.HasPrefix(kv, "CTTRACE_TEST_EXEC=")
	})
	fail(syscall.Exec(target, append([]string{target}, os.Args[1:]...), env))
}

// cttrace returns a command running cttrace with args.
func cttrace(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CTTRACE_TEST_AS_MAIN=1")
	return cmd
}

// badInvocations are command lines an operator gets wrong, with the exact
// first line of stderr cttrace must answer and its exit status. Every one
// leaves stdout empty: it may be a JSON pipe.
var badInvocations = []struct {
	args   []string
	status int
	stderr string
	// unprivileged rows run without root or capabilities.
	unprivileged bool
}{
	{[]string{"dorps"}, 2, `cttrace: unknown command "dorps" (did you mean drops?)`, false},
	{[]string{"no-such-command"}, 2, `cttrace: unknown command "no-such-command"`, false},
	{[]string{"--bogus"}, 2, `cttrace: unknown flag --bogus`, false},
	{[]string{"drops", "--bogus", "-o", "json"}, 2, `cttrace: unknown flag --bogus`, false},
	{[]string{"drops", "--reasn", "table_full"}, 2, `cttrace: unknown flag --reasn (did you mean --reason?)`, false},
	{[]string{"drops", "--duration", "5"}, 2, `cttrace: invalid --duration "5": want a duration such as 500ms, 30s or 5m`, false},
	{[]string{"drops", "--duration", "-1s"}, 2, `cttrace: invalid --duration "-1s": want 0 or more`, false},
	{[]string{"drops", "--count", "abc"}, 2, `cttrace: invalid --count "abc": want a whole number, 0 or more`, false},
	{[]string{"drops", "--count", "-1"}, 2, `cttrace: invalid --count "-1": want a whole number, 0 or more`, false},
	{[]string{"drops", "--stream-limit", "lots"}, 2, `cttrace: invalid --stream-limit "lots": want a whole number, 0 or more`, false},
	{[]string{"drops", "-o"}, 2, `cttrace: -o needs a value`, false},
	{[]string{"drops", "--ready-file"}, 2, `cttrace: --ready-file needs a value`, false},
	{[]string{"drops", "--output", "yaml"}, 2, `cttrace: invalid --output "yaml": want text or json`, false},
	{[]string{"drops", "--utc=maybe"}, 2, `cttrace: invalid --utc "maybe": want true or false`, false},
	{[]string{"drops", "--src", "300.1.1.1"}, 2, `cttrace: --src: invalid address "300.1.1.1": want an IP address or a prefix like 10.0.0.0/8`, false},
	{[]string{"drops", "--dst", "10.0.0.0/33"}, 2, `cttrace: --dst: invalid prefix "10.0.0.0/33": want an IP address or a prefix like 10.0.0.0/8`, false},
	{[]string{"drops", "--reason", "table_ful"}, 2, `cttrace: invalid --reason "table_ful": want table_full, alloc_failed, early_drop, insert_failed, insert, delete, clash_resolved, gc_evict (did you mean table_full?)`, false},
	{[]string{"drops", "--proto", "tcpp"}, 2, `cttrace: --proto: unknown protocol "tcpp" (valid: tcp, udp, icmp, icmpv6, sctp, dccp, udplite, gre, or a number 0-255)`, false},
	{[]string{"drops", "--ring-size", "5000"}, 2, `cttrace: invalid --ring-size "5000": want a power of two from 4K to 1G`, false},
	{[]string{"drops", "--ring-size", "2G"}, 2, `cttrace: invalid --ring-size "2G": want a power of two from 4K to 1G`, false},
	{[]string{"drops", "--backend", "ebpf"}, 2, `cttrace: invalid --backend "ebpf": want auto, fentry, kprobe or tracepoint`, false},
	{[]string{"drops", "--netns", "/nonexistent"}, 2, `cttrace: --netns: /nonexistent: no such file or directory (want an inode number or a path like /run/netns/NAME)`, false},
	{[]string{"drops", "--netns", "/etc/hostname"}, 2, `cttrace: --netns: /etc/hostname is not a namespace file (want an inode number or a path like /run/netns/NAME)`, false},
	{[]string{"drops", "--ready-file", "/nonexistent/ready"}, 2, `cttrace: --ready-file: stat /nonexistent: no such file or directory`, false},
	{[]string{"drops", "--replay", "/nonexistent/recorded.ndjson"}, 2, `cttrace: --replay: open /nonexistent/recorded.ndjson: no such file or directory`, false},
	{[]string{"drops", "--format", "yaml"}, 2, `cttrace: invalid --format "yaml": want cttrace or ecs`, false},
	{[]string{"drops", "--rotate-size", "1M"}, 2, `cttrace: --rotate-size and --rotate-keep go with --events-file`, false},
	{[]string{"drops", "--events-file", "/tmp/x", "--rotate-size", "lots"}, 2, `cttrace: invalid --rotate-size "lots": want a size such as 100M (K, M and G suffixes; 0: never)`, false},
	{[]string{"drops", "--events-file", "/tmp/x", "--rotate-keep", "-1"}, 2, `cttrace: invalid --rotate-keep "-1": want 0 to 1000`, false},
	{[]string{"drops", "extra-argument"}, 2, `cttrace: unexpected argument "extra-argument"`, false},
	{[]string{"top-sources", "--sort", "bytes"}, 2, `cttrace: invalid --sort "bytes": want drops, inserts or held`, false},
	{[]string{"top-sources", "--group-v4", "/33"}, 2, `cttrace: invalid --group-v4 "/33": want /1 to /32`, false},
	{[]string{"top-sources", "--group-v4", "/24x"}, 2, `cttrace: invalid --group-v4 "/24x": want /1 to /32`, false},
	{[]string{"top-sources", "--group-v6", "64"}, 2, `cttrace: invalid --group-v6 "64": want /1 to /128`, false},
	{[]string{"top-sources", "--limit", "0"}, 2, `cttrace: invalid --limit "0": want 1 or more`, false},
	{[]string{"top-sources", "--max-sources", "0"}, 2, `cttrace: invalid --max-sources "0": want 1 to 16777216`, false},
	{[]string{"top-sources", "--max-sources", "-1"}, 2, `cttrace: invalid --max-sources "-1": want a whole number, 0 or more`, false},
	{[]string{"top-sources", "--interval", "1ms"}, 2, `cttrace: invalid --interval "1ms": want at least 10ms`, false},
	{[]string{"top-sources", "--ring-size", "8M"}, 2, `cttrace: unknown flag --ring-size`, false},
	{[]string{"top-sources", "--netns", "/nonexistent"}, 2, `cttrace: --netns: /nonexistent: no such file or directory (want an inode number or a path like /run/netns/NAME)`, false},
	{[]string{"top-sources", "now"}, 2, `cttrace: unexpected argument "now"`, false},
	{[]string{"features", "extra"}, 2, `cttrace: unexpected argument "extra"`, false},
	{[]string{"status", "--what-if-max", "lots"}, 2, `cttrace: invalid --what-if-max "lots": want a whole number`, false},
	{[]string{"status", "--what-if-max", "-5"}, 2, `cttrace: invalid --what-if-max "-5": want a number of entries from 1 to 2147483647`, false},
	{[]string{"status", "--what-if-buckets", "1024"}, 2, `cttrace: --what-if-buckets goes with --what-if-max`, false},
	{[]string{"status", "now"}, 2, `cttrace: unexpected argument "now"`, false},
	{[]string{"status", "--duration", "5s"}, 2, `cttrace: --interval and --duration go with --watch`, false},
	{[]string{"status", "--watch", "--interval", "1ms"}, 2, `cttrace: invalid --interval "1ms": want at least 10ms`, false},
	{[]string{"serve", "--metrics-top", "-1"}, 2, `cttrace: invalid --metrics-top "-1": want 0 to 100`, false},
	{[]string{"serve", "--interval", "1ms"}, 2, `cttrace: invalid --interval "1ms": want at least 100ms`, false},
	{[]string{"serve", "--stream-limit", "10"}, 2, `cttrace: --stream-limit goes with --events-file`, false},
	{[]string{"serve", "--events-file", "/tmp/x", "--format", "xml"}, 2, `cttrace: invalid --format "xml": want cttrace or ecs`, false},
	{[]string{"serve", "--events-file", "/nonexistent/dir/events.json"}, 1, `cttrace: open events file: open /nonexistent/dir/events.json: no such file or directory`, false},
	{[]string{"serve", "--listen", "nowhere"}, 2, `cttrace: --listen: listen tcp: address nowhere: missing port in address`, false},
	// A well-formed address this host does not have: the system's answer.
	{[]string{"serve", "--listen", "192.0.2.1:9469"}, 1, `cttrace: serve: listen tcp 192.0.2.1:9469: bind: cannot assign requested address`, false},
	{[]string{"demo", "--attack", "0s"}, 2, `cttrace: invalid --attack "0s": want 1s to 60s`, false},
	{[]string{"demo", "--attack", "2h"}, 2, `cttrace: invalid --attack "2h0m0s": want 1s to 60s`, false},
	{[]string{"demo", "now"}, 2, `cttrace: unexpected argument "now"`, false},
	{[]string{"features", "--output", "yaml"}, 2, `cttrace: invalid --output "yaml": want text or json`, false},
	{[]string{"help", "dorps"}, 2, `cttrace: unknown command "dorps" (did you mean drops?)`, false},
	{[]string{"help", "drops", "top-sources"}, 2, `cttrace: unexpected argument "top-sources" (help takes one command)`, false},
	{[]string{"completion"}, 2, `cttrace: want one shell: bash, zsh or fish`, false},
	{[]string{"completion", "tcsh"}, 2, `cttrace: unknown shell "tcsh" (want bash, zsh or fish)`, false},
	// Mistakes come before privileges: an unprivileged user is told what
	// is wrong with the command line first.
	{[]string{"drops", "--bogus"}, 2, `cttrace: unknown flag --bogus`, true},
	{[]string{"features"}, 1, `cttrace: detect features: loading BPF programs needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)`, true},
	{[]string{"drops", "--duration", "1s"}, 1, `cttrace: loading BPF programs needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)`, true},
	{[]string{"top-sources", "--once"}, 1, `cttrace: loading BPF programs needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)`, true},
	{[]string{"demo"}, 1, `cttrace: the demo needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN (missing CAP_SYS_ADMIN, CAP_NET_ADMIN)`, true},
	{[]string{"status"}, 1, `cttrace: reading every namespace's table needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN (missing CAP_SYS_ADMIN, CAP_NET_ADMIN)`, true},
}

func TestBadInvocations(t *testing.T) {
	unpriv := unprivileged(t)
	for _, tc := range badInvocations {
		name := strings.Join(tc.args, " ")
		t.Run(name, func(t *testing.T) {
			cmd := cttrace(tc.args...)
			if tc.unprivileged {
				if unpriv == nil {
					t.Skip("running as root without setpriv(1) (util-linux): cannot drop privileges")
				}
				cmd = unpriv(tc.args...)
			}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			// A command line that is wrongly accepted would trace until
			// stopped: bound it.
			cmd.WaitDelay = time.Second
			timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
			err := cmd.Run()
			timer.Stop()
			status := 0
			if ee, ok := err.(*exec.ExitError); ok {
				status = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(stderr.String(), "\n")
			if status != tc.status || first != tc.stderr {
				t.Errorf("cttrace %s: status %d, stderr\n%s\nwant status %d and first line\n%s", name, status, stderr.String(), tc.status, tc.stderr)
			}
			if stdout.Len() != 0 {
				t.Errorf("cttrace %s: wrote %d bytes on stdout (want none):\n%s", name, stdout.Len(), stdout.String())
			}
			if tc.status == exitUsage && !strings.Contains(stderr.String(), "--help' for usage.") {
				t.Errorf("cttrace %s: no hint after the error:\n%s", name, stderr.String())
			}
		})
	}
}

// unprivileged returns a way to run cttrace without root or capabilities:
// as nobody through setpriv(1) when the tests run as root, as the current
// user otherwise; nil when neither is possible.
func unprivileged(t *testing.T) func(args ...string) *exec.Cmd {
	if os.Geteuid() != 0 {
		return cttrace
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return nil
	}
	// nobody must be able to reach the binary: go test's build directory
	// is private.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "cttrace")
	if err := copyFile(os.Args[0], bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return func(args ...string) *exec.Cmd {
		cmd := exec.Command(setpriv, append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--", bin}, args...)...)
		cmd.Env = append(os.Environ(), "CTTRACE_TEST_AS_MAIN=1")
		return cmd
	}
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, mode)
}

func TestHelpExitsZero(t *testing.T) {
	out, err := cttrace("--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "features") {
		t.Fatalf("--help does not list the features command:\n%s", out)
	}
}

func TestFeaturesTextReport(t *testing.T) {
	f := &probe.Features{Kernel: "6.18.0-test", List: []probe.Feature{
		{Name: probe.FeatKernelBTF, Usable: true, Detail: "/sys/kernel/btf/vmlinux"},
		{Name: probe.FeatConntrackBTF, Usable: true, Detail: "built in (vmlinux)"},
		{Name: probe.FeatFentry, Detail: "__nf_conntrack_alloc", Error: "load: refused by the kernel: operation not permitted"},
		{Name: probe.FeatTpBTF, Usable: true, Detail: "kfree_skb"},
		{Name: probe.FeatDropReason, Usable: true, Detail: "SKB_DROP_REASON_NETFILTER_DROP"},
	}}
	var buf bytes.Buffer
	b, why, err := f.ChooseBackend(probe.BackendAuto)
	if err != nil {
		t.Fatal(err)
	}
	r := probe.Report{Features: f, Backend: string(b), BackendReason: why}
	w := output.NewFeatures(&buf, output.Text)
	if err := w.Write(&r); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	golden := filepath.Join("testdata", "features.txt")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if buf.String() != string(want) {
		t.Fatalf("features report differs from %s:\n--- got\n%s\n--- want\n%s", golden, buf.String(), want)
	}
}

// stdoutOf runs cmd and returns its stdout, failing unless it exits 0
// with nothing on stderr.
func stdoutOf(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || stderr.Len() != 0 {
		t.Fatalf("%v: %v, stderr:\n%s", cmd.Args, err, stderr.String())
	}
	return stdout.String()
}

func TestVersion(t *testing.T) {
	out := stdoutOf(t, cttrace("--version"))
	for _, want := range []string{"cttrace ", "\ngo:          go1.", "\ncilium/ebpf: v0."} {
		if !strings.Contains(out, want) {
			t.Errorf("--version lacks %q:\n%s", want, out)
		}
	}
}

func TestHelpCommandIsTheCommandsHelp(t *testing.T) {
	for _, name := range []string{"demo", "drops", "top-sources", "status", "serve", "features", "completion"} {
		help, flag := stdoutOf(t, cttrace("help", name)), stdoutOf(t, cttrace(name, "--help"))
		if help != flag {
			t.Errorf("cttrace help %s differs from cttrace %s --help:\n%s\n---\n%s", name, name, help, flag)
		}
		if name != "features" && !strings.Contains(help, "Examples:") {
			t.Errorf("cttrace help %s has no examples:\n%s", name, help)
		}
	}
	if out := stdoutOf(t, cttrace("help")); !strings.Contains(out, "top-sources") || strings.Contains(out, "   man ") {
		t.Errorf("cttrace help lists the wrong commands:\n%s", out)
	}
}

// Every flag that takes a value names it with a placeholder from one
// vocabulary, so that help reads the same across commands.
func TestFlagPlaceholders(t *testing.T) {
	known := map[string]bool{"DURATION": true, "CIDR": true, "PATH": true, "N": true, "FORMAT": true, "BACKEND": true, "ADDRESS": true,
		"SIZE": true, "SCHEMA": true, "REASON": true, "NETNS": true, "PROTO": true, "KEY": true, "/LEN": true, "MODE": true, "PERCENT": true}
	for _, cmd := range newApp().Commands {
		for _, f := range cmd.Flags {
			if _, isBool := f.(*cli.BoolFlag); isBool {
				continue
			}
			usage := f.(cli.DocGenerationFlag).GetUsage()
			_, rest, ok := strings.Cut(usage, "`")
			placeholder, _, ok2 := strings.Cut(rest, "`")
			if !ok || !ok2 || !known[placeholder] {
				t.Errorf("cttrace %s --%s: usage %q names no known placeholder", cmd.Name, f.Names()[0], usage)
			}
		}
	}
}

// cttraceOnPath puts the test binary on PATH as cttrace, as the completion
// scripts call it.
func cttraceOnPath(t *testing.T) []string {
	dir := t.TempDir()
	if err := os.Symlink(os.Args[0], filepath.Join(dir, "cttrace")); err != nil {
		t.Fatal(err)
	}
	return append(os.Environ(), "CTTRACE_TEST_AS_MAIN=1", "PATH="+dir+":"+os.Getenv("PATH"))
}

func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to run the script in")
	}
	env := cttraceOnPath(t)
	for _, tc := range []struct {
		words string // what was typed, the last word being completed
		want  string
	}{
		{"cttrace dr", "drops"},
		{"cttrace top", "top-sources"},
		{"cttrace drops --rea", "--ready-file --reason"},
		{"cttrace top-sources --gr", "--group-v4 --group-v6"},
	} {
		// eval, not source <(...): the VM tier's guest has no /dev/fd.
		script := fmt.Sprintf(`eval "$(cttrace completion bash)" && COMP_WORDS=(%s) && COMP_CWORD=$((${#COMP_WORDS[@]} - 1)) && _cttrace && echo "${COMPREPLY[*]}"`, tc.words)
		cmd := exec.Command(bash, "-c", script)
		cmd.Env = env
		if got := strings.TrimSpace(stdoutOf(t, cmd)); got != tc.want {
			t.Errorf("bash completion of %q: %q, want %q", tc.words, got, tc.want)
		}
	}
}

func TestZshAndFishCompletion(t *testing.T) {
	if out := stdoutOf(t, cttrace("completion", "fish")); !strings.Contains(out, "complete -c cttrace") || !strings.Contains(out, "top-sources") {
		t.Errorf("fish completion does not complete cttrace's commands:\n%s", out)
	}
	zsh := stdoutOf(t, cttrace("completion", "zsh"))
	if !strings.HasPrefix(zsh, "#compdef cttrace\n") {
		t.Errorf("zsh completion does not start with #compdef:\n%s", zsh)
	}
	if path, err := exec.LookPath("zsh"); err == nil {
		cmd := exec.Command(path, "-n")
		cmd.Stdin = strings.NewReader(zsh)
		stdoutOf(t, cmd)
	} else {
		t.Log("no zsh here: its script's syntax is not checked")
	}
}

// The manual page is written from the same definitions as --help: every
// command and flag is in it.
func TestManPage(t *testing.T) {
	page := stdoutOf(t, cttrace("man"))
	if !strings.HasPrefix(page, ".nh\n.TH cttrace 8") {
		t.Fatalf("not a roff manual page:\n%.200s", page)
	}
	for _, cmd := range newApp().Commands {
		if cmd.Hidden {
			continue
		}
		if !strings.Contains(page, "\n.SH "+strings.ToUpper("commands")) || !strings.Contains(page, cmd.Name) {
			t.Errorf("manual page lacks command %s", cmd.Name)
		}
		for _, f := range cmd.Flags {
			if !strings.Contains(page, "--"+f.Names()[0]) {
				t.Errorf("manual page lacks %s --%s", cmd.Name, f.Names()[0])
			}
		}
	}
}

// drops --replay: a recorded stream shown again offline, with the live
// run's filters and output; a malformed line is reported with its number
// and counted; standard input works too. No privileges needed.
func TestDropsReplay(t *testing.T) {
	recording, path := recordedStream(t)
	for _, from := range []string{path, "-"} {
		cmd := cttrace("drops", "--replay", from, "-o", "json", "--src", "10.0.0.5")
		if from == "-" {
			cmd.Stdin = strings.NewReader(recording)
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("replay %s: %v\n%s", from, err, stderr.String())
		}
		got := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		if len(got) != 3 || !strings.Contains(got[0], `"host":"recorder"`) || !strings.Contains(got[1], `"src":"10.0.0.5"`) ||
			strings.Contains(stdout.String(), "10.0.0.6") || !strings.Contains(got[2], `"type":"summary"`) {
			t.Errorf("replay %s: the two events from 10.0.0.5 and the summary, as recorded, expected:\n%s", from, stdout.String())
		}
		if !strings.Contains(stderr.String(), "line 3: ") || !strings.Contains(stderr.String(), "1 malformed lines skipped") {
			t.Errorf("replay %s: the malformed line is not reported:\n%s", from, stderr.String())
		}
	}
}

// recordedStream is a short recording as drops writes it: three refusals
// from 10.0.0.5, 10.0.0.6 and 10.0.0.5 a second apart, a malformed third
// line, and the summary; returned as text and as a file.
func recordedStream(t *testing.T) (string, string) {
	var rec bytes.Buffer
	w := output.NewStream(&rec, output.JSON, output.StreamOptions{})
	const host = "recorder"
	at := time.Date(2026, 12, 1, 4, 0, 0, 0, time.UTC)
	for i, src := range []string{"10.0.0.5", "10.0.0.6", "10.0.0.5"} {
		w.Write(&event.Record{Host: host, Event: &event.Event{Time: at.Add(time.Duration(i) * time.Second), Reason: event.ReasonTableFull,
			Confidence: event.ConfidenceExact, Netns: event.NetnsOf(4026531840), Max: 64, Flow: event.Tuple{Family: event.FamilyIPv4, Proto: event.ProtoUDP,
				Src: netip.MustParseAddrPort(src + ":4000"), Dst: netip.MustParseAddrPort("10.0.0.1:53")}}})
	}
	var counts event.Counts
	counts.Add(event.ReasonTableFull, 3)
	w.Write(&event.Record{Host: host, Summary: &event.Summary{Time: at.Add(5 * time.Second), Backend: "fentry", Events: counts, Visible: event.Reasons()}})
	w.Flush()
	lines := strings.SplitAfter(rec.String(), "\n")
	recording := lines[0] + lines[1] + "{half a line\n" + strings.Join(lines[2:], "")
	path := filepath.Join(t.TempDir(), "recorded.ndjson")
	if err := os.WriteFile(path, []byte(recording), 0o644); err != nil {
		t.Fatal(err)
	}
	return recording, path
}

// top-sources --replay ranks the recorded sources, with a snapshot for each
// --interval of the recording's time and one at its end; a malformed line
// is reported and counted. No privileges needed.
func TestTopSourcesReplay(t *testing.T) {
	recording, _ := recordedStream(t)
	cmd := cttrace("top-sources", "--replay", "-", "-o", "json", "--interval", "1s")
	cmd.Stdin = strings.NewReader(recording)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("replay: %v\n%s", err, stderr.String())
	}
	snaps := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var last struct {
		Backend string `json:"backend"`
		Rows    []struct {
			Source string `json:"source"`
			Drops  uint64 `json:"drops"`
		} `json:"rows"`
	}
	if err := json.Unmarshal([]byte(snaps[len(snaps)-1]), &last); err != nil {
		t.Fatal(err)
	}
	// Events at 0, 1 and 2 s, the summary at 5 s: snapshots at 1, 2 and 3 s
	// (4 s has no record) and at the end.
	if len(snaps) != 4 || last.Backend != "fentry" || len(last.Rows) != 2 ||
		last.Rows[0].Source != "10.0.0.5/32" || last.Rows[0].Drops != 2 || last.Rows[1].Drops != 1 {
		t.Errorf("%d snapshots, the last %+v: want 4, ending with 10.0.0.5/32 at 2 drops and 10.0.0.6/32 at 1 (backend fentry, the recording's)\n%s",
			len(snaps), last, stdout.String())
	}
	if !strings.Contains(stderr.String(), "line 3: ") || !strings.Contains(stderr.String(), "1 malformed lines skipped") {
		t.Errorf("the malformed line is not reported:\n%s", stderr.String())
	}
}
