package election_test

import (
	"context"
	"fmt"
	"net"
	"testing"

	"github.com/kvdproject/kvd/internal/testcluster"
)

// exampleTB lets the runnable examples start an in-process cluster
// (testcluster wants a testing.TB; an Example has none). Only the methods
// testcluster calls are provided.
type exampleTB struct {
	testing.TB
	cleanups []func()
}

func (t *exampleTB) Helper()                        {}
func (t *exampleTB) Cleanup(f func())               { t.cleanups = append(t.cleanups, f) }
func (t *exampleTB) Logf(string, ...any)            {}
func (t *exampleTB) Fatal(args ...any)              { panic(fmt.Sprint(args...)) }
func (t *exampleTB) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }

// exampleCluster starts a 3-node in-process cluster for an example and
// returns its endpoints, the dialer that reaches them, and its stop.
func exampleCluster() (endpoints []string, dial func(context.Context, string) (net.Conn, error), stop func()) {
	t := &exampleTB{}
	cl := testcluster.Start(t, 3)
	if _, err := cl.WaitLeader(context.Background()); err != nil {
		panic(err)
	}
	return cl.Endpoints, cl.Dialer, func() {
		for i := len(t.cleanups) - 1; i >= 0; i-- {
			t.cleanups[i]()
		}
	}
}
