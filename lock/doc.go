// Package lock is the distributed mutex recipe on top of package client, in
// the spirit of etcd's client/v3/concurrency and Consul's api lock.
//
// A Session is a server-side lease that keeps itself alive; a Mutex belongs
// to one Session and names one lock. Lock waits in the server's FIFO line
// (no polling, no herd), and a grant carries a fencing token: the Raft index
// of the granting entry, strictly increasing per lock. Pass the token to
// whatever the lock protects (client.WithFence for kvd's own writes) so that
// a holder that was paused or partitioned cannot act on a lock it lost.
//
// Invariant: a Mutex's Lost channel closes, and its Context is canceled,
// before the server can have released the lock by expiry: the client's view
// of the session ends strictly before the server's. It also closes when a
// watch on the lock sees another token (an operator broke it: the holder
// learns within milliseconds) or a keepalive answer no longer lists it, and
// on Unlock. Nothing polls: the watch, the keepalive answers and the
// session's deadline tell the Mutex. A leader election alone does not lose the lock: the client
// retries keepalives through it within the TTL.
//
// The API is stable: new options may be added, nothing is removed.
package lock
