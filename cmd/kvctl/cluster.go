package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newClusterCommand) }

func newClusterCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Cluster status and membership",
	}
	cmd.AddCommand(
		newClusterStatusCommand(a),
		newClusterMembersCommand(a),
		newClusterAddCommand(a),
		newClusterRemoveCommand(a),
		newClusterTransferCommand(a),
		newClusterSnapshotCommand(a),
	)
	return cmd
}

// memberJSON is the -o json form of a member.
type memberJSON struct {
	Name       string `json:"name"`
	PeerAddr   string `json:"peer_addr"`
	ClientAddr string `json:"client_addr"`
	Voter      bool   `json:"voter"`
	Leader     bool   `json:"leader"`
}

func toMembersJSON(ms []*kvpb.Member) []memberJSON {
	out := []memberJSON{}
	for _, m := range ms {
		out = append(out, memberJSON{m.GetName(), m.GetPeerAddr(), m.GetClientAddr(), m.GetVoter(), m.GetLeader()})
	}
	return out
}

func (a *app) printMembers(ms []*kvpb.Member) error {
	if a.json() {
		return a.printJSON(struct {
			Members []memberJSON `json:"members"`
		}{toMembersJSON(ms)})
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tPEER ADDR\tCLIENT ADDR\tVOTER\tLEADER")
	for _, m := range ms {
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\n", m.GetName(), m.GetPeerAddr(), orDash(m.GetClientAddr()), m.GetVoter(), mark(m.GetLeader()))
	}
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func mark(b bool) string {
	if b {
		return "*"
	}
	return ""
}

// statusJSON is the -o json form of one member's status.
type statusJSON struct {
	memberJSON
	Reachable         bool   `json:"reachable"`
	Error             string `json:"error,omitempty"`
	Role              string `json:"role,omitempty"`
	Term              uint64 `json:"term,omitempty"`
	CommitIndex       uint64 `json:"commit_index,omitempty"`
	AppliedIndex      uint64 `json:"applied_index,omitempty"`
	LastLogIndex      uint64 `json:"last_log_index,omitempty"`
	LastSnapshotIndex uint64 `json:"last_snapshot_index,omitempty"`
	LogTimeNs         int64  `json:"log_time_ns,omitempty"`
	LogTime           string `json:"log_time,omitempty"`
	LeaderName        string `json:"leader_name,omitempty"`
	StateHash         string `json:"state_hash,omitempty"`
	Version           string `json:"version,omitempty"`
}

func newClusterStatusCommand(a *app) *cobra.Command {
	var memberTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Status of every member: role, term, applied index, log time",
		Long: `Ask for the member list, then ask every member about itself (at its client
address, each within --member-timeout). A member that does not answer is
shown as unreachable; that is not an error (exit 0). The leader is marked *.`,
		Example: `  kvctl cluster status
  kvctl cluster status -o json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			mresp, err := c.Members(ctx)
			if err != nil {
				return err
			}
			members := mresp.GetMembers()
			rows := make([]statusJSON, len(members))
			var wg sync.WaitGroup
			for i, m := range members {
				rows[i].memberJSON = toMembersJSON([]*kvpb.Member{m})[0]
				if m.GetClientAddr() == "" {
					rows[i].Error = "client address unknown"
					continue
				}
				wg.Go(func() {
					sctx, cancel := context.WithTimeout(ctx, memberTimeout)
					defer cancel()
					st, err := c.Status(sctx, m.GetClientAddr())
					r := &rows[i]
					if err != nil {
						r.Error = err.Error()
						return
					}
					r.Reachable = true
					r.Role = st.GetRole()
					r.Term = st.GetTerm()
					r.CommitIndex = st.GetCommitIndex()
					r.AppliedIndex = st.GetAppliedIndex()
					r.LastLogIndex = st.GetLastLogIndex()
					r.LastSnapshotIndex = st.GetLastSnapshotIndex()
					r.LogTimeNs = st.GetLogTime()
					r.LogTime = logTimeNano(st.GetLogTime())
					r.LeaderName = st.GetLeaderName()
					r.StateHash = hex.EncodeToString(st.GetStateHash())
					r.Version = st.GetVersion()
					if st.GetRole() == "leader" {
						r.Leader = true
					}
				})
			}
			wg.Wait()
			if a.json() {
				return a.printJSON(struct {
					Members []statusJSON `json:"members"`
				}{rows})
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tPEER ADDR\tCLIENT ADDR\tROLE\tTERM\tAPPLIED\tLOG TIME\tLEADER")
			for _, r := range rows {
				if !r.Reachable {
					fmt.Fprintf(w, "%s\t%s\t%s\tunreachable\t-\t-\t-\t%s\n", r.Name, r.PeerAddr, orDash(r.ClientAddr), mark(r.Leader))
					continue
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", r.Name, r.PeerAddr, r.ClientAddr, r.Role, r.Term, r.AppliedIndex, r.LogTime, mark(r.Leader))
			}
			return w.Flush()
		},
	}
	cmd.Flags().DurationVar(&memberTimeout, "member-timeout", 2*time.Second, "how long to wait for each member's answer")
	return cmd
}

func newClusterMembersCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "members",
		Short:   "List the members (the leader is marked *)",
		Example: `  kvctl cluster members`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Members(ctx)
			if err != nil {
				return err
			}
			return a.printMembers(resp.GetMembers())
		},
	}
}

func newClusterAddCommand(a *app) *cobra.Command {
	var nonVoter bool
	cmd := &cobra.Command{
		Use:   "add NAME PEER_ADDR",
		Short: "Add a member (start it first with kvd --join)",
		Long: `Add the member NAME whose Raft address is PEER_ADDR, as a voter unless
--non-voter, and print the new member list. Start the new node first with
--join, so it waits to be added.`,
		Example: `  kvctl cluster add n4 10.0.0.4:2380`,
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.AddMember(ctx, args[0], args[1], nonVoter)
			if err != nil {
				return err
			}
			return a.printMembers(resp.GetMembers())
		},
	}
	cmd.Flags().BoolVar(&nonVoter, "non-voter", false, "add as a non-voter (receives the log, does not vote)")
	return cmd
}

func newClusterRemoveCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "remove NAME",
		Short:   "Remove a member and print the new member list",
		Example: `  kvctl cluster remove n4`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.RemoveMember(ctx, args[0])
			if err != nil {
				return err
			}
			return a.printMembers(resp.GetMembers())
		},
	}
}

func newClusterTransferCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "transfer [NAME]",
		Short:   "Transfer leadership to NAME (or to a member Raft picks)",
		Example: `  kvctl cluster transfer n2`,
		Args:    rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.TransferLeader(ctx, name)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(struct {
					Leader string `json:"leader"`
				}{resp.GetLeaderName()})
			}
			fmt.Fprintf(a.stdout, "leader: %s\n", resp.GetLeaderName())
			return nil
		},
	}
}

func newClusterSnapshotCommand(a *app) *cobra.Command {
	var endpoint string
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Make a member take a Raft snapshot now",
		Long: `Make one member take a snapshot now: --endpoint (a client address), or
the member kvctl talks to (the leader when known). Prints the snapshot's index.`,
		Example: `  kvctl cluster snapshot --endpoint 127.0.0.1:2479`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Snapshot(ctx, endpoint)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(struct {
					Index  uint64     `json:"index"`
					Header headerJSON `json:"header"`
				}{resp.GetIndex(), toHeaderJSON(resp.GetHeader())})
			}
			fmt.Fprintf(a.stdout, "snapshot at index %d\n", resp.GetIndex())
			return nil
		},
	}
	cmd.Flags().StringVar(&endpoint, "endpoint", "", "client address of the member (default: the one kvctl talks to)")
	return cmd
}
