package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/kvdproject/kvd/internal/tlsfiles"
	"github.com/kvdproject/kvd/node"
)

// tlsFlags are kvd's TLS settings for its two ports.
type tlsFlags struct {
	certFile, keyFile, trustedCA string
	clientCertAuth               bool
	peerCert, peerKey, peerCA    string
	insecure                     bool
	reloadInterval               time.Duration
}

func (t *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.certFile, "cert-file", "", "client port: serve TLS with this certificate (PEM)")
	fs.StringVar(&t.keyFile, "key-file", "", "client port: the certificate's private key (PEM)")
	fs.StringVar(&t.trustedCA, "trusted-ca-file", "", "client port: CA bundle that client certificates must chain to")
	fs.BoolVar(&t.clientCertAuth, "client-cert-auth", false, "client port: require a client certificate signed by --trusted-ca-file (its CN names the user)")
	fs.StringVar(&t.peerCert, "peer-cert-file", "", "peer port: this member's certificate (CN = --name; server and client auth)")
	fs.StringVar(&t.peerKey, "peer-key-file", "", "peer port: the member certificate's private key")
	fs.StringVar(&t.peerCA, "peer-trusted-ca-file", "", "peer port: CA bundle that member certificates must chain to")
	fs.BoolVar(&t.insecure, "insecure", false, "allow plaintext on a port that listens beyond loopback (anyone who can reach it gets in)")
	fs.DurationVar(&t.reloadInterval, "cert-reload-interval", 10*time.Second, "how often to check the certificate files for changes (SIGHUP reloads at once)")
}

// check refuses incomplete TLS settings, and plaintext on a port that
// listens beyond loopback unless --insecure says so.
func (t *tlsFlags) check(clientAddr, peerAddr string) error {
	if (t.certFile == "") != (t.keyFile == "") {
		return errors.New("--cert-file and --key-file go together")
	}
	if t.clientCertAuth && (t.trustedCA == "" || t.certFile == "") {
		return errors.New("--client-cert-auth needs --trusted-ca-file and --cert-file/--key-file")
	}
	if t.trustedCA != "" && t.certFile == "" {
		return errors.New("--trusted-ca-file needs --cert-file and --key-file (the client port must serve TLS to check client certificates)")
	}
	peerSet := 0
	for _, f := range []string{t.peerCert, t.peerKey, t.peerCA} {
		if f != "" {
			peerSet++
		}
	}
	if peerSet != 0 && peerSet != 3 {
		return errors.New("peer TLS needs all three of --peer-cert-file, --peer-key-file and --peer-trusted-ca-file")
	}
	if t.insecure {
		return nil
	}
	if t.certFile == "" && !loopbackOnly(clientAddr) {
		return fmt.Errorf("--client-addr %s listens beyond loopback without TLS: add --cert-file and --key-file "+
			"(kvd cert makes them), or --insecure to serve plaintext to anyone who can reach it", clientAddr)
	}
	if peerSet == 0 && !loopbackOnly(peerAddr) {
		return fmt.Errorf("--peer-addr %s listens beyond loopback without TLS: add --peer-cert-file, --peer-key-file and "+
			"--peer-trusted-ca-file (kvd cert makes them), or --insecure to let anyone who can reach it speak Raft to this node", peerAddr)
	}
	return nil
}

// loopbackOnly reports whether addr's host is a loopback address or a name
// that resolves only to loopback addresses.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return false
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// certSet is the loaded certificate files of both ports.
type certSet struct {
	client, peer   *tlsfiles.Store // nil: that port is plaintext
	clientCertAuth bool
	interval       time.Duration
}

func (t *tlsFlags) load() (*certSet, error) {
	cs := &certSet{clientCertAuth: t.clientCertAuth, interval: t.reloadInterval}
	var err error
	if t.certFile != "" {
		if cs.client, err = tlsfiles.Load(tlsfiles.Files{CertFile: t.certFile, KeyFile: t.keyFile, CAFile: t.trustedCA}); err != nil {
			return nil, fmt.Errorf("client port: %w", err)
		}
	}
	if t.peerCert != "" {
		if cs.peer, err = tlsfiles.Load(tlsfiles.Files{CertFile: t.peerCert, KeyFile: t.peerKey, CAFile: t.peerCA}); err != nil {
			return nil, fmt.Errorf("peer port: %w", err)
		}
	}
	return cs, nil
}

func (cs *certSet) peerTLS() *node.PeerTLS {
	if cs.peer == nil {
		return nil
	}
	return &node.PeerTLS{Certificate: cs.peer.Certificate, CAs: cs.peer.CAs}
}

// clientTLS is the client port's TLS configuration: every handshake reads
// the current files, so a rotated certificate or CA applies to new
// connections at once and existing connections stay.
func (cs *certSet) clientTLS() *tls.Config {
	if cs.client == nil {
		return nil
	}
	st := cs.client
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*st.Certificate()},
				NextProtos:   []string{"h2"},
			}
			if pool := st.CAs(); pool != nil {
				c.ClientCAs = pool
				c.ClientAuth = tls.VerifyClientCertIfGiven
				if cs.clientCertAuth {
					c.ClientAuth = tls.RequireAndVerifyClientCert
				}
			}
			return c, nil
		},
	}
}

// watch reloads the certificate files on SIGHUP and when they change,
// until ctx ends.
func (cs *certSet) watch(ctx context.Context, log *slog.Logger) {
	var stores []*tlsfiles.Store
	for _, st := range []*tlsfiles.Store{cs.client, cs.peer} {
		if st != nil {
			stores = append(stores, st)
		}
	}
	if len(stores) == 0 {
		return
	}
	report := func(changed bool, err error) {
		if err != nil {
			log.Error("certificate reload failed; still using the previous certificates", "err", err)
		} else if changed {
			log.Info("certificates reloaded")
		}
	}
	for _, st := range stores {
		go st.Watch(ctx, cs.interval, report)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			for _, st := range stores {
				report(st.Reload())
			}
		}
	}
}
