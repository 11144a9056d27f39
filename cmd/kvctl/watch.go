package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newWatchCommand) }

type watchFlags struct {
	prefix     bool
	fromIndex  uint64
	prev       bool
	progress   bool
	outOfRange bool
	lock       string
	cache      string
	session    string
	count      int
}

func newWatchCommand(a *app) *cobra.Command {
	var f watchFlags
	cmd := &cobra.Command{
		Use:   "watch [KEY] [--prefix] [--from-index N]",
		Short: "Print changes to keys, a lock, cache entries or a session as they happen",
		Long: `watch prints one line per change, in the order the cluster applied them, until
Ctrl-C (or --count lines). Each line starts with the index of the log entry
that made the change.

It watches KEY (or every key starting with it, with --prefix), or a lock
(--lock NAME), cache entries (--cache KEY) or a session (--session ID). Without
--from-index it starts from now; with it, right after index N. When the member
no longer holds history that old, the watch starts with the current state of
the watched items (lines of type "state", then "snapshot complete"), unless
--out-of-range-error asks for an error instead. kvctl moves to another member
by itself when its member fails, missing nothing and printing nothing twice.`,
		Example: `  kvctl watch config/ --prefix
  kvctl watch config/ --prefix --from-index 1200 -o json
  kvctl watch --lock critical_section
  kvctl watch --cache price: --prefix`,
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runWatch(cmd, a, &f, args)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.prefix, "prefix", false, "watch every key (lock name, cache key) that starts with the given one")
	fl.Uint64Var(&f.fromIndex, "from-index", 0, "continue right after this log index instead of starting from now")
	fl.BoolVar(&f.prev, "prev", false, "show each key's value before the change")
	fl.BoolVar(&f.progress, "progress", false, "print a progress line while idle (every change up to an index was printed)")
	fl.BoolVar(&f.outOfRange, "out-of-range-error", false, "fail (exit 1) when --from-index is older than the member's history, instead of starting with a snapshot")
	fl.StringVar(&f.lock, "lock", "", "watch this lock (grants, releases, handoffs, breaks, queue changes)")
	fl.StringVar(&f.cache, "cache", "", "watch this cache key (stores, fills, leases, invalidations, evictions, expiries)")
	fl.StringVar(&f.session, "session", "", "watch this session id (its end)")
	fl.IntVar(&f.count, "count", 0, "exit after printing this many lines (0: until Ctrl-C)")
	return cmd
}

func runWatch(cmd *cobra.Command, a *app, f *watchFlags, args []string) error {
	var opts []client.WatchOption
	var key string
	named := 0
	if len(args) == 1 {
		key, named = args[0], named+1
	}
	for _, t := range []struct {
		flag, value string
		opt         client.WatchOption
	}{{"lock", f.lock, client.OnLocks()}, {"cache", f.cache, client.OnCache()}, {"session", f.session, client.OnSessions()}} {
		if cmd.Flags().Changed(t.flag) {
			key, named = t.value, named+1
			opts = append(opts, t.opt)
		}
	}
	switch {
	case named != 1:
		return &usageError{"watch: give exactly one of KEY, --lock NAME, --cache KEY and --session ID"}
	case key == "" && !f.prefix:
		return &usageError{"watch: an empty key needs --prefix (which watches everything)"}
	case f.count < 0:
		return &usageError{fmt.Sprintf("--count: want 0 or more, got %d", f.count)}
	case f.outOfRange && !cmd.Flags().Changed("from-index"):
		return &usageError{"--out-of-range-error: only with --from-index"}
	}
	if cmd.Flags().Changed("session") && !f.prefix {
		if _, err := strconv.ParseUint(key, 10, 64); err != nil {
			return &usageError{fmt.Sprintf("--session: want a session id, got %q", key)}
		}
	}
	if f.prefix {
		opts = append(opts, client.WithPrefix())
	}
	if cmd.Flags().Changed("from-index") {
		opts = append(opts, client.FromIndex(f.fromIndex))
	}
	if f.prev {
		opts = append(opts, client.WithPrevKV())
	}
	if f.progress {
		opts = append(opts, client.WithProgressNotify())
	}
	if f.outOfRange {
		opts = append(opts, client.WithOutOfRangeError())
	}
	c, err := a.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	n := 0
	for ev, err := range c.Watch(ctx, []byte(key), opts...) {
		if err != nil {
			if errors.Is(err, context.Canceled) && cmd.Context().Err() != nil {
				return nil // Ctrl-C
			}
			return fmt.Errorf("watch: %w", err)
		}
		if err := a.printWatchEvent(ev); err != nil {
			return err
		}
		if n++; f.count > 0 && n >= f.count {
			return nil
		}
	}
	return nil
}

// eventTypeName is "put", "lock-grant", "cache-invalidate", ...
func eventTypeName(t kvpb.EventType) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(t.String(), "EVENT_TYPE_")), "_", "-")
}

func targetName(t kvpb.WatchTarget) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "WATCH_TARGET_"))
}

var watchKindJSON = map[client.EventKind]string{
	client.EventChange:      "change",
	client.EventState:       "state",
	client.EventSnapshotEnd: "snapshot_end",
	client.EventProgress:    "progress",
}

// watchObject is the -o json form of one watch item, one line each: the
// header of the stream message that carried it, then "kind" (change,
// state: an item of a snapshot, snapshot_end, progress) and "index".
func watchObject(ev client.Event) *object {
	e := ev.Change
	h := ev.Header
	o := response(h).set("kind", watchKindJSON[ev.Kind]).set("index", ev.Index)
	if e != nil {
		o.instant("log_time", e.GetLogTime()).
			set("type", eventTypeName(e.GetType())).
			set("target", targetName(e.GetTarget())).
			bytes("key", e.GetKey())
		if e.GetExpired() {
			o.set("expired", true)
		}
		if kv := e.GetKv(); kv != nil {
			o.set("kv", kvObject(kv, h))
		}
		if kv := e.GetPrevKv(); kv != nil {
			o.set("prev_kv", kvObject(kv, h))
		}
		if li := e.GetLock(); li != nil {
			o.set("lock", lockObject(li, h))
		}
		if ce := e.GetCache(); ce != nil {
			o.set("cache", watchCacheObject(ce, h))
		}
		if se := e.GetSession(); se != nil {
			o.set("session", sessionObject(se, h))
		}
	}
	return o
}

// watchCacheObject is a cache entry in a watch item.
func watchCacheObject(ce *kvpb.CacheEntry, h *kvpb.ResponseHeader) *object {
	o := part(h).set("has_value", ce.Value != nil)
	if ce.Value != nil {
		o.bytes("value", ce.GetValue()).
			instant("fresh_until", ce.GetFreshUntil()).
			instant("stale_until", ce.GetStaleUntil()).
			set("filled_index", ce.GetFilledIndex())
		if ce.GetIsError() {
			o.set("is_error", true)
		}
	}
	if l := ce.GetLease(); l != nil {
		o.set("lease_session", l.GetSession()).set("lease_token", l.GetToken()).instant("lease_expires_at", l.GetExpiresAt())
	}
	waiters := ce.GetWaiters()
	if waiters == nil {
		waiters = []uint64{}
	}
	return o.set("waiters", waiters)
}

// printWatchEvent prints one watch item: a JSON line, or a line of text.
func (a *app) printWatchEvent(ev client.Event) error {
	if a.json() {
		return a.printJSON(watchObject(ev))
	}
	var err error
	switch ev.Kind {
	case client.EventSnapshotEnd:
		_, err = fmt.Fprintf(a.stdout, "%d snapshot complete: the state above is as of index %d; changes follow\n", ev.Index, ev.Index)
	case client.EventProgress:
		_, err = fmt.Fprintf(a.stdout, "%d progress: every change up to here has been printed\n", ev.Index)
	default:
		_, err = fmt.Fprintln(a.stdout, watchLine(ev.Change, ev.Header))
	}
	return err
}

// watchLine is the text form of a change or snapshot item:
// "INDEX TYPE KEY detail", instants as of h.
func watchLine(e *kvpb.WatchEvent, h *kvpb.ResponseHeader) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s %s", e.GetIndex(), eventTypeName(e.GetType()), printable(e.GetKey()))
	switch e.GetTarget() {
	case kvpb.WatchTarget_WATCH_TARGET_KEYS:
		if e.GetType() == kvpb.EventType_EVENT_TYPE_TOUCH {
			// A touch carries the key's new deadline, not its value.
			kv := e.GetKv()
			if kv.GetExpiresAt() != 0 {
				fmt.Fprintf(&b, " (version %d) expires %s", kv.GetVersion(), when(kv.GetExpiresAt(), h))
			} else {
				fmt.Fprintf(&b, " (version %d) no TTL", kv.GetVersion())
			}
		} else if e.GetType() != kvpb.EventType_EVENT_TYPE_DELETE {
			kv := e.GetKv()
			fmt.Fprintf(&b, " = %s (version %d)", printable(kv.GetValue()), kv.GetVersion())
		}
		if p := e.GetPrevKv(); p != nil {
			fmt.Fprintf(&b, " (was %s)", printable(p.GetValue()))
		}
	case kvpb.WatchTarget_WATCH_TARGET_LOCKS:
		li := e.GetLock()
		if li.GetToken() != 0 {
			fmt.Fprintf(&b, " held by session %d with token %d", li.GetSession(), li.GetToken())
		} else {
			b.WriteString(" free")
		}
		if ws := li.GetWaiters(); len(ws) > 0 {
			ids := make([]string, len(ws))
			for i, w := range ws {
				ids[i] = strconv.FormatUint(w.GetSession(), 10)
			}
			fmt.Fprintf(&b, ", waiting: %s", strings.Join(ids, " "))
		}
	case kvpb.WatchTarget_WATCH_TARGET_CACHE:
		ce := e.GetCache()
		if ce.Value != nil {
			fmt.Fprintf(&b, " = %s (filled at %d)", printable(ce.GetValue()), ce.GetFilledIndex())
		}
		if l := ce.GetLease(); l != nil {
			fmt.Fprintf(&b, ", lease: session %d", l.GetSession())
		}
		if n := len(ce.GetWaiters()); n > 0 {
			fmt.Fprintf(&b, ", %d waiting", n)
		}
	case kvpb.WatchTarget_WATCH_TARGET_SESSIONS:
		if se := e.GetSession(); se.GetName() != "" {
			fmt.Fprintf(&b, " (%s)", se.GetName())
		}
	}
	if e.GetExpired() {
		b.WriteString(" [expired]")
	}
	return b.String()
}
