package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc/credentials"
)

// TLSFromFiles makes a client TLS configuration from PEM files: caFile is
// the CA that signed the servers' certificates ("": the system's roots);
// certFile and keyFile are the client's certificate and key, for servers
// that require one (both or neither). It reads the files once.
func TLSFromFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("client: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("client: CA file %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile != "" && keyFile != "":
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client: certificate %s with key %s: %w", certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	case certFile != "":
		return nil, fmt.Errorf("client: certificate %s given without its key file", certFile)
	case keyFile != "":
		return nil, fmt.Errorf("client: key %s given without its certificate file", keyFile)
	}
	return cfg, nil
}

// TLSError is the error of a request that could not reach a member because
// TLS failed: the server's certificate was not trusted, not for the
// address dialled, or expired; the server does not speak TLS; or the server
// refused the client's certificate. Retrying does not help, so the client
// returns it at once. errors.As reaches the crypto/tls or crypto/x509 error.
type TLSError struct {
	Addr string
	Err  error
}

func (e *TLSError) Error() string {
	var (
		rh tls.RecordHeaderError
		ua x509.UnknownAuthorityError
	)
	switch {
	case errors.As(e.Err, &rh):
		return fmt.Sprintf("kvd: TLS with %s failed: the server does not speak TLS (it may be serving plaintext): %v", e.Addr, e.Err)
	case errors.As(e.Err, &ua):
		return fmt.Sprintf("kvd: TLS with %s failed: the server's certificate is not signed by a trusted CA: %v", e.Addr, e.Err)
	case isTLSAlert(e.Err):
		return fmt.Sprintf("kvd: TLS with %s failed: the server refused the connection (a client certificate it trusts may be needed): %v", e.Addr, e.Err)
	}
	return fmt.Sprintf("kvd: TLS with %s failed: %v", e.Addr, e.Err)
}

func (e *TLSError) Unwrap() error { return e.Err }

// isTLSAlert reports whether err is a TLS alert the server sent (crypto/tls
// reports one as a *net.OpError with Op "remote error"; its alert type is
// not exported): it refused the handshake, for example because the client
// presented no certificate it trusts.
func isTLSAlert(err error) bool {
	var oe *net.OpError
	var al tls.AlertError
	return errors.As(err, &oe) && oe.Op == "remote error" || errors.As(err, &al)
}

// isTLSFailure reports whether err is a TLS failure that a retry will not
// cure (a broken connection during a handshake is not one).
func isTLSFailure(err error) bool {
	var (
		cv *tls.CertificateVerificationError
		rh tls.RecordHeaderError
		ua x509.UnknownAuthorityError
		hn x509.HostnameError
		ci x509.CertificateInvalidError
	)
	return errors.As(err, &cv) || errors.As(err, &rh) || isTLSAlert(err) ||
		errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

// recordingCreds are the TLS transport credentials of one address. gRPC
// reports a failed handshake only as text in an Unavailable status, so
// they keep the failure itself for attempt to return as a TLSError. In
// TLS 1.3 a server refuses a client certificate after the client's side of
// the handshake is done, with an alert on the first read: the connection
// records that too.
type recordingCreds struct {
	credentials.TransportCredentials
	c    *Client
	addr string
}

func (r *recordingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := r.TransportCredentials.ClientHandshake(ctx, authority, raw)
	r.c.noteHandshake(r.addr, err)
	if err != nil {
		return conn, info, err
	}
	return &alertConn{Conn: conn, note: func(err error) { r.c.noteHandshake(r.addr, err) }}, info, nil
}

func (r *recordingCreds) Clone() credentials.TransportCredentials {
	return &recordingCreds{TransportCredentials: r.TransportCredentials.Clone(), c: r.c, addr: r.addr}
}

// alertConn records a TLS alert received on a read.
type alertConn struct {
	net.Conn
	note func(error)
}

func (a *alertConn) Read(b []byte) (int, error) {
	n, err := a.Conn.Read(b)
	if err != nil && isTLSAlert(err) {
		a.note(err)
	}
	return n, err
}

// dialer returns the dialer of connections to addr: Config.Dialer, and
// with TLS one that clears the recorded handshake failure of addr when the
// connection itself cannot be made (then that is the failure to report).
// nil: gRPC's own.
func (c *Client) dialer(addr string) func(ctx context.Context, a string) (net.Conn, error) {
	dial := c.cfg.Dialer
	if c.cfg.TLS == nil {
		return dial
	}
	if dial == nil {
		d := &net.Dialer{}
		dial = func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }
	}
	return func(ctx context.Context, a string) (net.Conn, error) {
		conn, err := dial(ctx, a)
		if err != nil {
			c.noteHandshake(addr, nil)
		}
		return conn, err
	}
}

// noteHandshake records the outcome of a handshake with addr (nil: it
// succeeded); only failures a retry will not cure are kept.
func (c *Client) noteHandshake(addr string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil && !isTLSFailure(err) {
		return
	}
	if c.handshakes == nil {
		c.handshakes = map[string]error{}
	}
	if err == nil {
		delete(c.handshakes, addr)
		return
	}
	c.handshakes[addr] = err
}

// handshakeFailure returns the TLS failure of the last handshake with addr.
func (c *Client) handshakeFailure(addr string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.handshakes[addr]
}

// isLoopback reports whether addr (host:port or host) is on this machine.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
