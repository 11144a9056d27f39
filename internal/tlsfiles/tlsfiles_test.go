package tlsfiles

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvdproject/kvd/internal/pki"
)

func TestReloadKeepsTheLastGoodSet(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, _, err := pki.NewCA(now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	issue := func() *pki.Pair {
		p, err := ca.IssueNode("n1", nil, now.Add(-time.Hour), now.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert, key := filepath.Join(dir, "n1.crt"), filepath.Join(dir, "n1.key")
	p1 := issue()
	os.WriteFile(cert, p1.CertPEM, 0o600)
	os.WriteFile(key, p1.KeyPEM, 0o600)
	s, err := Load(Files{CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		c := s.Certificate()
		if c == nil || c.Leaf == nil {
			t.Fatal("no certificate loaded")
		}
		return c.Leaf.SerialNumber.String()
	}
	first := serial()

	// A half-written key: the reload fails and the old pair stays.
	os.WriteFile(key, []byte("-----BEGIN"), 0o600)
	if changed, err := s.Reload(); err == nil || changed {
		t.Fatalf("Reload with a broken key = %v, %v; want an error", changed, err)
	}
	if serial() != first {
		t.Fatal("a failed reload replaced the certificate")
	}

	// A whole new pair: the reload swaps it in.
	p2 := issue()
	os.WriteFile(cert, p2.CertPEM, 0o600)
	os.WriteFile(key, p2.KeyPEM, 0o600)
	if changed, err := s.Reload(); err != nil || !changed {
		t.Fatalf("Reload with a new pair = %v, %v; want changed", changed, err)
	}
	if serial() != p2.Cert.SerialNumber.String() {
		t.Fatal("the new certificate was not loaded")
	}
	if changed, err := s.Reload(); err != nil || changed {
		t.Fatalf("Reload of unchanged files = %v, %v; want unchanged", changed, err)
	}
	if _, err := Load(Files{CertFile: cert}); err == nil {
		t.Error("Load with a certificate and no key succeeded")
	}
}
