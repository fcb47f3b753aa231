// Command registry is the CNCF distribution registry
// (github.com/distribution/distribution/v3) with only the filesystem
// storage driver, built by tests/cluster/install.sh. It serves the local
// cluster's images on loopback (containerd's mirror for docker.io and
// registry.k8s.io) and the chart as an OCI artifact.
//
// Why not `go build .../cmd/registry`: that main also links the S3, Azure
// and GCS drivers, which cannot be used here and cost minutes of compile
// time on two cores; registry.RootCmd is the same command line.
package main

import (
	"github.com/distribution/distribution/v3/registry"

	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	if err := registry.RootCmd.Execute(); err != nil {
		panic(err)
	}
}
