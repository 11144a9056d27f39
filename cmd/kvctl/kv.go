package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() {
	subcommands = append(subcommands, newPutCommand, newGetCommand, newDelCommand, newLsCommand, newAddCommand)
}

// ---------------------------------------------------------------------------
// JSON output of keys and values.
//
// The rule, for every kvctl command: a key or value that is valid UTF-8 is
// the JSON string "key" / "value"; one that is not is left out and given
// as base64 in "key_base64" / "value_base64" instead. Log times are unix
// nanoseconds ("..._ns", a number) with an RFC 3339 copy for people.

// kvJSON is the -o json form of a key.
type kvJSON struct {
	Key         string `json:"key,omitempty"`
	KeyBase64   string `json:"key_base64,omitempty"`
	Value       string `json:"value,omitempty"`
	ValueBase64 string `json:"value_base64,omitempty"`
	Version     uint64 `json:"version"`
	CreateIndex uint64 `json:"create_index"`
	ModIndex    uint64 `json:"mod_index"`
	ExpiresAtNs int64  `json:"expires_at_ns,omitempty"`
	ExpiresAt   string `json:"expires_at,omitempty"`
}

// headerJSON is the -o json form of a ResponseHeader.
type headerJSON struct {
	AppliedIndex uint64 `json:"applied_index"`
	LogTimeNs    int64  `json:"log_time_ns"`
	LogTime      string `json:"log_time"`
	ServedBy     string `json:"served_by,omitempty"`
	Stale        bool   `json:"stale,omitempty"`
	Term         uint64 `json:"term,omitempty"`
}

func toHeaderJSON(h *kvpb.ResponseHeader) headerJSON {
	return headerJSON{
		AppliedIndex: h.GetAppliedIndex(),
		LogTimeNs:    h.GetLogTime(),
		LogTime:      logTimeNano(h.GetLogTime()),
		ServedBy:     h.GetServedBy(),
		Stale:        h.GetStale(),
		Term:         h.GetTerm(),
	}
}

// bytesJSON applies the rule above: (string, "") or ("", base64).
func bytesJSON(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return "", base64.StdEncoding.EncodeToString(b)
}

func toKVJSON(kv *kvpb.KeyValue) kvJSON {
	j := kvJSON{
		Version:     kv.GetVersion(),
		CreateIndex: kv.GetCreateIndex(),
		ModIndex:    kv.GetModIndex(),
		ExpiresAtNs: kv.GetExpiresAt(),
		ExpiresAt:   logTimeNano(kv.GetExpiresAt()),
	}
	j.Key, j.KeyBase64 = bytesJSON(kv.GetKey())
	j.Value, j.ValueBase64 = bytesJSON(kv.GetValue())
	return j
}

// logTimeNano formats a log time (unix ns) as RFC 3339 with nanoseconds,
// UTC; "" for 0.
func logTimeNano(t int64) string {
	if t == 0 {
		return ""
	}
	return time.Unix(0, t).UTC().Format(time.RFC3339Nano)
}

// printable renders bytes for a human: as they are when they are printable
// UTF-8 text, Go-quoted otherwise.
func printable(b []byte) string {
	s := string(b)
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' {
			return strconv.Quote(s)
		}
	}
	return s
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
		ttl    time.Duration
		expect uint64
		fence  string
	)
	cmd := &cobra.Command{
		Use:   "put KEY [VALUE]",
		Short: "Write a key (VALUE from stdin when not given)",
		Long: `Write KEY = VALUE. Without VALUE the value is read from stdin, as it is
(binary-safe, nothing stripped).

The write is exactly-once: it is retried across leader changes until
--timeout and applied at most once. Exit 6 when its outcome is unknown.`,
		Example: `  kvctl put greeting hello
  kvctl put session-token --ttl 30s < token.bin
  kvctl put config v2 --expect-version 3
  kvctl put /db/schema v7 --fence db-migrate:1234`,
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
			if fence != "" {
				f, err := parseFence(fence)
				if err != nil {
					return err
				}
				opts = append(opts, f)
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
				return err
			}
			if a.json() {
				return a.printJSON(struct {
					Header headerJSON `json:"header"`
					KV     kvJSON     `json:"kv"`
				}{toHeaderJSON(resp.GetHeader()), toKVJSON(resp.GetKv())})
			}
			fmt.Fprintf(a.stdout, "OK (version %d, index %d)\n", resp.GetKv().GetVersion(), resp.GetKv().GetModIndex())
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "time to live of the key (0: none; a put without --ttl clears an existing TTL)")
	cmd.Flags().Uint64Var(&expect, "expect-version", 0, "compare-and-set: write only if the key's version is N (0: only if it does not exist)")
	cmd.Flags().StringVar(&fence, "fence", "", "write only if TOKEN still holds LOCK (LOCK:TOKEN)")
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
			if errors.Is(err, client.ErrNotFound) {
				return fmt.Errorf("get %q: key not found: %w", args[0], client.ErrNotFound)
			}
			if err != nil {
				return err
			}
			if resp.GetKv() == nil {
				return fmt.Errorf("key %q: %w", args[0], client.ErrNotFound)
			}
			if a.json() {
				return a.printJSON(struct {
					Header headerJSON `json:"header"`
					KV     kvJSON     `json:"kv"`
				}{toHeaderJSON(resp.GetHeader()), toKVJSON(resp.GetKv())})
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
	var expect uint64
	var fence string
	cmd := &cobra.Command{
		Use:     "del KEY",
		Aliases: []string{"delete", "rm"},
		Short:   "Delete a key",
		Long: `Delete KEY and print how many keys were deleted (1, or 0 when it did not
exist, which is not an error). Exactly-once like put.`,
		Example: `  kvctl del greeting
  kvctl del config --expect-version 4`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []client.OpOption
			if cmd.Flags().Changed("expect-version") {
				opts = append(opts, client.WithExpectedVersion(expect))
			}
			if fence != "" {
				f, err := parseFence(fence)
				if err != nil {
					return err
				}
				opts = append(opts, f)
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Delete(ctx, []byte(args[0]), opts...)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(struct {
					Header  headerJSON `json:"header"`
					Deleted uint64     `json:"deleted"`
				}{toHeaderJSON(resp.GetHeader()), resp.GetDeleted()})
			}
			fmt.Fprintln(a.stdout, resp.GetDeleted())
			return nil
		},
	}
	cmd.Flags().Uint64Var(&expect, "expect-version", 0, "delete only if the key's version is N")
	cmd.Flags().StringVar(&fence, "fence", "", "delete only if TOKEN still holds LOCK (LOCK:TOKEN)")
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
--limit N returns at most N keys in one read; when more match, text output
ends with a note on stderr naming the --start-after to continue with, and -o
json has "more": true.`,
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
			c, err := a.Client()
			if err != nil {
				return err
			}
			var (
				kvs    []*kvpb.KeyValue
				more   bool
				header *kvpb.ResponseHeader
				after  = []byte(startAfter)
			)
			for {
				ctx, cancel := a.requestContext(cmd.Context())
				pageOpts := append(append([]client.OpOption(nil), opts...), client.WithStartAfter(after), client.WithLimit(limit))
				resp, err := c.List(ctx, prefix, pageOpts...)
				cancel()
				if err != nil {
					return err
				}
				header = resp.GetHeader()
				kvs = append(kvs, resp.GetKvs()...)
				more = resp.GetMore()
				if limit > 0 || !more || len(resp.GetKvs()) == 0 {
					break
				}
				after = resp.GetKvs()[len(resp.GetKvs())-1].GetKey()
			}
			if a.json() {
				out := struct {
					Header headerJSON `json:"header"`
					KVs    []kvJSON   `json:"kvs"`
					More   bool       `json:"more"`
				}{Header: toHeaderJSON(header), KVs: []kvJSON{}, More: more}
				for _, kv := range kvs {
					out.KVs = append(out.KVs, toKVJSON(kv))
				}
				return a.printJSON(out)
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
	cmd.Flags().IntVar(&limit, "limit", 0, "at most N keys in one read (0: page through all)")
	cmd.Flags().BoolVar(&keysOnly, "keys-only", false, "print keys without values")
	cmd.Flags().StringVar(&startAfter, "start-after", "", "list keys strictly after this one")
	cmd.Flags().StringVar(&consistency, "consistency", "linearizable", "linearizable or stale")
	return cmd
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
			var opts []client.OpOption
			if fence != "" {
				f, err := parseFence(fence)
				if err != nil {
					return err
				}
				opts = append(opts, f)
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Add(ctx, []byte(args[0]), delta, opts...)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(struct {
					Header headerJSON `json:"header"`
					Value  int64      `json:"value"`
					KV     kvJSON     `json:"kv"`
				}{toHeaderJSON(resp.GetHeader()), resp.GetValue(), toKVJSON(resp.GetKv())})
			}
			fmt.Fprintln(a.stdout, resp.GetValue())
			return nil
		},
	}
	cmd.Flags().StringVar(&fence, "fence", "", "add only if TOKEN still holds LOCK (LOCK:TOKEN)")
	return cmd
}
