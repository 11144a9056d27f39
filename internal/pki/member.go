package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// How a member proves it is one: its peer certificate, verified against the
// peer CA by the TLS handshake, names it. The CN is the member name, a DNS
// name of the certificate is the same name (so a dialer that sets
// tls.Config.ServerName to the member it means to reach gets the standard
// host name check for free), and the certificate may be used for both server
// and client auth (a node certificate; a client certificate, even from the
// same CA, has client auth only).

// VerifyMember reports whether cert is member name's node certificate. It
// checks names and usages only: the caller (the TLS handshake) has already
// verified the chain to the trusted CA.
func VerifyMember(cert *x509.Certificate, name string) error {
	if cert == nil {
		return errors.New("pki: no peer certificate")
	}
	if cert.Subject.CommonName != name {
		return fmt.Errorf("pki: peer certificate is for %q, not member %q", cert.Subject.CommonName, name)
	}
	if !hasUsage(cert, x509.ExtKeyUsageServerAuth) || !hasUsage(cert, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("pki: peer certificate of %q is not a node certificate: it must allow both server and client auth", name)
	}
	if !slices.Contains(cert.DNSNames, name) {
		return fmt.Errorf("pki: peer certificate of %q does not list %q among its DNS names", name, name)
	}
	return nil
}

// MemberName returns the member a peer certificate names, after checking
// it is a node certificate for that name (VerifyMember).
func MemberName(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", errors.New("pki: no peer certificate")
	}
	name := cert.Subject.CommonName
	if name == "" {
		return "", errors.New("pki: peer certificate has no CN; a node certificate's CN is its member name")
	}
	return name, VerifyMember(cert, name)
}

func hasUsage(cert *x509.Certificate, u x509.ExtKeyUsage) bool {
	return slices.Contains(cert.ExtKeyUsage, u) || slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny)
}

// VerifyPeer returns a tls.Config.VerifyPeerCertificate callback for the
// peer port, on either side of a connection: the verified leaf must be a
// node certificate (MemberName) of a name isMember accepts (the current
// configuration, say). It needs a verified chain, so the listener must use
// tls.RequireAndVerifyClientCert and the dialer normal server verification;
// it never replaces that verification. isMember is called on every
// handshake and must be safe for concurrent use.
func VerifyPeer(isMember func(name string) bool) func(rawCerts [][]byte, verifiedChains [][]*x509.Certificate) error {
	return func(_ [][]byte, chains [][]*x509.Certificate) error {
		if len(chains) == 0 || len(chains[0]) == 0 {
			return errors.New("pki: peer presented no verified certificate")
		}
		name, err := MemberName(chains[0][0])
		if err != nil {
			return err
		}
		if !isMember(name) {
			return fmt.Errorf("pki: peer %q is not a member of this cluster", name)
		}
		return nil
	}
}
