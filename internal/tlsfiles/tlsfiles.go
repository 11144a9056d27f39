// Package tlsfiles keeps a certificate, its key and a CA bundle loaded from
// PEM files, and loads them again when asked (SIGHUP) or when the files
// change, so certificates rotate without a restart. A reload that fails
// (a half-written file, a key that does not match) keeps the last good
// set and reports the error: a rotation never takes a node off the air.
//
// Handshakes read the current set through Certificate and CAs, so new
// connections use new files while existing connections keep theirs.
package tlsfiles

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Files names the PEM files of one TLS identity. Any may be empty: a
// client with only a CA file verifies servers but presents no certificate.
type Files struct {
	CertFile string
	KeyFile  string
	CAFile   string
}

// Store holds the loaded contents of Files.
type Store struct {
	files Files

	mu    sync.RWMutex
	cert  *tls.Certificate // nil without CertFile
	pool  *x509.CertPool   // nil without CAFile
	raw   [3][]byte        // file contents last loaded
	stamp [3]time.Time     // modification times last loaded
}

// Load reads the files. CertFile and KeyFile go together.
func Load(f Files) (*Store, error) {
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, errors.New("tls: a certificate file and a key file go together: give both or neither")
	}
	s := &Store{files: f}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload reads the files again and swaps them in when all of them load.
// It reports whether anything changed.
func (s *Store) Reload() (bool, error) {
	var raw [3][]byte
	var stamp [3]time.Time
	for i, name := range []string{s.files.CertFile, s.files.KeyFile, s.files.CAFile} {
		if name == "" {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return false, fmt.Errorf("tls: %w", err)
		}
		raw[i] = b
		if st, err := os.Stat(name); err == nil {
			stamp[i] = st.ModTime()
		}
	}
	s.mu.RLock()
	same := bytes.Equal(raw[0], s.raw[0]) && bytes.Equal(raw[1], s.raw[1]) && bytes.Equal(raw[2], s.raw[2])
	s.mu.RUnlock()
	if same {
		s.mu.Lock()
		s.stamp = stamp
		s.mu.Unlock()
		return false, nil
	}
	var cert *tls.Certificate
	if s.files.CertFile != "" {
		c, err := tls.X509KeyPair(raw[0], raw[1])
		if err != nil {
			return false, fmt.Errorf("tls: certificate %s with key %s: %w", s.files.CertFile, s.files.KeyFile, err)
		}
		cert = &c
	}
	var pool *x509.CertPool
	if s.files.CAFile != "" {
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(raw[2]) {
			return false, fmt.Errorf("tls: CA file %s holds no PEM certificate", s.files.CAFile)
		}
	}
	s.mu.Lock()
	s.cert, s.pool, s.raw, s.stamp = cert, pool, raw, stamp
	s.mu.Unlock()
	return true, nil
}

// Certificate is the current certificate (nil without a CertFile).
func (s *Store) Certificate() *tls.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert
}

// CAs is the current CA pool (nil without a CAFile).
func (s *Store) CAs() *x509.CertPool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pool
}

// changed reports whether any file's modification time differs from the
// last load (cheap: a stat per file).
func (s *Store) changed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i, name := range []string{s.files.CertFile, s.files.KeyFile, s.files.CAFile} {
		if name == "" {
			continue
		}
		st, err := os.Stat(name)
		if err != nil || !st.ModTime().Equal(s.stamp[i]) {
			return true
		}
	}
	return false
}

// Watch reloads whenever a file's modification time changes, checking every
// interval, until ctx ends. onReload is told of every reload attempt that
// found a change or failed (err non-nil: the old set stays in use).
func (s *Store) Watch(ctx context.Context, interval time.Duration, onReload func(changed bool, err error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.changed() {
			continue
		}
		changed, err := s.Reload()
		if changed || err != nil {
			onReload(changed, err)
		}
		if err != nil {
			// Do not retry a broken file on every tick: wait for the next
			// change of its modification time.
			s.mu.Lock()
			for i, name := range []string{s.files.CertFile, s.files.KeyFile, s.files.CAFile} {
				if st, e := os.Stat(name); name != "" && e == nil {
					s.stamp[i] = st.ModTime()
				}
			}
			s.mu.Unlock()
		}
	}
}
