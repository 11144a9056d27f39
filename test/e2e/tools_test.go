package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// builtTool is one helper program of these tests, built once per run.
type builtTool struct {
	once sync.Once
	path string
	err  error
}

var (
	toolsMu sync.Mutex
	tools   = map[string]*builtTool{}
)

// buildTool builds the helper program ./test/e2e/NAME once per test run
// and returns its path.
func buildTool(t *testing.T, name string) string {
	t.Helper()
	toolsMu.Lock()
	b := tools[name]
	if b == nil {
		b = &builtTool{}
		tools[name] = b
	}
	toolsMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "kvd-"+name+"-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, name)
		if out, err := exec.Command("go", "build", "-o", b.path, "./"+name).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", name, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}
