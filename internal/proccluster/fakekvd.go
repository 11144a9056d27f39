package proccluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// RunFakeKVDIfAsked lets a test binary stand in for kvd, so tests of how
// processes are started, watched and stopped build nothing. Call it first
// in TestMain and give the nodes the kvd path os.Executable() with
// env=<mode> in their environment:
//
//	func TestMain(m *testing.M) {
//		proccluster.RunFakeKVDIfAsked("MYPKG_FAKE_KVD")
//		os.Exit(m.Run())
//	}
//
// When the environment variable env is empty or unset it returns at once.
// Otherwise it never returns: the process writes 30 lines "fake kvd: line
// N" to stderr and then, by the mode env names,
//
//   - "panic" panics at once (exit status 2), the way a kvd that cannot open
//     its data does;
//   - "silent" runs without ever listening;
//   - "serve" answers Status (role "follower") on the address after
//     --client-addr in os.Args, and exits with status 1 if it cannot listen
//     there.
//
// An unknown mode exits with status 0. Whatever the mode, the process exits
// with status 3 after a minute, which bounds one a test failed to kill.
//
// It is for test binaries only: like a main, it reads the environment and
// exits.
func RunFakeKVDIfAsked(env string) {
	mode := os.Getenv(env)
	if mode == "" {
		return
	}
	fakeKVD(mode, os.Args[1:])
	os.Exit(0)
}

func fakeKVD(mode string, args []string) {
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(os.Stderr, "fake kvd: line %d\n", i)
	}
	go func() {
		time.Sleep(time.Minute)
		os.Exit(3)
	}()
	switch mode {
	case "panic":
		fmt.Fprintln(os.Stderr, "fake kvd: opening raft log")
		panic("fake kvd: sealed segment without its index")
	case "silent":
		select {}
	case "serve":
		l, err := net.Listen("tcp", args[slices.Index(args, "--client-addr")+1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		s := grpc.NewServer()
		kvpb.RegisterClusterServer(s, fakeClusterServer{})
		s.Serve(l)
	}
}

type fakeClusterServer struct {
	kvpb.UnimplementedClusterServer
}

func (fakeClusterServer) Status(context.Context, *kvpb.StatusRequest) (*kvpb.StatusResponse, error) {
	return &kvpb.StatusResponse{Role: "follower"}, nil
}
