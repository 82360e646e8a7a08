#!/usr/bin/env bash
# Builds the zt-agent image with podman from an agent binary:
#   deploy/build-image.sh BINARY TAG
# The build context (a temporary directory) holds rootfs/: the binary at
# /usr/bin/zt-agent and every shared object `ldd` says it loads, at the same
# paths, so the image from scratch (deploy/Containerfile) runs it as the host
# does. Needs podman, ldd and strip (binutils). Prints the image id.
set -euo pipefail
binary=${1:?usage: build-image.sh BINARY TAG}
tag=${2:?usage: build-image.sh BINARY TAG}
here=$(cd "$(dirname "$0")" && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
install -D -m 0755 "$binary" "$ctx/rootfs/usr/bin/zt-agent"
# Without debug info (the embedded eBPF object is data, kept as it is).
strip --strip-debug "$ctx/rootfs/usr/bin/zt-agent"
# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
ldd "$binary" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
    # Copy the file the path resolves to, under the path the loader asks for.
    install -D -m 0755 "$(readlink -f "$lib")" "$ctx/rootfs$lib"
done
# The mount points the DaemonSet and the systemd-less podman run use.
mkdir -p "$ctx/rootfs/etc/zt-agent/config" "$ctx/rootfs/etc/zt-agent/policies" "$ctx/rootfs/etc/zt-agent/keys" \
    "$ctx/rootfs/var/lib/zt-agent" "$ctx/rootfs/run/zt-agent" "$ctx/rootfs/sys" "$ctx/rootfs/proc" "$ctx/rootfs/tmp"
podman build --quiet --file "$here/Containerfile" --tag "$tag" "$ctx"
