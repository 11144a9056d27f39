// Package election is leader election on top of package lock, in the
// spirit of etcd's concurrency.Election.
//
// An election is a lock whose holder has a value. Candidates Campaign with
// their value: each waits in the lock's FIFO line on the server (no polling,
// no herd) until it is granted the lock, and is then the leader. The
// grant's fencing token is the term's token: it grows with every new
// leader, and the resources the leader drives should check it (a kvd write
// with client.WithFence(name, token), `kvctl put --fence NAME:TOKEN`, or
// the resource's own check through CheckFence), so that a leader that was
// paused or cut off cannot act after its successor has begun.
//
// The leader may change its value without a new term (Proclaim: same
// token), and steps down with Resign: the next candidate in line leads at
// once. When the leader's session can no longer be kept alive, Lost closes
// (before the server can expire the session, as for a lock.Mutex) and the
// next candidate leads after the session expires and the lock-delay passes.
//
// Anyone may ask who leads (Leader) and Observe the leader change: Observe
// is built on a watch of the lock, not on polling, and reports each new
// leader and each new value in order.
//
// Elections reuse lock.Session: one session may hold locks and lead
// elections at once, and all of them end with it.
package election
