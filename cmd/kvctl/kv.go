package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() {
	subcommands = append(subcommands, newPutCommand, newGetCommand, newDelCommand, newLsCommand, newAddCommand, newTouchCommand)
}

// parseConsistency parses --consistency.
func parseConsistency(s string) ([]client.OpOption, error) {
	switch s {
	case "linearizable", "l", "":
		return nil, nil
	case "stale", "s":
		return []client.OpOption{client.WithStale()}, nil
	}
	return nil, &usageError{fmt.Sprintf("--consistency: want linearizable or stale, got %q", s)}
}

// withFence adds the option of --fence LOCK:TOKEN to opts ("" adds none).
func withFence(opts []client.OpOption, fence string) ([]client.OpOption, error) {
	if fence == "" {
		return opts, nil
	}
	f, err := parseFence(fence)
	if err != nil {
		return nil, err
	}
	return append(opts, f), nil
}

// parseFence parses --fence LOCK:TOKEN (the lock name may contain ':').
func parseFence(s string) (client.OpOption, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return nil, &usageError{fmt.Sprintf("--fence: want LOCK:TOKEN, got %q", s)}
	}
	tok, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil || tok == 0 {
		return nil, &usageError{fmt.Sprintf("--fence: token %q is not a positive integer", s[i+1:])}
	}
	return client.WithFence([]byte(s[:i]), tok), nil
}

// rangeArgs is cobra.RangeArgs with a usage error (exit 2).
func rangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return &usageError{fmt.Sprintf("%s: want %d to %d argument(s), got %d", cmd.CommandPath(), lo, hi, len(args))}
		}
		return nil
	}
}

// ---------------------------------------------------------------------------
// put

func newPutCommand(a *app) *cobra.Command {
	var (
		ttl      time.Duration
		expect   uint64
		fence    string
		session  string
		ifAbsent bool
	)
	cmd := &cobra.Command{
		Use:   "put KEY [VALUE]",
		Short: "Write a key (VALUE from stdin when not given)",
		Long: `Write KEY = VALUE. Without VALUE the value is read from stdin, as it is
(binary-safe, nothing stripped).

--session ID binds the key to a session (kvctl session create): the key is
deleted when the session is closed or expires. A later put without
--session unbinds it. --if-absent writes only if the key does not exist
(or, with --session, is already bound to that session): otherwise it fails,
naming the session that holds the key, if any.

The write is exactly-once: it is retried across leader changes until
--timeout and applied at most once. Exit 6 when its outcome is unknown.`,
		Example: `  kvctl put greeting hello
  kvctl put session-token --ttl 30s < token.bin
  kvctl put config v2 --expect-version 3
  kvctl put /db/schema v7 --fence db-migrate:1234
  kvctl put services/api/n1 10.0.0.5:8080 --session 1234 --if-absent`,
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []client.OpOption
			if ttl < 0 {
				return &usageError{fmt.Sprintf("--ttl %v is negative", ttl)}
			}
			if ttl > 0 {
				opts = append(opts, client.WithTTL(ttl))
			}
			if cmd.Flags().Changed("expect-version") {
				opts = append(opts, client.WithExpectedVersion(expect))
			}
			opts, err := withFence(opts, fence)
			if err != nil {
				return err
			}
			if session != "" {
				id, err := sessionID(session)
				if err != nil {
					return &usageError{"--session: " + err.Error()}
				}
				opts = append(opts, client.WithSession(id))
			}
			if ifAbsent {
				opts = append(opts, client.WithIfAbsent())
			}
			var value []byte
			if len(args) == 2 {
				value = []byte(args[1])
			} else {
				b, err := io.ReadAll(a.stdin)
				if err != nil {
					return fmt.Errorf("read value from stdin: %w", err)
				}
				value = b
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Put(ctx, []byte(args[0]), value, opts...)
			if err != nil {
				return fmt.Errorf("put %q: %w", args[0], err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).set("kv", kvObject(resp.GetKv(), resp.GetHeader())))
			}
			fmt.Fprintf(a.stdout, "OK (version %d, index %d)\n", resp.GetKv().GetVersion(), resp.GetKv().GetModIndex())
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "time to live of the key (0: none; a put without --ttl clears an existing TTL)")
	cmd.Flags().Uint64Var(&expect, "expect-version", 0, "compare-and-set: write only if the key's version is N (0: only if it does not exist)")
	cmd.Flags().StringVar(&fence, "fence", "", "write only if TOKEN still holds LOCK (LOCK:TOKEN)")
	cmd.Flags().StringVar(&session, "session", "", "bind the key to session ID: it is deleted when the session ends")
	cmd.Flags().BoolVar(&ifAbsent, "if-absent", false, "write only if the key does not exist (or is bound to --session already)")
	return cmd
}

// ---------------------------------------------------------------------------
// get

func newGetCommand(a *app) *cobra.Command {
	var (
		consistency string
		valueOnly   bool
	)
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Read a key",
		Long: `Read KEY and print its value followed by a newline (none is added when
the value already ends with one). --print-value-only prints exactly the
stored bytes and nothing else (binary-safe). -o json prints the key with its
version, indexes and expiry.

Exit 4 when the key does not exist.`,
		Example: `  kvctl get greeting
  kvctl get greeting --consistency stale
  kvctl get blob --print-value-only > blob.bin`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := parseConsistency(consistency)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Get(ctx, []byte(args[0]), opts...)
			if errors.Is(err, client.ErrNotFound) || (err == nil && resp.GetKv() == nil) {
				return withCode(exitNotFound, fmt.Errorf("get %q: key not found", args[0]))
			}
			if err != nil {
				return fmt.Errorf("get %q: %w", args[0], err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).set("kv", kvObject(resp.GetKv(), resp.GetHeader())))
			}
			v := resp.GetKv().GetValue()
			if _, err := a.stdout.Write(v); err != nil {
				return err
			}
			if !valueOnly && (len(v) == 0 || v[len(v)-1] != '\n') {
				fmt.Fprintln(a.stdout)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&consistency, "consistency", "linearizable", "linearizable (through the leader) or stale (this member's state)")
	cmd.Flags().BoolVar(&valueOnly, "print-value-only", false, "print only the stored bytes, without a trailing newline")
	return cmd
}

// ---------------------------------------------------------------------------
// del

func newDelCommand(a *app) *cobra.Command {
	var (
		expect         uint64
		fence          string
		prefix, dryRun bool
	)
	cmd := &cobra.Command{
		Use:     "del KEY | del --prefix PREFIX",
		Aliases: []string{"delete", "rm"},
		Short:   "Delete a key, or every key with a prefix",
		Long: `Delete KEY and print how many keys were deleted (1, or 0 when it did not
exist, which is not an error). Exactly-once like put.

--prefix deletes every key that starts with PREFIX, in one entry, and
prints how many went (an empty PREFIX, "", is every key). --dry-run lists
the keys it would delete, one per line, and deletes nothing: it pages
through them like ls, so a key written between the dry run and the real
delete is not in the list.`,
		Example: `  kvctl del greeting
  kvctl del config --expect-version 4
  kvctl del --prefix jobs/done/ --dry-run
  kvctl del --prefix jobs/done/`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []client.OpOption
			if cmd.Flags().Changed("expect-version") {
				if prefix {
					return &usageError{"--expect-version does not go with --prefix"}
				}
				opts = append(opts, client.WithExpectedVersion(expect))
			}
			if dryRun && !prefix {
				return &usageError{"--dry-run goes with --prefix"}
			}
			opts, err := withFence(opts, fence)
			if err != nil {
				return err
			}
			key := []byte(args[0])
			if dryRun {
				return a.delDryRun(cmd, key)
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			var resp *kvpb.DeleteResponse
			if prefix {
				resp, err = c.DeletePrefix(ctx, key, opts...)
			} else {
				resp, err = c.Delete(ctx, key, opts...)
			}
			if err != nil {
				if prefix {
					return fmt.Errorf("del --prefix %q: %w", args[0], err)
				}
				return fmt.Errorf("del %q: %w", args[0], err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).set("deleted", resp.GetDeleted()))
			}
			fmt.Fprintln(a.stdout, resp.GetDeleted())
			return nil
		},
	}
	cmd.Flags().Uint64Var(&expect, "expect-version", 0, "delete only if the key's version is N")
	cmd.Flags().StringVar(&fence, "fence", "", "delete only if TOKEN still holds LOCK (LOCK:TOKEN)")
	cmd.Flags().BoolVar(&prefix, "prefix", false, "delete every key starting with the argument, in one entry")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "with --prefix: list the keys that would be deleted, delete nothing")
	return cmd
}

// delDryRun lists the keys del --prefix would delete now.
func (a *app) delDryRun(cmd *cobra.Command, prefix []byte) error {
	kvs, _, header, err := a.listPages(cmd, prefix, nil, 0, []client.OpOption{client.WithKeysOnly()})
	if err != nil {
		return fmt.Errorf("del --prefix %q --dry-run: %w", prefix, err)
	}
	if a.json() {
		keys := []*object{}
		for _, kv := range kvs {
			keys = append(keys, part(header).bytes("key", kv.GetKey()))
		}
		return a.printJSON(response(header).set("dry_run", true).set("keys", keys).set("would_delete", len(kvs)))
	}
	for _, kv := range kvs {
		fmt.Fprintln(a.stdout, printable(kv.GetKey()))
	}
	fmt.Fprintf(a.stderr, "kvctl: dry run: %d key(s) would be deleted; nothing was\n", len(kvs))
	return nil
}

// ---------------------------------------------------------------------------
// touch

func newTouchCommand(a *app) *cobra.Command {
	var (
		ttl   time.Duration
		fence string
	)
	cmd := &cobra.Command{
		Use:   "touch KEY --ttl DURATION",
		Short: "Give an existing key a new TTL, keeping its value and version",
		Long: `Give KEY a new time to live counted from now, keeping its value, version
and mod index (a heartbeat for a key written with --ttl). --ttl is
required: --ttl 0 removes the key's TTL, so that it no longer expires.
Prints the new expiry. Exactly-once like put. Exit 4 when the key does not
exist (or has expired).`,
		Example: `  kvctl touch services/api/n1 --ttl 30s
  kvctl touch config --ttl 0`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("ttl") {
				return &usageError{"touch: --ttl is required (--ttl 0 removes the TTL)"}
			}
			if ttl < 0 {
				return &usageError{fmt.Sprintf("--ttl %v is negative", ttl)}
			}
			opts, err := withFence(nil, fence)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Touch(ctx, []byte(args[0]), ttl, opts...)
			if errors.Is(err, client.ErrNotFound) {
				return withCode(exitNotFound, fmt.Errorf("touch %q: key not found", args[0]))
			}
			if err != nil {
				return fmt.Errorf("touch %q: %w", args[0], err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).set("kv", kvMetaObject(resp.GetKv(), resp.GetHeader())))
			}
			if exp := resp.GetKv().GetExpiresAt(); exp != 0 {
				fmt.Fprintf(a.stdout, "OK (expires %s)\n", when(exp, resp.GetHeader()))
			} else {
				fmt.Fprintln(a.stdout, "OK (no TTL)")
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "the new time to live, from now (required; 0: no TTL)")
	cmd.Flags().StringVar(&fence, "fence", "", "touch only if TOKEN still holds LOCK (LOCK:TOKEN)")
	return cmd
}

// ---------------------------------------------------------------------------
// ls

func newLsCommand(a *app) *cobra.Command {
	var (
		limit       int
		keysOnly    bool
		startAfter  string
		consistency string
	)
	cmd := &cobra.Command{
		Use:     "ls [PREFIX]",
		Aliases: []string{"list"},
		Short:   "List keys by prefix, in key order",
		Long: `List the keys starting with PREFIX (all keys without it), in key order.

Text output is one key per line, "KEY<TAB>VALUE" (or only KEY with
--keys-only); keys and values that are not printable text are Go-quoted.

--limit 0 (the default) pages through every key, one server page at a time
(each page is its own read, so a listing of many pages is not one snapshot).
--limit N returns at most N keys; when more match, text output ends with a
note on stderr naming the --start-after to continue with, and -o json has
"more": true. A server page also ends at the server's response byte budget
(--max-response-bytes on kvd), so N keys of large values may take several
reads.`,
		Example: `  kvctl ls
  kvctl ls /config/ --keys-only
  kvctl ls /jobs/ --limit 100 --start-after /jobs/0042`,
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return &usageError{fmt.Sprintf("--limit %d is negative", limit)}
			}
			opts, err := parseConsistency(consistency)
			if err != nil {
				return err
			}
			if keysOnly {
				opts = append(opts, client.WithKeysOnly())
			}
			var prefix []byte
			if len(args) == 1 {
				prefix = []byte(args[0])
			}
			kvs, more, header, err := a.listPages(cmd, prefix, []byte(startAfter), limit, opts)
			if err != nil {
				return fmt.Errorf("ls %q: %w", prefix, err)
			}
			if a.json() {
				out := []*object{}
				for _, kv := range kvs {
					out = append(out, kvObject(kv, header))
				}
				return a.printJSON(response(header).set("kvs", out).set("more", more))
			}
			for _, kv := range kvs {
				if keysOnly {
					fmt.Fprintln(a.stdout, printable(kv.GetKey()))
				} else {
					fmt.Fprintf(a.stdout, "%s\t%s\n", printable(kv.GetKey()), printable(kv.GetValue()))
				}
			}
			if more && len(kvs) > 0 {
				fmt.Fprintf(a.stderr, "kvctl: more keys match: continue with --start-after %s\n", strconv.Quote(string(kvs[len(kvs)-1].GetKey())))
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "at most N keys (0: page through all)")
	cmd.Flags().BoolVar(&keysOnly, "keys-only", false, "print keys without values")
	cmd.Flags().StringVar(&startAfter, "start-after", "", "list keys strictly after this one")
	cmd.Flags().StringVar(&consistency, "consistency", "linearizable", "linearizable or stale")
	return cmd
}

// listPages lists the keys under prefix after after, one server page per
// read (each its own --timeout), until limit keys (0: all of them) or the
// last page. header is the last page's; more says keys beyond limit match.
func (a *app) listPages(cmd *cobra.Command, prefix, after []byte, limit int, opts []client.OpOption) (kvs []*kvpb.KeyValue, more bool, header *kvpb.ResponseHeader, err error) {
	c, err := a.Client()
	if err != nil {
		return nil, false, nil, err
	}
	for {
		want := 0 // the server's default page
		if limit > 0 {
			want = limit - len(kvs)
		}
		ctx, cancel := a.requestContext(cmd.Context())
		pageOpts := append(append([]client.OpOption(nil), opts...), client.WithStartAfter(after), client.WithLimit(want))
		resp, err := c.List(ctx, prefix, pageOpts...)
		cancel()
		if err != nil {
			return nil, false, nil, err
		}
		header = resp.GetHeader()
		kvs = append(kvs, resp.GetKvs()...)
		more = resp.GetMore()
		if !more || len(resp.GetKvs()) == 0 || (limit > 0 && len(kvs) >= limit) {
			return kvs, more, header, nil
		}
		after = resp.GetKvs()[len(resp.GetKvs())-1].GetKey()
	}
}

// ---------------------------------------------------------------------------
// add

func newAddCommand(a *app) *cobra.Command {
	var fence string
	cmd := &cobra.Command{
		Use:   "add KEY DELTA",
		Short: "Add DELTA to the decimal counter at KEY and print the result",
		Long: `Add DELTA (a signed int64) to the counter stored at KEY as a decimal
integer (a missing key counts as 0) and print the new value. Exactly-once: a
retried add never adds twice. Fails when the value is not a decimal integer.
A negative DELTA goes after "--", or it reads as a flag.`,
		Example: `  kvctl add visits 1
  kvctl add stock -- -3`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			delta, err := strconv.ParseInt(args[1], 10, 64)
			if err != nil {
				return &usageError{fmt.Sprintf("DELTA %q is not an int64", args[1])}
			}
			opts, err := withFence(nil, fence)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Add(ctx, []byte(args[0]), delta, opts...)
			if err != nil {
				return fmt.Errorf("add %q: %w", args[0], err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).set("new_value", resp.GetValue()).set("kv", kvObject(resp.GetKv(), resp.GetHeader())))
			}
			fmt.Fprintln(a.stdout, resp.GetValue())
			return nil
		},
	}
	cmd.Flags().StringVar(&fence, "fence", "", "add only if TOKEN still holds LOCK (LOCK:TOKEN)")
	return cmd
}
