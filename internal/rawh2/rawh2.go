// Package rawh2 speaks just enough HTTP/2 to be a hostile gRPC client: it
// opens many unary calls on one connection and then reads none of the
// answers (it never grants flow-control window and never answers a PING).
// kvd's memory-bound tests (test/e2e) and the fault harness
// (test/jepsen-lite, fault hostile-client) use it against real kvd
// processes. Frames and header encoding come from golang.org/x/net/http2;
// it never decodes the server's headers: Tally tells answers apart by frame
// type alone.
//
// Only for tests: it does no more of the protocol than that.
package rawh2

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// ErrCodeRefusedStream is RST_STREAM's REFUSED_STREAM: the server did not
// start the call (over its concurrent stream limit).
const ErrCodeRefusedStream = uint32(http2.ErrCodeRefusedStream)

// Conn is one HTTP/2 connection to a gRPC server.
type Conn struct {
	c     net.Conn
	fr    *http2.Framer
	hbuf  bytes.Buffer
	enc   *hpack.Encoder
	addr  string
	next  uint32 // next client stream id
	calls int
}

// Dial connects to addr and sends the client preface and an empty SETTINGS
// frame (default windows: 65,535 bytes per stream and for the connection).
func Dial(addr string, timeout time.Duration) (*Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return start(c, addr)
}

// start sends the client preface and SETTINGS on c.
func start(c net.Conn, addr string) (*Conn, error) {
	h := &Conn{c: c, fr: http2.NewFramer(c, c), addr: addr, next: 1}
	h.enc = hpack.NewEncoder(&h.hbuf)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		c.Close()
		return nil, err
	}
	if err := h.fr.WriteSettings(); err != nil {
		c.Close()
		return nil, err
	}
	return h, nil
}

// Close closes the connection.
func (h *Conn) Close() error { return h.c.Close() }

// Calls is how many calls were opened.
func (h *Conn) Calls() int { return h.calls }

// Call opens a unary call of method (e.g. "/kvd.v1.KV/Get") with the
// marshalled request msg and a grpc-timeout, and returns its stream id.
// It does not wait for anything.
func (h *Conn) Call(method string, msg []byte, timeout time.Duration) (uint32, error) {
	id := h.next
	h.next += 2
	scheme := "http"
	if _, ok := h.c.(*tls.Conn); ok {
		scheme = "https"
	}
	h.hbuf.Reset()
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: scheme},
		{Name: ":path", Value: method},
		{Name: ":authority", Value: h.addr},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	}
	if timeout > 0 {
		fields = append(fields, hpack.HeaderField{Name: "grpc-timeout", Value: fmt.Sprintf("%dm", timeout.Milliseconds())})
	}
	for _, f := range fields {
		if err := h.enc.WriteField(f); err != nil {
			return 0, err
		}
	}
	h.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(), EndHeaders: true}); err != nil {
		return 0, err
	}
	// A gRPC message: not compressed, its length, then the message.
	body := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:5], uint32(len(msg)))
	copy(body[5:], msg)
	if err := h.fr.WriteData(id, true, body); err != nil {
		return 0, err
	}
	h.calls++
	return id, nil
}

// Tally is what the server sent on a connection, by stream.
type Tally struct {
	// MaxConcurrentStreams the server advertised (0: none, i.e. unlimited).
	MaxConcurrentStreams uint32
	// Refused: calls the server reset with REFUSED_STREAM (never started).
	Refused int
	// Reset: calls reset with another code.
	Reset int
	// Ended: calls the server ended (trailers) without sending any message
	// data: answered with an error status.
	Ended int
	// Answering: calls for which the server sent response headers or data
	// but not yet the end: their answer is (partly) queued in the server.
	Answering int
	// Silent: calls the server said nothing about yet.
	Silent int
	// DataBytes is the DATA payload received (bounded by the connection
	// window of 65,535 bytes, since Tally never grants more).
	DataBytes int
	// GoAway: the server sent GOAWAY; Closed: the connection ended.
	GoAway, Closed bool
}

type streamSeen struct {
	headers, data, ended bool
	rst                  uint32
	reset                bool
}

// Read reads what the server sends for d (or until the connection ends),
// granting no window and answering no PING, and tallies it.
func (h *Conn) Read(d time.Duration) Tally {
	var t Tally
	seen := map[uint32]*streamSeen{}
	get := func(id uint32) *streamSeen {
		if seen[id] == nil {
			seen[id] = &streamSeen{}
		}
		return seen[id]
	}
	h.c.SetReadDeadline(time.Now().Add(d))
	var err error
	for {
		var f http2.Frame
		if f, err = h.fr.ReadFrame(); err != nil {
			break
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok && !f.IsAck() {
				t.MaxConcurrentStreams = v
			}
		case *http2.HeadersFrame:
			s := get(f.StreamID)
			s.headers = true
			s.ended = s.ended || f.StreamEnded()
		case *http2.ContinuationFrame:
			get(f.StreamID).headers = true
		case *http2.DataFrame:
			s := get(f.StreamID)
			s.data = true
			t.DataBytes += len(f.Data())
			s.ended = s.ended || f.StreamEnded()
		case *http2.RSTStreamFrame:
			s := get(f.StreamID)
			s.reset = true
			s.rst = uint32(f.ErrCode)
		case *http2.GoAwayFrame:
			t.GoAway = true
		case *http2.PingFrame:
			// Deliberately unanswered: a client that does not read.
		}
	}
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		t.Closed = true
	}
	for id := uint32(1); id < h.next; id += 2 {
		s := seen[id]
		switch {
		case s == nil:
			t.Silent++
		case s.reset && s.rst == ErrCodeRefusedStream:
			t.Refused++
		case s.reset:
			t.Reset++
		case s.ended && !s.data:
			t.Ended++
		case s.headers || s.data:
			t.Answering++
		default:
			t.Silent++
		}
	}
	return t
}

// DialTLS is Dial over TLS (ALPN "h2"), for a port that serves TLS; conf
// names the CA and, where the server asks, the client certificate.
func DialTLS(addr string, timeout time.Duration, conf *tls.Config) (*Conn, error) {
	raw, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	conf = conf.Clone()
	conf.NextProtos = []string{"h2"}
	if conf.ServerName == "" {
		conf.ServerName, _, _ = net.SplitHostPort(addr)
	}
	c := tls.Client(raw, conf)
	c.SetDeadline(time.Now().Add(timeout))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return start(c, addr)
}
