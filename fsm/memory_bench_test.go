package fsm

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// The memory benchmarks load n keys of 8 bytes with 256-byte values (the
// shape of docs/performance.md's "Memory and start-up") and report the live
// heap per key after a full GC, beside the time per key:
//
//	go test ./fsm -run '^$' -bench 'LoadKeys|Restore|SnapshotEncode' -benchtime 3x

var memBenchSizes = []int{10_000, 100_000}

// loadedFSM applies n puts of sequential keys through Apply, as a replica does.
func loadedFSM(tb testing.TB, n int) *FSM {
	tb.Helper()
	f := New()
	value := bytes.Repeat([]byte("v"), 256)
	cmd := &kvpb.Command{Stamp: t0, Op: &kvpb.Command_Put{Put: &kvpb.PutRequest{Value: value}}}
	for i := range n {
		cmd.GetPut().Key = fmt.Appendf(nil, "%08d", i)
		data, err := proto.Marshal(cmd)
		if err != nil {
			tb.Fatal(err)
		}
		if res := f.Apply(uint64(i+1), data); res.Code != kvpb.ErrorCode_ERROR_CODE_OK {
			tb.Fatalf("put %d: %v", i, res.Code)
		}
	}
	return f
}

// liveHeap is the heap in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkLoadKeys applies n puts; heapB/key is the live heap the keys
// hold, key and value bytes included (264 of them per key).
func BenchmarkLoadKeys(b *testing.B) {
	for _, n := range memBenchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var perKey float64
			for b.Loop() {
				before := liveHeap()
				f := loadedFSM(b, n)
				perKey = float64(liveHeap()-before) / float64(n)
				runtime.KeepAlive(f)
			}
			b.ReportMetric(perKey, "heapB/key")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
		})
	}
}

// BenchmarkRestore restores a snapshot of n keys into a new FSM.
func BenchmarkRestore(b *testing.B) {
	for _, n := range memBenchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var buf bytes.Buffer
			if err := loadedFSM(b, n).Snapshot().Encode(&buf); err != nil {
				b.Fatal(err)
			}
			data := buf.Bytes()
			b.ReportAllocs()
			var perKey float64
			for b.Loop() {
				b.StopTimer()
				before := liveHeap()
				b.StartTimer()
				f := New()
				if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				perKey = float64(liveHeap()-before) / float64(n)
				runtime.KeepAlive(f)
				b.StartTimer()
			}
			b.ReportMetric(perKey, "heapB/key")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
		})
	}
}

// BenchmarkSnapshotEncode writes a snapshot of n keys.
func BenchmarkSnapshotEncode(b *testing.B) {
	for _, n := range memBenchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			f := loadedFSM(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if err := f.Snapshot().Encode(io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
		})
	}
}
