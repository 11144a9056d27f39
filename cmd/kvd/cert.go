package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/internal/pki"
)

// certFlags are the flags every `kvd cert` subcommand shares.
type certFlags struct {
	dir       string
	caKey     string
	lifetime  time.Duration
	overwrite bool
}

func (f *certFlags) register(cmd *cobra.Command, lifetime time.Duration, withCAKey bool) {
	cmd.Flags().StringVar(&f.dir, "dir", "certs", "directory of the certificates (and of ca.crt)")
	if withCAKey {
		cmd.Flags().StringVar(&f.caKey, "ca-key", "", "the CA's key, if it is kept apart (default DIR/ca.key)")
	}
	cmd.Flags().DurationVar(&f.lifetime, "lifetime", lifetime, "how long the certificate is valid")
	cmd.Flags().BoolVar(&f.overwrite, "overwrite", false, "replace files that exist")
}

func (f *certFlags) check() error {
	if f.lifetime <= 0 {
		return usageError{fmt.Errorf("--lifetime %v: want a positive duration", f.lifetime)}
	}
	if f.dir == "" {
		return usageError{errors.New("--dir: must not be empty")}
	}
	return nil
}

// explain adds the command that fixes a missing CA.
func (f *certFlags) explain(err error) error {
	if errors.Is(err, pki.ErrNoCA) {
		return fmt.Errorf("%w; make one with: kvd cert ca --dir %s", err, f.dir)
	}
	return err
}

func newCertCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "make a CA, node and client certificates (ECDSA P-256) for a cluster without a PKI",
		Long: `cert makes the certificates TLS needs, for people without a PKI of their own.

  kvd cert ca --dir certs                               certs/ca.crt, certs/ca.key
  kvd cert node n1 --dir certs --hosts n1.example,10.0.0.5
                                                        certs/node.n1.crt, .key
  kvd cert client alice --dir certs                     certs/client.alice.crt, .key

A node certificate is for one member: its CN and a DNS name are the member
name, and it serves both ends of mutual TLS between peers as well as the
client port. It always names localhost, 127.0.0.1 and ::1 too; give every
other name or address clients and peers reach the node by with --hosts. A
client certificate's CN is a user name: with --client-cert-auth, it signs
the client in as that user.

Keep ca.key off the nodes if you can (--ca-key points at it). Key files are
written 0600. Existing files are never replaced without --overwrite.`,
		Args: noArgs,
	}
	cmd.AddCommand(newCertCACmd(), newCertNodeCmd(), newCertClientCmd(), newCertClusterCmd())
	return cmd
}

// newCertClusterCmd makes everything a small cluster needs in one go, and
// keeps what is already there and still valid: an init step of a compose
// file can run it on every start.
func newCertClusterCmd() *cobra.Command {
	var dir, nodes, user string
	cmd := &cobra.Command{
		Use:   "cluster --nodes n1,n2,n3 [--user root] --dir DIR",
		Short: "make (or keep) a CA, a node certificate per member and one client certificate",
		Long: `cluster makes DIR/ca.crt and ca.key, DIR/node.NAME.crt and .key for every
member of --nodes, and DIR/client.USER.crt and .key, keeping any that exist,
verify against the CA and stay valid for another day. Node certificates name
their member, localhost, 127.0.0.1 and ::1; a member reached by another name
needs kvd cert node --hosts instead.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var names []string
			for _, n := range strings.Split(nodes, ",") {
				if n = strings.TrimSpace(n); n != "" {
					names = append(names, n)
				}
			}
			if dir == "" || len(names) == 0 || user == "" {
				return usageError{errors.New("--dir, --nodes and --user must not be empty")}
			}
			files, err := pki.DevCerts(dir, names, user)
			if err != nil {
				return err
			}
			if len(files.Made) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "kept every certificate in %s\n", dir)
			}
			for _, f := range files.Made {
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", f)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "certs", "directory of the certificates")
	cmd.Flags().StringVar(&nodes, "nodes", "", "member names, comma separated")
	cmd.Flags().StringVar(&user, "user", "root", "user name of the client certificate")
	return cmd
}

func newCertCACmd() *cobra.Command {
	var f certFlags
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "make a CA: DIR/ca.crt and DIR/ca.key",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			w, err := pki.CreateCA(f.dir, f.lifetime, f.overwrite)
			if err != nil {
				return err
			}
			printWritten(cmd.OutOrStdout(), w, "CA")
			return nil
		},
	}
	f.register(cmd, pki.DefaultCALifetime, false)
	return cmd
}

func newCertNodeCmd() *cobra.Command {
	var (
		f     certFlags
		hosts []string
	)
	cmd := &cobra.Command{
		Use:   "node NAME",
		Short: "make member NAME's certificate: DIR/node.NAME.crt and .key",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			for _, h := range hosts {
				if strings.TrimSpace(h) == "" || strings.ContainsAny(h, " /:") && net.ParseIP(h) == nil {
					return usageError{fmt.Errorf("--hosts: %q is not a host name or IP address", h)}
				}
			}
			w, err := pki.CreateNode(f.dir, f.caKey, args[0], hosts, f.lifetime, f.overwrite)
			if err != nil {
				return f.explain(err)
			}
			printWritten(cmd.OutOrStdout(), w, "member "+args[0])
			return nil
		},
	}
	f.register(cmd, pki.DefaultLeafLifetime, true)
	cmd.Flags().StringSliceVar(&hosts, "hosts", nil, "more DNS names and IP addresses of the node, comma-separated")
	return cmd
}

func newCertClientCmd() *cobra.Command {
	var f certFlags
	cmd := &cobra.Command{
		Use:   "client USER",
		Short: "make a client certificate for USER: DIR/client.USER.crt and .key",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if err := fsm.CheckAuthName(args[0]); err != nil {
				return usageError{fmt.Errorf("user name %q: %w", args[0], err)}
			}
			w, err := pki.CreateClient(f.dir, f.caKey, args[0], f.lifetime, f.overwrite)
			if err != nil {
				return f.explain(err)
			}
			printWritten(cmd.OutOrStdout(), w, "user "+args[0])
			return nil
		},
	}
	f.register(cmd, pki.DefaultLeafLifetime, true)
	return cmd
}

// printWritten says which files were written, for whom, and until when.
func printWritten(w io.Writer, wr *pki.Written, what string) {
	fmt.Fprintf(w, "wrote %s and %s (%s", wr.CertPath, wr.KeyPath, what)
	if names := sans(wr.Cert); names != "" {
		fmt.Fprintf(w, "; %s", names)
	}
	fmt.Fprintf(w, "; valid until %s)\n", wr.Cert.NotAfter.UTC().Format(time.RFC3339))
}

func sans(c *x509.Certificate) string {
	var parts []string
	if len(c.DNSNames) > 0 {
		parts = append(parts, "DNS "+strings.Join(c.DNSNames, ", "))
	}
	if len(c.IPAddresses) > 0 {
		var ips []string
		for _, ip := range c.IPAddresses {
			ips = append(ips, ip.String())
		}
		parts = append(parts, "IP "+strings.Join(ips, ", "))
	}
	return strings.Join(parts, "; ")
}

// exactArgs is cobra.ExactArgs as a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
