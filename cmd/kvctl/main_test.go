package main

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/node"
)

func runOffline(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"--endpoints", "127.0.0.1:1"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersionIsKvds(t *testing.T) {
	if version != node.Version {
		t.Errorf("kvctl version %q, kvd's (node.Version) %q: want them equal", version, node.Version)
	}
	want := fmt.Sprintf("kvctl %s (%s)\n", node.Version, runtime.Version())
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if code, out, errOut := runOffline(args...); code != exitOK || out != want {
			t.Errorf("kvctl %v: exit %d, %q %s; want exit 0 and %q", args, code, out, errOut, want)
		}
	}
}

func TestUnknownCommandIsBadUsage(t *testing.T) {
	tests := []struct {
		args     []string
		wantCode int
		wantErr  string
	}{
		{[]string{"foo"}, exitUsage, `kvctl: unknown command "foo" for "kvctl"`},
		{[]string{"lock", "foo"}, exitUsage, `kvctl: unknown command "foo" for "kvctl lock"`},
		{[]string{"cluster", "stauts"}, exitUsage, `(did you mean status?)`},
		{[]string{"bench", "nope"}, exitUsage, `unknown command "nope" for "kvctl bench"`},
		{[]string{}, exitOK, ""},
		{[]string{"session"}, exitOK, ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runOffline(tt.args...)
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("kvctl %v: exit %d, stderr %q; want exit %d and %q", tt.args, code, errOut, tt.wantCode, tt.wantErr)
			}
			if tt.wantCode == exitOK && !strings.Contains(out, "Available Commands:") {
				t.Errorf("kvctl %v printed %q, want its help", tt.args, out)
			}
		})
	}
}

// One line says what failed and why; --debug adds the whole error.
func TestErrorMessageIsOneLine(t *testing.T) {
	a := &app{timeout: 10 * time.Second}
	unavailable := &client.Error{Code: client.ErrUnavailable.(*client.Error).Code, Msg: "kvd: unavailable: no leader or no member answered"}
	tests := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("get %q: %w", "x", client.ErrNotFound), `get "x": kvd: not found`},
		{fmt.Errorf("cluster snapshot: %w", status.Error(codes.Internal, "snapshot: disk full")), "cluster snapshot: snapshot: disk full (internal)"},
		{fmt.Errorf("get %q: %w", "x", unavailable), `get "x": kvd: unavailable: no leader or no member answered`},
	}
	for _, tt := range tests {
		if got := a.message(tt.err); got != tt.want {
			t.Errorf("message(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}

	// A client-made error through the real retry loop: the causes stay
	// behind --debug.
	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = c.Get(ctx, []byte("x"))
	got := a.message(fmt.Errorf("get %q: %w", "x", err))
	if want := `get "x": kvd: unavailable: no leader or no member answered within --timeout 10s`; got != want {
		t.Errorf("message of a timed-out Get = %q, want %q", got, want)
	}
	if !strings.Contains(err.Error(), "rpc error") || strings.Contains(got, "rpc error") {
		t.Errorf("err = %q, message %q: want the cause in the error, not in the message", err, got)
	}
	var out, errb bytes.Buffer
	code := run([]string{"--endpoints", "127.0.0.1:1", "--debug", "get", "x"}, strings.NewReader(""), &out, &errb)
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if code != exitFailed || len(lines) != 2 || !strings.HasPrefix(lines[1], "kvctl: detail: ") || !strings.Contains(lines[1], "connection refused") {
		t.Errorf("kvctl --debug get x: exit %d, stderr %q; want exit 1, the message and a detail line with the cause", code, errb.String())
	}
	if !strings.Contains(lines[0], "no endpoint accepts a connection (tried 127.0.0.1:1)") {
		t.Errorf("kvctl get x with nothing listening: %q, want it to name the endpoint tried", lines[0])
	}
}
