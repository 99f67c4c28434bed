#!/usr/bin/env bash
# Regenerates bpf/arm64/vmlinux.h from a Debian arm64 kernel package, on any
# host architecture (bpf/README.md). Debian's arm64 vmlinuz is an uncompressed
# arm64 Image, not an ELF file, so its .BTF section cannot be read by name:
# the BTF blob is found by its header (magic 0xeB9F, version 1, 24-byte header,
# types first, strings right after them) and cut out. nf_conntrack is a module
# there, so its types come from the module's split BTF on top of vmlinux's;
# bpftool dumps base and split types together.
#
#   bpf/arm64/gen-vmlinux.sh [PACKAGE]   (default linux-image-6.12.117+deb12-arm64)
set -euo pipefail
pkg=${1:-linux-image-6.12.117+deb12-arm64}
out=$(cd "$(dirname "$0")" && pwd)/vmlinux.h
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
key=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
cat >"$work/sources.list" <<LIST
deb [signed-by=$key] http://deb.debian.org/debian bookworm main
deb [signed-by=$key] http://deb.debian.org/debian-security bookworm-security main
LIST
# A private configuration: the machine's own sources and lists stay as they are.
apt=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists"
	-o "Dir::Cache=$work/cache" -o Dir::State::status=/dev/null
	-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o APT::Sandbox::User=root)
apt-get "${apt[@]}" update -qq
(cd "$work" && apt-get "${apt[@]}" download "$pkg")
dpkg-deb -x "$work"/*.deb "$work/root"
python3 - "$work"/root/boot/vmlinuz-* "$work/vmlinux.btf" <<'PY'
import struct, sys
data = open(sys.argv[1], 'rb').read()
at = 0
while True:
    i = data.find(b'\x9f\xeb\x01\x00\x18\x00\x00\x00', at)
    if i < 0:
        sys.exit("gen-vmlinux: no BTF header in " + sys.argv[1])
    hdr, type_off, type_len, str_off, str_len = struct.unpack_from('<IIIII', data, i + 4)
    if type_off == 0 and str_off == type_len and type_len > 1 << 20:
        open(sys.argv[2], 'wb').write(data[i:i + hdr + str_off + str_len])
        break
    at = i + 1
PY
ko=$(find "$work/root" -name 'nf_conntrack.ko*')
case $ko in *.xz) xz -d "$ko"; ko=${ko%.xz} ;; esac
bpftool btf dump file "$ko" -B "$work/vmlinux.btf" format c >"$out"
echo "gen-vmlinux: $out from $pkg ($(wc -l <"$out") lines)"
