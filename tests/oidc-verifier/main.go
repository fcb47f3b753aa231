// Command oidc-verifier checks an m2m-operator access token the way an
// OpenID Connect relying party does, with github.com/coreos/go-oidc:
// discovery through oidc.NewProvider (GET <issuer>/.well-known/openid-configuration,
// issuer match), then the signature against the discovered jwks_uri and the
// iss, aud and exp claims. The tests build and run it against a real token
// server (tests/discovery.rs); it prints the verified subject.
//
// Usage: oidc-verifier -issuer URL -audience AUD -ca FILE -alg ES256 < token
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

func main() {
	issuer := flag.String("issuer", "", "issuer URL (discovery base)")
	audience := flag.String("audience", "", "expected aud")
	caFile := flag.String("ca", "", "PEM CA bundle trusted for the issuer")
	alg := flag.String("alg", "ES256", "accepted signing algorithm")
	flag.Parse()
	if err := run(*issuer, *audience, *caFile, *alg); err != nil {
		fmt.Fprintln(os.Stderr, "oidc-verifier:", err)
		os.Exit(1)
	}
}

func run(issuer, audience, caFile, alg string) error {
	pool := x509.NewCertPool()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("no certificate in %s", caFile)
		}
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	ctx := oidc.ClientContext(context.Background(), client)
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	verifier := provider.Verifier(&oidc.Config{ClientID: audience, SupportedSigningAlgs: []string{alg}})
	token, err := verifier.Verify(ctx, strings.TrimSpace(string(raw)))
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	fmt.Printf("verified sub=%s iss=%s\n", token.Subject, token.Issuer)
	return nil
}
