#!/bin/sh
# Guest /init for test/vm/run.sh (busybox sh, PID 1 inside the initramfs).
#
# Loads the modules listed in /etc/vm-modules, mounts the host's root (9p tag
# "hostroot", read-only) at /host with fresh proc/sys/dev/tmpfs mounts over it,
# then runs every test binary of /results/manifest chrooted into /host.
# Results go to the writable 9p share "results" (mounted at /results):
#   booted, release, modules.txt, N.out, N.status, done   (fatal on a fatal error)
#
# Also invoked as `/init --run-one PKGDIR BINARY` (under env -i) to run one binary.

PATH=/bin:/sbin
export PATH

if [ "${1:-}" = "--run-one" ]; then
	# Clean environment (env -i): only the passthrough CTTRACE_* vars and our own.
	# shellcheck source=/dev/null
	. /results/config
	# shellcheck source=/dev/null
	. /results/env.sh
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	HOME=/root
	CTTRACE_TESTBED=vm
	CTTRACE_VM_KERNEL=$VM_LABEL
	CTTRACE_VM_KCONFIG=$VM_KCONFIG
	CTTRACE_VM_MODULES_ROOT=/run/cttrace-vm
	export PATH HOME CTTRACE_TESTBED CTTRACE_VM_KERNEL CTTRACE_VM_KCONFIG CTTRACE_VM_MODULES_ROOT
	# chroot(1) changes directory to the new root: cd inside, then exec the binary.
	# shellcheck disable=SC2016 # expanded by the inner shell
	exec /bin/chroot /host /bin/sh -c 'cd "$1" || exit 125; shift; exec "$@"' sh \
		"$2" "$3" -test.v -test.count=1 "-test.timeout=$VM_TEST_TIMEOUT" ${VM_TEST_RUN:+"-test.run=$VM_TEST_RUN"}
fi

mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

log() { echo "cttrace-vm: $*"; }

poweroff_now() {
	sync
	umount /results 2>/dev/null
	poweroff -f
	sleep 10
	exit 1
}

die() {
	log "FATAL: $*"
	if grep -q ' /results ' /proc/mounts; then
		echo "$*" >>/results/fatal
	fi
	poweroff_now
}

release=$(uname -r)
moddir=/lib/modules/$release
echo /sbin/modprobe >/proc/sys/kernel/modprobe
: >/modules.txt

# load NAME REQUIRED(0|1): load one module, noting the outcome in /modules.txt.
load() {
	name=$(echo "$1" | tr - _)
	if [ -d "/sys/module/$name" ]; then
		echo "$name loaded" >>/modules.txt
		return 0
	fi
	if tr - _ <"$moddir/modules.builtin" | grep -q "/$name\.ko\$"; then
		echo "$name builtin" >>/modules.txt
		return 0
	fi
	if ! tr - _ <"$moddir/modules.dep" | grep -q "/$name\.ko:"; then
		echo "$name missing" >>/modules.txt
		[ "$2" = 1 ] && die "required module $name is not in this kernel ($release)"
		log "warning: module $name not in this kernel, skipped"
		return 0
	fi
	if err=$(modprobe "$name" 2>&1); then
		echo "$name loaded" >>/modules.txt
		return 0
	fi
	echo "$name failed" >>/modules.txt
	[ "$2" = 1 ] && die "required module $name failed to load: $err"
	log "warning: module $name failed to load: $err"
	return 0
}

# load_list PHASE: phase 1 = what mounting the 9p shares needs, phase 2 = the rest.
load_list() {
	while read -r m; do
		[ -n "$m" ] || continue
		req=0
		case $m in *!) req=1 m=${m%!} ;; esac
		case $m in 9p | 9pnet* | virtio*) p=1 ;; *) p=2 ;; esac
		[ "$p" = "$1" ] && load "$m" "$req"
	done </etc/vm-modules
}

load_list 1
mkdir -p /results /host /.hostorig
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /results ||
	die "cannot mount the results share"
echo "$release" >/results/release
: >/results/booted
# shellcheck source=/dev/null
. /results/config

load_list 2
cp /modules.txt /results/modules.txt

mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /host ||
	die "cannot mount the host root share"
# The host's own /tmp, /run, ... stay reachable here (for binaries that live there).
mount --bind /host /.hostorig

H=/host
mount -t proc proc $H/proc || die "mount proc"
mount -t sysfs sysfs $H/sys || die "mount sysfs"
mount -t devtmpfs devtmpfs $H/dev || die "mount devtmpfs"
mkdir -p $H/dev/pts $H/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $H/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $H/dev/shm
mount -t tmpfs -o mode=1777 tmpfs $H/tmp || die "mount /tmp"
mount -t tmpfs -o mode=0755 tmpfs $H/run || die "mount /run"
# The kernel's build configuration, where the tests read it (CTTRACE_VM_KCONFIG).
if [ -f /results/kconfig ]; then cp /results/kconfig "$H$VM_KCONFIG"; fi
mkdir -m 1777 $H/run/lock
mount -t tmpfs -o mode=1777 tmpfs $H/var/tmp
mount -t tmpfs -o mode=0700 tmpfs $H/root
mount -t tracefs tracefs $H/sys/kernel/tracing || log "warning: cannot mount tracefs"
mount -t debugfs debugfs $H/sys/kernel/debug || log "warning: cannot mount debugfs"
mount -t bpf bpf $H/sys/fs/bpf || log "warning: cannot mount bpffs"
mount -t cgroup2 cgroup2 $H/sys/fs/cgroup || log "warning: cannot mount cgroup2"
mount -t securityfs securityfs $H/sys/kernel/security || log "warning: cannot mount securityfs"

# Make `modprobe` inside the chroot see this kernel's modules (those in the initramfs),
# where the host has a modules directory to mount over.
for d in $H/usr/lib/modules $H/lib/modules; do
	[ -d "$d" ] || continue
	if ! { mount -t tmpfs -o mode=0755 tmpfs "$d" && mkdir "$d/$release" &&
		mount --bind "$moddir" "$d/$release"; }; then
		log "warning: cannot expose the modules in $d"
	fi
	break
done
# And always under /run (a tmpfs here), for `modprobe -d $CTTRACE_VM_MODULES_ROOT`
# where the host has no modules directory to mount over.
if ! { mkdir -p "$H/run/cttrace-vm/lib/modules/$release" &&
	mount --bind "$moddir" "$H/run/cttrace-vm/lib/modules/$release"; }; then
	log "warning: cannot expose the modules under /run/cttrace-vm"
fi

# Binaries or package dirs under the tmpfs-covered dirs (e.g. /tmp/go-build*/...): bind
# the host's original top directory (/tmp/X for /tmp/X/...) over the tmpfs, read-only.
# (Not in an arm64 guest, whose root is not the host's: there VM_REPO is mounted below.)
[ -n "${VM_REPO:-}" ] || while read -r pkgdir bin; do
	[ -n "$pkgdir" ] || continue
	for p in "$pkgdir" "${bin%/*}"; do
		case $p in
		/tmp/?* | /run/?* | /var/tmp/?* | /root/?*) ;;
		*) continue ;;
		esac
		case $p in
		/var/tmp/*) top=$(echo "$p" | cut -d/ -f1-4) ;;
		*) top=$(echo "$p" | cut -d/ -f1-3) ;;
		esac
		grep -q " $H$top " /proc/mounts && continue
		if ! { mkdir -p "$H$top" && mount --bind "/.hostorig$top" "$H$top"; }; then
			log "warning: cannot expose $top in the guest"
		fi
	done
done </results/manifest

# VM_REPO: the repository, shared read-only at its own path, when the root is not the host's
# (arm64): the test binaries and their package directories live in it. The host made the
# mount point in the root, unless it is under one of the tmpfs mounts above.
if [ -n "${VM_REPO:-}" ]; then
	mkdir -p "$H$VM_REPO" 2>/dev/null
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro repo "$H$VM_REPO" ||
		die "cannot mount the repository share at $VM_REPO"
fi

# VM_OUT_DIR: a writable host directory, at the same path inside the chroot (after the
# tmpfs mounts above, so that it is not hidden by one of them).
if [ -n "${VM_OUT_DIR:-}" ]; then
	if ! { mkdir -p "$H$VM_OUT_DIR" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "$H$VM_OUT_DIR"; }; then
		die "cannot mount the output share at $VM_OUT_DIR"
	fi
fi

ip link set lo up || log "warning: cannot bring lo up"
hostname cttrace-vm
# RLIMIT_MEMLOCK is left at the kernel's default: on 5.10 it is what BPF maps
# are charged to, and cttrace must raise it itself (probe.raiseMemlock).

log "ready after $(cut -d' ' -f1 /proc/uptime)s of uptime"
n=0
while read -r pkgdir bin; do
	[ -n "$pkgdir" ] || continue
	n=$((n + 1))
	log "[$n] $bin (in $pkgdir)"
	start=$(cut -d. -f1 /proc/uptime)
	env -i /bin/sh /init --run-one "$pkgdir" "$bin" </dev/null >"/results/$n.out" 2>&1
	rc=$?
	echo "$rc" >"/results/$n.status"
	echo "$(($(cut -d. -f1 /proc/uptime) - start))" >"/results/$n.secs"
	log "[$n] exit $rc after $(cat "/results/$n.secs")s"
done </results/manifest

: >/results/done
poweroff_now
