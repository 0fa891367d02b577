#!/usr/bin/env bash
# Builds kube-apiserver and kubectl of one Kubernetes release, and the etcd it runs on, from
# the Go module proxy, once per machine, into a cache keyed by both versions
# (scripts/kubernetes-version: Kubernetes on the first line, etcd on the second): the tests,
# the lab and the benchmarks run a real API server. Nothing of their source is kept in this
# repository: throwaway wrapper modules require k8s.io/kubernetes (its staging modules,
# k8s.io/api and the rest, pinned to the matching v0.x release) and go.etcd.io/etcd/server/v3,
# which is all `go build` needs. Debian's etcd (3.4) lacks the progress notifications the API
# server's watch cache relies on, so the tests' API server runs on this etcd.
#
#   scripts/kube-build.sh          prints the directory holding the three programs
set -euo pipefail

version=$(sed -n 1p "$(dirname "$0")/kubernetes-version")
etcd_version=$(sed -n 2p "$(dirname "$0")/kubernetes-version")
cache=${BRINDLE_KUBE_CACHE:-/var/cache/brindle/kubernetes}/v$version-etcd$etcd_version
if [ -x "$cache/kube-apiserver" ] && [ -x "$cache/kubectl" ] && [ -x "$cache/etcd" ]; then
    echo "$cache"
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "kube-build: go not found: install Go 1.26 or newer (the Kubernetes $version build needs it)" >&2
    exit 1
fi
echo "kube-build: building kube-apiserver, kubectl v$version and etcd v$etcd_version (once per machine, about 7 minutes)" >&2
work=$(mktemp -d /tmp/brindle-kube-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init brindle.local/kube-build >/dev/null 2>&1
# The staging modules k8s.io/kubernetes replaces with its own directories, each pinned to the
# release that matches (v1.37.2 -> v0.37.2).
modfile=$(go mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
grep -oE 'k8s.io/[a-z0-9-]+ => ./staging' "$modfile" |
    awk -v v="v0.${version#1.}" '{ print "replace " $1 " => " $1 " " v }' >>go.mod
echo "require k8s.io/kubernetes v$version" >>go.mod
cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
go mod tidy >/dev/null 2>&1
mkdir -p "$work/bin"
go build -o "$work/bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -o "$work/bin/kubectl" k8s.io/kubernetes/cmd/kubectl

mkdir -p "$work/etcd"
cd "$work/etcd"
go mod init brindle.local/etcd-build >/dev/null 2>&1
cat >main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
go get "go.etcd.io/etcd/server/v3@v$etcd_version" >/dev/null 2>&1
go mod tidy >/dev/null 2>&1
go build -o "$work/bin/etcd" .

mkdir -p "$cache"
mv "$work/bin/kube-apiserver" "$work/bin/kubectl" "$work/bin/etcd" "$cache/"
echo "$cache"
