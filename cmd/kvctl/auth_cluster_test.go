package main

import (
	"strings"
	"testing"
	"time"
)

// TestAuthAgainstCluster drives users, roles and auth through kvctl against
// an in-process cluster (the real Auth service and fsm).
func TestAuthAgainstCluster(t *testing.T) {
	tc := kvctlCluster(t)
	step := func(stdin string, wantCode int, wantOut, wantErr string, args ...string) {
		t.Helper()
		code, out, errOut := kvctl(t, tc, stdin, args...)
		if code != wantCode || !strings.Contains(out, wantOut) || !strings.Contains(errOut, wantErr) {
			t.Fatalf("kvctl %q: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
				args, code, out, errOut, wantCode, wantOut, wantErr)
		}
	}
	step("", exitFailed, "", "no user holds the admin role", "auth", "enable")
	step("rootpw\n", exitOK, "user root added", "", "user", "add", "root", "--password-stdin")
	step("", exitOK, "roles admin", "", "user", "grant-role", "root", "admin")
	step("", exitOK, "role app added", "", "role", "add", "app")
	step("", exitOK, `readwrite on keys "app/"`, "", "role", "grant", "app", "--perm", "readwrite", "--keys", "app/")
	step("alicepw\n", exitOK, "user alice added", "", "user", "add", "alice", "--password-stdin")
	step("", exitOK, "roles app", "", "user", "grant-role", "alice", "app")
	step("", exitOK, "auth enabled", "", "auth", "enable")

	// A member checks requests against the auth state it has applied, and a
	// follower may apply a change a moment after the leader answered: the
	// checks that follow a change poll until they hold.
	eventually := func(wantCode int, wantErr string, args ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			code, _, errOut := kvctl(t, tc, "", args...)
			if code == wantCode && strings.Contains(errOut, wantErr) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("kvctl %q: exit %d, stderr %q; want exit %d and %q", args, code, errOut, wantCode, wantErr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	eventually(exitAuth, "sign in", "auth", "status")
	t.Setenv("KVD_USER", "alice")
	t.Setenv("KVD_PASSWORD", "alicepw")
	step("", exitOK, "", "", "put", "app/x", "1")
	step("", exitOK, "1\n", "", "get", "app/x")
	eventually(exitDenied, "permission denied", "put", "other", "1")
	eventually(exitDenied, "permission denied", "user", "list")
	t.Setenv("KVD_PASSWORD", "wrong")
	step("", exitAuth, "", "wrong user name or password", "get", "app/x")

	t.Setenv("KVD_USER", "root")
	t.Setenv("KVD_PASSWORD", "rootpw")
	step("", exitOK, "auth enabled", "", "auth", "status")
	step("", exitOK, "alice  app", "", "user", "list")
	step("newpw\n", exitOK, "password of user alice changed", "", "user", "passwd", "alice", "--password-stdin")
	step("", exitFailed, "", "last user with the admin role", "user", "delete", "root")

	t.Setenv("KVD_USER", "alice")
	t.Setenv("KVD_PASSWORD", "alicepw")
	eventually(exitAuth, "wrong user name or password", "get", "app/x")
	t.Setenv("KVD_PASSWORD", "newpw")
	step("", exitOK, "1\n", "", "get", "app/x")

	t.Setenv("KVD_USER", "root")
	t.Setenv("KVD_PASSWORD", "rootpw")
	step("", exitOK, "auth disabled", "", "auth", "disable")
	t.Setenv("KVD_USER", "")
	eventually(exitOK, "", "put", "other", "1")
}
