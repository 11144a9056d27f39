// Package fsm is the state machine every replica applies.
//
// Apply is deterministic: the only time it knows is the leader's stamp in the
// command (log time, kept as max(log time, stamp)). It never reads the local
// clock, draws random numbers, starts goroutines or logs per entry, and it
// never lets map iteration order decide anything: ordered state lives in
// btrees, and the few maps are sorted before they are walked. The same log in
// gives the same state, the same results and the same snapshot bytes out on
// every replica.
//
// The state is: keys (with TTLs, and the session each may be bound to),
// client sessions (with the exactly-once results of their recent commands,
// and the set of keys bound to them, derived), locks (holder, fencing token, FIFO line
// of waiters, lock-delay), cache entries (value, freshness, fill lease, line
// of waiters, size bound), the members' addresses, and the auth state (users
// with bcrypt hashes made before proposing, roles and their permissions, the
// enabled flag and the token-signing key the proposer drew). Every deadline of every
// kind sits in one ordered index, so NextDeadline is O(log n) and expiry walks
// only what is due.
//
// ApplyEvents also returns the changes the entry made (fsm.Event), in the
// order it made them: puts, touches and deletes of keys (expiries, of a
// TTL or of the key's session, marked), session ends, lock grants,
// releases, handoffs, breaks and line changes, and cache stores, fills,
// lease changes, invalidations, evictions and expiries, each with the
// entry's index and log time and the item's new state. Events are output, never state: the node keeps their history, the
// snapshot does not change, and the same log gives the same events on every
// replica. Deadlines that only move (keepalives, renewals, a new leader's
// grace) are not events. WatchState is the matching snapshot of watched
// items at one index.
//
// Invariants:
//   - A fencing token or fill-lease token is the Raft index of the granting
//     entry. A lock is granted at most once per applied entry, so tokens are
//     strictly increasing per lock.
//   - Nothing expired at log time is in the state after an Apply; reads take
//     a "now" and hide what has expired by then even if no entry removed it yet.
//   - Two FSMs fed the same log produce byte-identical snapshots, and
//     StateHash is the sha256 of that encoding.
//   - A key bound to a session never outlives it: the entry that ends the
//     session (close or expiry) deletes its keys.
//   - A transaction (txn.go) applies all of its branch or nothing: every op
//     is checked before the first is applied.
//   - Auth reads (Auth, Allowed) never take the state lock: each entry that
//     changes auth state publishes a new immutable AuthView.
//
// The exported API (New, Apply, Snapshot, Restore and the read methods) is a
// contract other packages code against; it is stable. The snapshot format is
// versioned (formatVersion); Restore rejects versions it does not know.
//
// Choices where the contract was silent are written down in the comments of
// the code that makes them (search for "Choice:").
package fsm
