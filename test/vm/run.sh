#!/usr/bin/env bash
# Runs Go test binaries inside real Debian kernels booted under QEMU (TCG, no KVM).
#
#   test/vm/run.sh MANIFEST [ARM64_MANIFEST]
#
# MANIFEST: one `PKGDIR BINARY` per non-empty line (absolute paths; '#' starts a comment
# line). Each kernel in $KERNELS is booted once and runs every binary in turn, chrooted into
# this machine's root (shared read-only over 9p). An arm64 kernel (label arm64) runs the
# arm64 binaries of ARM64_MANIFEST instead, chrooted into a small arm64 Debian root built
# from packages, with the repository shared at its own path. See test/vm/README.md.
set -euo pipefail

# Modules loaded at boot, in this order. A trailing "!" marks a required module: if it is
# missing from the kernel or fails to load, the run fails. The others only warn.
VM_MODULES="virtio_pci! virtio_console 9pnet_virtio! 9p! crc32c_generic libcrc32c nfnetlink nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack! nf_conntrack_netlink nf_tables! nft_ct nf_nat nft_chain_nat veth"
# Module paths (prefixes under lib/modules/VERSION/) also put in the initramfs, with their
# dependencies, but not loaded at boot: the kernel loads them on demand (nft expressions,
# tc, bridges, ...) through the initramfs's modprobe.
VM_EXTRA_MODULES="kernel/net/netfilter/ kernel/net/ipv4/netfilter/ kernel/net/ipv6/netfilter/ kernel/net/bridge/ kernel/net/sched/ kernel/drivers/net/dummy. kernel/drivers/net/veth."
# Bump to force every cached initramfs to be rebuilt.
INITRAMFS_FORMAT=1

# Pinned kernel package per label (override: CTTRACE_VM_PKG_<label, dots as _>), and the
# packages to fall back to (newest first) when the pinned one cannot be downloaded.
#   5.10  Debian 11 (bullseye), as Amazon Linux 2 and Debian 11 hosts run: no BTF for modules.
#   6.1   Debian 12 (bookworm).   6.12  bookworm-backports' build, as in bookworm.
#   sid   the newest mainline build in Debian's sid: whatever sid's linux-image-amd64 depends on
#         when the tier runs (no pin), so a new release is tested without a code change; pin one
#         with CTTRACE_VM_PKG_sid=linux-image-7.2.13+deb14-amd64.
#   arm64 Debian 12's 6.12 built for arm64 (Graviton, Ampere), booted by qemu-system-aarch64.
declare -A PKG_PINNED=([5.10]=linux-image-5.10.0-46-amd64 [6.1]=linux-image-6.1.0-56-amd64
	[6.12]=linux-image-6.12.117+deb12-amd64 [arm64]=linux-image-6.12.117+deb12-arm64)
declare -A PKG_FALLBACK=([5.10]='^linux-image-5\.10\.0-[0-9]+-amd64$' [6.1]='^linux-image-6\.1\.0-[0-9]+-amd64$'
	[6.12]='^linux-image-6\.12\.[0-9]+\+deb12-amd64$' [arm64]='^linux-image-6\.12\.[0-9]+\+deb12-arm64$')
# Labels whose kernel is not built for this machine's architecture.
declare -A LABEL_ARCH=([arm64]=arm64)
# Labels that run only some packages' binaries (override: CTTRACE_VM_ONLY_<label>, empty for
# all): the feature matrix, every backend's load and attach, and the truth tests against the
# kernel's counters. The other packages (the commands end to end, status, serve) run on
# 5.10, 6.1 and 6.12, and running them again on the newest kernel would push the tier past CI's
# time budget. (arm64 runs only what its manifest lists: the Makefile's VM_ARM64_PACKAGES.)
declare -A LABEL_ONLY=([sid]='pkg/probe pkg/session')
# Labels whose kernels come from other suites of Debian's archive than this machine's: they are
# listed and downloaded through a private apt configuration in the cache (see apt_private), so
# the machine's own sources and lists are never touched.
declare -A PKG_SUITES=([5.10]='bullseye bullseye-security' [sid]='sid' [arm64]='bookworm bookworm-security')
APT_MIRROR=${CTTRACE_VM_MIRROR:-http://deb.debian.org}

KERNELS=${KERNELS:-5.10 6.1 6.12 sid arm64}
# Guests booted at once. Each runs on one host thread (VM_ACCEL below), so on a 2-core machine
# two lanes halve the tier's time without slowing either guest much.
VM_PARALLEL=${VM_PARALLEL:-$(nproc)}
# Seconds per boot: the 6.1 guest ran its binaries in 708 s beside another.
VM_TIMEOUT=${VM_TIMEOUT:-1200}
VM_MEM=${VM_MEM:-2048}
VM_SMP=${VM_SMP:-2}
# One host thread runs every vCPU. Multi-threaded TCG races with the kernel's
# live code patching (text_poke through int3): Debian's 6.12 was seen to die
# at boot with "Oops: int3" in sched_clock_cpu, and attaching fentry and
# kprobes patches code too.
VM_ACCEL=${VM_ACCEL:-tcg,thread=single}
# Each binary's -test.timeout: cmd/cttrace runs 370 to 510 s in the 6.1 guest
# while another guest shares the machine.
VM_TEST_TIMEOUT=${VM_TEST_TIMEOUT:-12m}
# A -test.run pattern for every binary (empty: every test).
VM_TEST_RUN=${VM_TEST_RUN:-}
# A host directory the guest may write, mounted at the same path inside the chroot (empty:
# none). The bench writes its results there (make bench-vm).
VM_OUT_DIR=${VM_OUT_DIR:-}
CACHE=${CTTRACE_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cttrace/vm}
export PATH=$PATH:/usr/sbin:/sbin

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/../.." && pwd))
shopt -s nullglob

say() { printf 'vm: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 2
}
usage() {
	echo "usage: $0 MANIFEST [ARM64_MANIFEST]   (lines: PKGDIR BINARY; see test/vm/README.md)" >&2
	exit 2
}
# squote VALUE: VALUE as one single-quoted word for sh.
squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

tmp_dirs=()
qemu_pid=
lane_pids=()
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local d
	# timeout(1) puts itself in a process group of its own, so a signal to
	# ours never reaches it: stop the guest explicitly.
	if [[ -n $qemu_pid ]]; then kill "$qemu_pid" 2>/dev/null || true; fi
	if ((${#lane_pids[@]})); then
		kill "${lane_pids[@]}" 2>/dev/null || true
		wait "${lane_pids[@]}" 2>/dev/null || true
	fi
	for d in "${tmp_dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- checks

[[ $# -eq 1 || $# -eq 2 ]] || usage
manifest=$1
manifest_arm64=${2:-}
[[ -f $manifest && -r $manifest ]] || die "cannot read manifest $manifest"
read -ra labels <<<"$KERNELS"
((${#labels[@]})) || die "KERNELS is empty"
want_arm64=
for label in "${labels[@]}"; do
	if [[ ${LABEL_ARCH[$label]:-} == arm64 ]]; then want_arm64=1; fi
done
if [[ -n $want_arm64 ]]; then
	[[ -n $manifest_arm64 && -f $manifest_arm64 && -r $manifest_arm64 ]] ||
		die "KERNELS has an arm64 kernel: give the arm64 binaries' manifest as the second argument"
fi
for v in VM_TIMEOUT VM_MEM VM_SMP VM_PARALLEL; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
if [[ -n $VM_OUT_DIR ]]; then
	[[ $VM_OUT_DIR == /* && $VM_OUT_DIR != *[[:space:]]* && -d $VM_OUT_DIR && -w $VM_OUT_DIR ]] ||
		die "VM_OUT_DIR must be an absolute path (no spaces) to a writable directory, not '$VM_OUT_DIR'"
fi

missing=()
qemus=qemu-system-x86_64:qemu-system-x86
if [[ -n $want_arm64 ]]; then qemus+=" qemu-system-aarch64:qemu-system-arm"; fi
for t in $qemus cpio:cpio depmod:kmod modprobe:kmod xz:xz-utils \
	dpkg-deb:dpkg apt-get:apt flock:util-linux timeout:coreutils sha256sum:coreutils; do
	command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
busybox=
for b in /bin/busybox /usr/bin/busybox; do
	if [[ -x $b && $(LC_ALL=C ldd "$b" 2>&1 || true) =~ not\ a\ dynamic|statically\ linked ]]; then
		busybox=$b
		break
	fi
done
[[ -n $busybox ]] || missing+=(busybox-static)
if ((${#missing[@]})); then
	die "missing tools; install them with: apt-get install -y $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
fi

# read_manifest FILE: set ENTRIES to FILE's `PKGDIR BINARY` lines.
read_manifest() {
	local file=$1 pkgdir bin extra
	ENTRIES=()
	while read -r pkgdir bin extra || [[ -n ${pkgdir:-} ]]; do
		[[ -z ${pkgdir:-} || $pkgdir == \#* ]] && continue
		[[ -n ${bin:-} && -z ${extra:-} ]] || die "$file: want 'PKGDIR BINARY', got: $pkgdir ${bin:-} ${extra:-}"
		[[ $pkgdir == /* && $bin == /* ]] || die "$file: paths must be absolute: $pkgdir $bin"
		[[ -d $pkgdir ]] || die "$file: no such directory: $pkgdir"
		[[ -f $bin && -x $bin ]] || die "$file: not an executable file: $bin"
		ENTRIES+=("$pkgdir $bin")
	done <"$file"
	((${#ENTRIES[@]})) || die "$file lists no test binaries"
}
read_manifest "$manifest"
entries=("${ENTRIES[@]}")
entries_arm64=()
if [[ -n $want_arm64 ]]; then
	read_manifest "$manifest_arm64"
	entries_arm64=("${ENTRIES[@]}")
	for e in "${entries_arm64[@]}"; do
		[[ ${e%% *} == "$repo"/* && ${e#* } == "$repo"/* ]] ||
			die "$manifest_arm64: the arm64 guest sees only the repository ($repo): $e"
	done
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
	say "another run holds $CACHE/.lock; waiting (one run at a time)"
	flock 9
fi

# ---------------------------------------------------------------------------- kernels

# These functions run in the main shell (not in $(...)) and return results in globals.

# pkg_dir PKG: set PKGDIR_FOUND to the newest cache dir holding a downloaded PKG, if any.
pkg_dir() {
	local d
	d=$(printf '%s\n' "$CACHE/$1"_*/*.deb | sort -V | tail -n 1)
	PKGDIR_FOUND=${d%/*}
	[[ -n $d ]]
}

# unpack DIR: unpack DIR's .debs into DIR/tree and index its modules, unless done already.
unpack() {
	local dir=$1 deb kver
	[[ -e $dir/tree/.complete ]] && return 0
	rm -rf "$dir/tree" "$dir/tree.tmp"
	for deb in "$dir"/*.deb; do
		say "unpacking $(basename "$deb")"
		dpkg-deb -x "$deb" "$dir/tree.tmp" || return 1
	done
	if [[ ! -d $dir/tree.tmp/lib/modules && -d $dir/tree.tmp/usr/lib/modules ]]; then
		ln -s usr/lib "$dir/tree.tmp/lib"
	fi
	kver=$(basename "$(printf '%s\n' "$dir/tree.tmp/lib/modules"/*/ | head -n 1)")
	# Debian's 7.x packages keep the image and config beside the modules
	# (lib/modules/VERSION/{vmlinuz,config}) instead of in boot/.
	for f in vmlinuz config; do
		if [[ -n $kver && ! -e $dir/tree.tmp/boot/$f-$kver && -f $dir/tree.tmp/lib/modules/$kver/$f ]]; then
			mkdir -p "$dir/tree.tmp/boot"
			ln -s "../lib/modules/$kver/$f" "$dir/tree.tmp/boot/$f-$kver"
		fi
	done
	if [[ -z $kver || ! -f $dir/tree.tmp/boot/vmlinuz-$kver ]]; then
		say "no kernel or modules in $dir"
		return 1
	fi
	depmod -b "$dir/tree.tmp" "$kver" || return 1
	echo "$kver" >"$dir/tree.tmp/.complete"
	mv "$dir/tree.tmp" "$dir/tree"
}

# fetch PKG: make sure PKG is downloaded and unpacked in the cache; set KDIR to its dir.
fetch() {
	local pkg=$1 tmp debs parts opts=()
	if pkg_dir "$pkg"; then
		KDIR=$PKGDIR_FOUND
	else
		tmp=$(mktemp -d "$CACHE/.fetch.XXXXXX")
		tmp_dirs+=("$tmp")
		say "downloading $pkg"
		[[ $EUID -eq 0 ]] && opts=(-o APT::Sandbox::User=root)
		if ! (cd "$tmp" && apt-get "${APT_OPTS[@]}" download "${opts[@]}" "$pkg") >"$tmp/log" 2>&1; then
			sed 's/^/vm:   apt: /' "$tmp/log" >&2
			return 1
		fi
		debs=("$tmp"/*.deb)
		((${#debs[@]} == 1)) || return 1
		# Since 7.x, linux-image-VERSION only depends on the packages that hold the image
		# (linux-binary-), the modules (linux-modules-) and the config (linux-base-).
		parts=$(dpkg-deb -f "${debs[0]}" Depends | tr ',|' '\n\n' |
			sed -n 's/^ *\(linux-\(binary\|modules\|base\)-[^ (]*\).*/\1/p')
		if [[ -n $parts ]]; then
			say "downloading its parts: $(echo $parts)"
			# shellcheck disable=SC2086 # one word per package
			if ! (cd "$tmp" && apt-get "${APT_OPTS[@]}" download "${opts[@]}" $parts) >"$tmp/log" 2>&1; then
				sed 's/^/vm:   apt: /' "$tmp/log" >&2
				return 1
			fi
		fi
		KDIR=$CACHE/$(basename "${debs[0]}" .deb)
		rm -rf "$KDIR"
		mkdir -p "$KDIR"
		mv "$tmp"/*.deb "$KDIR/" || return 1
	fi
	unpack "$KDIR"
}

# lists_fresh: were apt's package lists updated within the hour (by anyone, or by us)?
# (apt keeps the server's date on lists that had not changed, hence our own stamp.)
lists_fresh() {
	[[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*Release' -mmin -60 2>/dev/null) ||
		-n $(find "$CACHE/.apt-updated" -mmin -60 2>/dev/null) ]]
}

apt_updated=
apt_update() {
	[[ -z $apt_updated ]] || return 0
	apt_updated=1
	if [[ $EUID -ne 0 ]]; then
		say "not root: cannot run apt-get update"
		return 0
	fi
	say "running apt-get update"
	if apt-get update -qq >&2; then
		touch "$CACHE/.apt-updated"
	else
		say "apt-get update failed"
	fi
}

# APT_OPTS: options that make apt-get and apt-cache use a private configuration (apt_private);
# empty for the machine's own.
APT_OPTS=()

# apt_private LABEL: set APT_OPTS to a configuration listing only LABEL's suites, with its own
# lists and cache under $CACHE/apt/LABEL, updated when more than a day old (or when FORCE=1).
apt_private() {
	local label=$1 dir s keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	dir=$CACHE/apt/${label//[^A-Za-z0-9]/_}
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
	for s in ${PKG_SUITES[$label]}; do
		case $s in
		*-security) echo "deb [signed-by=$keyring] $APT_MIRROR/debian-security $s main" ;;
		*) echo "deb [signed-by=$keyring] $APT_MIRROR/debian $s main" ;;
		esac
	done >"$dir/sources.list"
	APT_OPTS=(-o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$dir/lists"
		-o "Dir::Cache=$dir/cache" -o Dir::State::status=/dev/null)
	if [[ -n ${LABEL_ARCH[$label]:-} ]]; then
		APT_OPTS+=(-o "APT::Architecture=${LABEL_ARCH[$label]}" -o "APT::Architectures::=${LABEL_ARCH[$label]}")
	fi
	if [[ ${FORCE:-} == 1 || -z $(find "$dir/.updated" -mmin -1440 2>/dev/null) ]]; then
		say "listing ${PKG_SUITES[$label]} (private apt configuration in $dir)"
		if apt-get "${APT_OPTS[@]}" -o APT::Sandbox::User=root update -qq >&2; then
			touch "$dir/.updated"
		else
			say "warning: apt-get update of ${PKG_SUITES[$label]} failed"
		fi
	fi
}

# newest_kernel: the package sid's linux-image-amd64 depends on now (APT_OPTS set for sid).
newest_kernel() {
	apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# kernel_dir LABEL: fetch (or find cached) the kernel package for LABEL; set KDIR.
kernel_dir() {
	local label=$1 var pkg cand
	var=CTTRACE_VM_PKG_${label//[^A-Za-z0-9]/_}
	pkg=${!var:-${PKG_PINNED[$label]:-}}
	APT_OPTS=()
	if [[ -n ${PKG_SUITES[$label]:-} ]]; then
		apt_private "$label"
		if [[ -z $pkg && $label == sid ]]; then
			pkg=$(newest_kernel)
			[[ -n $pkg ]] && say "sid's newest kernel today: $pkg (pin it with $var=$pkg)"
		fi
	fi
	if [[ -z $pkg ]]; then
		say "no kernel package known for label '$label' (set $var)"
		return 1
	fi
	fetch "$pkg" && return 0
	if ((${#APT_OPTS[@]})); then
		FORCE=1 apt_private "$label"
		fetch "$pkg" && return 0
	elif ! lists_fresh; then
		apt_update
		fetch "$pkg" && return 0
	fi
	[[ -n ${PKG_FALLBACK[$label]:-} ]] || return 1
	while read -r cand; do
		[[ $cand == "$pkg" ]] && continue
		say "warning: cannot download $pkg for $label; falling back to $cand"
		fetch "$cand" && return 0
	done < <(apt-cache "${APT_OPTS[@]}" search --names-only "${PKG_FALLBACK[$label]}" | awk '{print $1}' |
		grep -Ev -- '-(dbg|rt|cloud|unsigned)(-|$)' | sort -rV | head -n 3)
	say "no kernel package for $label could be downloaded"
	return 1
}

# initramfs DIR [BUSYBOX]: set INITRD to DIR's initramfs, building it if missing. BUSYBOX: a
# static busybox for the kernel's architecture (default: this machine's).
initramfs() {
	local dir=$1 bb=${2:-$busybox} kver key stage mroot mdst names f rel dst
	kver=$(cat "$dir/tree/.complete")
	key=$({
		cat "$here/init.sh"
		echo "$VM_MODULES|$VM_EXTRA_MODULES|$INITRAMFS_FORMAT"
		sha256sum <"$bb"
	} | sha256sum | cut -c1-16)
	INITRD=$dir/initramfs-$key.cpio
	[[ -s $INITRD ]] && return 0
	say "building initramfs for $kver"
	stage=$(mktemp -d "$CACHE/.stage.XXXXXX")
	tmp_dirs+=("$stage")
	mroot=$dir/tree/lib/modules/$kver
	mdst=$stage/lib/modules/$kver
	mkdir -p "$stage"/{bin,dev,etc,proc,sys,tmp,host,results} "$mdst"
	ln -s bin "$stage/sbin"
	cp "$bb" "$stage/bin/busybox"
	# The applets' names come from this machine's busybox: another architecture's cannot run
	# here, and Debian builds both from one source (arm64_root checks the version).
	for f in $("$busybox" --list); do
		[[ $f == busybox ]] || ln -s busybox "$stage/bin/$f"
	done
	install -m 0755 "$here/init.sh" "$stage/init"
	tr -s ' ' '\n' <<<"$VM_MODULES" >"$stage/etc/vm-modules"
	if [[ $EUID -eq 0 ]]; then mknod -m 600 "$stage/dev/console" c 5 1; fi

	names=${VM_MODULES//!/}
	names=${names//-/_}
	while read -r rel; do
		case $rel in
		*.ko.xz | *.ko.zst | *.ko.gz) dst=$mdst/${rel%.*} ;;
		*) dst=$mdst/$rel ;;
		esac
		mkdir -p "${dst%/*}"
		case $rel in
		*.ko.xz) xz -dc "$mroot/$rel" >"$dst" ;;
		*.ko.zst) zstd -qdc "$mroot/$rel" >"$dst" ;;
		*.ko.gz) gzip -dc "$mroot/$rel" >"$dst" ;;
		*) cp "$mroot/$rel" "$dst" ;;
		esac || return 1
	done < <(awk -v want="$names" -v prefixes="$VM_EXTRA_MODULES" '
		BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) W[w[i]] = 1; np = split(prefixes, P, " ") }
		{
			path = $1; sub(/:$/, "", path)
			name = path; sub(/.*\//, "", name); sub(/\.ko.*$/, "", name); gsub(/-/, "_", name)
			sel = (name in W)
			for (i = 1; i <= np && !sel; i++) if (index(path, P[i]) == 1) sel = 1
			if (sel) { print path; for (i = 2; i <= NF; i++) print $i }
		}' "$mroot/modules.dep" | sort -u)
	for f in modules.order modules.builtin modules.builtin.modinfo; do
		if [[ -f $mroot/$f ]]; then cp "$mroot/$f" "$mdst/"; fi
	done
	depmod -b "$stage" "$kver" || return 1
	for f in $names; do
		f=${f//_/[-_]}
		grep -q "/$f\.ko:" "$mdst/modules.dep" || grep -q "/$f\.ko\$" "$mdst/modules.builtin" ||
			say "note: module ${f//\[-_\]/_} is not in $kver (the guest skips it, or fails if it is required)"
	done
	(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --null -o -H newc -R 0:0 --quiet) >"$INITRD.tmp" || return 1
	rm -f "$dir"/initramfs-*.cpio
	mv "$INITRD.tmp" "$INITRD"
	rm -rf "$stage"
}

# Packages of the arm64 guest's root: a shell, the tools the tests run (ip, nft, conntrack),
# and what they link. Bump ARM64_ROOT_FORMAT to rebuild the cached root.
ARM64_ROOT_PACKAGES="busybox-static dash iproute2 nftables conntrack"
ARM64_ROOT_FORMAT=1
# Never unpacked: packaging machinery, needed only by maintainer scripts, which are not run.
ARM64_ROOT_SKIP=" debconf cdebconf debconf-2.0 dpkg debianutils install-info perl-base tar libcap2-bin readline-common "

# package_deps PKG: PKG's Depends and Pre-Depends (APT_OPTS' architecture), one per line: the
# first alternative of each, and the first provider of a virtual package.
package_deps() {
	apt-cache "${APT_OPTS[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
		--no-replaces --no-enhances "$1" | awk '
		/^ *\|?(Pre)?Depends:/ {
			alt = ($1 ~ /^\|/); name = $2
			if (skipping) { skipping = alt; next }
			if (name ~ /^</) { virt = 1; skipping = alt; next }
			print name; skipping = alt; virt = 0; next
		}
		/^    / && virt { print $1; virt = 0; next }'
}

# arm64_root: set ROOTFS to a small arm64 Debian root (ARM64_ROOT_PACKAGES and their
# dependencies, unpacked without running maintainer scripts), built once into the cache.
# Needs APT_OPTS set for the arm64 label. The guest chroots into it, as the amd64 guests
# chroot into this machine's root, which an arm64 kernel cannot run.
arm64_root() {
	local key dir tmp p d deb order=() queue have ver bb opts=()
	key=$(echo "$ARM64_ROOT_PACKAGES|$ARM64_ROOT_SKIP|$ARM64_ROOT_FORMAT" | sha256sum | cut -c1-16)
	dir=$CACHE/rootfs-arm64-$key
	ROOTFS=$dir/root
	[[ -e $dir/.complete ]] && return 0
	say "building the arm64 guest's root from Debian packages: $ARM64_ROOT_PACKAGES"
	declare -A seen=()
	read -ra queue <<<"$ARM64_ROOT_PACKAGES"
	while ((${#queue[@]})); do
		p=${queue[0]%%:*}
		queue=("${queue[@]:1}")
		[[ -n ${seen[$p]:-} || $ARM64_ROOT_SKIP == *" $p "* ]] && continue
		seen[$p]=1
		order+=("$p")
		while read -r d; do queue+=("$d"); done < <(package_deps "$p")
	done
	rm -rf "$dir"
	mkdir -p "$dir/debs"
	tmp=$dir/root.tmp
	[[ $EUID -eq 0 ]] && opts=(-o APT::Sandbox::User=root)
	if ! (cd "$dir/debs" && apt-get "${APT_OPTS[@]}" "${opts[@]}" -q download "${order[@]}") >"$dir/log" 2>&1; then
		sed 's/^/vm:   apt: /' "$dir/log" >&2
		return 1
	fi
	for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$tmp" || return 1; done
	# Lean: no documentation, locales or charset modules (19 MB) in a test root.
	rm -rf "$tmp"/usr/share/{doc,man,info,locale,lintian,bash-completion,zsh} "$tmp"/usr/lib/*-linux-gnu/gconv
	# /bin/sh is dash: Debian's busybox-static runs its own applets before searching PATH, so
	# under its sh `ip` would be busybox's, not iproute2's.
	ln -sfn dash "$tmp/bin/sh"
	bb=$tmp/bin/busybox
	ver=$(grep -ao 'BusyBox v[0-9.]* ([^)]*)' "$bb" | head -n 1 || true)
	have=$("$busybox" 2>&1 | head -n 1 || true)
	if [[ -z $ver || $have != *"$ver"* ]]; then
		say "the arm64 busybox ($ver) is not this machine's ($have): cannot name its applets"
		return 1
	fi
	mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin}
	for p in $("$busybox" --list); do
		[[ $p == busybox || -e $tmp/bin/$p || -e $tmp/sbin/$p || -e $tmp/usr/bin/$p || -e $tmp/usr/sbin/$p ]] && continue
		ln -s busybox "$tmp/bin/$p"
	done
	mkdir -p "$tmp"/{proc,sys,dev,tmp,run,root,var/tmp,etc,lib/modules}
	ln -sfn ../run "$tmp/var/run"
	chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$tmp/etc/passwd"
	echo 'root:x:0:' >"$tmp/etc/group"
	printf '127.0.0.1 localhost\n::1 localhost\n' >"$tmp/etc/hosts"
	mv "$tmp" "$ROOTFS"
	rm -rf "$dir/debs"
	touch "$dir/.complete"
	say "arm64 root: $(du -sh "$ROOTFS" | cut -f1) in $ROOTFS"
}

# ---------------------------------------------------------------------------- running

# relpkg PKGDIR: PKGDIR relative to the repository root when inside it.
relpkg() {
	case $1 in
	"$repo") echo . ;;
	"$repo"/*) echo "${1#"$repo"/}" ;;
	*) echo "$1" ;;
	esac
}

console_tail() {
	echo "--- last lines of the guest console ($1) ---"
	tail -n "${2:-40}" "$1" 2>/dev/null || true
	echo "--- end of console ---"
}

# prepare_kernel LABEL: fetch LABEL's kernel and build its initramfs (one label at a time: they
# share apt and the cache); set KDIR and INITRD, or write LABEL's FAIL verdict.
prepare_kernel() {
	local label=$1
	if ! kernel_dir "$label"; then
		echo "vm $label: FAIL (cannot fetch the kernel package)" >"$lanes/$label.verdict"
		return 1
	fi
	ROOTFS=
	if [[ ${LABEL_ARCH[$label]:-} == arm64 ]] && ! arm64_root; then
		echo "vm $label: FAIL (cannot build the arm64 root)" >"$lanes/$label.verdict"
		return 1
	fi
	if ! initramfs "$KDIR" "${ROOTFS:+$ROOTFS/bin/busybox}"; then
		echo "vm $label: FAIL (cannot build the initramfs)" >"$lanes/$label.verdict"
		return 1
	fi
}

# run_kernel LABEL KDIR INITRD [ROOT]: boot LABEL's kernel once, run every binary, print
# outputs, and write the verdict to $lanes/LABEL.verdict. Runs in a lane of its own (a
# subshell). ROOT: the guest's root for another architecture (arm64_root).
run_kernel() {
	local label=$1 kdir=$2 initrd=$3 root=${4:-} kver run share rc start i n release why failed entry pkgdir status
	local kstart=$SECONDS qemu console vm_repo=
	local -a machine entries=("${entries[@]}")
	local only_var=CTTRACE_VM_ONLY_${label//[^A-Za-z0-9]/_} only e
	kver=$(cat "$kdir/tree/.complete")
	only=${!only_var-${LABEL_ONLY[$label]:-}}
	if [[ -n $only ]]; then
		local -a picked=()
		for e in "${entries[@]}"; do
			[[ " $only " == *" $(relpkg "${e%% *}") "* ]] && picked+=("$e")
		done
		if ((${#picked[@]} == 0)); then
			echo "vm $label: FAIL (the manifest has none of $only)" >"$lanes/$label.verdict"
			return 0
		fi
		entries=("${picked[@]}")
	fi
	if [[ -n $root ]]; then
		# arm64 under TCG: pauth-impdef=on keeps pointer authentication but with QEMU's cheap
		# algorithm instead of QARMA (measured: boot to a shell 3.6 s instead of 11 s).
		qemu=qemu-system-aarch64 console=ttyAMA0 machine=(-M virt -cpu max,pauth-impdef=on)
		entries=("${entries_arm64[@]}")
		vm_repo=$repo
		# The repository is mounted at its own path inside the guest's root: make that
		# mount point (the root is shared read-only, so the guest cannot).
		mkdir -p "$root$repo"
	else
		qemu=qemu-system-x86_64 console=ttyS0 machine=() root=/
	fi
	run=$(mktemp -d "${TMPDIR:-/tmp}/cttrace-vm.XXXXXX")
	share=$run/share
	mkdir "$share"
	printf '%s\n' "${entries[@]}" >"$share/manifest"
	cp -L "$kdir/tree/boot/config-$kver" "$share/kconfig" 2>/dev/null || say "$label: no config-$kver in the package"
	{
		echo "VM_LABEL=$(squote "$label")"
		# Where the guest puts the kernel's build configuration for the tests (the
		# cache is under /root, which the guest covers with a tmpfs).
		echo "VM_KCONFIG=/run/cttrace-vm.kconfig"
		echo "VM_TEST_TIMEOUT=$(squote "$VM_TEST_TIMEOUT")"
		echo "VM_TEST_RUN=$(squote "$VM_TEST_RUN")"
		echo "VM_OUT_DIR=$(squote "$VM_OUT_DIR")"
		echo "VM_REPO=$(squote "$vm_repo")"
	} >"$share/config"
	out_share=()
	if [[ -n $VM_OUT_DIR ]]; then
		out_share=(-virtfs "local,path=$VM_OUT_DIR,mount_tag=out,security_model=none")
	fi
	if [[ -n $vm_repo ]]; then
		out_share+=(-virtfs "local,path=$vm_repo,mount_tag=repo,security_model=none,readonly=on,multidevs=remap")
	fi
	while IFS= read -r n; do
		[[ ($n == CTTRACE_* || $n == BENCH_*) && $n != CTTRACE_TESTBED && $n != CTTRACE_VM_KERNEL && $n != CTTRACE_VM_KCONFIG ]] || continue
		printf '%s=%s\nexport %s\n' "$n" "$(squote "${!n}")" "$n"
	done < <(compgen -e) >"$share/env.sh"

	say "booting $label ($kver) to run ${#entries[@]} test binaries (limit ${VM_TIMEOUT}s)"
	start=$SECONDS
	rc=0
	timeout -k 15 "$VM_TIMEOUT" "$qemu" "${machine[@]}" -accel "$VM_ACCEL" -nographic -no-reboot \
		-m "$VM_MEM" -smp "$VM_SMP" -nic none -monitor none \
		-serial "file:$run/console.log" \
		-kernel "$kdir/tree/boot/vmlinuz-$kver" -initrd "$initrd" \
		-append "console=$console quiet loglevel=3 panic=-1" \
		-virtfs "local,path=$root,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
		-virtfs "local,path=$share,mount_tag=results,security_model=none" \
		"${out_share[@]}" \
		</dev/null >"$run/qemu.log" 2>&1 &
	qemu_pid=$!
	wait "$qemu_pid" || rc=$?
	qemu_pid=
	say "$label: guest ran for $((SECONDS - start))s"

	release=$(cat "$share/release" 2>/dev/null || echo "$kver")
	if [[ -f $share/modules.txt ]]; then
		awk -v l="$label" '$2 != "loaded" && $2 != "builtin" { printf "vm: %s: module %s %s\n", l, $1, $2 }' \
			"$share/modules.txt" >&2
	fi
	why=
	if ((rc == 124 || rc == 137)); then
		why="timed out after ${VM_TIMEOUT}s"
	elif [[ ! -e $share/booted ]]; then
		why=$(grep -ao 'cttrace-vm: FATAL: .*' "$run/console.log" 2>/dev/null | tail -n 1 || true)
		why="boot failed (${why:-qemu exit $rc})"
	elif [[ -s $share/fatal ]]; then
		why=$(head -n 1 "$share/fatal")
	elif grep -aq 'Kernel panic' "$run/console.log" 2>/dev/null; then
		why="kernel panic"
	elif [[ ! -e $share/done ]]; then
		why="the guest stopped before running every binary (qemu exit $rc)"
	fi
	failed=()
	i=0
	for entry in "${entries[@]}"; do
		i=$((i + 1))
		pkgdir=${entry%% *}
		[[ -e $share/booted && ! -s $share/fatal ]] || continue
		echo "=== vm $label ($release): $(relpkg "$pkgdir") ==="
		cat "$share/$i.out" 2>/dev/null || echo "(no output: the binary did not run)"
		status=$(cat "$share/$i.status" 2>/dev/null || true)
		say "$label: $(relpkg "$pkgdir") exit ${status:-?} after $(cat "$share/$i.secs" 2>/dev/null || echo ?)s"
		if [[ -z $status ]]; then
			failed+=("$(relpkg "$pkgdir") (no exit status)")
		elif [[ $status != 0 ]]; then
			failed+=("$(relpkg "$pkgdir") (exit $status)")
		fi
	done
	if [[ -n $why ]]; then
		console_tail "$run/console.log"
		if [[ -s $run/qemu.log ]]; then sed 's/^/qemu: /' "$run/qemu.log"; fi
	fi
	if ((${#failed[@]})); then
		why=${why:+$why; }"failed: $(printf '%s, ' "${failed[@]}")"
		why=${why%, }
	fi
	local verdict="vm $label: PASS"
	if [[ -z $why ]]; then
		rm -rf "$run"
	else
		verdict="vm $label: FAIL ($why)"
		say "$label: results kept in $run"
	fi
	echo "$verdict" >"$lanes/$label.verdict"
	say "$label: ${verdict#"vm $label: "} after $((SECONDS - kstart))s in all"
}

total_start=$SECONDS
lanes=$(mktemp -d "${TMPDIR:-/tmp}/cttrace-vm-lanes.XXXXXX")
tmp_dirs+=("$lanes")
lane_pids=()
for label in "${labels[@]}"; do
	prepare_kernel "$label" || continue
	while (($(jobs -rp | wc -l) >= VM_PARALLEL)); do wait -n || true; done
	# A lane stops its own guest when it is stopped: the guest runs under timeout(1), in a
	# process group of its own that no signal to ours reaches.
	(
		trap '[[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null; exit 143' TERM INT
		trap - EXIT
		run_kernel "$label" "$KDIR" "$INITRD" "$ROOTFS"
	) >"$lanes/$label.out" &
	lane_pids+=($!)
done
wait || true
# Outputs in the order of KERNELS, whatever order the lanes finished in.
overall=0
verdicts=()
for label in "${labels[@]}"; do
	cat "$lanes/$label.out" 2>/dev/null || true
	verdicts+=("$(cat "$lanes/$label.verdict" 2>/dev/null || echo "vm $label: FAIL (no verdict)")")
	[[ ${verdicts[-1]} == *": PASS" ]] || overall=1
done
printf '%s\n' "${verdicts[@]}"
say "total $((SECONDS - total_start))s"
exit "$overall"
