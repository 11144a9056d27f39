package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	now := time.Now()
	ca, _, err := NewCA(now.Add(-time.Hour), now.Add(48*time.Hour))
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func issueNode(t *testing.T, ca *CA, name string, hosts ...string) *Pair {
	t.Helper()
	now := time.Now()
	p, err := ca.IssueNode(name, hosts, now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatalf("IssueNode(%s): %v", name, err)
	}
	return p
}

func issueClient(t *testing.T, ca *CA, user string) *Pair {
	t.Helper()
	now := time.Now()
	p, err := ca.IssueClient(user, now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatalf("IssueClient(%s): %v", user, err)
	}
	return p
}

func pool(cas ...*CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.Cert)
	}
	return p
}

func keyPair(t *testing.T, p *Pair) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatalf("X509KeyPair: %v", err)
	}
	return c
}

func TestIssuedCertificates(t *testing.T) {
	ca := newTestCA(t)
	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, key usage %v; want a CA that signs certificates", ca.Cert.IsCA, ca.Cert.KeyUsage)
	}
	node := issueNode(t, ca, "n1", "n1.example.com", "10.0.0.5", "localhost", "127.0.0.1").Cert
	if node.Subject.CommonName != "n1" {
		t.Errorf("node CN = %q, want n1", node.Subject.CommonName)
	}
	if want := []string{"n1", "localhost", "n1.example.com"}; !slices.Equal(node.DNSNames, want) {
		t.Errorf("node DNS names = %v, want %v", node.DNSNames, want)
	}
	var ips []string
	for _, ip := range node.IPAddresses {
		ips = append(ips, ip.String())
	}
	if want := []string{"127.0.0.1", "::1", "10.0.0.5"}; !slices.Equal(ips, want) {
		t.Errorf("node IP addresses = %v, want %v", ips, want)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := node.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("node certificate does not verify for usage %v: %v", usage, err)
		}
	}
	for _, host := range []string{"n1", "localhost", "127.0.0.1", "10.0.0.5", "n1.example.com"} {
		if err := node.VerifyHostname(host); err != nil {
			t.Errorf("node VerifyHostname(%s): %v", host, err)
		}
	}
	if err := node.VerifyHostname("n2"); err == nil {
		t.Error("node certificate of n1 verifies for host n2")
	}

	client := issueClient(t, ca, "alice").Cert
	if client.Subject.CommonName != "alice" {
		t.Errorf("client CN = %q, want alice", client.Subject.CommonName)
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify for client auth: %v", err)
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client certificate verifies for server auth")
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: pool(newTestCA(t)), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("client certificate verifies against another CA")
	}
}

func TestIssueRefusals(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"outlives CA", func() error { _, err := ca.IssueNode("n1", nil, now, now.Add(72*time.Hour)); return err }(), "outlive the CA"},
		{"ends before start", func() error { _, err := ca.IssueClient("u", now, now.Add(-time.Second)); return err }(), "expire before it starts"},
		{"empty member", func() error { _, err := ca.IssueNode("", nil, now, now.Add(time.Hour)); return err }(), "member name"},
		{"bad member", func() error { _, err := ca.IssueNode("n 1", nil, now, now.Add(time.Hour)); return err }(), "byte 1"},
		{"empty host", func() error { _, err := ca.IssueNode("n1", []string{""}, now, now.Add(time.Hour)); return err }(), "empty host"},
		{"empty user", func() error { _, err := ca.IssueClient("", now, now.Add(time.Hour)); return err }(), "user name"},
	} {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one containing %q", tt.name, tt.err, tt.want)
		}
	}
}

// handshake runs one TLS handshake over loopback TCP and returns the
// server's and the client's errors, and the server's view of the client.
//
//lint:ignore ST1008 the two errors, one per side, are what callers compare; the peer is an extra.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error, peer *x509.Certificate) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type result struct {
		err  error
		peer *x509.Certificate
	}
	done := make(chan result, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, server)
		err = tc.Handshake()
		var p *x509.Certificate
		if err == nil {
			if pcs := tc.ConnectionState().PeerCertificates; len(pcs) > 0 {
				p = pcs[0]
			}
			// Tell the client the handshake passed here too: in TLS 1.3
			// the client's handshake ends before the server has checked
			// the client's certificate.
			_, err = tc.Write([]byte{1})
		}
		done <- result{err: err, peer: p}
	}()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", lis.Addr().String(), client)
	if err == nil {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	r := <-done
	return r.err, err, r.peer
}

func TestHandshake(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	serverCert := keyPair(t, issueNode(t, ca, "n1"))
	server := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: pool(ca), ClientAuth: tls.RequireAndVerifyClientCert}

	t.Run("client cert from the CA", func(t *testing.T) {
		client := &tls.Config{RootCAs: pool(ca), Certificates: []tls.Certificate{keyPair(t, issueClient(t, ca, "alice"))}}
		serr, cerr, peer := handshake(t, server, client)
		if serr != nil || cerr != nil {
			t.Fatalf("handshake: server %v, client %v; want success", serr, cerr)
		}
		if peer == nil || peer.Subject.CommonName != "alice" {
			t.Errorf("server sees client %v, want CN alice", peer)
		}
	})
	t.Run("client cert from another CA", func(t *testing.T) {
		client := &tls.Config{RootCAs: pool(ca), Certificates: []tls.Certificate{keyPair(t, issueClient(t, other, "alice"))}}
		serr, cerr, _ := handshake(t, server, client)
		var ua x509.UnknownAuthorityError
		if !errors.As(serr, &ua) {
			t.Errorf("server error = %v, want x509.UnknownAuthorityError", serr)
		}
		if cerr == nil {
			t.Error("client saw no error")
		}
	})
	t.Run("no client cert", func(t *testing.T) {
		serr, _, _ := handshake(t, server, &tls.Config{RootCAs: pool(ca)})
		if serr == nil {
			t.Error("server accepted a client without a certificate")
		}
	})
	t.Run("server from another CA", func(t *testing.T) {
		client := &tls.Config{RootCAs: pool(other), Certificates: []tls.Certificate{keyPair(t, issueClient(t, ca, "alice"))}}
		_, cerr, _ := handshake(t, server, client)
		var ua *tls.CertificateVerificationError
		if !errors.As(cerr, &ua) {
			t.Errorf("client error = %v, want a certificate verification error", cerr)
		} else if !errors.As(ua.Err, new(x509.UnknownAuthorityError)) {
			t.Errorf("client error = %v, want unknown authority", ua.Err)
		}
	})
	t.Run("wrong server name", func(t *testing.T) {
		client := &tls.Config{RootCAs: pool(ca), ServerName: "n2", Certificates: []tls.Certificate{keyPair(t, issueClient(t, ca, "alice"))}}
		_, cerr, _ := handshake(t, server, client)
		if !errors.As(cerr, new(x509.HostnameError)) {
			t.Errorf("client error = %v, want x509.HostnameError", cerr)
		}
	})
	t.Run("expired server cert", func(t *testing.T) {
		now := time.Now()
		p, err := ca.IssueNode("n1", nil, now.Add(-3*time.Hour), now.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		srv := server.Clone()
		srv.Certificates = []tls.Certificate{keyPair(t, p)}
		client := &tls.Config{RootCAs: pool(ca), Certificates: []tls.Certificate{keyPair(t, issueClient(t, ca, "alice"))}}
		_, cerr, _ := handshake(t, srv, client)
		var ci x509.CertificateInvalidError
		if !errors.As(cerr, &ci) || ci.Reason != x509.Expired {
			t.Errorf("client error = %v, want an expired certificate", cerr)
		}
	})
}

// TestPeerMutualTLS: members dial each other with their node certificates;
// both sides check the other is a member. A client certificate of the same
// CA whose CN is a member's name, and a node certificate of a non-member,
// are refused.
func TestPeerMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	members := map[string]bool{"n1": true, "n2": true}
	isMember := func(name string) bool { return members[name] }
	peerConfig := func(cert tls.Certificate) *tls.Config {
		return &tls.Config{
			Certificates: []tls.Certificate{cert}, RootCAs: pool(ca), ClientCAs: pool(ca),
			ClientAuth: tls.RequireAndVerifyClientCert, VerifyPeerCertificate: VerifyPeer(isMember),
			MinVersion: tls.VersionTLS13,
		}
	}
	server := peerConfig(keyPair(t, issueNode(t, ca, "n1")))

	client := peerConfig(keyPair(t, issueNode(t, ca, "n2")))
	client.ServerName = "n1"
	serr, cerr, peer := handshake(t, server, client)
	if serr != nil || cerr != nil {
		t.Fatalf("n2 -> n1: server %v, client %v; want success", serr, cerr)
	}
	if name, err := MemberName(peer); name != "n2" || err != nil {
		t.Errorf("MemberName(server's peer) = %q, %v; want n2", name, err)
	}

	for _, tt := range []struct {
		name string
		cert tls.Certificate
		want string
	}{
		{"client cert named like a member", keyPair(t, issueClient(t, ca, "n2")), "not a node certificate"},
		{"node cert of a non-member", keyPair(t, issueNode(t, ca, "n9")), "not a member"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := peerConfig(tt.cert)
			c.ServerName = "n1"
			serr, cerr, _ := handshake(t, server, c)
			if serr == nil || !strings.Contains(serr.Error(), tt.want) {
				t.Errorf("server error = %v, want one containing %q", serr, tt.want)
			}
			if cerr == nil {
				t.Error("client saw no error")
			}
		})
	}

	// The dialer checks the server too: n2 dialling "n1" and reaching a
	// node certificate of n3 (not a member) fails on the dialer's side.
	members["n3"] = false
	impostor := peerConfig(keyPair(t, issueNode(t, ca, "n3", "n1")))
	c := peerConfig(keyPair(t, issueNode(t, ca, "n2")))
	c.ServerName = "n1"
	_, cerr, _ = handshake(t, impostor, c)
	if cerr == nil || !strings.Contains(cerr.Error(), "not a member") {
		t.Errorf("dialer error = %v, want the impostor refused as not a member", cerr)
	}
}

func TestVerifyMember(t *testing.T) {
	ca := newTestCA(t)
	node := issueNode(t, ca, "n1").Cert
	if err := VerifyMember(node, "n1"); err != nil {
		t.Errorf("VerifyMember(n1 cert, n1) = %v", err)
	}
	if err := VerifyMember(node, "n2"); err == nil || !strings.Contains(err.Error(), `not member "n2"`) {
		t.Errorf("VerifyMember(n1 cert, n2) = %v, want refused", err)
	}
	noDNS := *node
	noDNS.DNSNames = []string{"localhost"}
	if err := VerifyMember(&noDNS, "n1"); err == nil || !strings.Contains(err.Error(), "DNS names") {
		t.Errorf("VerifyMember(without the DNS name) = %v, want refused", err)
	}
	if err := VerifyMember(issueClient(t, ca, "n1").Cert, "n1"); err == nil {
		t.Error("VerifyMember accepted a client certificate")
	}
	if _, err := MemberName(nil); err == nil {
		t.Error("MemberName(nil) = nil error")
	}
}

func TestCreateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if _, err := CreateNode(dir, "", "n1", nil, time.Hour, false); !errors.Is(err, ErrNoCA) {
		t.Errorf("CreateNode without a CA = %v, want ErrNoCA", err)
	}
	w, err := CreateCA(dir, 10*time.Hour, false)
	if err != nil {
		t.Fatalf("CreateCA: %v", err)
	}
	checkMode(t, w.KeyPath, 0o600)
	checkMode(t, w.CertPath, 0o644)
	caBytes, _ := os.ReadFile(w.CertPath)
	if _, err := CreateCA(dir, 10*time.Hour, false); !errors.Is(err, ErrExists) {
		t.Errorf("second CreateCA = %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(w.CertPath); !bytes.Equal(b, caBytes) {
		t.Error("a refused CreateCA changed ca.crt")
	}

	n, err := CreateNode(dir, "", "n1", []string{"10.0.0.5"}, time.Hour, false)
	if err != nil {
		t.Fatalf("CreateNode: %v", err)
	}
	if filepath.Base(n.CertPath) != "node.n1.crt" || filepath.Base(n.KeyPath) != "node.n1.key" {
		t.Errorf("node files %s, %s; want node.n1.crt, node.n1.key", n.CertPath, n.KeyPath)
	}
	checkMode(t, n.KeyPath, 0o600)
	if _, err := CreateNode(dir, "", "n1", nil, time.Hour, false); !errors.Is(err, ErrExists) {
		t.Errorf("second CreateNode = %v, want ErrExists", err)
	}
	if _, err := CreateNode(dir, "", "n1", nil, time.Hour, true); err != nil {
		t.Errorf("CreateNode with overwrite: %v", err)
	}
	if _, err := CreateNode(dir, "", "n2", nil, 100*time.Hour, false); err == nil || !strings.Contains(err.Error(), "outlive the CA") {
		t.Errorf("CreateNode outliving the CA = %v, want refused", err)
	}
	c, err := CreateClient(dir, "", "alice", time.Hour, false)
	if err != nil {
		t.Fatalf("CreateClient: %v", err)
	}
	if filepath.Base(c.CertPath) != "client.alice.crt" {
		t.Errorf("client cert file %s, want client.alice.crt", c.CertPath)
	}
	checkMode(t, c.KeyPath, 0o600)

	// What was written loads back and verifies.
	ca, err := LoadCA(w.CertPath, w.KeyPath)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	pair, err := tls.LoadX509KeyPair(n.CertPath, n.KeyPath)
	if err != nil {
		t.Fatalf("LoadX509KeyPair(node): %v", err)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool(ca)}); err != nil {
		t.Errorf("node certificate from disk does not verify: %v", err)
	}
	if _, err := LoadCA(w.CertPath, c.KeyPath); err == nil {
		t.Error("LoadCA accepted a key that is not the CA's")
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %v, want %v", filepath.Base(path), got, want)
	}
}

func TestDevCerts(t *testing.T) {
	dir := t.TempDir()
	nodes := []string{"n1", "n2", "n3"}
	first, err := DevCerts(dir, nodes, "root")
	if err != nil {
		t.Fatalf("DevCerts: %v", err)
	}
	if len(first.Made) != 10 {
		t.Errorf("first DevCerts made %d files, want 10: %v", len(first.Made), first.Made)
	}
	ca, err := LoadCA(first.CACert, filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range nodes {
		f := first.Nodes[name]
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool(ca)}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if err := VerifyMember(pair.Leaf, name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	pair, err := tls.LoadX509KeyPair(first.Client.Cert, first.Client.Key)
	if err != nil || pair.Leaf.Subject.CommonName != "root" {
		t.Fatalf("client pair: %v, %v; want CN root", err, pair.Leaf)
	}

	before, _ := os.ReadFile(first.Nodes["n2"].Cert)
	again, err := DevCerts(dir, nodes, "root")
	if err != nil {
		t.Fatalf("second DevCerts: %v", err)
	}
	if len(again.Made) != 0 {
		t.Errorf("second DevCerts made %v, want nothing", again.Made)
	}
	if after, _ := os.ReadFile(again.Nodes["n2"].Cert); !bytes.Equal(before, after) {
		t.Error("second DevCerts changed n2's certificate")
	}

	// A lost key is made anew, alone; a lost CA makes everything anew.
	os.Remove(first.Nodes["n3"].Key)
	third, err := DevCerts(dir, nodes, "root")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{first.Nodes["n3"].Cert, first.Nodes["n3"].Key}; !slices.Equal(third.Made, want) {
		t.Errorf("after losing n3's key, made %v, want %v", third.Made, want)
	}
	os.Remove(filepath.Join(dir, CAKeyFile))
	fourth, err := DevCerts(dir, nodes, "root")
	if err != nil {
		t.Fatal(err)
	}
	if len(fourth.Made) != 10 {
		t.Errorf("after losing the CA key, made %d files, want 10", len(fourth.Made))
	}
}
