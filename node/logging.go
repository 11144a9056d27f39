package node

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hcLogger adapts hashicorp/raft's hclog.Logger onto log/slog, so raft's
// output goes where the rest of kvd logs. Raft logs below Info are dropped.
type hcLogger struct {
	l       *slog.Logger
	name    string
	implied []interface{}
}

func newHCLogger(l *slog.Logger, name string) hclog.Logger {
	return &hcLogger{l: l.With("component", name), name: name}
}

var _ hclog.Logger = (*hcLogger)(nil)

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (h *hcLogger) Log(level hclog.Level, msg string, args ...interface{}) {
	if level == hclog.Off || level < hclog.Info {
		return
	}
	lv := slogLevel(level)
	ctx := context.Background()
	if !h.l.Enabled(ctx, lv) {
		return
	}
	h.l.Log(ctx, lv, msg, normalizeArgs(args)...)
}

// normalizeArgs makes hclog's key/value pairs safe for slog (keys must be
// strings; an odd trailing value gets a key).
func normalizeArgs(args []interface{}) []any {
	out := make([]any, 0, len(args)+1)
	for i := 0; i < len(args); i += 2 {
		if i+1 >= len(args) {
			out = append(out, "EXTRA_VALUE", args[i])
			break
		}
		k, ok := args[i].(string)
		if !ok {
			k = fmt.Sprint(args[i])
		}
		v := args[i+1]
		switch tv := v.(type) {
		case error:
			v = tv.Error()
		case hclog.Format:
			// hclog.Fmt("%+v", x): a format and its arguments, which hclog
			// itself formats when it prints.
			if f, ok := tv[0].(string); len(tv) > 0 && ok {
				v = fmt.Sprintf(f, tv[1:]...)
			}
		}
		out = append(out, k, v)
	}
	return out
}

func (h *hcLogger) Trace(msg string, args ...interface{}) { h.Log(hclog.Trace, msg, args...) }
func (h *hcLogger) Debug(msg string, args ...interface{}) { h.Log(hclog.Debug, msg, args...) }
func (h *hcLogger) Info(msg string, args ...interface{})  { h.Log(hclog.Info, msg, args...) }
func (h *hcLogger) Warn(msg string, args ...interface{})  { h.Log(hclog.Warn, msg, args...) }
func (h *hcLogger) Error(msg string, args ...interface{}) { h.Log(hclog.Error, msg, args...) }

func (h *hcLogger) IsTrace() bool { return false }
func (h *hcLogger) IsDebug() bool { return false }
func (h *hcLogger) IsInfo() bool  { return h.l.Enabled(context.Background(), slog.LevelInfo) }
func (h *hcLogger) IsWarn() bool  { return h.l.Enabled(context.Background(), slog.LevelWarn) }
func (h *hcLogger) IsError() bool { return h.l.Enabled(context.Background(), slog.LevelError) }

func (h *hcLogger) ImpliedArgs() []interface{} { return h.implied }

func (h *hcLogger) With(args ...interface{}) hclog.Logger {
	return &hcLogger{
		l:       h.l.With(normalizeArgs(args)...),
		name:    h.name,
		implied: append(append([]interface{}{}, h.implied...), args...),
	}
}

func (h *hcLogger) Name() string { return h.name }

func (h *hcLogger) Named(name string) hclog.Logger {
	full := name
	if h.name != "" {
		full = h.name + "." + name
	}
	return &hcLogger{l: h.l.With("sub", name), name: full, implied: h.implied}
}

func (h *hcLogger) ResetNamed(name string) hclog.Logger {
	return &hcLogger{l: h.l, name: name, implied: h.implied}
}

func (h *hcLogger) SetLevel(hclog.Level) {}

func (h *hcLogger) GetLevel() hclog.Level { return hclog.Info }

func (h *hcLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hcLogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return stdWriter{h}
}

// stdWriter turns lines written by a standard logger into slog records,
// taking the level from a leading "[WARN]"-style tag when there is one.
type stdWriter struct{ h *hcLogger }

func (w stdWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		s := strings.TrimSpace(string(line))
		level := hclog.Info
		for tag, lv := range map[string]hclog.Level{"[ERR]": hclog.Error, "[ERROR]": hclog.Error,
			"[WARN]": hclog.Warn, "[DEBUG]": hclog.Debug, "[TRACE]": hclog.Trace, "[INFO]": hclog.Info} {
			if strings.HasPrefix(s, tag) {
				level, s = lv, strings.TrimSpace(s[len(tag):])
				break
			}
		}
		w.h.Log(level, s)
	}
	return len(p), nil
}
