package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// ErrNoCA is returned (wrapped) when a certificate is to be issued and the
// CA's files are missing.
var ErrNoCA = errors.New("pki: no CA")

// Written names the files of an issued certificate.
type Written struct {
	CertPath, KeyPath string
	Cert              *x509.Certificate
}

// CreateCA makes a CA valid for lifetime and writes dir/ca.crt and
// dir/ca.key (creating dir 0700 if needed). Unless overwrite, it writes
// nothing when either file exists.
func CreateCA(dir string, lifetime time.Duration, overwrite bool) (*Written, error) {
	if lifetime <= 0 {
		return nil, fmt.Errorf("pki: lifetime %v: must be positive", lifetime)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	now := time.Now()
	_, p, err := NewCA(now.Add(-backdate), now.Add(lifetime))
	if err != nil {
		return nil, err
	}
	w := &Written{CertPath: filepath.Join(dir, CACertFile), KeyPath: filepath.Join(dir, CAKeyFile), Cert: p.Cert}
	return w, WritePair(w.CertPath, w.KeyPath, p, overwrite)
}

// loadDirCA loads dir/ca.crt and its key (caKeyPath, or dir/ca.key if "").
func loadDirCA(dir, caKeyPath string) (*CA, error) {
	certPath := filepath.Join(dir, CACertFile)
	if caKeyPath == "" {
		caKeyPath = filepath.Join(dir, CAKeyFile)
	}
	for _, p := range []string{certPath, caKeyPath} {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist", ErrNoCA, p)
		}
	}
	return LoadCA(certPath, caKeyPath)
}

// CreateNode issues member name's node certificate (see CA.IssueNode) with
// the CA in dir (its key at caKeyPath, "" for dir/ca.key), valid for
// lifetime, and writes it to dir/node.NAME.crt and .key.
func CreateNode(dir, caKeyPath, name string, hosts []string, lifetime time.Duration, overwrite bool) (*Written, error) {
	ca, err := loadDirCA(dir, caKeyPath)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	p, err := ca.IssueNode(name, hosts, now.Add(-backdate), now.Add(lifetime))
	if err != nil {
		return nil, err
	}
	cf, kf := NodeFiles(name)
	w := &Written{CertPath: filepath.Join(dir, cf), KeyPath: filepath.Join(dir, kf), Cert: p.Cert}
	return w, WritePair(w.CertPath, w.KeyPath, p, overwrite)
}

// CreateClient issues user's client certificate (see CA.IssueClient) with
// the CA in dir, valid for lifetime, and writes it to dir/client.USER.crt
// and .key.
func CreateClient(dir, caKeyPath, user string, lifetime time.Duration, overwrite bool) (*Written, error) {
	ca, err := loadDirCA(dir, caKeyPath)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	p, err := ca.IssueClient(user, now.Add(-backdate), now.Add(lifetime))
	if err != nil {
		return nil, err
	}
	cf, kf := ClientFiles(user)
	w := &Written{CertPath: filepath.Join(dir, cf), KeyPath: filepath.Join(dir, kf), Cert: p.Cert}
	return w, WritePair(w.CertPath, w.KeyPath, p, overwrite)
}

// Files are a certificate and its key.
type Files struct{ Cert, Key string }

// DevFiles are the files DevCerts made or kept.
type DevFiles struct {
	CACert string
	Nodes  map[string]Files // by member name
	Client Files
	// Made lists the files written this time (empty when all were kept).
	Made []string
}

// devMinLeft is how long a kept certificate must still be valid.
const devMinLeft = 24 * time.Hour

// DevCerts makes what `kvd dev --tls` needs under dir: a CA, a node
// certificate for each member name in nodes, and a client certificate for
// user. It is idempotent: files that exist, verify against the CA with the
// right names and usages, and stay valid for at least another day are
// kept; anything else is made anew (all of it when the CA itself is
// replaced).
func DevCerts(dir string, nodes []string, user string) (*DevFiles, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	now := time.Now()
	out := &DevFiles{CACert: filepath.Join(dir, CACertFile), Nodes: map[string]Files{}}
	caKey := filepath.Join(dir, CAKeyFile)
	ca, err := LoadCA(out.CACert, caKey)
	if err != nil || now.Add(devMinLeft).After(ca.Cert.NotAfter) || now.Before(ca.Cert.NotBefore) {
		var p *Pair
		if ca, p, err = NewCA(now.Add(-backdate), now.Add(DefaultCALifetime)); err != nil {
			return nil, err
		}
		if err := WritePair(out.CACert, caKey, p, true); err != nil {
			return nil, err
		}
		out.Made = append(out.Made, out.CACert, caKey)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	leafEnd := now.Add(DefaultLeafLifetime)
	if leafEnd.After(ca.Cert.NotAfter) {
		leafEnd = ca.Cert.NotAfter
	}

	for _, name := range nodes {
		cf, kf := NodeFiles(name)
		f := Files{Cert: filepath.Join(dir, cf), Key: filepath.Join(dir, kf)}
		out.Nodes[name] = f
		if usable(f, roots, now, func(c *x509.Certificate) error { return VerifyMember(c, name) }) {
			continue
		}
		p, err := ca.IssueNode(name, nil, now.Add(-backdate), leafEnd)
		if err != nil {
			return nil, err
		}
		if err := WritePair(f.Cert, f.Key, p, true); err != nil {
			return nil, err
		}
		out.Made = append(out.Made, f.Cert, f.Key)
	}

	cf, kf := ClientFiles(user)
	out.Client = Files{Cert: filepath.Join(dir, cf), Key: filepath.Join(dir, kf)}
	if !usable(out.Client, roots, now, func(c *x509.Certificate) error {
		if c.Subject.CommonName != user {
			return fmt.Errorf("CN %q", c.Subject.CommonName)
		}
		return nil
	}) {
		p, err := ca.IssueClient(user, now.Add(-backdate), leafEnd)
		if err != nil {
			return nil, err
		}
		if err := WritePair(out.Client.Cert, out.Client.Key, p, true); err != nil {
			return nil, err
		}
		out.Made = append(out.Made, out.Client.Cert, out.Client.Key)
	}
	return out, nil
}

// usable reports whether f holds a key pair whose certificate chains to
// roots for client auth, passes check, and stays valid for devMinLeft.
func usable(f Files, roots *x509.CertPool, now time.Time, check func(*x509.Certificate) error) bool {
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return false
	}
	c := pair.Leaf
	if c == nil || now.Add(devMinLeft).After(c.NotAfter) {
		return false
	}
	_, err = c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil && check(c) == nil
}
