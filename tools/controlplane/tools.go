//go:build tools

// Package controlplane records the Kubernetes commands that build.sh compiles,
// so that `go mod tidy` keeps their dependencies in go.mod/go.sum.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"

	// The node components of the cluster tier (tests/cluster).
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"

	// etcd at the version k8s.io/kubernetes pins (go.etcd.io/etcd/server/v3).
	_ "go.etcd.io/etcd/server/v3"
)
