#!/usr/bin/env bash
# Debian's cloud kernel for the end-to-end tests that need modules this machine's kernel lacks
# (ipip, wireguard): the package linux-image-cloud-amd64 points at, downloaded with apt-get
# download and unpacked (never installed) into /var/cache/brindle/vm/<package>, with
# modules.dep made by depmod. tests/src/vm.rs boots it under qemu. Once per machine and kernel
# version; prints the directory.
set -euo pipefail
cache=${BRINDLE_VM_CACHE:-/var/cache/brindle/vm}
package=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
if [ -z "$package" ]; then
    echo "vm-kernel: apt knows no linux-image-cloud-amd64 (run apt-get update)" >&2
    exit 1
fi
dir=$cache/$package
if [ ! -f "$dir/ready" ]; then
    echo "vm-kernel: unpacking $package into $dir (once per machine)" >&2
    rm -rf "$dir" "$dir.partial"
    mkdir -p "$dir.partial/deb"
    chmod 777 "$dir.partial/deb"   # apt-get download drops to the _apt user where it can
    (cd "$dir.partial/deb" && apt-get download -qq "$package" 2>/dev/null)
    dpkg-deb -x "$dir.partial"/deb/*.deb "$dir.partial/root"
    depmod -b "$dir.partial/root" "${package#linux-image-}"
    mv "$dir.partial/root" "$dir"
    rm -rf "$dir.partial"
    touch "$dir/ready"
fi
echo "$dir"
