#!/usr/bin/env bash
# Builds kube-apiserver and kubectl of one Kubernetes release from the Go module proxy, once
# per machine, into a cache keyed by the version: the tests, the lab and the benchmarks run a
# real API server. Nothing of Kubernetes' source is kept in this repository: a throwaway
# wrapper module requires k8s.io/kubernetes and pins its staging modules (k8s.io/api, ...) to
# the matching v0.x release, which is all `go build` needs.
#
#   scripts/kube-build.sh          prints the directory holding both programs
set -euo pipefail

version=${KUBE_VERSION:-$(cat "$(dirname "$0")/kubernetes-version")}
cache=${BRINDLE_KUBE_CACHE:-/var/cache/brindle/kubernetes}/v$version
if [ -x "$cache/kube-apiserver" ] && [ -x "$cache/kubectl" ]; then
    echo "$cache"
    exit 0
fi
if ! command -v go >/dev/null; then
    echo "kube-build: go not found: install Go 1.26 or newer (the Kubernetes $version build needs it)" >&2
    exit 1
fi
echo "kube-build: building kube-apiserver and kubectl v$version (once per machine, about 6 minutes)" >&2
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
mkdir -p "$cache"
mv "$work/bin/kube-apiserver" "$work/bin/kubectl" "$cache/"
echo "$cache"
