package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/internal/backupfile"
	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newSnapshotCommand) }

func newSnapshotCommand(a *app) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "snapshot",
		Short: "back up the cluster's state to a file (restore with kvd restore)",
	})
	var timeout time.Duration
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "stream a consistent snapshot of the whole state into FILE",
		Long: `save streams the state of the cluster, at an index at or after every write
acknowledged before it started, into FILE (written beside as FILE.part, checked
against the server's SHA-256, synced, then renamed). It needs the admin role when
auth is enabled. Seed a new cluster from it with kvd restore.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.Client()
			if err != nil {
				return err
			}
			ctx, cancel := cmd.Context(), context.CancelFunc(func() {})
			if timeout > 0 {
				ctx, cancel = context.WithTimeout(ctx, timeout)
			}
			defer cancel()
			var w *backupfile.Writer
			info, tr, err := c.SnapshotSave(ctx, func(info *kvpb.SnapshotInfo) (io.Writer, error) {
				var err error
				w, err = backupfile.Create(args[0], info)
				return w, err
			})
			if err != nil {
				if w != nil {
					w.Abort()
				}
				return fmt.Errorf("snapshot save %s: %w", args[0], err)
			}
			if err := w.Finish(tr.GetSha256(), tr.GetSize()); err != nil {
				return fmt.Errorf("snapshot save %s: %w", args[0], err)
			}
			if a.json() {
				return a.printJSON(response(info.GetHeader()).set("file", args[0]).set("index", info.GetIndex()).
					instant("log_time", info.GetLogTime()).set("size", tr.GetSize()).set("sha256", fmt.Sprintf("%x", tr.GetSha256())))
			}
			fmt.Fprintf(a.stdout, "saved %s: index %d, %d bytes, sha256 %x (from %s)\n",
				args[0], info.GetIndex(), tr.GetSize(), tr.GetSha256(), info.GetServedBy())
			return nil
		},
	}
	save.Flags().DurationVar(&timeout, "save-timeout", 0, "give up after this long (default: no limit; --timeout does not apply to a save)")
	status := &cobra.Command{
		Use:   "status FILE",
		Short: "verify a backup file and print what it holds",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := backupfile.Open(args[0])
			if err != nil {
				return fmt.Errorf("snapshot status %s: %w", args[0], err)
			}
			defer f.Close()
			if a.json() {
				// A file, no server: no header, and the log time as it is.
				return a.printJSON(part(nil).set("file", args[0]).set("index", f.Info.GetIndex()).
					instant("log_time", f.Info.GetLogTime()).set("size", f.Size).
					set("sha256", fmt.Sprintf("%x", f.SHA256)).set("format_version", f.Info.GetFormatVersion()))
			}
			fmt.Fprintf(a.stdout, "%s: index %d, log time %s, %d bytes, sha256 %x, format %d: OK\n", args[0],
				f.Info.GetIndex(), time.Unix(0, f.Info.GetLogTime()).UTC().Format(time.RFC3339), f.Size, f.SHA256, f.Info.GetFormatVersion())
			return nil
		},
	}
	cmd.AddCommand(save, status)
	return cmd
}
