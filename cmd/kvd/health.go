package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func newHealthCmd() *cobra.Command {
	var endpoint string
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

  kvd health --endpoint 127.0.0.1:2379`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			st, err := checkHealth(ctx, endpoint)
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
	return cmd
}

// errNoLeader: the node answers but knows no leader (an election is under
// way, or it is cut off from the majority).
var errNoLeader = errors.New("knows no leader")

// checkHealth asks the node at endpoint for its gRPC health and its
// Cluster.Status, and returns the status when the node serves and knows a
// leader. Otherwise the error names the endpoint and what is wrong:
// unreachable, not serving, or errNoLeader.
func checkHealth(ctx context.Context, endpoint string) (*kvpb.StatusResponse, error) {
	conn, err := grpc.NewClient("passthrough:///"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
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
