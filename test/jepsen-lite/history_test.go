package main

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func TestHistoryOutcomesAndRoundTrip(t *testing.T) {
	h := NewHistory()
	a := h.Invoke(&Op{Client: 1, Workload: "register", Type: "write", Key: "k", Value: "v1"})
	h.OK(a, &kvpb.ResponseHeader{AppliedIndex: 7, LogTime: 99, ServedBy: "n1", Term: 2})
	b := h.Invoke(&Op{Client: 2, Workload: "register", Type: "write", Key: "k", Value: "v2"})
	h.Error(b, client.ErrIndeterminate)
	c := h.Invoke(&Op{Client: 3, Workload: "register", Type: "write", Key: "k", Value: "v3"})
	h.Error(c, client.ErrUnavailable)
	d := h.Invoke(&Op{Client: 3, Workload: "register", Type: "write", Key: "k", Value: "v4"})
	h.Error(d, errors.New("context deadline exceeded"))
	h.Invoke(&Op{Client: 4, Workload: "register", Type: "read", Key: "k"}) // left pending

	ops := h.Ops()
	want := []Outcome{OK, Info, Fail, Info, Info}
	for i, w := range want {
		if ops[i].Outcome != w {
			t.Errorf("op %d outcome = %q, want %q", i, ops[i].Outcome, w)
		}
	}
	if ops[0].Index != 7 || ops[0].LogTime != 99 || ops[0].ServedBy != "n1" {
		t.Errorf("op 0 header = %d %d %q, want 7 99 n1", ops[0].Index, ops[0].LogTime, ops[0].ServedBy)
	}
	if ops[2].Code != kvpb.ErrorCode_ERROR_CODE_NOT_LEADER.String() {
		t.Errorf("op 2 code = %q", ops[2].Code)
	}
	path := filepath.Join(t.TempDir(), "history.jsonl")
	if err := WriteHistory(path, ops); err != nil {
		t.Fatal(err)
	}
	back, err := ReadHistory(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(ops) || back[1].Value != "v2" || back[4].Outcome != Info {
		t.Errorf("ReadHistory = %+v, want %+v", back, ops)
	}
}
