package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// devNode is one node of the `kvd dev` cluster.
type devNode struct {
	name, client, peer string
}

var devNodes = []devNode{
	{"n1", "127.0.0.1:2379", "127.0.0.1:2380"},
	{"n2", "127.0.0.1:2479", "127.0.0.1:2480"},
	{"n3", "127.0.0.1:2579", "127.0.0.1:2580"},
}

func newDevCmd(stderr io.Writer) *cobra.Command {
	var dataDir, logLevel, logStore string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "run a local three-node cluster (n1, n2, n3 on 127.0.0.1:2379/2479/2579)",
		Long: `dev starts three kvd processes on this machine, named n1, n2 and n3, with
client addresses 127.0.0.1:2379, :2479, :2579 and peer addresses :2380, :2480,
:2580, keeping their data under --data-dir/<name>. Run it again to restart on
the same data. Ctrl-C stops all three.

  kvctl --endpoints 127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579 put hello world`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.Context(), dataDir, logLevel, logStore, cmd.OutOrStdout(), stderr)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./kvd-data", "parent directory of the nodes' data directories")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "log level of the nodes")
	cmd.Flags().StringVar(&logStore, "log-store", "", "Raft log store for new data dirs: wal or bolt (see kvd --help)")
	return cmd
}

func runDev(ctx context.Context, dataDir, logLevel, logStore string, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir %s: %w", dataDir, err)
	}
	var initial string
	for i, n := range devNodes {
		if i > 0 {
			initial += ","
		}
		initial += n.name + "=" + n.peer
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	var out sync.Mutex // one line at a time
	var cmds []*exec.Cmd
	var wg sync.WaitGroup
	exited := make(chan string, len(devNodes))
	for _, n := range devNodes {
		c := exec.Command(exe,
			"--name", n.name,
			"--data-dir", filepath.Join(dataDir, n.name),
			"--client-addr", n.client,
			"--peer-addr", n.peer,
			"--initial-cluster", initial,
			"--log-level", logLevel,
		)
		if logStore != "" {
			c.Args = append(c.Args, "--log-store", logStore)
		}
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // we forward signals ourselves
		pr, pw := io.Pipe()
		c.Stdout, c.Stderr = pw, pw
		if err := c.Start(); err != nil {
			pw.Close()
			for _, o := range cmds {
				o.Process.Signal(syscall.SIGTERM)
			}
			return fmt.Errorf("start %s: %w", n.name, err)
		}
		cmds = append(cmds, c)
		wg.Add(2)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				out.Lock()
				fmt.Fprintf(stdout, "%-3s| %s\n", n.name, sc.Text())
				out.Unlock()
			}
			io.Copy(io.Discard, pr)
		}()
		go func() {
			defer wg.Done()
			err := c.Wait()
			pw.Close()
			out.Lock()
			if err != nil {
				fmt.Fprintf(stderr, "kvd dev: %s exited: %v\n", n.name, err)
			} else {
				fmt.Fprintf(stderr, "kvd dev: %s stopped\n", n.name)
			}
			out.Unlock()
			exited <- n.name
		}()
	}
	fmt.Fprintf(stderr, "kvd dev: n1, n2, n3 running; endpoints 127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579; Ctrl-C stops\n")

	done := map[string]bool{}
	stopAll := func(sig os.Signal) {
		for i, c := range cmds {
			if !done[devNodes[i].name] {
				c.Process.Signal(sig)
			}
		}
	}
	running := len(cmds)
	stopping := false
	var kill <-chan time.Time
	for running > 0 {
		select {
		case sig := <-sigs:
			if stopping {
				stopAll(syscall.SIGKILL)
				continue
			}
			stopping = true
			stopAll(sig)
			kill = time.After(15 * time.Second)
		case <-ctx.Done():
			if !stopping {
				stopping = true
				stopAll(syscall.SIGTERM)
				kill = time.After(15 * time.Second)
			}
		case name := <-exited:
			done[name] = true
			running--
		case <-kill:
			stopAll(syscall.SIGKILL)
		}
	}
	wg.Wait()
	if !stopping {
		return errors.New("every node exited")
	}
	return nil
}
