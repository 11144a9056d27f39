// Package arch holds a test that keeps the import graph as the design draws
// it: cmd/kvctl -> election -> lock, cache -> client -> proto; cmd/kvd -> api -> node -> fsm -> proto.
package arch

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/kvdproject/kvd"

// forbidden maps a package to the packages (and external prefixes) it must
// never depend on, directly or not.
var forbidden = map[string][]string{
	"proto/kvpb": {module + "/fsm", module + "/node", module + "/api", module + "/client", module + "/lock", module + "/cache", module + "/election"},
	// The fsm knows nothing of Raft: node's adapter translates entries.
	// Metrics read the fsm from outside (node.Collector).
	"fsm": {module + "/node", module + "/api", module + "/client", module + "/lock", module + "/cache", "github.com/hashicorp/raft",
		"github.com/prometheus"},
	"node":     {module + "/api", module + "/client", module + "/lock", module + "/cache"},
	"client":   {module + "/api", module + "/fsm", "github.com/hashicorp/raft"},
	"lock":     {module + "/api", module + "/fsm", "github.com/hashicorp/raft", module + "/election"},
	"election": {module + "/api", module + "/fsm", module + "/node", "github.com/hashicorp/raft"},
	"cache":    {module + "/api", module + "/fsm", "github.com/hashicorp/raft"},
	"api":      {module + "/client", module + "/lock", module + "/cache", module + "/election"},
}

func TestImportDirection(t *testing.T) {
	for pkg, bad := range forbidden {
		t.Run(pkg, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", module+"/"+pkg).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
			}
			deps := strings.Fields(string(out))
			if len(deps) < 2 {
				t.Fatalf("go list -deps %s listed %d packages; want its dependencies", pkg, len(deps))
			}
			for _, d := range deps {
				for _, b := range bad {
					if d == b || strings.HasPrefix(d, b+"/") {
						t.Errorf("%s depends on %s; the design forbids it", pkg, d)
					}
				}
			}
		})
	}
}

// TestAPIReachesRaftOnlyThroughNode: api serves gRPC against node's small
// interface; it never imports raft itself (node does, so the dependency is
// there transitively).
func TestAPIReachesRaftOnlyThroughNode(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, module+"/api").CombinedOutput()
	if err != nil {
		t.Fatalf("go list api: %v\n%s", err, out)
	}
	imports := strings.Fields(string(out))
	if !slices.Contains(imports, module+"/node") {
		t.Fatalf("api imports %v; want it to import node", imports)
	}
	for _, imp := range imports {
		if strings.HasPrefix(imp, "github.com/hashicorp/raft") {
			t.Errorf("api imports %s; Raft belongs to node", imp)
		}
	}
}

// TestFSMImportsNoClockOrRandomness: the fsm must not read the clock or
// randomness, nor do I/O beyond snapshots.
func TestFSMImportsNoClockOrRandomness(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, module+"/fsm").CombinedOutput()
	if err != nil {
		t.Fatalf("go list fsm: %v\n%s", err, out)
	}
	// kvpb carries the generated gRPC stubs, so grpc is among fsm's
	// transitive dependencies; what matters is that fsm itself never uses it.
	for _, imp := range strings.Fields(string(out)) {
		switch {
		case imp == "math/rand", imp == "math/rand/v2", imp == "crypto/rand", imp == "os/exec",
			imp == "net", strings.HasPrefix(imp, "net/"), strings.HasPrefix(imp, "google.golang.org/grpc"):
			t.Errorf("fsm imports %s; it must stay deterministic and free of network I/O", imp)
		}
	}
}

// TestFSMReadsNoClock: time in the fsm comes only from the leader's stamp.
func TestFSMReadsNoClock(t *testing.T) {
	files, err := filepath.Glob("../../fsm/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("glob fsm: %v (%d files)", err, len(files))
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"time.Now(", "time.Since(", "time.Until(", "go func"} {
			if strings.Contains(string(b), bad) {
				t.Errorf("%s contains %q; the fsm must stay deterministic", f, bad)
			}
		}
	}
}

// TestModuleLeavesHarnessDepsOut: the fault harness is a module of its own
// (test/jepsen-lite/go.mod), so that the kvd module, which every program
// using the client requires, does not make those programs download what only
// the harness uses.
func TestModuleLeavesHarnessDepsOut(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "all").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -m all: %v\n%s", err, out)
	}
	mods := strings.Fields(string(out))
	if len(mods) < 2 || mods[0] != module {
		t.Fatalf("go list -m all = %q...; want %s first, then its requirements", mods[:min(len(mods), 3)], module)
	}
	for _, m := range mods {
		if m == "github.com/anishathalye/porcupine" {
			t.Errorf("the kvd module requires %s, which only test/jepsen-lite uses; keep it in test/jepsen-lite/go.mod", m)
		}
	}
}
