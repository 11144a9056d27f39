package main

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// request is the TxnRequest a parsed spec makes.
func (s *txnSpec) request(t *testing.T) *kvpb.TxnRequest {
	t.Helper()
	req, err := (&client.Txn{}).If(s.compares...).Then(s.success...).Else(s.failure...).Request()
	if err != nil {
		t.Fatalf("Request: %v", err)
	}
	return req
}

func cmp(key string, target kvpb.CompareTarget, op kvpb.CompareOp) *kvpb.Compare {
	return &kvpb.Compare{Key: []byte(key), Target: target, Op: op}
}

func putOp(key, value string, ttlMs int64, session uint64, ifAbsent bool) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Put{Put: &kvpb.PutRequest{Key: []byte(key), Value: []byte(value), TtlMs: ttlMs, Session: session, IfAbsent: ifAbsent}}}
}

func delOp(key string, prefix bool) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Delete{Delete: &kvpb.DeleteRequest{Key: []byte(key), Prefix: prefix}}}
}

func getOp(key string) *kvpb.TxnOp {
	return &kvpb.TxnOp{Op: &kvpb.TxnOp_Get{Get: &kvpb.GetRequest{Key: []byte(key)}}}
}

const (
	tVersion = kvpb.CompareTarget_COMPARE_TARGET_VERSION
	tValue   = kvpb.CompareTarget_COMPARE_TARGET_VALUE
	tCreate  = kvpb.CompareTarget_COMPARE_TARGET_CREATE_INDEX
	tMod     = kvpb.CompareTarget_COMPARE_TARGET_MOD_INDEX
	tExists  = kvpb.CompareTarget_COMPARE_TARGET_EXISTS
	tToken   = kvpb.CompareTarget_COMPARE_TARGET_LOCK_TOKEN
	opEq     = kvpb.CompareOp_COMPARE_OP_EQUAL
	opNe     = kvpb.CompareOp_COMPARE_OP_NOT_EQUAL
	opLt     = kvpb.CompareOp_COMPARE_OP_LESS
	opGt     = kvpb.CompareOp_COMPARE_OP_GREATER
)

func TestParseTxnText(t *testing.T) {
	withNum := func(c *kvpb.Compare, n uint64) *kvpb.Compare { c.Number = n; return c }
	withVal := func(c *kvpb.Compare, v string) *kvpb.Compare { c.Value = []byte(v); return c }
	withExists := func(c *kvpb.Compare, b bool) *kvpb.Compare { c.Exists = b; return c }
	tests := []struct {
		name  string
		input string
		want  *kvpb.TxnRequest
	}{
		{
			name: "every compare and op",
			input: `version("k") = "7"
value("k") = ""
create("k") > "3"
mod("k") < "9"
exists("k") = "true"
token("lockname") = "42"
value("k") != "x"

put k v
put "a key" 'a "value"' --ttl 1.5s --session 12 --if-absent
del k
del --prefix jobs/

get k
`,
			want: &kvpb.TxnRequest{
				Compares: []*kvpb.Compare{
					withNum(cmp("k", tVersion, opEq), 7),
					withVal(cmp("k", tValue, opEq), ""),
					withNum(cmp("k", tCreate, opGt), 3),
					withNum(cmp("k", tMod, opLt), 9),
					withExists(cmp("k", tExists, opEq), true),
					withNum(cmp("lockname", tToken, opEq), 42),
					withVal(cmp("k", tValue, opNe), "x"),
				},
				Success: []*kvpb.TxnOp{putOp("k", "v", 0, 0, false), putOp("a key", `a "value"`, 1500, 12, true), delOp("k", false), delOp("jobs/", true)},
				Failure: []*kvpb.TxnOp{getOp("k")},
			},
		},
		{
			name:  "no compares, success only, no newline at the end",
			input: "\nput k v",
			want:  &kvpb.TxnRequest{Success: []*kvpb.TxnOp{putOp("k", "v", 0, 0, false)}},
		},
		{
			name:  "empty input",
			input: "",
			want:  &kvpb.TxnRequest{},
		},
		{
			name:  "comments, CRLF, blanks around words, trailing blank lines",
			input: "# reserve\r\n  version( \"k\" )=\"0\"  \r\n\r\n# then\r\nput k v\r\n\r\n\r\n\r\n",
			want:  &kvpb.TxnRequest{Compares: []*kvpb.Compare{cmp("k", tVersion, opEq)}, Success: []*kvpb.TxnOp{putOp("k", "v", 0, 0, false)}},
		},
		{
			name: "quoting: escapes, single quotes, bare words, flags with =, --",
			input: `value('it''s') == "say \"hi\" \\ \n"
exists(k) != false

put a\ b "x y" --ttl=2s
put -- --odd-key --odd-value
delete "k k"
`,
			want: &kvpb.TxnRequest{
				Compares: []*kvpb.Compare{withVal(cmp("its", tValue, opEq), `say "hi" \ \n`), withExists(cmp("k", tExists, opNe), false)},
				Success:  []*kvpb.TxnOp{putOp("a b", "x y", 2000, 0, false), putOp("--odd-key", "--odd-value", 0, 0, false), delOp("k k", false)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := parseTxnText(strings.NewReader(tt.input))
			if err != nil {
				t.Fatalf("parseTxnText: %v", err)
			}
			if got := spec.request(t); !proto.Equal(got, tt.want) {
				t.Errorf("parseTxnText =\n%v\nwant\n%v", got, tt.want)
			}
		})
	}
}

func TestParseTxnTextErrors(t *testing.T) {
	tests := []struct {
		input string
		want  string // the error names the line and says what was expected
	}{
		{`versoin("k") = "1"`, `line 1: compare target "versoin": want version, value, create, mod, exists or token`},
		{"\n\n\n" + `version("k") = "1"`, `line 4: "version(\"k\") = \"1\"" after the failure ops`},
		{`version "k" = "1"`, `line 1: column 9: want ( after version`},
		{`version("k" = "1"`, `line 1: column 13: want ) after the key of version(...)`},
		{`version("k") "1"`, `line 1: column 14: want an operator (=, !=, < or >)`},
		{`version("k") <= "1"`, `line 1: version("k"): operator "<=": want =, !=, < or >`},
		{`version("k") =`, `line 1: column 15: want a value after version("k") =`},
		{`version("k") = "x"`, `line 1: version("k"): "x": want a non-negative integer`},
		{`version("k") = "-1"`, `line 1: version("k"): "-1": want a non-negative integer`},
		{`exists("k") = "maybe"`, `line 1: exists("k"): "maybe": want true or false`},
		{`exists("k") > "true"`, `line 1: exists("k"): exists: operator ">": want = or !=`},
		{`value("k") = "a" "b"`, `line 1: column 18: unexpected "\"b\"" after the value`},
		{`value("k) = "a"`, `line 1: column 15: unterminated " quote`},
		{`= "a"`, `line 1: "= \"a\"": want a compare such as version("KEY") = "3"`},
		{"\nput k", `line 2: put: want KEY VALUE, got 1 argument(s)`},
		{"\nput k v w", `line 2: put: want KEY VALUE, got 3 argument(s)`},
		{"\n# c\nput k v --ttl", `line 3: put: --ttl needs a value`},
		{"\nput k v --ttl soon", `line 2: put: --ttl "soon": want a duration such as 30s`},
		{"\nput k v --ttl -1s", `line 2: put: --ttl "-1s": want a duration`},
		{"\nput k v --session x", `line 2: put: --session "x": want a session id`},
		{"\nput k v --if-absent=yes", `line 2: put: --if-absent takes no value`},
		{"\nput k v --prefix", `line 2: put: unknown flag --prefix (put takes --ttl, --session, --if-absent)`},
		{"\n\nget k --prefix", `line 3: get: unknown flag --prefix (get takes no flags)`},
		{"\n\ndel", `line 3: del: want KEY (or --prefix PREFIX), got 0 argument(s)`},
		{"\n\ndel --prefix", `line 3: del: want KEY (or --prefix PREFIX), got 0 argument(s)`},
		{"\nset k v", `line 2: op "set": want put, del or get`},
		{"\nput 'k v", `line 2: column 5: unterminated ' quote`},
		{`version("") = "1"`, `line 1: version(""): the key is empty`},
		{"\nput '' v", `line 2: put: the key is empty`},
		{"\n\ndel \"\"", `line 3: del: the key is empty (del --prefix "" is every key)`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := parseTxnText(strings.NewReader(tt.input))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("parseTxnText(%q) = %v, want an error starting %q", tt.input, err, tt.want)
			}
		})
	}
}

func TestParseTxnJSON(t *testing.T) {
	input := `{
  "compare": [
    {"target": "version", "key": "k", "op": "=", "number": 7},
    {"target": "value", "key_base64": "/w==", "op": "!=", "value_base64": "AA=="},
    {"target": "exists", "key": "k", "op": "=", "exists": false},
    {"target": "token", "key": "L", "op": ">", "number": 0}
  ],
  "success": [
    {"op": "put", "key": "k", "value": "v", "ttl_ms": 30000, "session": 12, "if_absent": true},
    {"op": "put", "key": "empty"},
    {"op": "del", "key": "d"},
    {"op": "del", "key": "p/", "prefix": true}
  ],
  "failure": [{"op": "get", "key": "k"}]
}`
	spec, err := parseTxnJSON(strings.NewReader(input))
	if err != nil {
		t.Fatalf("parseTxnJSON: %v", err)
	}
	want := &kvpb.TxnRequest{
		Compares: []*kvpb.Compare{
			{Key: []byte("k"), Target: tVersion, Op: opEq, Number: 7},
			{Key: []byte{0xff}, Target: tValue, Op: opNe, Value: []byte{0}},
			{Key: []byte("k"), Target: tExists, Op: opEq},
			{Key: []byte("L"), Target: tToken, Op: opGt},
		},
		Success: []*kvpb.TxnOp{putOp("k", "v", 30000, 12, true), putOp("empty", "", 0, 0, false), delOp("d", false), delOp("p/", true)},
		Failure: []*kvpb.TxnOp{getOp("k")},
	}
	if got := spec.request(t); !proto.Equal(got, want) {
		t.Errorf("parseTxnJSON =\n%v\nwant\n%v", got, want)
	}
}

func TestParseTxnJSONErrors(t *testing.T) {
	tests := []struct {
		input string
		want  string
	}{
		{``, "no JSON on stdin"},
		{"{\n  \"compare\": [\n    {\"target\": \"version\",, }]}", "line 3, column 26: invalid character ','"},
		{"{\"compare\": [{\"target\": \"version\", \"key\": \"k\", \"op\": \"=\", \"number\": \"7\"}]}", `line 1, column 71: compare.number: want a uint64, got a JSON string`},
		{`{"compares": []}`, `json: unknown field "compares"`},
		{`{} {}`, "line 1, column 4: more after the transaction's object"},
		{`{"compare": [{"target": "versoin", "key": "k", "op": "=", "number": 1}]}`, `compare[0]: target "versoin": want version, value`},
		{`{"compare": [{"target": "version", "op": "=", "number": 1}]}`, `compare[0]: "key" (or "key_base64") is missing`},
		{`{"compare": [{"target": "version", "key": "k", "op": "=", "value": "1"}]}`, `compare[0]: target version: want "number" and nothing else`},
		{`{"compare": [{"target": "value", "key": "k", "op": "="}]}`, `compare[0]: target value: want "value"`},
		{`{"compare": [{"target": "exists", "key": "k", "op": "=", "number": 1}]}`, `compare[0]: target exists: want "exists"`},
		{`{"compare": [{"target": "exists", "key": "k", "op": "<", "exists": true}]}`, `compare[0]: exists("k"): exists: operator "<": want = or !=`},
		{`{"compare": [{"target": "mod", "key": "k", "op": "~", "number": 1}]}`, `compare[0]: mod("k"): operator "~"`},
		{`{"compare": [{"target": "value", "key": "k", "key_base64": "aw==", "op": "=", "value": ""}]}`, `compare[0]: give "key" or "key_base64", not both`},
		{`{"success": [{"op": "put", "key": "k", "value_base64": "!!"}]}`, `success[0]: value_base64: illegal base64`},
		{`{"success": [{"op": "put", "key": "k", "ttl_ms": -1}]}`, `success[0]: put: ttl_ms -1 is negative`},
		{`{"success": [{"op": "put", "key": "k", "prefix": true}]}`, `success[0]: put: "prefix" is for del`},
		{`{"failure": [{"op": "get"}]}`, `failure[0]: "key" (or "key_base64") is missing`},
		{`{"failure": [{"op": "get", "key": "k", "prefix": true}]}`, `failure[0]: get: takes "key"`},
		{`{"failure": [{"op": "del", "key": "k", "ttl_ms": 5}]}`, `failure[0]: del: takes "key" (or "key_base64") and "prefix", nothing else`},
		{`{"failure": [{"op": "incr", "key": "k"}]}`, `failure[0]: op "incr": want put, del or get`},
		{`{"compare": [{"target": "mod", "key": "", "op": "=", "number": 1}]}`, `compare[0]: mod(""): the key is empty`},
		{`{"success": [{"op": "get", "key": ""}]}`, `success[0]: get: the key is empty`},
		{`{"success": [{"op": "del", "key": ""}]}`, `success[0]: del: the key is empty`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := parseTxnJSON(strings.NewReader(tt.input))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("parseTxnJSON(%q) = %v, want an error starting %q", tt.input, err, tt.want)
			}
		})
	}
}
