package kvpb

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestCommandAndResultShareFieldNumbers: a Command's op and the
// CommandResult's result for it have the same field number and name, so a
// result can be matched to its op (and api's writeAs relies on the pairing).
// Ops without a result (ticks, membership) are allowed; a result without an
// op is not.
func TestCommandAndResultShareFieldNumbers(t *testing.T) {
	ops := (&Command{}).ProtoReflect().Descriptor().Oneofs().ByName("op").Fields()
	results := (&CommandResult{}).ProtoReflect().Descriptor().Oneofs().ByName("result").Fields()
	if ops.Len() == 0 || results.Len() == 0 {
		t.Fatalf("Command.op has %d fields, CommandResult.result %d; want both non-empty", ops.Len(), results.Len())
	}
	for i := 0; i < results.Len(); i++ {
		r := results.Get(i)
		op := ops.ByNumber(r.Number())
		if op == nil {
			t.Errorf("CommandResult.result %s = %d has no Command.op with that number", r.Name(), r.Number())
			continue
		}
		if op.Name() != r.Name() {
			t.Errorf("field %d is Command.op %s but CommandResult.result %s; want the same name", r.Number(), op.Name(), r.Name())
		}
	}
}

// TestEveryResponseHasAHeader: every response message of a client-facing
// service has `ResponseHeader header = 1` (api sets it on every answer).
func TestEveryResponseHasAHeader(t *testing.T) {
	services := File_kvd_v1_kvd_proto.Services()
	checked := 0
	for i := 0; i < services.Len(); i++ {
		svc := services.Get(i)
		if svc.Name() == "Internal" {
			continue // member to member; its answers carry what the forwarding member needs
		}
		for j := 0; j < svc.Methods().Len(); j++ {
			m := svc.Methods().Get(j)
			out := m.Output()
			if svc.Name() == "KV" && m.Name() == "Pipeline" {
				continue // a carrier: each answer in it is a method's own response, header and all
			}
			if !strings.HasSuffix(string(out.Name()), "Response") {
				continue // streamed events and the like say so in their own messages
			}
			checked++
			f := out.Fields().ByName("header")
			switch {
			case f == nil:
				t.Errorf("%s.%s returns %s, which has no header", svc.Name(), m.Name(), out.Name())
			case f.Number() != 1 || f.Kind() != protoreflect.MessageKind || f.Message().Name() != "ResponseHeader":
				t.Errorf("%s.%s returns %s whose header is %v = %d; want ResponseHeader header = 1",
					svc.Name(), m.Name(), out.Name(), f.Kind(), f.Number())
			}
		}
	}
	if checked < 20 {
		t.Fatalf("checked %d responses; want every service's (at least 20)", checked)
	}
}
