package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/fsm"
	"github.com/kvdproject/kvd/internal/backupfile"
)

func newRestoreCmd() *cobra.Command {
	var from, name, dataDir, initial string
	cmd := &cobra.Command{
		Use:   "restore --from FILE --name NAME --data-dir DIR --initial-cluster n1=addr,...",
		Short: "seed a new member's data dir from a backup (kvctl snapshot save)",
		Long: `restore checks FILE (its checksum and its snapshot) and writes it into DIR as a
Raft snapshot of a NEW cluster whose members are --initial-cluster. Run it once for
every member of the new cluster, each with its own --name and --data-dir and the same
FILE and --initial-cluster, then start each member with kvd as usual on that data
dir. DIR must not hold a member's state already.

The backup's member records (the old cluster's addresses) are dropped: each
member registers its own when it starts. Log time resumes where the backup left it, so nothing expires early: keys, sessions
and locks in the backup keep the time they had left when it was taken.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case from == "":
				return usageError{errors.New("--from is required")}
			case name == "":
				return usageError{errors.New("--name is required")}
			case dataDir == "":
				return usageError{errors.New("--data-dir is required")}
			}
			peers, err := parsePairs("--initial-cluster", initial)
			if err != nil {
				return usageError{err}
			}
			if len(peers) == 0 {
				return usageError{errors.New("--initial-cluster is required: the members of the new cluster")}
			}
			var conf raft.Configuration
			found := false
			for _, p := range peers {
				conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p[0]), Address: raft.ServerAddress(p[1])})
				found = found || p[0] == name
			}
			if !found {
				return usageError{fmt.Errorf("--initial-cluster does not name this member %q", name)}
			}
			return restore(cmd.OutOrStdout(), from, name, dataDir, conf)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&from, "from", "", "backup file written by kvctl snapshot save")
	fs.StringVar(&name, "name", "", "this member's name in the new cluster")
	fs.StringVar(&dataDir, "data-dir", "", "data dir to create for this member (must hold no state)")
	fs.StringVar(&initial, "initial-cluster", "", "every member of the new cluster: name=peer-addr,...")
	return cmd
}

func restore(out io.Writer, from, name, dataDir string, conf raft.Configuration) error {
	bf, err := backupfile.Open(from)
	if err != nil {
		return err
	}
	defer bf.Close()
	// Decode it whole before writing anything: a snapshot this build cannot
	// read is refused here, not by the member at start-up.
	f := fsm.New()
	if err := f.Restore(io.NopCloser(bf.Data())); err != nil {
		return fmt.Errorf("%s: %w", from, err)
	}
	if f.AppliedIndex() != bf.Info.GetIndex() {
		return fmt.Errorf("%s: %w: the header says index %d, the snapshot holds index %d",
			from, backupfile.ErrCorrupt, bf.Info.GetIndex(), f.AppliedIndex())
	}
	hash := f.StateHash()
	if !bytes.Equal(hash, bf.SHA256) {
		return fmt.Errorf("%s: the decoded state hashes to %x, the file says %x: this build encodes it differently", from, hash, bf.SHA256)
	}
	// The old cluster's member records would send clients to its addresses.
	f.ForgetMembers()
	if err := emptyDataDir(dataDir); err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir %s: %w", dataDir, err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Output: io.Discard})
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dataDir, 2, logger)
	if err != nil {
		return fmt.Errorf("snapshot store in %s: %w", dataDir, err)
	}
	_, trans := raft.NewInmemTransport("") // only to encode the peer list of old snapshot versions
	index := bf.Info.GetIndex()
	sink, err := snaps.Create(raft.SnapshotVersionMax, index, 1, conf, index, trans)
	if err != nil {
		return fmt.Errorf("create snapshot in %s: %w", dataDir, err)
	}
	w := bufio.NewWriterSize(sink, 1<<20)
	err = f.Snapshot().Encode(w)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("write snapshot in %s: %w", dataDir, err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("write snapshot in %s: %w", dataDir, err)
	}
	fmt.Fprintf(out, "restored %s into %s for member %s: index %d, state hash %x (as saved; the old cluster's member addresses dropped)\n",
		from, dataDir, name, index, hash)
	fmt.Fprintf(out, "start it: kvd --name %s --data-dir %s --peer-addr ADDR --client-addr ADDR (plus your TLS flags)\n", name, dataDir)
	return nil
}

// emptyDataDir refuses a data dir that already holds a member's state.
func emptyDataDir(dir string) error {
	for _, n := range []string{"wal", "raft.db", "snapshots"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			return fmt.Errorf("data dir %s already holds a member's state (%s): restore seeds a new member; give it a new, empty data dir", dir, n)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("data dir %s: %w", dir, err)
		}
	}
	return nil
}
