//go:build tools

// Package promtool records the command that build.sh compiles (Prometheus's
// promtool, for `promtool test rules` on the chart's PrometheusRule), so that
// `go mod tidy` keeps its dependencies in go.mod/go.sum.
package promtool

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
