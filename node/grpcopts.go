package node

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// Connection limits shared by the client port (package api) and the peer
// port. A connection's calls, and what it may hold in the server, are
// bounded by its concurrent stream limit; keepalive pings find a client
// that stopped reading (its socket full, its pings unanswered) and close
// its connection, freeing whatever was queued for it.
const (
	// KeepaliveTime: a connection with no traffic from the client for this
	// long is pinged.
	KeepaliveTime = 30 * time.Second
	// KeepaliveTimeout: a ping unanswered for this long closes the
	// connection.
	KeepaliveTimeout = 10 * time.Second
	// MaxConnectionIdle: a connection with no call for this long is closed
	// (gracefully: gRPC clients reconnect on their next call).
	MaxConnectionIdle = 5 * time.Minute
	// KeepaliveMinTime: a client pinging more often than this is sent away
	// (GOAWAY "too many pings"), with or without calls in flight.
	KeepaliveMinTime = 5 * time.Second

	// peerMaxConcurrentStreams is the peer port's stream limit per
	// connection: a follower forwards every client call it receives to the
	// leader over one connection, so it is far above the client port's.
	peerMaxConcurrentStreams = 4096
)

// ServerOptions are the gRPC server options of a kvd port: fixed flow
// control windows (see FlowWindow), maxStreams concurrent calls per
// connection, keepalive pings and an enforcement policy, and the idle
// timeout; kvd's server codec (kvpb.ServerCodec: vtprotobuf's generated encoding).
func ServerOptions(maxStreams uint32) []grpc.ServerOption {
	return []grpc.ServerOption{
		kvpb.ServerCodec(),
		grpc.InitialWindowSize(FlowWindow),
		grpc.InitialConnWindowSize(FlowConnWindow),
		grpc.MaxConcurrentStreams(maxStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: MaxConnectionIdle,
			Time:              KeepaliveTime,
			Timeout:           KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
	}
}
