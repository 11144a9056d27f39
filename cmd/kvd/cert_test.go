package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kvdproject/kvd/internal/pki"
)

func TestCertCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	kvd := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	// No CA yet: the error says how to make one.
	code, _, stderr := kvd("cert", "node", "n1", "--dir", dir)
	if code != 1 || !strings.Contains(stderr, "ca.crt does not exist") || !strings.Contains(stderr, "kvd cert ca --dir "+dir) {
		t.Errorf("node without a CA: exit %d, stderr %q; want 1 and how to make a CA", code, stderr)
	}

	if code, stdout, stderr := kvd("cert", "ca", "--dir", dir); code != 0 || !strings.Contains(stdout, "ca.crt") {
		t.Fatalf("cert ca: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr := kvd("cert", "node", "n1", "--dir", dir, "--hosts", "n1.example.com,10.0.0.5")
	if code != 0 || !strings.Contains(stdout, "node.n1.crt") || !strings.Contains(stdout, "10.0.0.5") {
		t.Fatalf("cert node: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, stdout, stderr := kvd("cert", "client", "alice", "--dir", dir, "--lifetime", "1h"); code != 0 || !strings.Contains(stdout, "client.alice.crt") {
		t.Fatalf("cert client: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	node, err := tls.LoadX509KeyPair(filepath.Join(dir, "node.n1.crt"), filepath.Join(dir, "node.n1.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "n1.example.com"}); err != nil {
		t.Errorf("node certificate: %v", err)
	}
	if err := pki.VerifyMember(node.Leaf, "n1"); err != nil {
		t.Errorf("node certificate: %v", err)
	}
	if !slices.ContainsFunc(node.Leaf.IPAddresses, net.ParseIP("10.0.0.5").Equal) {
		t.Errorf("node certificate IPs %v, want 10.0.0.5 among them", node.Leaf.IPAddresses)
	}
	client, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.alice.crt"), filepath.Join(dir, "client.alice.key"))
	if err != nil {
		t.Fatal(err)
	}
	if client.Leaf.Subject.CommonName != "alice" || client.Leaf.NotAfter.Sub(client.Leaf.NotBefore) > 3*3600e9 {
		t.Errorf("client certificate CN %q valid %v..%v; want alice for about an hour", client.Leaf.Subject.CommonName, client.Leaf.NotBefore, client.Leaf.NotAfter)
	}
	fi, err := os.Stat(filepath.Join(dir, "client.alice.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("client key mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}

	// Existing files stay unless --overwrite.
	before, _ := os.ReadFile(filepath.Join(dir, "node.n1.crt"))
	code, _, stderr = kvd("cert", "node", "n1", "--dir", dir)
	if code != 1 || !strings.Contains(stderr, "--overwrite") {
		t.Errorf("node again: exit %d, stderr %q; want 1 naming --overwrite", code, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "node.n1.crt")); !bytes.Equal(before, after) {
		t.Error("a refused cert node changed the certificate")
	}
	if code, _, stderr := kvd("cert", "node", "n1", "--dir", dir, "--overwrite"); code != 0 {
		t.Errorf("node --overwrite: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = kvd("cert", "ca", "--dir", dir)
	if code != 1 || !strings.Contains(stderr, "ca.") || !strings.Contains(stderr, "--overwrite") {
		t.Errorf("ca again: exit %d, stderr %q; want 1 naming --overwrite", code, stderr)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"cert", "node", "--dir", dir}, "accepts 1 arg"},
		{[]string{"cert", "node", "n 1", "--dir", dir}, "member name"},
		{[]string{"cert", "node", "n2", "--dir", dir, "--hosts", "a b"}, "--hosts"},
		{[]string{"cert", "client", "bad/user", "--dir", dir}, "user name"},
		{[]string{"cert", "ca", "--dir", dir, "--lifetime", "-1h"}, "--lifetime"},
		{[]string{"cert", "client", "bob", "--dir", dir, "--lifetime", "200000h"}, "outlive the CA"},
	} {
		code, _, stderr := kvd(tt.args...)
		if code == 0 || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("kvd %q: exit %d, stderr %q; want a failure, one line naming %q", tt.args, code, stderr, tt.want)
		}
	}
}
