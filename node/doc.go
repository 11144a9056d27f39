// Package node owns one kvd member and everything under Raft: its
// configuration and limits, the Raft log store (raft-wal, or raft-boltdb
// for data dirs that hold one), snapshots, the fsm adapter, the leader's
// epoch and time stamping, proposing and forwarding to the leader,
// ReadIndex reads, waiting for an index to apply, membership, and the
// watch hub (WatchHub): the member's bounded history of the changes its
// fsm reports, and the watchers it serves from it.
//
// The peer port carries Raft and the Internal gRPC service (forwarded
// proposals, read indexes, membership calls) behind one listener; a header
// byte after the optional TLS handshake selects the protocol. With PeerTLS
// every peer connection is mutual TLS and both ends check that the other
// holds a member certificate. Nothing here listens on the client port:
// package api serves clients against the Node's methods.
//
// Collector exposes the member's metrics to Prometheus (docs/metrics.md):
// what it reads from raft and the fsm at each scrape, and what it measures
// as it runs; nothing is updated per applied entry. Ready is what kvd's
// /readyz answers.
//
// Invariants:
//   - Only the leader stamps commands, with its monotonic clock anchored on
//     the log time when it took office (docs/design.md "Time"); it accepts
//     proposals only after its barrier and RecoverOp have applied.
//   - Linearizable reads use ReadIndex with batched VerifyLeader rounds, never
//     the leader lease.
//   - Apply never waits for a watcher: events go to history and a
//     dispatcher fans them out; a watcher that falls behind its buffer is
//     cancelled with its position, from which its client resumes. Within a
//     stream, changes come in index order, with no gap and no duplicate.
//   - Errors the node decides are *Error: NOT_LEADER when nothing was
//     proposed (safe to retry), INDETERMINATE when a command's outcome is
//     unknown, DISK_FULL and QUOTA_EXCEEDED when a command that adds data was
//     refused, before it was proposed, because this member's or the
//     leader's data dir is full or over --quota-bytes.
//   - No store write may leave the log in a state it cannot leave (disk.go,
//     diskstore.go): a member that cannot append steps down and stands for
//     no election until it has room, and takes writes again by itself.
//   - A data dir whose log or newest snapshot fails its checksums is refused
//     at start with a *CorruptError (corrupt.go).
//
// The Config, Limits, Peer and Node signatures are stable: cmd/kvd, tests
// and the fault harness depend on them.
package node
