package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newCacheCommand) }

func newCacheCommand(a *app) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "cache",
		Short: "The cache of computed results",
		Long: `The cache of computed results (what the Go cache package memoizes into).
Cache entries are a namespace apart from plain keys.

Exit code 4: no value for the key (state miss).`,
	})
	cmd.AddCommand(newCacheGetCommand(a), newCacheSetCommand(a), newCacheInvalidateCommand(a), newCacheStatsCommand(a))
	return cmd
}

// cacheStateName is the lower-case name of a cache state.
func cacheStateName(s kvpb.CacheState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CACHE_STATE_"))
}

func newCacheGetCommand(a *app) *cobra.Command {
	var consistency string
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Show a cache entry: value, state (fresh/stale/filling/miss), TTL left, filled at index",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []client.OpOption
			switch consistency {
			case "linearizable", "":
			case "stale":
				opts = append(opts, client.WithStale())
			default:
				return &usageError{fmt.Sprintf("--consistency: want linearizable or stale, got %q", consistency)}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.CacheGet(ctx, []byte(args[0]), opts...)
			if err != nil {
				return fmt.Errorf("cache get %q: %w", args[0], err)
			}
			if err := a.printCacheEntry(args[0], resp); err != nil {
				return err
			}
			if resp.GetState() == kvpb.CacheState_CACHE_STATE_MISS {
				return withCode(exitNotFound, fmt.Errorf("cache get %q: no value (miss)", args[0]))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&consistency, "consistency", "linearizable", "linearizable or stale (served by the receiving node)")
	return cmd
}

func (a *app) printCacheEntry(key string, resp *kvpb.CacheGetResponse) error {
	h := resp.GetHeader()
	e := resp.GetEntry()
	state := cacheStateName(resp.GetState())
	if a.json() {
		o := response(h).bytes("key", []byte(key)).set("state", state)
		if e == nil {
			return a.printJSON(o)
		}
		if len(e.GetValue()) > 0 || e.GetFilledIndex() != 0 {
			o.bytes("value", e.GetValue())
		}
		if e.GetIsError() {
			o.set("is_error", true)
		}
		o.instant("fresh_until", e.GetFreshUntil()).
			instant("stale_until", e.GetStaleUntil())
		if e.GetFilledIndex() != 0 {
			o.set("filled_index", e.GetFilledIndex())
		}
		if l := e.GetLease(); l.GetToken() != 0 {
			o.set("lease_session", l.GetSession()).set("lease_token", l.GetToken()).instant("lease_expires_at", l.GetExpiresAt())
		}
		return a.printJSON(o.set("waiters", len(e.GetWaiters())))
	}
	w := a.stdout
	fmt.Fprintf(w, "key:         %s\nstate:       %s\n", key, state)
	if e == nil {
		return nil
	}
	if len(e.GetValue()) > 0 || e.GetFilledIndex() != 0 {
		if e.GetIsError() {
			fmt.Fprintf(w, "error:       %s\n", e.GetValue())
		} else {
			fmt.Fprintf(w, "value:       %s\n", e.GetValue())
		}
		fmt.Fprintf(w, "fresh until: %s\n", when(e.GetFreshUntil(), h))
		if e.GetStaleUntil() > e.GetFreshUntil() {
			fmt.Fprintf(w, "stale until: %s\n", when(e.GetStaleUntil(), h))
		}
		fmt.Fprintf(w, "filled at:   index %d\n", e.GetFilledIndex())
	}
	if l := e.GetLease(); l.GetToken() != 0 {
		fmt.Fprintf(w, "fill lease:  session %d token %d until %s\n", l.GetSession(), l.GetToken(), when(l.GetExpiresAt(), h))
	}
	if n := len(e.GetWaiters()); n > 0 {
		fmt.Fprintf(w, "waiting:     %d session(s)\n", n)
	}
	return nil
}

func newCacheSetCommand(a *app) *cobra.Command {
	var ttl, stale time.Duration
	cmd := &cobra.Command{
		Use:   "set KEY VALUE --ttl 1m [--stale 0]",
		Short: "Store a value in the cache (bypassing any fill lease)",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl <= 0 || stale < 0 {
				return &usageError{"cache set: --ttl must be positive and --stale not negative"}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.CacheSet(ctx, []byte(args[0]), []byte(args[1]), ttl, stale)
			if err != nil {
				return fmt.Errorf("cache set %q: %w", args[0], err)
			}
			e, h := resp.GetEntry(), resp.GetHeader()
			if a.json() {
				return a.printJSON(response(h).bytes("key", []byte(args[0])).
					instant("fresh_until", e.GetFreshUntil()).
					instant("stale_until", e.GetStaleUntil()).
					set("filled_index", e.GetFilledIndex()))
			}
			fmt.Fprintf(a.stdout, "stored %s at index %d, fresh until %s\n", args[0], e.GetFilledIndex(), when(e.GetFreshUntil(), h))
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", time.Minute, "time the value stays fresh")
	cmd.Flags().DurationVar(&stale, "stale", 0, "serve-stale window after the TTL")
	return cmd
}

func newCacheInvalidateCommand(a *app) *cobra.Command {
	var prefix string
	cmd := &cobra.Command{
		Use:   "invalidate KEY | --prefix P",
		Short: "Remove a cache entry, or every entry with a prefix",
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case cmd.Flags().Changed("prefix") && len(args) == 0:
			case !cmd.Flags().Changed("prefix") && len(args) == 1:
			default:
				return &usageError{"cache invalidate: want KEY or --prefix P"}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			key, isPrefix := prefix, true
			if len(args) == 1 {
				key, isPrefix = args[0], false
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Invalidate(ctx, []byte(key), isPrefix)
			if err != nil {
				return fmt.Errorf("cache invalidate %q: %w", key, err)
			}
			if a.json() {
				return a.printJSON(response(resp.GetHeader()).bytes("key", []byte(key)).set("prefix", isPrefix).set("invalidated", resp.GetInvalidated()))
			}
			fmt.Fprintf(a.stdout, "invalidated %d entr%s\n", resp.GetInvalidated(), map[bool]string{true: "y", false: "ies"}[resp.GetInvalidated() == 1])
			return nil
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", "", "invalidate every entry whose key starts with P")
	return cmd
}

func newCacheStatsCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Cache counters: replicated ones, and the receiving node's hits and misses",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			r, err := c.CacheStats(ctx)
			if err != nil {
				return fmt.Errorf("cache stats: %w", err)
			}
			if a.json() {
				return a.printJSON(response(r.GetHeader()).
					set("entries", r.GetEntries()).
					set("bytes", r.GetBytes()).
					set("max_bytes", r.GetMaxBytes()).
					set("evictions", r.GetEvictions()).
					set("stores", r.GetStores()).
					set("stale_stores_rejected", r.GetStaleStoresRejected()).
					set("leases_granted", r.GetLeasesGranted()).
					set("leases_expired", r.GetLeasesExpired()).
					set("hits", r.GetHits()).
					set("stale_hits", r.GetStaleHits()).
					set("misses", r.GetMisses()).
					set("waits", r.GetWaits()))
			}
			w := a.stdout
			fmt.Fprintf(w, "entries:               %d\n", r.GetEntries())
			fmt.Fprintf(w, "bytes:                 %d of %d\n", r.GetBytes(), r.GetMaxBytes())
			fmt.Fprintf(w, "evictions:             %d\n", r.GetEvictions())
			fmt.Fprintf(w, "stores:                %d\n", r.GetStores())
			fmt.Fprintf(w, "stale stores rejected: %d\n", r.GetStaleStoresRejected())
			fmt.Fprintf(w, "fill leases granted:   %d (expired %d)\n", r.GetLeasesGranted(), r.GetLeasesExpired())
			fmt.Fprintf(w, "on %s since it started:\n", r.GetHeader().GetServedBy())
			fmt.Fprintf(w, "  hits %d, stale hits %d, misses %d, waits %d\n", r.GetHits(), r.GetStaleHits(), r.GetMisses(), r.GetWaits())
			return nil
		},
	}
}
