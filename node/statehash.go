package node

import "sync"

// stateHasher serves the state hash of Cluster.Status. The hash encodes the
// whole state (time and memory linear in the number of keys), and every
// client looking for the leader asks some member for its Status: a hundred
// clients starting at once would make a member encode its state a hundred
// times. So a hash is computed at most once per applied index, and at most
// one computation runs at a time; callers that arrive while one runs share
// its result.
type stateHasher struct {
	mu      sync.Mutex
	index   uint64        // applied index the cached hash is valid at
	hash    []byte        // nil: none cached
	running chan struct{} // non-nil while a computation runs; closed at its end
}

// stateHash returns the hash of the fsm's state. When nothing was applied
// since the last computation it is that state's exact hash; a caller that
// joins a running computation gets the hash of a state captured after that
// computation began (as with any Status answer under writes, the hash then
// need not match the applied index reported beside it).
func (n *Node) stateHash() []byte {
	h := &n.hasher
	// The applied index is read before the state is captured: the captured
	// state is at least as new. The cached hash is served only while the
	// applied index still equals the one read, so then it is exact.
	idx := n.fsm.AppliedIndex()
	h.mu.Lock()
	if h.hash != nil && h.index == idx {
		hash := h.hash
		h.mu.Unlock()
		return hash
	}
	if ch := h.running; ch != nil {
		h.mu.Unlock()
		<-ch
		h.mu.Lock()
		hash := h.hash
		h.mu.Unlock()
		if hash != nil {
			return hash
		}
		return n.fsm.StateHash()
	}
	ch := make(chan struct{})
	h.running = ch
	h.mu.Unlock()

	hash := n.fsm.StateHash()

	h.mu.Lock()
	h.index, h.hash, h.running = idx, hash, nil
	h.mu.Unlock()
	close(ch)
	return hash
}
