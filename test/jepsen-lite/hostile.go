package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/internal/rawh2"
	"github.com/kvdproject/kvd/lock"
	"github.com/kvdproject/kvd/proto/kvpb"
)

// Hostile load and a frozen lock holder: two fault kinds that are clients,
// not the network or the nodes. Their operations go into the history
// (workload "hostile", and "lock" for the frozen holder) for the checkers.

// Settings of the cluster and the hostile client. kvd runs with these
// flags (Run), so that the session flood reaches its cap within a fault.
const (
	hostileMaxSessions = 500
	// The server's defaults the hostile checks are judged against.
	hostileResponseBudget = 4 << 20 // --max-response-bytes
	hostileUnreadBudget   = 8 << 20 // --max-unread-bytes
	hostileBigValues      = 12      // values of 512 KiB under hostile/big/
	hostileUnreadCalls    = 400     // Gets of a 1 MiB value on one connection
	floodSessionTTL       = 3 * time.Second
	floodWorkers          = 16
)

// hostileArgs are the kvd flags a run with the hostile-client fault needs.
func hostileArgs() []string {
	return []string{"--max-sessions", fmt.Sprint(hostileMaxSessions)}
}

// hostile runs the hostile client against node i: a sequence number
// reused with another body, a List over large values, a connection that
// opens many Gets and reads none of the answers (held for hold), and a
// flood of sessions. It returns a detail line.
func (nm *Nemesis) hostile(ctx context.Context, i int, hold time.Duration) string {
	cc, err := nm.dialNode(nm.H.Node(i).ClientAddr) // direct: the proxies are for faults
	if err != nil {
		return "dial: " + err.Error()
	}
	defer cc.Close()
	n := nm.hostileRuns.Add(1)
	nm.seqReuse(ctx, cc, n)
	nm.hugeList(ctx, cc)
	unread := nm.unread(ctx, i, hold)
	created, refused := nm.sessionFlood(ctx, cc, hold)
	return fmt.Sprintf("on %s: seq reuse, huge list, %s, %d sessions created and %d refused", nodeName(i), unread, created, refused)
}

// seqReuse puts under (session, seq 1), then sends seq 1 again with
// another key: it must be refused (SEQUENCE_REUSED) and the other key
// never written.
func (nm *Nemesis) seqReuse(ctx context.Context, cc *grpc.ClientConn, n int64) {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	op := nm.Hist.Invoke(&Op{Client: -2, Workload: "hostile", Type: "seq-reuse", Key: fmt.Sprintf("hostile/reuse/%d", n)})
	sess, err := kvpb.NewSessionClient(cc).Create(octx, &kvpb.CreateSessionRequest{TtlMs: 10_000, Name: "jepsen hostile"})
	if err != nil {
		nm.Hist.Info(op, err)
		return
	}
	id := sess.GetSession().GetId()
	defer kvpb.NewSessionClient(cc).Close(context.WithoutCancel(octx), &kvpb.CloseSessionRequest{Id: id})
	kv := kvpb.NewKVClient(cc)
	hdr := &kvpb.RequestHeader{Session: id, Seq: 1, MinPendingSeq: 1}
	if _, err := kv.Put(octx, &kvpb.PutRequest{Header: hdr, Key: []byte(op.Key + "/a"), Value: []byte("a")}); err != nil {
		nm.Hist.Info(op, err)
		return
	}
	_, err = kv.Put(octx, &kvpb.PutRequest{Header: hdr, Key: []byte(op.Key + "/b"), Value: []byte("b")})
	op.Code = kvpb.ErrorCode_ERROR_CODE_OK.String()
	if err != nil {
		op.Code = errorCode(err).String()
	}
	_, gerr := kv.Get(octx, &kvpb.GetRequest{Key: []byte(op.Key + "/b")})
	op.Found = gerr == nil
	nm.Hist.OK(op, nil)
}

// hugeList writes hostileBigValues values of 512 KiB once, then lists them
// with the largest limit, following the pages: every page must stay
// within the response budget, and the pages together hold every key.
func (nm *Nemesis) hugeList(ctx context.Context, cc *grpc.ClientConn) {
	octx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	kv := kvpb.NewKVClient(cc)
	nm.bigOnce.Do(func() {
		for k := 0; k < hostileBigValues; k++ {
			v := bytes.Repeat([]byte{byte('a' + k)}, 512<<10)
			if _, err := kv.Put(octx, &kvpb.PutRequest{Key: []byte(fmt.Sprintf("hostile/big/%02d", k)), Value: v}); err != nil {
				nm.bigErr = err
				return
			}
		}
		_, nm.bigErr = kv.Put(octx, &kvpb.PutRequest{Key: []byte("hostile/1m"), Value: bytes.Repeat([]byte{'m'}, 1<<20-64)})
	})
	if nm.bigErr != nil {
		return // the values are not all there: nothing to judge
	}
	op := nm.Hist.Invoke(&Op{Client: -2, Workload: "hostile", Type: "huge-list", Key: "hostile/big/",
		Delta: hostileBigValues, Bound: hostileResponseBudget})
	var after []byte
	for page := 0; page <= hostileBigValues; page++ {
		resp, err := kv.List(octx, &kvpb.ListRequest{Prefix: []byte("hostile/big/"), StartAfter: after, Limit: 10000})
		if err != nil {
			nm.Hist.Error(op, err)
			return
		}
		op.Result = max(op.Result, int64(proto.Size(resp)))
		op.Version += uint64(len(resp.GetKvs()))
		if !resp.GetMore() || len(resp.GetKvs()) == 0 {
			break
		}
		after = resp.GetKvs()[len(resp.GetKvs())-1].GetKey()
	}
	nm.Hist.OK(op, nil)
}

// unread opens hostileUnreadCalls Gets of the 1 MiB value on one raw
// HTTP/2 connection to node i and reads none of the answers for hold,
// then looks at what the node answered, and its memory meanwhile.
func (nm *Nemesis) unread(ctx context.Context, i int, hold time.Duration) string {
	if nm.bigErr != nil {
		return "no unread calls"
	}
	op := nm.Hist.Invoke(&Op{Client: -2, Workload: "hostile", Type: "unread", Key: nodeName(i),
		Bound: hostileUnreadBudget/(1<<20) + 1})
	var h *rawh2.Conn
	var err error
	if sec := nm.Env.Security; sec != nil {
		h, err = rawh2.DialTLS(nm.H.Node(i).ClientAddr, 2*time.Second, sec.AdminTLS)
	} else {
		h, err = rawh2.Dial(nm.H.Node(i).ClientAddr, 2*time.Second)
	}
	if err != nil {
		nm.Hist.Info(op, err)
		return "unread: " + err.Error()
	}
	defer h.Close()
	get, _ := proto.Marshal(&kvpb.GetRequest{Key: []byte("hostile/1m")})
	for k := 0; k < hostileUnreadCalls; k++ {
		if _, err := h.Call("/kvd.v1.KV/Get", get, 20*time.Second); err != nil {
			nm.Hist.Info(op, err)
			return "unread: " + err.Error()
		}
	}
	sleepCtx(ctx, max(hold, time.Second))
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if st, err := nm.H.Status(sctx, i); err == nil {
		op.Result = int64(st.GetRssBytes())
	}
	cancel()
	t := h.Read(time.Second)
	op.Version = uint64(t.Answering)
	op.Value = fmt.Sprintf("%+v", t)
	nm.Hist.OK(op, nil)
	return fmt.Sprintf("%d unread Gets (%d answered, %d refused, RSS %d MiB)", hostileUnreadCalls, t.Answering, t.Refused, op.Result>>20)
}

// sessionFlood creates sessions from floodWorkers goroutines for up to
// hold (and at least a second), until the cap refuses them; every refusal
// must be RESOURCE_EXHAUSTED (LIMIT_EXCEEDED) or unavailability. Healing
// closes the sessions it made, so the workloads can have theirs again.
func (nm *Nemesis) sessionFlood(ctx context.Context, cc *grpc.ClientConn, hold time.Duration) (created, refused int64) {
	op := nm.Hist.Invoke(&Op{Client: -2, Workload: "hostile", Type: "session-flood", Bound: hostileMaxSessions})
	fctx, cancel := context.WithTimeout(ctx, max(hold, time.Second))
	defer cancel()
	sc := kvpb.NewSessionClient(cc)
	var nc, nr atomic.Int64
	var mu sync.Mutex
	var wrong error
	var ids []uint64
	var wg sync.WaitGroup
	for w := 0; w < floodWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fctx.Err() == nil {
				resp, err := sc.Create(fctx, &kvpb.CreateSessionRequest{TtlMs: floodSessionTTL.Milliseconds(), Name: "jepsen flood"})
				switch code := errorCode(err); {
				case err == nil:
					nc.Add(1)
					mu.Lock()
					ids = append(ids, resp.GetSession().GetId())
					mu.Unlock()
				case code == kvpb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED:
					nr.Add(1)
				case fctx.Err() != nil, code == kvpb.ErrorCode_ERROR_CODE_NOT_LEADER, code == kvpb.ErrorCode_ERROR_CODE_INDETERMINATE,
					code == kvpb.ErrorCode_ERROR_CODE_OK && isTransport(err):
				default:
					mu.Lock()
					if wrong == nil {
						wrong = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	op.Version, op.Delta = uint64(nc.Load()), nr.Load()
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	work := make(chan uint64)
	for w := 0; w < floodWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				sc.Close(cctx, &kvpb.CloseSessionRequest{Id: id}) // best effort: the TTL ends it anyway
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	if wrong != nil {
		op.Code = errorCode(wrong).String()
		op.Err = wrong.Error()
	}
	nm.Hist.OK(op, nil)
	return nc.Load(), nr.Load()
}

// pauseLockDelay is the lock-delay the frozen holder's lock carries.
const pauseLockDelay = 800 * time.Millisecond

// holderNet routes every connection of one client, whatever address it
// dials (leader hints included), through a proxy of its own, so that the
// client can be frozen: no byte of it reaches the cluster or comes back.
type holderNet struct {
	mu      sync.Mutex
	proxies map[string]*Proxy
	frozen  bool
}

func (hn *holderNet) dial(ctx context.Context, addr string) (net.Conn, error) {
	hn.mu.Lock()
	p := hn.proxies[addr]
	if p == nil {
		var err error
		if p, err = NewProxy("holder->"+addr, "127.0.0.1:0", addr); err != nil {
			hn.mu.Unlock()
			return nil, err
		}
		hn.proxies[addr] = p
	}
	if hn.frozen {
		p.Blackhole(true, true)
	}
	hn.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", p.Listen)
}

// freeze drops every byte from now on (on), or passes them again and
// resets the connections that lost some.
func (hn *holderNet) freeze(on bool) {
	hn.mu.Lock()
	defer hn.mu.Unlock()
	hn.frozen = on
	for _, p := range hn.proxies {
		if on {
			p.Blackhole(true, true)
		} else {
			p.Heal()
		}
	}
}

func (hn *holderNet) close() {
	hn.mu.Lock()
	defer hn.mu.Unlock()
	for _, p := range hn.proxies {
		p.Close()
	}
}

// pauseHolder: a lock holder whose client freezes past its TTL while the
// lock guards the outside fenced resource. The holder takes lk/pause
// (lock-delay pauseLockDelay) through connections of its own and writes
// the resource; then every byte of its client is dropped for hold (at
// least its TTL and the lock-delay) and the holder does nothing: a process
// stopped. Meanwhile another client takes the lock (after the holder's
// session expired and the lock-delay ran) and writes the resource. Then
// the holder wakes and, careless, writes the resource and a fenced key
// with its old token, as a program resuming from a pause would. The lock
// checker judges it all.
func (nm *Nemesis) pauseHolder(ctx context.Context, hold time.Duration) (string, error) {
	const name = "lk/pause"
	hn := &holderNet{proxies: map[string]*Proxy{}}
	defer hn.close()
	e := nm.Env
	cfg := e.clientConfig()
	if e.Security != nil {
		cfg.TLS, cfg.Username, cfg.Password = e.Security.WorkerTLS, e.Security.User, e.Security.Password
	}
	cfg.Dialer = hn.dial
	hc, err := client.New(cfg)
	if err != nil {
		return "", err
	}
	defer hc.Close()
	sctx, cancel := context.WithTimeout(ctx, opTimeout)
	ls, err := lock.NewSession(sctx, hc, lock.WithTTL(lockSessionTTL), lock.WithName("jepsen pause-holder"))
	cancel()
	if err != nil {
		return "", fmt.Errorf("holder session: %w", err)
	}
	watchSession(e, -3, "lock", ls.ClientSession())
	m := lock.NewMutex(ls, name, lock.WithLockDelay(pauseLockDelay))
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	op := e.H.Invoke(&Op{Client: -3, Workload: "lock", Type: "acquire", Key: name, Session: ls.ID(), Recipe: "pause-holder"})
	err = m.Lock(lctx)
	cancel()
	if err != nil {
		e.H.Error(op, err)
		cop := e.H.Invoke(&Op{Client: -3, Workload: "lock", Type: "cancel-wait", Key: name, Session: ls.ID()})
		e.H.Info(cop, errors.New("lock.Mutex cleanup"))
		ls.Close(context.WithoutCancel(ctx))
		return "holder did not get the lock", nil
	}
	recordGrant(op, m.Grant())
	op.Session = ls.ID()
	e.H.OK(op, m.Grant().GetHeader())
	token := m.Token()
	rop := e.H.Invoke(&Op{Client: -3, Workload: "lock", Type: "resource", Key: name, Token: token, Session: ls.ID()})
	wctx, cancel := context.WithTimeout(ctx, opTimeout)
	e.Resource.Write(wctx, hc, e.H, rop)
	cancel()

	// Freeze: nothing of the holder's reaches the cluster, and it does nothing.
	hn.freeze(true)
	freeze := max(hold, lockSessionTTL+pauseLockDelay+time.Second)
	contender := make(chan string, 1)
	go func() { contender <- nm.contend(ctx, name, freeze, op.HeldSince) }()
	sleepCtx(ctx, freeze)
	hn.freeze(false)
	got := <-contender

	// The holder wakes and uses its old token without looking.
	late := e.H.Invoke(&Op{Client: -3, Workload: "lock", Type: "resource", Key: name, Token: token, Session: ls.ID()})
	wctx, cancel = context.WithTimeout(ctx, opTimeout)
	e.Resource.Write(wctx, hc, e.H, late)
	fop := e.H.Invoke(&Op{Client: -3, Workload: "lock", Type: "fenced-put", Key: name, Token: token, Session: ls.ID(), Value: fmt.Sprintf("%d-late", token)})
	if resp, err := ls.ClientSession().Put(wctx, []byte("lkdata/"+name), []byte(fop.Value), client.WithFence([]byte(name), token)); err != nil {
		e.H.Error(fop, err)
	} else {
		fop.Effect = resp.GetKv().GetModIndex()
		e.H.OK(fop, resp.GetHeader())
	}
	cancel()
	ls.Close(context.WithoutCancel(ctx))
	return fmt.Sprintf("holder of token %d frozen %v; %s; its late write: %s", token, freeze, got, outcomeText(late)), nil
}

// contend takes the lock the frozen holder had (granted it at log time
// holderSince), writes the resource under it and releases it, recording it
// all.
func (nm *Nemesis) contend(ctx context.Context, name string, within time.Duration, holderSince int64) string {
	e := nm.Env
	c, err := e.NewClient()
	if err != nil {
		return "contender: " + err.Error()
	}
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, opTimeout)
	ls, err := lock.NewSession(sctx, c, lock.WithTTL(lockSessionTTL), lock.WithName("jepsen pause-contender"))
	cancel()
	if err != nil {
		return "contender session: " + err.Error()
	}
	watchSession(e, -4, "lock", ls.ClientSession())
	defer ls.Close(context.WithoutCancel(ctx))
	m := lock.NewMutex(ls, name)
	lctx, cancel := context.WithTimeout(ctx, within+2*time.Second)
	op := e.H.Invoke(&Op{Client: -4, Workload: "lock", Type: "acquire", Key: name, Session: ls.ID(), Recipe: "mutex"})
	err = m.Lock(lctx)
	cancel()
	if err != nil {
		e.H.Error(op, err)
		cop := e.H.Invoke(&Op{Client: -4, Workload: "lock", Type: "cancel-wait", Key: name, Session: ls.ID()})
		e.H.Info(cop, errors.New("lock.Mutex cleanup"))
		return "contender did not get the lock: " + shortErr(err)
	}
	recordGrant(op, m.Grant())
	op.Session = ls.ID()
	e.H.OK(op, m.Grant().GetHeader())
	token := m.Token()
	useLock(ctx, e, "lock", c, ls.ClientSession(), -4, name, token, op.ID)
	rctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	rop := e.H.Invoke(&Op{Client: -4, Workload: "lock", Type: "release", Key: name, Token: token, Session: ls.ID()})
	if err := m.Unlock(rctx); err != nil {
		e.H.Info(rop, err)
	} else {
		e.H.OK(rop, nil)
	}
	return fmt.Sprintf("contender got token %d %v after the holder's", token, time.Duration(op.HeldSince-holderSince))
}

// dialNode makes a plain gRPC connection to a client address, speaking
// TLS as root (an admin) in a --tls run.
func (nm *Nemesis) dialNode(addr string) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if sec := nm.Env.Security; sec != nil {
		creds = credentials.NewTLS(sec.AdminTLS)
	}
	return grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
}

// errorCode is the kvd error code of a gRPC error (OK for none).
func errorCode(err error) kvpb.ErrorCode {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*kvpb.ErrorInfo); ok {
			return info.GetCode()
		}
	}
	return kvpb.ErrorCode_ERROR_CODE_OK
}

// isTransport reports an error of the call itself (the deadline, a lost
// connection), not an answer.
func isTransport(err error) bool {
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Canceled, codes.Unavailable:
		return true
	}
	return false
}

func outcomeText(op *Op) string {
	if op.Err != "" {
		return string(op.Outcome) + " (" + op.Err + ")"
	}
	return string(op.Outcome)
}

// sampleRSS records every node's resident memory every interval until ctx
// ends (workload "memory"), asking each node directly.
func sampleRSS(ctx context.Context, h *Harness, hist *History, bound int64, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for i := 0; i < h.n; i++ {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := h.StatusNoHash(sctx, i)
			cancel()
			if err != nil {
				continue
			}
			op := hist.Invoke(&Op{Client: -5, Workload: "memory", Type: "rss", Key: nodeName(i), Result: int64(st.GetRssBytes()), Bound: bound})
			hist.OK(op, nil)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dedupProbe checks exactly-once across a snapshot restore (fault
// "snapshot"): an Add under a session of the nemesis's own is applied
// before every node snapshots; once the node that restarted on its
// snapshot leads, the same (session, seq) is sent again through it. It
// must be answered from the first result and not applied again: the
// counter's final read (acknowledged: one increment) judges it.
type dedupProbe struct {
	sess  uint64
	key   string
	first *Op
}

func (nm *Nemesis) startDedupProbe(ctx context.Context) *dedupProbe {
	cc, err := nm.dialNode(nm.Env.Endpoints[0])
	if err != nil {
		return nil
	}
	defer cc.Close()
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	sess, err := kvpb.NewSessionClient(cc).Create(octx, &kvpb.CreateSessionRequest{TtlMs: 60_000, Name: "jepsen dedup probe"})
	if err != nil {
		return nil
	}
	p := &dedupProbe{sess: sess.GetSession().GetId(), key: fmt.Sprintf("ctr/probe/%d", nm.probes.Add(1))}
	nm.Env.mu.Lock()
	nm.Env.ctrKeys[p.key] = true
	nm.Env.mu.Unlock()
	p.first = nm.Hist.Invoke(&Op{Client: -6, Workload: "counter", Type: "add", Key: p.key, Delta: 1})
	resp, err := kvpb.NewKVClient(cc).Add(octx, &kvpb.AddRequest{Header: &kvpb.RequestHeader{Session: p.sess, Seq: 1, MinPendingSeq: 1}, Key: []byte(p.key), Delta: 1})
	if err != nil {
		if errorCode(err) == kvpb.ErrorCode_ERROR_CODE_NOT_LEADER {
			nm.Hist.Fail(p.first, err)
		} else {
			nm.Hist.Info(p.first, err)
		}
		return nil
	}
	p.first.Result = resp.GetValue()
	nm.Hist.OK(p.first, resp.GetHeader())
	return p
}

// finishDedupProbe makes node i lead, then retries the probe's Add
// through it, recording the answer (type "retry-add": the same increment,
// not another).
func (nm *Nemesis) finishDedupProbe(ctx context.Context, p *dedupProbe, i int) {
	if p == nil {
		return
	}
	for try := 0; try < 5 && nm.leaderOr(-1) != i; try++ {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		nm.Probe.TransferLeader(tctx, nodeName(i))
		cancel()
		sleepCtx(ctx, 300*time.Millisecond)
	}
	cc, err := nm.dialNode(nm.H.Node(i).ClientAddr)
	if err != nil {
		return
	}
	defer cc.Close()
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	op := nm.Hist.Invoke(&Op{Client: -6, Workload: "counter", Type: "retry-add", Key: p.key, ServedBy: nodeName(i)})
	resp, err := kvpb.NewKVClient(cc).Add(octx, &kvpb.AddRequest{Header: &kvpb.RequestHeader{Session: p.sess, Seq: 1, MinPendingSeq: 1}, Key: []byte(p.key), Delta: 1})
	if err != nil {
		nm.Hist.Info(op, err)
		return
	}
	op.Result = resp.GetValue()
	nm.Hist.OK(op, resp.GetHeader())
	kvpb.NewSessionClient(cc).Close(octx, &kvpb.CloseSessionRequest{Id: p.sess})
}
