package node

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/kvdproject/kvd/internal/pki"
)

// PeerTLS makes every connection on the peer port mutual TLS between
// members. Both sides present a member certificate and check the other's:
// it must chain to CAs, be valid for both server and client authentication
// (a node certificate from `kvd cert node`; a user's client certificate is
// not), and name a member of the cluster as its CN and one of its DNS names
// (pki.MemberName).
// Certificate and CAs are called for every new connection, so rotated
// files apply to new connections without a restart and existing ones stay.
type PeerTLS struct {
	Certificate func() *tls.Certificate
	CAs         func() *x509.CertPool
}

// peerServerTLS is the accepting side's configuration for one connection.
func (n *Node) peerServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return n.peerCert()
		},
		// Verified in VerifyConnection against the current CA pool.
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: n.verifyMember,
	}
}

// peerClientTLS is the dialing side's configuration for one connection. The
// server's name is checked against the membership, not against the address
// dialled (Raft dials addresses), so Go's host name check is replaced by
// verifyMember.
func (n *Node) peerClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verifyMember checks the chain and the name
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return n.peerCert()
		},
		VerifyConnection: n.verifyMember,
	}
}

func (n *Node) peerCert() (*tls.Certificate, error) {
	c := n.cfg.PeerTLS.Certificate()
	if c == nil {
		return nil, errors.New("no peer certificate loaded")
	}
	return c, nil
}

// verifyMember checks the other side's certificate: chain, usages, and a
// member's name.
func (n *Node) verifyMember(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("peer presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: n.cfg.PeerTLS.CAs(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage},
		}); err != nil {
			return fmt.Errorf("peer certificate %q is not a member certificate of this cluster's CA: %w", leaf.Subject.CommonName, err)
		}
	}
	name, err := pki.MemberName(leaf)
	if err != nil {
		return err
	}
	if !n.isMember(name) {
		return fmt.Errorf("peer certificate names %q, which is not a member of this cluster", name)
	}
	return nil
}

// isMember reports whether name is a member: in the current Raft
// configuration, or (before raft has one) in the initial cluster; a node
// started with --join, which has no configuration until the leader reaches
// it, accepts any member certificate of the cluster's CA.
func (n *Node) isMember(name string) bool {
	var members []string
	if n.raft != nil {
		if conf, err := n.configuration(); err == nil {
			for _, s := range conf.Servers {
				members = append(members, string(s.ID))
			}
		}
	}
	if len(members) == 0 {
		if n.cfg.Join {
			// A joining node learns the members from the leader that
			// contacts it; until then a certificate of the cluster's CA
			// with both usages is all it can check.
			return true
		}
		for _, p := range n.cfg.InitialCluster {
			members = append(members, p.Name)
		}
	}
	return slices.Contains(members, name)
}
