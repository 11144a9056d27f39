// Package rawh2 speaks just enough HTTP/2 to be a hostile gRPC client: it
// opens many unary calls on one connection and then reads none of the
// answers (it never grants flow-control window and never answers a PING).
// kvd's memory-bound tests (test/e2e) and the fault harness
// (test/jepsen-lite, fault hostile-client) use it against real kvd
// processes. It encodes its headers as HPACK literals and never decodes the
// server's: Tally tells answers apart by frame type alone.
//
// Only for tests: it implements no more of the protocol than that.
package rawh2

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// HTTP/2 frame types and flags used here (RFC 9113 section 6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePing         = 0x6
	frameGoAway       = 0x7
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagEndHeaders = 0x4
	flagAck        = 0x1

	settingMaxConcurrentStreams = 0x3

	// ErrCodeRefusedStream is RST_STREAM's REFUSED_STREAM: the server did
	// not start the call (over its concurrent stream limit).
	ErrCodeRefusedStream = 0x7
)

const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Conn is one plaintext HTTP/2 connection to a gRPC server.
type Conn struct {
	c     net.Conn
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
	h := &Conn{c: c, addr: addr, next: 1}
	if _, err := io.WriteString(c, preface); err != nil {
		c.Close()
		return nil, err
	}
	if err := h.frame(frameSettings, 0, 0, nil); err != nil {
		c.Close()
		return nil, err
	}
	return h, nil
}

// Close closes the connection.
func (h *Conn) Close() error { return h.c.Close() }

// Calls is how many calls were opened.
func (h *Conn) Calls() int { return h.calls }

func (h *Conn) frame(typ, flags byte, stream uint32, payload []byte) error {
	var hdr [9]byte
	hdr[0], hdr[1], hdr[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	hdr[3], hdr[4] = typ, flags
	binary.BigEndian.PutUint32(hdr[5:], stream&0x7fffffff)
	h.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := h.c.Write(append(hdr[:], payload...)); err != nil {
		return err
	}
	return nil
}

// hpackInt appends an HPACK integer with an n-bit prefix (RFC 7541 5.1).
func hpackInt(b []byte, first byte, n uint, v int) []byte {
	max := 1<<n - 1
	if v < max {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(max))
	v -= max
	for v >= 128 {
		b = append(b, byte(v%128+128))
		v /= 128
	}
	return append(b, byte(v))
}

// literal appends a header field "without indexing, new name", no Huffman.
func literal(b []byte, name, value string) []byte {
	b = append(b, 0x00)
	b = hpackInt(b, 0, 7, len(name))
	b = append(b, name...)
	b = hpackInt(b, 0, 7, len(value))
	return append(b, value...)
}

// Call opens a unary call of method (e.g. "/kvd.v1.KV/Get") with the
// marshalled request msg and a grpc-timeout, and returns its stream id.
// It does not wait for anything.
func (h *Conn) Call(method string, msg []byte, timeout time.Duration) (uint32, error) {
	id := h.next
	h.next += 2
	var hb []byte
	hb = literal(hb, ":method", "POST")
	scheme := "http"
	if _, ok := h.c.(*tls.Conn); ok {
		scheme = "https"
	}
	hb = literal(hb, ":scheme", scheme)
	hb = literal(hb, ":path", method)
	hb = literal(hb, ":authority", h.addr)
	hb = literal(hb, "content-type", "application/grpc")
	hb = literal(hb, "te", "trailers")
	if timeout > 0 {
		hb = literal(hb, "grpc-timeout", fmt.Sprintf("%dm", timeout.Milliseconds()))
	}
	if err := h.frame(frameHeaders, flagEndHeaders, id, hb); err != nil {
		return 0, err
	}
	body := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:5], uint32(len(msg)))
	copy(body[5:], msg)
	if err := h.frame(frameData, flagEndStream, id, body); err != nil {
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
	var hdr [9]byte
	var err error
	for {
		if _, err = io.ReadFull(h.c, hdr[:]); err != nil {
			break
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags := hdr[3], hdr[4]
		id := binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff
		payload := make([]byte, n)
		if _, err = io.ReadFull(h.c, payload); err != nil {
			break
		}
		switch typ {
		case frameSettings:
			if flags&flagAck != 0 {
				continue
			}
			for i := 0; i+6 <= len(payload); i += 6 {
				if binary.BigEndian.Uint16(payload[i:]) == settingMaxConcurrentStreams {
					t.MaxConcurrentStreams = binary.BigEndian.Uint32(payload[i+2:])
				}
			}
		case frameHeaders, frameContinuation:
			s := get(id)
			s.headers = true
			if flags&flagEndStream != 0 {
				s.ended = true
			}
		case frameData:
			s := get(id)
			s.data = true
			t.DataBytes += n
			if flags&flagEndStream != 0 {
				s.ended = true
			}
		case frameRSTStream:
			s := get(id)
			s.reset = true
			if len(payload) >= 4 {
				s.rst = binary.BigEndian.Uint32(payload)
			}
		case frameGoAway:
			t.GoAway = true
		case framePing:
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
