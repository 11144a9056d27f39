package fsm

// WatchKind names what a Watch is on.
type WatchKind uint8

const (
	WatchLock  WatchKind = iota + 1 // a lock name: grant, release, queue change
	WatchCache                      // a cache key: store, lease change, invalidation
)

type watchKey struct {
	kind WatchKind
	name string
}

// touch records that the current entry changed a lock or cache entry; its
// watches fire when the entry has been applied.
func (s *state) touch(kind WatchKind, name string) {
	s.touched = append(s.touched, watchKey{kind, name})
}

// Watch returns a channel closed the next time an applied entry changes the
// named lock or cache entry (including through expiry), and a func to stop
// watching. It never blocks Apply. To wait for a change without missing
// one, call Watch first, then read the state, then wait on the channel.
func (f *FSM) Watch(kind WatchKind, name []byte) (<-chan struct{}, func()) {
	k := watchKey{kind, string(name)}
	ch := make(chan struct{})
	f.watchMu.Lock()
	f.watchID++
	id := f.watchID
	set := f.watches[k]
	if set == nil {
		set = map[uint64]chan struct{}{}
		f.watches[k] = set
	}
	set[id] = ch
	f.watchMu.Unlock()
	return ch, func() {
		f.watchMu.Lock()
		defer f.watchMu.Unlock()
		if set := f.watches[k]; set != nil {
			delete(set, id)
			if len(set) == 0 {
				delete(f.watches, k)
			}
		}
	}
}

// fire closes the watches of the touched names (order does not matter:
// closing a channel has no effect on state).
func (f *FSM) fire(touched []watchKey) {
	if len(touched) == 0 {
		return
	}
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	for _, k := range touched {
		for _, ch := range f.watches[k] {
			close(ch)
		}
		delete(f.watches, k)
	}
}

// fireAll closes every watch (after Restore).
func (f *FSM) fireAll() {
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	for k, set := range f.watches {
		for _, ch := range set {
			close(ch)
		}
		delete(f.watches, k)
	}
}
