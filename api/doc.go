// Package api owns a kvd node: it wires hashicorp/raft, its log store
// (raft-wal, or raft-boltdb for data dirs that hold one), the transport, snapshots and the fsm into one runnable Node, and serves the
// gRPC services of proto/kvd/v1 (KV, Session, Lock, Cache, Cluster,
// Internal, plus grpc health and reflection).
//
// Invariants:
//   - Every request is validated before anything is proposed; a violation is
//     InvalidArgument with an ErrorInfo naming the field and the limit.
//   - Only the leader stamps commands, with its monotonic clock anchored on
//     the log time when it took office (DESIGN.md "Time is part of the log");
//     it accepts proposals only after its barrier and RecoverOp have applied.
//   - Linearizable reads use ReadIndex with batched VerifyLeader rounds, never
//     the leader lease.
//   - Every non-OK status carries a kvpb.ErrorInfo; grpcCodes is the one
//     table from kvd error codes to gRPC codes.
//   - CancelWait proposed by the server after a waiting Acquire ended carries
//     header {session, seq: 0}: seq 0 is never deduplicated.
//   - Reads of absent things: KV.Get -> NotFound (NOT_FOUND); Session.Get ->
//     NotFound (SESSION_EXPIRED); Lock.Get of a lock nobody holds or waits
//     for -> OK with a free LockInfo (token 0); Cache.Get -> OK, state MISS.
//     KV.Delete of an absent key -> OK, deleted = 0.
//   - A request that ended (deadline, cancel) before its command was
//     proposed carries ErrorInfo NOT_LEADER (nothing applied); one that ended
//     while its command was in flight carries INDETERMINATE.
//
// The Config, Limits, Peer and Node signatures are stable: cmd/kvd, tests
// and the fault harness depend on them.
package api
