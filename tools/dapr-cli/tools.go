//go:build tools

// Package tools pins the Dapr CLI (github.com/dapr/cli, main package at the
// module root) so that `go build github.com/dapr/cli` builds it from go.mod.
package tools

import _ "github.com/dapr/cli"
