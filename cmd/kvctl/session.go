package main

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newSessionCommand) }

func newSessionCommand(a *app) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "session",
		Short: "Client sessions (leases that own locks and make writes exactly-once)",
		Long: `Client sessions. A session is a lease with a TTL; locks and cache fill
leases belong to one and are released when it expires or is closed, and
keys bound to it (put --session) are deleted then.

Exit 4 when the session does not exist (any more).`,
	})
	cmd.AddCommand(newSessionCreateCommand(a), newSessionKeepAliveCommand(a), newSessionCloseCommand(a), newSessionGetCommand(a))
	return cmd
}

// sessionID parses a session id argument.
func sessionID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, &usageError{fmt.Sprintf("session id %q is not a positive integer", s)}
	}
	return id, nil
}

// sessionErr maps "the session is gone" to exit 4.
func sessionErr(id uint64, err error) error {
	if errors.Is(err, client.ErrSessionExpired) || errors.Is(err, client.ErrNotFound) {
		return withCode(exitNotFound, fmt.Errorf("session %d: %w", id, err))
	}
	return err
}

// printSession prints a session as of header h.
func (a *app) printSession(s *kvpb.SessionInfo, h *kvpb.ResponseHeader) error {
	if a.json() {
		return a.printJSON(response(h).set("session", sessionObject(s, h)))
	}
	w := a.stdout
	fmt.Fprintf(w, "id:      %d\n", s.GetId())
	if s.GetName() != "" {
		fmt.Fprintf(w, "name:    %s\n", s.GetName())
	}
	fmt.Fprintf(w, "ttl:     %v\n", time.Duration(s.GetTtlMs())*time.Millisecond)
	fmt.Fprintf(w, "expires: %s\n", when(s.GetExpiresAt(), h))
	fmt.Fprintf(w, "keys:    %d bound (deleted when the session ends)\n", s.GetKeys())
	if len(s.GetLocks()) > 0 {
		fmt.Fprintf(w, "locks:\n")
		for _, l := range s.GetLocks() {
			fmt.Fprintf(w, "  %s\n", printable(l))
		}
	}
	return nil
}

func newSessionCreateCommand(a *app) *cobra.Command {
	var (
		ttl  time.Duration
		name string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a session and print its id",
		Long: `Create a session with --ttl and print its id. kvctl does not keep it
alive: run "kvctl session keepalive ID", or let it expire after the TTL.`,
		Example: `  kvctl session create --ttl 30s --name backup-job`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl <= 0 {
				return &usageError{fmt.Sprintf("--ttl %v: want a positive duration", ttl)}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.CreateSession(ctx, ttl, name)
			if err != nil {
				return fmt.Errorf("session create: %w", err)
			}
			if a.json() {
				return a.printSession(resp.GetSession(), resp.GetHeader())
			}
			fmt.Fprintln(a.stdout, resp.GetSession().GetId())
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 60*time.Second, "time to live")
	cmd.Flags().StringVar(&name, "name", "", "a label for people")
	return cmd
}

func newSessionKeepAliveCommand(a *app) *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "keepalive ID",
		Short: "Keep a session alive until interrupted (--once: renew once)",
		Long: `Renew session ID every TTL/3 until interrupted (Ctrl-C, SIGTERM: exit 0),
printing the new expiry after each renewal; --once renews once. Exit 4 when
the session has expired.`,
		Example: `  kvctl session keepalive 1234
  kvctl session keepalive 1234 --once -o json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := sessionID(args[0])
			if err != nil {
				return err
			}
			c, err := a.Client()
			if err != nil {
				return err
			}
			for {
				ctx, cancel := a.requestContext(cmd.Context())
				resp, err := c.KeepAlive(ctx, id)
				cancel()
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil // interrupted
					}
					return sessionErr(id, err)
				}
				if err := a.printKeepAlive(resp); err != nil {
					return err
				}
				if once {
					return nil
				}
				every := max(time.Duration(resp.GetSession().GetTtlMs())*time.Millisecond/3, 100*time.Millisecond)
				t := time.NewTimer(every)
				select {
				case <-cmd.Context().Done():
					t.Stop()
					return nil
				case <-t.C:
				}
			}
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "renew once and exit")
	return cmd
}

func (a *app) printKeepAlive(resp *kvpb.KeepAliveResponse) error {
	s := resp.GetSession()
	if a.json() {
		return a.printSession(s, resp.GetHeader())
	}
	fmt.Fprintf(a.stdout, "session %d renewed, expires %s\n", s.GetId(), when(s.GetExpiresAt(), resp.GetHeader()))
	return nil
}

func newSessionCloseCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "close ID",
		Short:   "Close a session, releasing its locks",
		Long:    `Close session ID, releasing its locks. Closing a session that has already expired succeeds.`,
		Example: `  kvctl session close 1234`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := sessionID(args[0])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.CloseSession(ctx, id)
			if err != nil {
				return fmt.Errorf("session close %d: %w", id, err)
			}
			if a.json() {
				if resp.GetHeader() == nil {
					// Already gone: no answer with a state to show.
					return a.printJSON(part(nil).set("id", id).set("closed", false))
				}
				return a.printJSON(response(resp.GetHeader()).set("id", id).set("closed", true))
			}
			if resp.GetHeader() == nil {
				fmt.Fprintln(a.stdout, "OK (it was already closed or expired)")
				return nil
			}
			fmt.Fprintln(a.stdout, "OK")
			return nil
		},
	}
}

func newSessionGetCommand(a *app) *cobra.Command {
	var consistency string
	cmd := &cobra.Command{
		Use:     "get ID",
		Aliases: []string{"show"},
		Short:   "Show a session: TTL, expiry, bound keys, locks",
		Example: `  kvctl session get 1234`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := sessionID(args[0])
			if err != nil {
				return err
			}
			opts, err := parseConsistency(consistency)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.GetSession(ctx, id, opts...)
			if err != nil {
				return sessionErr(id, err)
			}
			if resp.GetSession() == nil {
				return sessionErr(id, client.ErrNotFound)
			}
			return a.printSession(resp.GetSession(), resp.GetHeader())
		},
	}
	cmd.Flags().StringVar(&consistency, "consistency", "linearizable", "linearizable or stale")
	return cmd
}
