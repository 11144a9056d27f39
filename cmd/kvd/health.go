package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func newHealthCmd() *cobra.Command {
	var endpoint, cacert, cert, key string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "health",
		Short: "exit 0 if the node at --endpoint serves and knows a leader, 1 if not",
		Long: `health asks one kvd node (at its client address) two questions: does its gRPC
health service answer SERVING, and does it know a leader? It prints one line
and exits 0 when both hold, 1 otherwise. A node cut off from the majority
answers but knows no leader, so it is reported unhealthy.

It needs no shell, so a container image built FROM scratch uses it as its
HEALTHCHECK:

  kvd health --endpoint 127.0.0.1:2379

For a node that serves TLS give --cacert (and --cert/--key when it requires
client certificates). The two questions need no user, even with auth on.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			creds := insecure.NewCredentials()
			if cacert != "" || cert != "" {
				conf, err := healthTLS(cacert, cert, key)
				if err != nil {
					return usageError{err}
				}
				creds = credentials.NewTLS(conf)
			}
			st, err := checkHealth(ctx, endpoint, creds)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (%s) is healthy: %s, leader %s, term %d, applied index %d\n",
				st.GetName(), endpoint, st.GetRole(), st.GetLeaderName(), st.GetTerm(), st.GetAppliedIndex())
			return nil
		},
	}
	cmd.Flags().StringVar(&endpoint, "endpoint", "127.0.0.1:2379", "client address of the node to ask")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "time limit of the whole check")
	cmd.Flags().StringVar(&cacert, "cacert", "", "CA bundle to verify a TLS node with")
	cmd.Flags().StringVar(&cert, "cert", "", "client certificate, for a node that requires one")
	cmd.Flags().StringVar(&key, "key", "", "the client certificate's key")
	return cmd
}

// errNoLeader: the node answers but knows no leader (an election is under
// way, or it is cut off from the majority).
var errNoLeader = errors.New("knows no leader")

// checkHealth asks the node at endpoint for its gRPC health and its
// Cluster.Status, and returns the status when the node serves and knows a
// leader. Otherwise the error names the endpoint and what is wrong:
// unreachable, not serving, or errNoLeader.
func checkHealth(ctx context.Context, endpoint string, creds credentials.TransportCredentials) (*kvpb.StatusResponse, error) {
	conn, err := grpc.NewClient("passthrough:///"+endpoint, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("health of %s: %w", endpoint, err)
	}
	defer conn.Close()
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return nil, fmt.Errorf("health of %s: %w", endpoint, err)
	}
	if h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return nil, fmt.Errorf("health of %s: %s", endpoint, h.GetStatus())
	}
	st, err := kvpb.NewClusterClient(conn).Status(ctx, &kvpb.StatusRequest{SkipStateHash: true})
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", endpoint, err)
	}
	if st.GetLeaderName() == "" {
		return st, fmt.Errorf("%s (%s) %w (role %s, term %d)", st.GetName(), endpoint, errNoLeader, st.GetRole(), st.GetTerm())
	}
	return st, nil
}

// healthTLS is the TLS configuration of kvd health: a CA to verify the node
// and, optionally, a client certificate.
func healthTLS(cacert, cert, key string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if cacert != "" {
		pem, err := os.ReadFile(cacert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s holds no PEM certificate", cacert)
		}
	}
	if (cert == "") != (key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		conf.Certificates = []tls.Certificate{c}
	}
	return conf, nil
}
