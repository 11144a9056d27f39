// Package client is the Go client of kvd. It knows the endpoints, finds the
// leader, retries safely and carries context deadlines. It imports only the
// generated protobuf package, gRPC and the standard library.
//
// # Exactly-once writes
//
// Every mutating call carries a RequestHeader (session, seq, min_pending_seq).
// Plain writes (Client.Put, Delete, DeletePrefix, Add, Touch, Txn's Commit,
// CacheSet, Invalidate, BreakLock) run under the client's own session,
// created on the first write with Config.SessionTTL, kept alive in the
// background and recreated when it ends. A Session made with NewSession has its own sequence. A command keeps
// its seq across every retry, so the server applies it at most once and a
// retry gets the first result. min_pending_seq is the lowest seq still in
// flight in the session.
//
// Writes are retried on NOT_LEADER, on connection failures and on lost
// answers, with a backoff from 20ms doubling to 500ms, until ctx ends. If an
// attempt may have reached the log and no definite answer came, the error
// is ErrIndeterminate; if none can have, ErrUnavailable. A write under the
// client's own session that finds the session expired is rerun under a new
// session when no earlier attempt can have been applied.
//
// A put (or a transaction's put) WithSession names a second session, the
// one the key is bound to. The server answers SESSION_EXPIRED when either
// session has ended; the client then asks the server (GetSession) whether
// its own, the writing session, is still live, and if so returns
// ErrSessionExpired for the bound one without giving up the writing
// session.
//
// # Transactions
//
// Client.Txn and Session.Txn build a transaction in the manner of etcd's
// clientv3: If(Compare(...)...).Then(OpPut(...)...).Else(...).Commit(ctx).
// It is one command, exactly-once like any other write.
//
// # Keepalives
//
// Sessions (and Client.KeepAlive) renew over one Session.KeepAliveStream per
// connection, shared by every renewal the client sends to that member; each
// renewal is still one attempt of the retry loop, with its own deadline. A
// member that does not serve the stream gets unary KeepAlive calls.
//
// # Reads
//
// Reads are linearizable unless WithStale is given, and are retried freely.
//
// # Watches
//
// Watch is an iterator over the changes to a key, a prefix, a lock, a cache
// entry or a session, in index order. Any member serves it; the client
// keeps the position of the last change it delivered and, when the member
// dies, goes silent (cut off from the leader) or cancels the stream,
// resumes on another member exactly after it: no gap, no duplicate.
//
// # Errors
//
// Every kvd answer is an *Error carrying the server's ErrorCode and message;
// errors.Is matches it against the sentinels (ErrNotFound, ...).
//
// # TLS and users
//
// Config.TLS makes every connection TLS (TLSFromFiles reads the PEM files
// of a CA and a client certificate). A TLS failure that a retry cannot cure
// (an untrusted or expired certificate, the wrong server name, a server
// that does not speak TLS or refuses the client's certificate) is returned
// at once as a *TLSError. With Config.Username the client signs in
// (Auth.Authenticate) on first use and sends the token as metadata
// "authorization: Bearer <token>"; it renews the token before its TTL ends,
// and when the server refuses a token it signs in again and retries the
// call once. The Auth service (users, roles, permissions) has a method
// each: UserAdd, RoleGrantPermission, AuthEnable, ...
//
// The API is stable: other packages (lock, cache, kvctl) code against it.
package client
