// Package pki makes the certificates a kvd cluster needs when there is no
// PKI to ask: a CA, node certificates for mutual TLS between members (and
// for serving clients), and client certificates whose CN names a user. Keys
// are ECDSA P-256; key files are written 0600.
//
// A node certificate names its member: the CN is the member name, and so is
// one of its DNS names. It carries both the server and the client auth
// extended key usage, because a member both accepts and dials peer
// connections with it. VerifyMember and VerifyPeer check exactly that, so a
// client certificate from the same CA cannot pass for a member.
//
// The API is internal to kvd (cmd/kvd and the node's TLS setup).
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Default lifetimes.
const (
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour
	DefaultLeafLifetime = 365 * 24 * time.Hour
)

// backdate is how far before now a certificate starts, so that a peer whose
// clock is a little behind accepts it at once.
const backdate = time.Hour

// File names in a certificates directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// NodeFiles returns the file names of member name's certificate and key.
func NodeFiles(name string) (cert, key string) {
	return "node." + name + ".crt", "node." + name + ".key"
}

// ClientFiles returns the file names of user's client certificate and key.
func ClientFiles(user string) (cert, key string) {
	return "client." + user + ".crt", "client." + user + ".key"
}

// CA is a certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Pair is an issued certificate with its key, PEM-encoded.
type Pair struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte // PKCS #8
}

// NewCA makes a self-signed CA valid from notBefore to notAfter.
func NewCA(notBefore, notAfter time.Time) (*CA, *Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "kvd CA", Organization: []string{"kvd"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	p, err := encode(tmpl, tmpl, key, key)
	if err != nil {
		return nil, nil, err
	}
	return &CA{Cert: p.Cert, Key: key}, p, nil
}

// IssueNode issues member name's certificate: CN name; DNS names name,
// localhost and the hosts that are not IP addresses; IP addresses 127.0.0.1,
// ::1 and the hosts that are; server and client auth. It is valid from
// notBefore to notAfter, which must not be after the CA's own expiry.
func (ca *CA) IssueNode(name string, hosts []string, notBefore, notAfter time.Time) (*Pair, error) {
	if err := checkNodeName(name); err != nil {
		return nil, err
	}
	dns := []string{name, "localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, h := range hosts {
		switch ip := net.ParseIP(h); {
		case h == "":
			return nil, errors.New("pki: hosts: an empty host name")
		case ip != nil:
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
		case !slices.Contains(dns, h):
			dns = append(dns, h)
		}
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"kvd"}, OrganizationalUnit: []string{"node"}},
		DNSNames:    dns,
		IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return ca.issue(tmpl, notBefore, notAfter)
}

// IssueClient issues a client certificate for user: CN user, client auth
// only, valid from notBefore to notAfter (not after the CA's expiry).
func (ca *CA) IssueClient(user string, notBefore, notAfter time.Time) (*Pair, error) {
	if user == "" {
		return nil, errors.New("pki: user name: must not be empty")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: []string{"kvd"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.issue(tmpl, notBefore, notAfter)
}

func (ca *CA) issue(tmpl *x509.Certificate, notBefore, notAfter time.Time) (*Pair, error) {
	if notAfter.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("pki: the certificate for %q would outlive the CA, which expires %s; give a shorter lifetime",
			tmpl.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("pki: lifetime: the certificate for %q would expire before it starts", tmpl.Subject.CommonName)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate key: %w", err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, err
	}
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	return encode(tmpl, ca.Cert, key, ca.Key)
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never 0
}

func encode(tmpl, parent *x509.Certificate, key *ecdsa.PrivateKey, signer crypto.Signer) (*Pair, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("pki: create certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return &Pair{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}, nil
}

// checkNodeName reports why name cannot name a member in a certificate: it
// must work as a DNS name, 1 to 253 bytes of letters, digits and "-._",
// starting with a letter or digit.
func checkNodeName(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("pki: member name %q: want 1 to 253 bytes", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || (c != '-' && c != '.' && c != '_')) {
			return fmt.Errorf("pki: member name %q: byte %d (%q): want letters, digits and \"-._\", starting with a letter or digit", name, i, c)
		}
	}
	return nil
}

// LoadCA reads a CA certificate and its key from PEM files.
func LoadCA(certPath, keyPath string) (*CA, error) {
	cert, err := LoadCert(certPath)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", certPath)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA key: %w", err)
	}
	block, _ := pem.Decode(kb)
	if block == nil {
		return nil, fmt.Errorf("pki: %s holds no PEM block", keyPath)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		err = fmt.Errorf("PEM block type %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", keyPath, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: %s: a %T cannot sign", keyPath, key)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s is not the key of %s", keyPath, certPath)
	}
	return &CA{Cert: cert, Key: signer}, nil
}

// LoadCert reads the first certificate of a PEM file.
func LoadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: read certificate: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("pki: %s holds no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return cert, nil
}

// ErrExists is returned (wrapped) when a file to write exists and
// overwriting was not asked for.
var ErrExists = errors.New("pki: file exists")

// WritePair writes a certificate (0644) and its key (0600). Unless
// overwrite, it writes nothing when either file exists. Each file is
// written to a temporary name and renamed into place.
func WritePair(certPath, keyPath string, p *Pair, overwrite bool) error {
	if !overwrite {
		for _, path := range []string{certPath, keyPath} {
			if _, err := os.Lstat(path); err == nil {
				return fmt.Errorf("%w: %s (pass --overwrite to replace it)", ErrExists, path)
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("pki: %w", err)
			}
		}
	}
	if err := writeFile(keyPath, p.KeyPEM, 0o600); err != nil {
		return err
	}
	return writeFile(certPath, p.CertPEM, 0o644)
}

func writeFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}
