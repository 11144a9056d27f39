package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/proccluster"
	"github.com/kvdproject/kvd/internal/rawh2"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Hostile but legal requests against real kvd processes (issue 11): each
// was reproduced against a build before the fix and failed there.

// rawConn dials one member's client port with a plain gRPC connection (no
// client library: the test writes the request headers itself).
func rawConn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// leaderOf waits for a leader and returns it.
func leaderOf(ctx context.Context, t *testing.T, cl *proccluster.Cluster) *proccluster.Node {
	t.Helper()
	l, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// errorCodeOf returns the kvd ErrorCode in a status error's ErrorInfo.
func errorCodeOf(err error) (codes.Code, kvpb.ErrorCode, string) {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*kvpb.ErrorInfo); ok {
			return st.Code(), info.GetCode(), st.Message()
		}
	}
	return st.Code(), kvpb.ErrorCode_ERROR_CODE_OK, st.Message()
}

// ERROR_CODE_SEQUENCE_REUSED, by number (issue 11 assigns 30).
const codeSequenceReused = kvpb.ErrorCode(30)

func newSession(ctx context.Context, t *testing.T, cc *grpc.ClientConn) uint64 {
	t.Helper()
	resp, err := kvpb.NewSessionClient(cc).Create(ctx, &kvpb.CreateSessionRequest{TtlMs: 60_000, Name: "e2e hostile"})
	if err != nil {
		t.Fatalf("Session.Create: %v", err)
	}
	return resp.GetSession().GetId()
}

// TestListPagesStayWithinByteBudget: a List over large values stops at the
// response byte budget (default 4 MiB) as well as at its count, says
// "more", and the client and `kvctl ls` follow the continuation to every
// key exactly once. Before: one 10 MB answer, refused by the client.
func TestListPagesStayWithinByteBudget(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	const n, size = 20, 512 << 10
	for i := 0; i < n; i++ {
		v := bytes.Repeat([]byte{byte('a' + i)}, size)
		if _, err := c.Put(ctx, []byte(fmt.Sprintf("bulk/%02d", i)), v); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	var got []string
	var after []byte
	for page := 0; page < n+1; page++ {
		resp, err := c.List(ctx, []byte("bulk/"), client.WithLimit(1000), client.WithStartAfter(after))
		if err != nil {
			t.Fatalf("List page %d: %v", page, err)
		}
		if sz := proto.Size(resp); sz > 4<<20+4096 {
			t.Errorf("List page %d is %d bytes, over the default budget of 4 MiB", page, sz)
		}
		for _, kv := range resp.GetKvs() {
			i := len(got)
			if want := bytes.Repeat([]byte{byte('a' + i)}, size); !bytes.Equal(kv.GetValue(), want) {
				t.Fatalf("List value of %s is wrong (%d bytes)", kv.GetKey(), len(kv.GetValue()))
			}
			got = append(got, string(kv.GetKey()))
		}
		if page == 0 && !resp.GetMore() {
			t.Errorf("first List page has %d of %d keys and more=false", len(resp.GetKvs()), n)
		}
		if !resp.GetMore() {
			break
		}
		if len(resp.GetKvs()) == 0 {
			t.Fatal("List said more with an empty page")
		}
		after = resp.GetKvs()[len(resp.GetKvs())-1].GetKey()
	}
	if len(got) != n {
		t.Fatalf("followed List returned %d keys, want %d: %v", len(got), n, got)
	}
	for i, k := range got {
		if want := fmt.Sprintf("bulk/%02d", i); k != want {
			t.Fatalf("key %d = %q, want %q", i, k, want)
		}
	}

	out, err := kvctlCmd(ctx, t, cl, "ls", "bulk/", "-o", "json").Output()
	if err != nil {
		t.Fatalf("kvctl ls bulk/: %v", err)
	}
	var ls struct {
		KVs []struct {
			Key string `json:"key"`
		} `json:"kvs"`
		More bool `json:"more"`
	}
	if err := json.Unmarshal(out, &ls); err != nil {
		t.Fatalf("kvctl ls output: %v", err)
	}
	if len(ls.KVs) != n || ls.More {
		t.Fatalf("kvctl ls bulk/ listed %d keys (more=%v), want %d", len(ls.KVs), ls.More, n)
	}
}

// TestUnreadAnswersAreBounded: one HTTP/2 connection opens 400 Get calls of
// a 1 MiB value and reads none of the answers. The server advertises and
// enforces its concurrent stream limit (default 256), and builds answers
// for the connection only up to its unread-bytes budget (default 8 MiB):
// the other calls wait, instead of each holding 1 MiB. Before: all 400
// were answered, about 400 MiB held in the server's send queue.
func TestUnreadAnswersAreBounded(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	c := newClient(t, cl.Endpoints())
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, []byte("big"), bytes.Repeat([]byte{'x'}, 1<<20-64)); err != nil {
		t.Fatal(err)
	}
	leader := leaderOf(ctx, t, cl)
	before, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}

	h, err := rawh2.Dial(leader.ClientAddr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	get, _ := proto.Marshal(&kvpb.GetRequest{Key: []byte("big")})
	for i := 0; i < 400; i++ {
		if _, err := h.Call("/kvd.v1.KV/Get", get, 20*time.Second); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	// Let the server build whatever it will, then see what it said.
	time.Sleep(3 * time.Second)
	during, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Another client is served meanwhile.
	gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := c.Get(gctx, []byte("big")); err != nil {
		t.Errorf("Get by a well-behaved client during the attack: %v", err)
	}
	gcancel()
	tally := h.Read(2 * time.Second)
	t.Logf("leader %s RSS %d MiB before, %d MiB with 400 unread calls; %+v", leader.Name,
		before.GetRssBytes()>>20, during.GetRssBytes()>>20, tally)
	if tally.MaxConcurrentStreams != 256 {
		t.Errorf("server advertised max concurrent streams %d, want 256", tally.MaxConcurrentStreams)
	}
	if tally.Refused < 400-256 {
		t.Errorf("server refused %d of 400 calls, want at least %d (over its stream limit)", tally.Refused, 400-256)
	}
	if tally.Answering > 9 {
		t.Errorf("server built answers for %d unread calls, want at most 9 (8 MiB of unread answers)", tally.Answering)
	}
}

// TestExactlyOnceResultsHoldNoValues: remembered results hold metadata,
// not values. 40 puts of 1 MiB under one session whose min_pending_seq
// never advances leave a snapshot of about one value, not forty; a retry
// of one of them is answered with its first result, value rebuilt from
// the retried body. Before: every result kept its 1 MiB value.
func TestExactlyOnceResultsHoldNoValues(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	leader := leaderOf(ctx, t, cl)
	cc := rawConn(t, leader.ClientAddr)
	kv := kvpb.NewKVClient(cc)
	sess := newSession(ctx, t, cc)
	value := func(i int) []byte { return bytes.Repeat([]byte{byte('A' + i%26)}, 1<<20-64) }
	for i := 1; i <= 40; i++ {
		req := &kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: sess, Seq: uint64(i), MinPendingSeq: 1}, Key: []byte("heavy"), Value: value(i)}
		if _, err := kv.Put(ctx, req); err != nil {
			t.Fatalf("Put seq %d: %v", i, err)
		}
	}
	retry := &kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: sess, Seq: 7, MinPendingSeq: 1}, Key: []byte("heavy"), Value: value(7)}
	resp, err := kv.Put(ctx, retry)
	if err != nil {
		t.Fatalf("retried Put seq 7: %v", err)
	}
	if resp.GetKv().GetVersion() != 7 || !bytes.Equal(resp.GetKv().GetValue(), value(7)) || string(resp.GetKv().GetKey()) != "heavy" {
		t.Errorf("retried Put seq 7 = version %d, key %q, %d value bytes; want its first result (version 7, the value sent)",
			resp.GetKv().GetVersion(), resp.GetKv().GetKey(), len(resp.GetKv().GetValue()))
	}
	for _, nd := range cl.Nodes {
		ncc := rawConn(t, nd.ClientAddr)
		if _, err := kvpb.NewClusterClient(ncc).Snapshot(ctx, &kvpb.SnapshotRequest{}); err != nil {
			t.Fatalf("Snapshot on %s: %v", nd.Name, err)
		}
		size := newestSnapshotSize(t, nd.DataDir)
		t.Logf("%s: snapshot of %d bytes", nd.Name, size)
		if size > 8<<20 {
			t.Errorf("%s: snapshot is %d MiB with one 1 MiB key: remembered results hold values", nd.Name, size>>20)
		}
	}
}

func newestSnapshotSize(t testing.TB, dataDir string) int64 {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dataDir, "snapshots", "*", "state.bin"))
	var newest os.FileInfo
	for _, m := range matches {
		if strings.HasSuffix(filepath.Dir(m), ".tmp") {
			continue // still being written
		}
		if fi, err := os.Stat(m); err == nil && (newest == nil || fi.ModTime().After(newest.ModTime())) {
			newest = fi
		}
	}
	if newest == nil {
		t.Fatalf("no snapshot under %s", dataDir)
	}
	return newest.Size()
}

// TestSequenceReuseRefused: a retried (session, seq) whose body differs
// from the first is refused with SEQUENCE_REUSED, never answered with the
// first command's result; the same body is still answered from it.
// Before: the second put answered OK with the first's result and was lost.
func TestSequenceReuseRefused(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cc := rawConn(t, cl.Nodes[0].ClientAddr)
	kv := kvpb.NewKVClient(cc)
	sess := newSession(ctx, t, cc)
	hdr := &kvpb.RequestHeader{Session: sess, Seq: 1, MinPendingSeq: 1}
	first, err := kv.Put(ctx, &kvpb.PutRequest{Header: hdr, Key: []byte("reuse/a"), Value: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = kv.Put(ctx, &kvpb.PutRequest{Header: hdr, Key: []byte("reuse/b"), Value: []byte("b")})
	gc, kc, msg := errorCodeOf(err)
	if err == nil || kc != codeSequenceReused || gc != codes.FailedPrecondition {
		t.Errorf("Put(seq 1, other key) = %v (%v, %v), want FailedPrecondition SEQUENCE_REUSED", err, gc, kc)
	} else if !strings.Contains(msg, "seq 1") {
		t.Errorf("SEQUENCE_REUSED message %q does not name the seq", msg)
	}
	if _, err := kv.Get(ctx, &kvpb.GetRequest{Key: []byte("reuse/b")}); status.Code(err) != codes.NotFound {
		t.Errorf("Get(reuse/b) = %v, want NotFound", err)
	}
	again, err := kv.Put(ctx, &kvpb.PutRequest{Header: hdr, Key: []byte("reuse/a"), Value: []byte("a")})
	if err != nil {
		t.Fatalf("retry of the first put: %v", err)
	}
	if again.GetKv().GetModIndex() != first.GetKv().GetModIndex() {
		t.Errorf("retry of the first put applied at %d, first at %d: want the first result", again.GetKv().GetModIndex(), first.GetKv().GetModIndex())
	}
}

// TestMinPendingSeqCannotPoisonSession: min_pending_seq above the seq is
// refused as InvalidArgument and leaves the session usable. Before: 2^64-1
// was accepted and every later write got STALE_SEQUENCE.
func TestMinPendingSeqCannotPoisonSession(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cc := rawConn(t, cl.Nodes[1].ClientAddr)
	kv := kvpb.NewKVClient(cc)
	sess := newSession(ctx, t, cc)
	_, err := kv.Put(ctx, &kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: sess, Seq: 1, MinPendingSeq: math.MaxUint64}, Key: []byte("p"), Value: []byte("1")})
	if gc, kc, msg := errorCodeOf(err); gc != codes.InvalidArgument || !strings.Contains(msg, "min_pending_seq") {
		t.Errorf("Put(min_pending_seq 2^64-1) = %v (%v, %v), want InvalidArgument naming min_pending_seq", err, gc, kc)
	}
	for seq := uint64(2); seq <= 3; seq++ {
		if _, err := kv.Put(ctx, &kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: sess, Seq: seq, MinPendingSeq: seq}, Key: []byte("p"), Value: []byte("2")}); err != nil {
			t.Errorf("Put(seq %d) after the refused one: %v (session poisoned)", seq, err)
		}
	}
}

// TestRefusedRequestsAreNotProposed: requests that can be refused are
// refused before they reach the log: Release and Store without a session,
// a min_pending_seq above its seq, a command naming a closed session.
// Before: each refusal cost a log entry.
func TestRefusedRequestsAreNotProposed(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	leader := leaderOf(ctx, t, cl)
	cc := rawConn(t, leader.ClientAddr)
	kv, lk, ca := kvpb.NewKVClient(cc), kvpb.NewLockClient(cc), kvpb.NewCacheClient(cc)
	live := newSession(ctx, t, cc)
	gone := newSession(ctx, t, cc)
	if _, err := kvpb.NewSessionClient(cc).Close(ctx, &kvpb.CloseSessionRequest{Id: gone}); err != nil {
		t.Fatal(err)
	}
	st0, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const each = 25
	for i := 0; i < each; i++ {
		if _, err := lk.Release(ctx, &kvpb.ReleaseRequest{Name: []byte("x"), Token: 5}); err == nil {
			t.Fatal("Release without a session succeeded")
		}
		if _, err := ca.Store(ctx, &kvpb.StoreRequest{Key: []byte("x"), Token: 5, Value: []byte("v"), TtlMs: 1000}); err == nil {
			t.Fatal("Store without a session succeeded")
		}
		if _, err := kv.Put(ctx, &kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: live, Seq: 1, MinPendingSeq: 2}, Key: []byte("x"), Value: []byte("v")}); err == nil {
			t.Fatal("Put with min_pending_seq above seq succeeded")
		}
		if _, err := kv.Put(ctx, &kvpb.PutRequest{Header: &kvpb.RequestHeader{Session: gone, Seq: uint64(i + 1), MinPendingSeq: 1}, Key: []byte("x"), Value: []byte("v")}); err == nil {
			t.Fatal("Put under a closed session succeeded")
		}
	}
	st1, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if grew := st1.GetLastLogIndex() - st0.GetLastLogIndex(); grew >= 5 {
		t.Errorf("%d refused requests grew the log by %d entries, want none (a few ticks at most)", 4*each, grew)
	}
}

// runKvctl runs kvctl against the cluster and returns its exit code and
// combined output.
func runKvctl(ctx context.Context, t *testing.T, cl *proccluster.Cluster, args ...string) (int, string) {
	t.Helper()
	cmd := kvctlCmd(ctx, t, cl, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return exitCodeOf(err), out.String()
}

// TestSessionAndLockCaps: overall caps on sessions and locks refuse new
// ones with RESOURCE_EXHAUSTED naming the cap and its flag. Before: no cap
// (75,000 sessions in 20 s).
func TestSessionAndLockCaps(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{ExtraArgs: []string{"--max-sessions", "6", "--max-locks", "3"}})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for i := 1; i <= 3; i++ {
		if code, out := runKvctl(ctx, t, cl, "lock", "acquire", fmt.Sprintf("cap/%d", i), "--ttl", "60s"); code != 0 {
			t.Fatalf("lock acquire cap/%d: exit %d: %s", i, code, out)
		}
	}
	code, out := runKvctl(ctx, t, cl, "lock", "acquire", "cap/4", "--ttl", "60s")
	if code == 0 || !strings.Contains(out, "--max-locks") || !strings.Contains(out, "3") {
		t.Errorf("lock acquire over the lock cap: exit %d: %q, want a refusal naming --max-locks and 3", code, out)
	}
	refused := false
	for i := 0; i < 6 && !refused; i++ {
		code, out := runKvctl(ctx, t, cl, "session", "create", "--ttl", "60s")
		if code != 0 {
			refused = true
			if !strings.Contains(out, "--max-sessions") || !strings.Contains(out, "6") {
				t.Errorf("session create over the cap: %q, want it to name --max-sessions and 6", out)
			}
		}
	}
	if !refused {
		t.Error("sessions beyond --max-sessions 6 were created")
	}
	// Nothing else is harmed: a plain write still works.
	if code, out := runKvctl(ctx, t, cl, "lock", "list", "cap/"); code != 0 || strings.Count(out, "cap/") != 3 {
		t.Errorf("lock list cap/: exit %d: %q, want the 3 locks", code, out)
	}
}

// TestLockListPaginates: `lock list` answers in pages (limit, start_after,
// more); kvctl follows them, or shows one page with --limit. Before: one
// answer with every lock.
func TestLockListPaginates(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{ExtraArgs: []string{"--default-list-limit", "8"}})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		if code, out := runKvctl(ctx, t, cl, "lock", "acquire", fmt.Sprintf("pl/%02d", i), "--ttl", "60s"); code != 0 {
			t.Fatalf("lock acquire pl/%02d: exit %d: %s", i, code, out)
		}
	}
	type listing struct {
		Locks []struct {
			Name string `json:"name"`
		} `json:"locks"`
		More bool `json:"more"`
	}
	list := func(args ...string) listing {
		t.Helper()
		out, err := kvctlCmd(ctx, t, cl, append([]string{"lock", "list", "pl/", "-o", "json"}, args...)...).Output()
		if err != nil {
			t.Fatalf("kvctl lock list %v: %v", args, err)
		}
		var l listing
		if err := json.Unmarshal(out, &l); err != nil {
			t.Fatalf("kvctl lock list output %q: %v", out, err)
		}
		return l
	}
	if all := list(); len(all.Locks) != 20 || all.More {
		t.Errorf("lock list pl/ (following pages of 8) = %d locks, more=%v; want 20", len(all.Locks), all.More)
	}
	page := list("--limit", "5", "--start-after", "pl/04")
	var names []string
	for _, l := range page.Locks {
		names = append(names, l.Name)
	}
	if want := "pl/05 pl/06 pl/07 pl/08 pl/09"; strings.Join(names, " ") != want || !page.More {
		t.Errorf("lock list --limit 5 --start-after pl/04 = %v more=%v, want %s and more", names, page.More, want)
	}
}

// TestAddMemberWithExistingNameOrAddressRefused: re-adding a member under
// its name with a new address, or a new name at a member's address, is
// refused and says how to re-address a member; the cluster is unchanged.
func TestAddMemberWithExistingNameOrAddressRefused(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	free := proccluster.FreePorts(t, 1)[0]
	code, out := runKvctl(ctx, t, cl, "cluster", "add", "n2", fmt.Sprintf("127.0.0.1:%d", free))
	if code == 0 || !strings.Contains(out, "remove") {
		t.Errorf("cluster add n2 at a new address: exit %d: %q, want a refusal saying remove, then add", code, out)
	}
	code, out = runKvctl(ctx, t, cl, "cluster", "add", "n9", cl.Nodes[1].PeerAddr)
	if code == 0 {
		t.Errorf("cluster add n9 at n2's address: exit 0: %q", out)
	}
	c := newClient(t, cl.Endpoints())
	members, err := c.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(members.GetMembers()) != 3 {
		t.Fatalf("members = %v, want the 3 original", members.GetMembers())
	}
	for _, m := range members.GetMembers() {
		for _, nd := range cl.Nodes {
			if nd.Name == m.GetName() && nd.PeerAddr != m.GetPeerAddr() {
				t.Errorf("member %s re-addressed to %s", m.GetName(), m.GetPeerAddr())
			}
		}
	}
	if _, err := c.Put(ctx, []byte("after-add"), []byte("ok")); err != nil {
		t.Errorf("Put after the refused adds: %v", err)
	}
}

// TestLockDelayIsBoundedAndBreakClearsIt: a lock-delay over the maximum
// (--max-lock-delay, default 1m) is InvalidArgument naming it; `lock
// break` of a lock in its delay clears the delay and says so. Before: a
// year of delay was accepted, and break answered "not held".
func TestLockDelayIsBoundedAndBreakClearsIt(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	code, out := runKvctl(ctx, t, cl, "lock", "acquire", "ld/a", "--ttl", "5s", "--lock-delay", "2h")
	if code == 0 || !strings.Contains(out, "--max-lock-delay") || !strings.Contains(out, "1m0s") {
		t.Fatalf("lock acquire --lock-delay 2h: exit %d: %q, want InvalidArgument naming --max-lock-delay 1m0s", code, out)
	}
	if code, out := runKvctl(ctx, t, cl, "lock", "acquire", "ld/b", "--ttl", "5s", "--lock-delay", "50s"); code != 0 {
		t.Fatalf("lock acquire ld/b --lock-delay 50s: exit %d: %s", code, out)
	}
	code, out = runKvctl(ctx, t, cl, "lock", "break", "ld/b")
	if code != 0 || !strings.Contains(out, "lock-delay") {
		t.Fatalf("lock break ld/b: exit %d: %q, want it to say a lock-delay now runs", code, out)
	}
	if code, out := runKvctl(ctx, t, cl, "lock", "acquire", "ld/b", "--ttl", "5s"); code != 3 {
		t.Fatalf("lock acquire ld/b during its lock-delay: exit %d: %s, want 3 (not acquired)", code, out)
	}
	code, out = runKvctl(ctx, t, cl, "lock", "break", "ld/b")
	if code != 0 || !strings.Contains(out, "cleared") {
		t.Fatalf("lock break ld/b in its lock-delay: exit %d: %q, want it cleared", code, out)
	}
	if code, out := runKvctl(ctx, t, cl, "lock", "acquire", "ld/b", "--ttl", "5s"); code != 0 {
		t.Fatalf("lock acquire ld/b after the delay was cleared: exit %d: %s", code, out)
	}
}

// TestLockSurvivesPausedLeader: a lock whose TTL is ten election timeouts
// survives its cluster's leader being SIGSTOPped for 12 s: the holder's
// keepalives give up on the paused leader in time to renew through the new
// one. Before: kvctl exited 5 (lock lost); kill -9 of the leader was fine.
func TestLockSurvivesPausedLeader(t *testing.T) {
	skipShort(t)
	cl := proccluster.Start(t, 3, proccluster.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	held := filepath.Join(dir, "held")
	cmd := kvctlCmd(ctx, t, cl, "lock", "acquire", "pauselock", "--ttl", "5s", "--",
		"sh", "-c", `echo $KVD_LOCK_TOKEN > "$HELD"; sleep 22`)
	cmd.Env = append(cmd.Env, "HELD="+held)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFile(ctx, t, held)
	leader := leaderOf(ctx, t, cl)
	if err := leader.Pause(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	time.Sleep(12 * time.Second)
	if err := leader.Resume(); err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %s paused for %v", leader.Name, time.Since(paused).Round(time.Millisecond))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kvctl lock acquire --ttl 5s -- sleep 22 with the leader paused 12 s: %v (exit %d)\n%s", err, exitCodeOf(err), out.String())
	}
}
