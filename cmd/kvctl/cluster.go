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
	cmd := group(&cobra.Command{
		Use:   "cluster",
		Short: "Cluster status and membership",
	})
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

func (a *app) printMembers(h *kvpb.ResponseHeader, ms []*kvpb.Member) error {
	if a.json() {
		return a.printJSON(response(h).set("members", membersJSON(ms)))
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

// memberStatus is one row of cluster status: the member, and its own
// answer about itself (nil when it did not answer).
type memberStatus struct {
	m   *kvpb.Member
	st  *kvpb.StatusResponse
	err string
}

// lag is how far log time runs behind the leader's wall clock (about the
// length of the last whole-cluster outage: log time stands still while no
// leader runs, and never runs ahead of real time). Only the leader keeps a
// running log-time clock; ok is false for any other member.
func (r memberStatus) lag() (d time.Duration, ok bool) {
	w, c := r.st.GetHeader().GetWallTime(), r.st.GetLogClock()
	if w == 0 || c == 0 {
		return 0, false
	}
	return time.Duration(w - c), true
}

func (r memberStatus) object() *object {
	o := memberObject(r.m)
	if r.st == nil {
		o.set("reachable", false)
		if r.err != "" {
			o.set("error", r.err)
		}
		return o
	}
	st := r.st
	o.set("reachable", true).
		set("header", toHeaderJSON(st.GetHeader())).
		set("role", st.GetRole()).
		set("term", st.GetTerm()).
		set("commit_index", st.GetCommitIndex()).
		set("applied_index", st.GetAppliedIndex()).
		set("last_log_index", st.GetLastLogIndex()).
		set("last_snapshot_index", st.GetLastSnapshotIndex())
	if lag, ok := r.lag(); ok {
		o.set("log_time_lag_ms", lag.Milliseconds())
	}
	o.set("leader_name", st.GetLeaderName()).
		set("state_hash", hex.EncodeToString(st.GetStateHash())).
		set("version", st.GetVersion())
	return o
}

func newClusterStatusCommand(a *app) *cobra.Command {
	var memberTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Status of every member: role, term, applied index, log time and its lag",
		Long: `Ask for the member list, then ask every member about itself (at its client
address, each within --member-timeout). A member that does not answer is
shown as unreachable; that is not an error (exit 0). The leader is marked *.

LOG TIME is the log time of the newest entry a member applied. LAG, on the
leader's row, is how far log time (the cluster's replicated clock, which
every expiry is judged by) runs behind the leader's wall clock. Log time
stands still while the whole cluster is down and never runs ahead of real
time, so after a full restart it lags by about the length of the outage;
TTLs still last their full length. kvctl shows deadlines as time left, and
as the serving member's wall clock plus that time.`,
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
				return fmt.Errorf("cluster status: %w", err)
			}
			members := mresp.GetMembers()
			rows := make([]memberStatus, len(members))
			var wg sync.WaitGroup
			for i, m := range members {
				rows[i].m = m
				if m.GetClientAddr() == "" {
					rows[i].err = "client address unknown"
					continue
				}
				wg.Go(func() {
					sctx, cancel := context.WithTimeout(ctx, memberTimeout)
					defer cancel()
					st, err := c.Status(sctx, m.GetClientAddr())
					if err != nil {
						rows[i].err = a.message(err)
						return
					}
					rows[i].st = st
				})
			}
			wg.Wait()
			if a.json() {
				out := []*object{}
				for _, r := range rows {
					out = append(out, r.object())
				}
				return a.printJSON(response(mresp.GetHeader()).set("members", out))
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tPEER ADDR\tCLIENT ADDR\tROLE\tTERM\tAPPLIED\tLOG TIME\tLAG\tLEADER")
			for _, r := range rows {
				m := r.m
				if r.st == nil {
					fmt.Fprintf(w, "%s\t%s\t%s\tunreachable\t-\t-\t-\t-\t%s\n", m.GetName(), m.GetPeerAddr(), orDash(m.GetClientAddr()), mark(m.GetLeader()))
					continue
				}
				st := r.st
				lag := "-"
				if d, ok := r.lag(); ok {
					lag = d.Round(time.Millisecond).String()
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", m.GetName(), m.GetPeerAddr(), m.GetClientAddr(), st.GetRole(), st.GetTerm(),
					st.GetAppliedIndex(), rfc3339(st.GetLogTime()), lag, mark(st.GetRole() == "leader"))
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
				return fmt.Errorf("cluster members: %w", err)
			}
			return a.printMembers(resp.GetHeader(), resp.GetMembers())
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
				return fmt.Errorf("cluster add %s: %w", args[0], err)
			}
			return a.printMembers(resp.GetHeader(), resp.GetMembers())
		},
	}
	cmd.Flags().BoolVar(&nonVoter, "non-voter", false, "add as a non-voter (receives the log, does not vote)")
	return cmd
}

func newClusterRemoveCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "remove NAME",
		Short:   "Remove a member and print the new member list (exit 4: no such member)",
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
				return fmt.Errorf("cluster remove %s: %w", args[0], err)
			}
			return a.printMembers(resp.GetHeader(), resp.GetMembers())
		},
	}
}

func newClusterTransferCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "transfer [NAME]",
		Short: "Transfer leadership to NAME (or to a member Raft picks)",
		Long: `Transfer leadership to the voter NAME, or without NAME to a member Raft
picks, and print the new leader. Fails (exit 1) when NAME is a non-voter,
when another member ends up leading, or when NAME did not take over in time
(shortly after it restarted it may still be catching up: retry). Exit 4 when
there is no member NAME.`,
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
				if name == "" {
					return fmt.Errorf("cluster transfer: %w", err)
				}
				return fmt.Errorf("cluster transfer %s: %w", name, err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).set("leader", resp.GetLeaderName()))
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
				return fmt.Errorf("cluster snapshot: %w", err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).set("index", resp.GetIndex()))
			}
			fmt.Fprintf(a.stdout, "snapshot at index %d\n", resp.GetIndex())
			return nil
		},
	}
	cmd.Flags().StringVar(&endpoint, "endpoint", "", "client address of the member (default: the one kvctl talks to)")
	return cmd
}
