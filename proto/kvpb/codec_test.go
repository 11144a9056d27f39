package kvpb

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// codecSamples are messages with every kind of field kvd uses: scalars,
// bytes, strings, nested messages, repeated fields and oneofs.
func codecSamples() []proto.Message {
	big := bytes.Repeat([]byte("v"), 1<<20) // above gRPC's buffer pooling threshold
	return []proto.Message{
		&Command{Stamp: 42, Op: &Command_Put{Put: &PutRequest{Key: []byte("k"), Value: []byte("v"), TtlMs: 1000,
			Header: &RequestHeader{Session: 7, Seq: 3, MinPendingSeq: 2}}}},
		&TxnRequest{Compares: []*Compare{{Key: []byte("a")}}, Success: []*TxnOp{
			{Op: &TxnOp_Put{Put: &PutRequest{Key: []byte("x"), Value: big}}},
			{Op: &TxnOp_Get{Get: &GetRequest{Key: []byte("y")}}},
		}},
		&PipelineRequest{Calls: []*PipelineCall{{Tag: 1, Method: KV_Get_FullMethodName, Request: []byte{1, 2}, TimeoutUs: 5}}},
		&GetResponse{Header: &ResponseHeader{AppliedIndex: 9, ServedBy: "n1", Stale: true}, Kv: &KeyValue{Key: []byte("k"), Value: []byte{}}},
		&PutResponse{},
	}
}

// TestGeneratedCodeMatchesProto: the generated code writes the bytes
// protobuf-go writes, and reads back what it wrote; Size agrees.
func TestGeneratedCodeMatchesProto(t *testing.T) {
	for _, m := range codecSamples() {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Marshal(m)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%T: generated code wrote %d bytes that differ from protobuf-go's %d", m, len(got), len(want))
		}
		if Size(m) != len(want) {
			t.Errorf("%T: Size %d, encoded %d", m, Size(m), len(want))
		}
		back := m.ProtoReflect().New().Interface()
		proto.Merge(back, m) // Unmarshal must reset what is there
		if err := Unmarshal(want, back); err != nil || !proto.Equal(back, m) {
			t.Errorf("%T: Unmarshal of protobuf-go's bytes: %v, equal %v", m, err, proto.Equal(back, m))
		}
	}
}

// TestCodecRoundTrip: the gRPC codec encodes and decodes kvd's messages,
// small and pooled, and passes other messages to gRPC's own proto codec.
func TestCodecRoundTrip(t *testing.T) {
	c := clientCodec // kvd's client codec; ServerCodec and CallCodec set these
	msgs := append(codecSamples(), &grpc_health_v1.HealthCheckRequest{Service: "kvd.writes"})
	for _, m := range msgs {
		data, err := c.Marshal(m)
		if err != nil {
			t.Fatalf("%T: Marshal: %v", m, err)
		}
		want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if got := data.Materialize(); !bytes.Equal(got, want) {
			t.Errorf("%T: codec wrote %d bytes, protobuf-go %d", m, len(got), len(want))
		}
		back := m.ProtoReflect().New().Interface()
		if err := c.Unmarshal(data, back); err != nil || !proto.Equal(back, m) {
			t.Errorf("%T: round trip: %v, equal %v", m, err, proto.Equal(back, m))
		}
		data.Free()
	}
}

// BenchmarkCodec: encoding and decoding a put's Command (what every member
// decodes for every write) and a Get's answer, by protobuf-go's reflection
// and by the generated code.
//
//	go test ./proto/kvpb -run - -bench Codec -benchmem
func BenchmarkCodec(b *testing.B) {
	msgs := map[string]proto.Message{
		"command-put": &Command{Stamp: 42, Limits: &StateLimits{MaxWaitersPerLock: 1024, MaxLocksPerSession: 1024},
			Op: &Command_Put{Put: &PutRequest{Key: []byte("00001234"), Value: bytes.Repeat([]byte("v"), 256),
				Header: &RequestHeader{Session: 7, Seq: 3, MinPendingSeq: 2}}}},
		"get-response": &GetResponse{Header: &ResponseHeader{AppliedIndex: 9, LogTime: 1234567, ServedBy: "n1", Term: 2, WallTime: 99},
			Kv: &KeyValue{Key: []byte("00001234"), Value: bytes.Repeat([]byte("v"), 256), CreateIndex: 3, ModIndex: 9, Version: 2}},
	}
	for name, m := range msgs {
		data, _ := proto.Marshal(m)
		b.Run(name+"/marshal/protobuf-go", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := proto.Marshal(m); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/marshal/generated", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Marshal(m); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/unmarshal/protobuf-go", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := proto.Unmarshal(data, m.ProtoReflect().New().Interface()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/unmarshal/generated", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := Unmarshal(data, m.ProtoReflect().New().Interface()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestServerCodecRefusesInvalidUTF8: a request whose string field is not
// UTF-8 is refused by the server's codec (and by UnmarshalChecked), as
// protobuf-go refuses it, so it never reaches the log or a snapshot; the
// client's codec, which decodes what members send, accepts what they send.
func TestServerCodecRefusesInvalidUTF8(t *testing.T) {
	// CreateSessionRequest.name (field 2) = "\xff": hand-encoded, since
	// protobuf-go will not encode it.
	bad := []byte{0x12, 0x01, 0xff}
	var m CreateSessionRequest
	if err := UnmarshalChecked(bad, &m); err == nil {
		t.Fatal("UnmarshalChecked accepted a name that is not UTF-8")
	}
	if err := serverCodec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bad)}, &m); err == nil {
		t.Fatal("the server codec accepted a name that is not UTF-8")
	}
	good := []byte{0x12, 0x02, 'o', 'k'}
	if err := serverCodec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(good)}, &m); err != nil || m.GetName() != "ok" {
		t.Fatalf("the server codec on a valid name: %v, %q", err, m.GetName())
	}
}
