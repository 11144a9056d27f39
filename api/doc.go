// Package api serves kvd's client-facing gRPC services (KV, Session, Lock,
// Cache, Cluster, Auth, Watch, plus gRPC health and reflection) in front of a Backend,
// which *node.Node implements. It holds request validation and the one
// error table; it never talks to Raft itself and never serves the Internal
// service (that is on the peer port, in package node).
//
// Server.Collector exposes the client port's metrics (gRPC latency and
// codes by method, cache reads, lock waits, fence refusals) to Prometheus.
//
// Invariants:
//   - Every request is validated before anything is proposed; a violation is
//     InvalidArgument with an ErrorInfo naming the field and the limit. A
//     request this member can tell will be refused (a session it knows has
//     ended, a cluster cap it sees reached) is refused here too, costing no
//     log entry.
//   - What one connection holds is bounded: its concurrent calls
//     (Limits.MaxConcurrentStreams), and the answers built for it but not
//     yet sent (Limits.MaxUnreadBytes, unread.go); list answers stop at
//     Limits.MaxResponseBytes.
//   - Every non-OK status carries a kvpb.ErrorInfo; grpcCodes is the one
//     table from kvd error codes to gRPC codes.
//   - CancelWait proposed by the server after a waiting Acquire ended carries
//     header {session, seq: 0}: seq 0 is never deduplicated.
//   - Reads of absent things: KV.Get -> NotFound (NOT_FOUND); Session.Get ->
//     NotFound (SESSION_EXPIRED); Lock.Get of a lock nobody holds or waits
//     for -> OK with a free LockInfo (token 0); Cache.Get -> OK, state MISS.
//     KV.Delete of an absent key -> OK, deleted = 0. KV.Touch of an absent
//     key -> NotFound (NOT_FOUND).
//   - A transaction is authorized for every key and session either branch
//     may touch (allowTxn), since which branch runs is decided at apply.
//   - A request that ended (deadline, cancel) before its command was
//     proposed carries ErrorInfo NOT_LEADER (nothing applied); one that ended
//     while its command was in flight carries INDETERMINATE.
package api
