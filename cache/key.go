package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// maxReadableKey: longer keys are shortened to the function name and a hash.
const maxReadableKey = 200

// Key builds a stable cache key from a function name and its arguments:
// `fn(arg1,arg2)` with each argument JSON-encoded (map keys sorted), so the
// same call gives the same key in every process. Keys longer than 200 bytes
// become `fn#<sha256 of the arguments>`. Arguments should be
// JSON-encodable; others are formatted with %v, which is stable only for
// plain values.
func Key(fn string, args ...any) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(',')
		}
		j, err := json.Marshal(a)
		if err != nil {
			j = []byte(fmt.Sprintf("%v", a))
		}
		b.Write(j)
	}
	k := fn + "(" + b.String() + ")"
	if len(k) <= maxReadableKey {
		return k
	}
	sum := sha256.Sum256([]byte(b.String()))
	return fn + "#" + hex.EncodeToString(sum[:])
}
