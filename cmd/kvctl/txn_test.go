package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
)

func TestSessionKeysAndPrefixCommands(t *testing.T) {
	tc := kvctlCluster(t)
	code, out, errOut := kvctl(t, tc, "", "session", "create", "--ttl", "10s")
	if code != 0 {
		t.Fatalf("session create: exit %d: %s", code, errOut)
	}
	id := strings.TrimSpace(out)
	tests := []struct {
		name     string
		stdin    string
		args     []string
		wantCode int
		wantOut  string // exact stdout when not "*"; "~x": stdout contains x
	}{
		{"put bound", "", []string{"put", "svc/a", "10.0.0.1", "--session", id, "--if-absent"}, exitOK, "*"},
		{"put bound again by its session", "", []string{"put", "svc/a", "10.0.0.1", "--session", id, "--if-absent"}, exitOK, "*"},
		{"put if-absent of an existing key", "", []string{"put", "svc/a", "x", "--if-absent"}, exitFailed, ""},
		{"put bad session", "", []string{"put", "k", "v", "--session", "x"}, exitUsage, ""},
		{"put bound to a missing session", "", []string{"put", "k", "v", "--session", "999999"}, exitFailed, ""},
		{"get -o json shows the session", "", []string{"get", "svc/a", "-o", "json"}, exitOK, `~"session":` + id},
		{"session get shows bound keys", "", []string{"session", "get", id}, exitOK, "~keys:    1 bound"},
		{"session get -o json", "", []string{"session", "get", id, "-o", "json"}, exitOK, `~"keys":1`},
		{"put svc/b", "", []string{"put", "svc/b", "2"}, exitOK, "*"},
		{"put svc/c", "", []string{"put", "svc/c", "3", "--ttl", "1h"}, exitOK, "*"},
		{"put svcx", "", []string{"put", "svcx", "4"}, exitOK, "*"},
		{"dry run lists and deletes nothing", "", []string{"del", "--prefix", "svc/", "--dry-run"}, exitOK, "svc/a\nsvc/b\nsvc/c\n"},
		{"dry run json", "", []string{"del", "--prefix", "svc/", "--dry-run", "-o", "json"}, exitOK, `~"keys":[{"key":"svc/a"},{"key":"svc/b"},{"key":"svc/c"}],"would_delete":3`},
		{"dry run without prefix", "", []string{"del", "svc/a", "--dry-run"}, exitUsage, ""},
		{"prefix with expect-version", "", []string{"del", "--prefix", "svc/", "--expect-version", "1"}, exitUsage, ""},
		{"touch", "", []string{"touch", "svc/c", "--ttl", "2h"}, exitOK, "~OK (expires "},
		{"touch clears the ttl", "", []string{"touch", "svc/c", "--ttl", "0"}, exitOK, "OK (no TTL)\n"},
		{"touch json has no value", "", []string{"touch", "svc/b", "--ttl", "1m", "-o", "json"}, exitOK, `~"kv":{"key":"svc/b","version":1,`},
		{"touch without ttl", "", []string{"touch", "svc/c"}, exitUsage, ""},
		{"touch negative ttl", "", []string{"touch", "svc/c", "--ttl", "-1s"}, exitUsage, ""},
		{"touch missing", "", []string{"touch", "nope", "--ttl", "1s"}, exitNotFound, ""},
		{"del prefix", "", []string{"del", "--prefix", "svc/"}, exitOK, "3\n"},
		{"del prefix again", "", []string{"del", "--prefix", "svc/"}, exitOK, "0\n"},
		{"the sibling stays", "", []string{"ls", "--keys-only"}, exitOK, "svcx\n"},
		{"session has no keys left", "", []string{"session", "get", id}, exitOK, "~keys:    0 bound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := kvctl(t, tc, tt.stdin, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("kvctl %v: exit %d, want %d; stderr %q", tt.args, code, tt.wantCode, errOut)
			}
			switch {
			case strings.HasPrefix(tt.wantOut, "~"):
				if !strings.Contains(out, tt.wantOut[1:]) {
					t.Errorf("kvctl %v: stdout %q, want it to contain %q", tt.args, out, tt.wantOut[1:])
				}
			case tt.wantOut != "*" && out != tt.wantOut:
				t.Errorf("kvctl %v: stdout %q, want %q", tt.args, out, tt.wantOut)
			}
			if code != exitOK && !strings.HasPrefix(errOut, "kvctl: ") {
				t.Errorf("kvctl %v: stderr %q, want it to start with \"kvctl: \"", tt.args, errOut)
			}
		})
	}
	// The bound key goes with its session.
	if code, _, errOut := kvctl(t, tc, "", "put", "svc/z", "1", "--session", id); code != 0 {
		t.Fatalf("put --session: exit %d: %s", code, errOut)
	}
	if code, _, errOut := kvctl(t, tc, "", "session", "close", id); code != 0 {
		t.Fatalf("session close: exit %d: %s", code, errOut)
	}
	if code, out, _ := kvctl(t, tc, "", "get", "svc/z"); code != exitNotFound {
		t.Errorf("get svc/z after its session closed: exit %d, %q, want %d", code, out, exitNotFound)
	}
}

const reserveTxn = `# reserve one unit while there are 3
value("stock/sku-42") = "3"
exists("orders/1001") = "false"

put stock/sku-42 2
put "orders/1001" 'sku 42' --if-absent
get stock/sku-42

get stock/sku-42
`

func TestTxnCommand(t *testing.T) {
	tc := kvctlCluster(t)
	if code, _, errOut := kvctl(t, tc, "", "put", "stock/sku-42", "3"); code != 0 {
		t.Fatalf("put: exit %d: %s", code, errOut)
	}
	code, out, errOut := kvctl(t, tc, reserveTxn, "txn")
	want := "SUCCESS\nput stock/sku-42: OK (version 2, index "
	if code != 0 || !strings.HasPrefix(out, want) || !strings.HasSuffix(out, "get stock/sku-42: 2\n") || !strings.Contains(out, "\nput orders/1001: OK (version 1, ") {
		t.Fatalf("txn: exit %d, stdout %q, stderr %q; want SUCCESS and the three ops' results", code, out, errOut)
	}
	// Again: the compare fails, the failure branch runs, and that is exit 0.
	if code, out, errOut = kvctl(t, tc, reserveTxn, "txn"); code != 0 || out != "FAILURE\nget stock/sku-42: 2\n" {
		t.Errorf("txn again: exit %d, stdout %q, stderr %q; want FAILURE and get 2", code, out, errOut)
	}
	if code, out, _ = kvctl(t, tc, "", "get", "orders/1001"); code != 0 || out != "sku 42\n" {
		t.Errorf("get orders/1001: exit %d, %q, want sku 42", code, out)
	}

	// JSON in, JSON out.
	in := `{"compare": [{"target": "version", "key": "stock/sku-42", "op": "=", "number": 2}],
	        "success": [{"op": "del", "key": "orders/", "prefix": true}, {"op": "get", "key": "orders/1001"}, {"op": "put", "key": "n", "value_base64": "/w=="}]}`
	code, out, errOut = kvctl(t, tc, in, "txn", "-i", "json", "-o", "json")
	if code != 0 {
		t.Fatalf("txn -i json -o json: exit %d: %s", code, errOut)
	}
	var got struct {
		Header struct {
			AppliedIndex uint64 `json:"applied_index"`
		} `json:"header"`
		Succeeded bool `json:"succeeded"`
		Results   []struct {
			Op      string `json:"op"`
			Key     string `json:"key"`
			Prefix  bool   `json:"prefix"`
			Deleted uint64 `json:"deleted"`
			Found   *bool  `json:"found"`
			KV      *struct {
				ValueBase64 string `json:"value_base64"`
				Version     uint64 `json:"version"`
			} `json:"kv"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("txn -o json: %v in %q", err, out)
	}
	r := got.Results
	if !got.Succeeded || got.Header.AppliedIndex == 0 || len(r) != 3 ||
		r[0].Op != "del" || r[0].Key != "orders/" || !r[0].Prefix || r[0].Deleted != 1 ||
		r[1].Op != "get" || r[1].Found == nil || *r[1].Found || r[1].KV != nil ||
		r[2].Op != "put" || r[2].KV == nil || r[2].KV.ValueBase64 != "/w==" || r[2].KV.Version != 1 {
		t.Errorf("txn -o json = %s, want success: del orders/ (1), get orders/1001 not found, put n", out)
	}

	// Bad input is bad usage, naming the line; the server's refusals are
	// failures; nothing of a refused transaction applies.
	bad := []struct {
		name, stdin string
		args        []string
		wantCode    int
		wantErr     string
	}{
		{"text parse error", "value(\"k\") = \"1\"\n\nput k\n", []string{"txn"}, exitUsage, "kvctl: txn: line 3: put: want KEY VALUE"},
		{"json parse error", `{"success": [{"op": "set"}]}`, []string{"txn", "-i", "json"}, exitUsage, `kvctl: txn: success[0]: "key"`},
		{"bad input format", "", []string{"txn", "-i", "yaml"}, exitUsage, "kvctl: -i: want text or json"},
		{"key written twice", "\nput a 1\ndel a\n", []string{"txn"}, exitFailed, "kvctl: txn: "},
		{"if-absent of an existing key", "\nput fresh 1\nput stock/sku-42 9 --if-absent\n", []string{"txn"}, exitFailed, "kvctl: txn: "},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := kvctl(t, tc, tt.stdin, tt.args...)
			if code != tt.wantCode || !strings.HasPrefix(errOut, tt.wantErr) || out != "" {
				t.Errorf("kvctl %v: exit %d, stdout %q, stderr %q; want exit %d, no stdout and %q", tt.args, code, out, errOut, tt.wantCode, tt.wantErr)
			}
		})
	}
	if code, _, _ := kvctl(t, tc, "", "get", "fresh"); code != exitNotFound {
		t.Errorf("get fresh after the refused transaction: exit %d, want %d (nothing applied)", code, exitNotFound)
	}
}

// A touch shows in a watch as the key's new deadline, not an empty value.
func TestWatchShowsTouch(t *testing.T) {
	tc, c := lockTestCluster(t)
	ctx := t.Context()
	put, err := c.Put(ctx, []byte("hb"), []byte("v"), client.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Touch(ctx, []byte("hb"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Touch(ctx, []byte("hb"), time.Hour); err != nil {
		t.Fatal(err)
	}
	from := fmt.Sprint(put.GetKv().GetModIndex() - 1)
	code, out, errs := lockCLI(t, tc, "watch", "hb", "--from-index", from, "--count", "3")
	if code != exitOK {
		t.Fatalf("watch = %d, stderr %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[0], " put hb = v (version 1)") ||
		!strings.HasSuffix(lines[1], " touch hb (version 1) no TTL") ||
		!strings.Contains(lines[2], " touch hb (version 1) expires ") || !strings.HasSuffix(lines[2], ")") {
		t.Errorf("watch printed\n%s\nwant a put, a touch to no TTL and a touch with an expiry", out)
	}
}
