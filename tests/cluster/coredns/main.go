// Command coredns is CoreDNS v1.x (github.com/coredns/coredns) with only
// the plugins the local node's cluster DNS uses, built by
// tests/cluster/install.sh.
//
// Why not `go build github.com/coredns/coredns`: its plugin list (cloud
// DNS providers, etcd, geoip, ...) takes several minutes more to compile on
// two cores and none of it can run here. Compiling CoreDNS with a chosen
// plugin set through `dnsserver.Directives` is the documented way to build
// it (coredns.io, "Compile Time Enabling or Disabling Plugins"); the order
// below is the order of CoreDNS's own plugin.cfg.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	dnsserver.Directives = []string{
		"reload",
		"ready",
		"health",
		"prometheus",
		"errors",
		"log",
		"loadbalance",
		"cache",
		"kubernetes",
	}
}

func main() {
	coremain.Run()
}
