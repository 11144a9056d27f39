package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/kvdproject/kvd/proto/kvpb"
)

// SnapshotSave streams a consistent snapshot of the whole state (admin
// only): once the stream has started, open is called with what it holds and
// the data is written to the writer it returns. SnapshotSave returns the
// info and the server's trailer (data size and SHA-256, checked here
// against what arrived). The snapshot is at or after every write
// acknowledged before the call. A failure before the stream started is
// retried on the next endpoint; one after is returned (the writer holds a
// partial copy: start again).
func (c *Client) SnapshotSave(ctx context.Context, open func(*kvpb.SnapshotInfo) (io.Writer, error)) (*kvpb.SnapshotInfo, *kvpb.SnapshotTrailer, error) {
	var lastErr error
	for range len(c.endpoints) {
		addr := c.pick()
		cc, err := c.conn(addr)
		if err != nil {
			return nil, nil, err
		}
		stream, err := kvpb.NewClusterClient(cc).SnapshotSave(ctx, &kvpb.SnapshotSaveRequest{})
		if err != nil {
			lastErr = err
			continue
		}
		first, err := stream.Recv()
		if err != nil {
			lastErr = err
			if ctx.Err() != nil || !retryableBeforeData(err) {
				break
			}
			continue
		}
		info := first.GetInfo()
		if info == nil {
			return nil, nil, errors.New("client: snapshot stream did not start with its info")
		}
		w, err := open(info)
		if err != nil {
			return nil, nil, err
		}
		h := sha256.New()
		var size uint64
		for {
			m, err := stream.Recv()
			if err != nil {
				return nil, nil, fmt.Errorf("client: snapshot stream from %s broke after %d bytes: %w", addr, size, classify(err, true).err)
			}
			switch p := m.GetPart().(type) {
			case *kvpb.SnapshotChunk_Data:
				h.Write(p.Data)
				size += uint64(len(p.Data))
				if _, err := w.Write(p.Data); err != nil {
					return nil, nil, err
				}
			case *kvpb.SnapshotChunk_Trailer:
				if !bytes.Equal(h.Sum(nil), p.Trailer.GetSha256()) || size != p.Trailer.GetSize() {
					return nil, nil, fmt.Errorf("client: snapshot from %s arrived damaged: %d bytes, SHA-256 %x; the server sent %d bytes, %x",
						addr, size, h.Sum(nil), p.Trailer.GetSize(), p.Trailer.GetSha256())
				}
				return info, p.Trailer, nil
			default:
				return nil, nil, fmt.Errorf("client: unexpected snapshot stream part %T", p)
			}
		}
	}
	if lastErr != nil {
		return nil, nil, classify(lastErr, true).err
	}
	return nil, nil, errors.New("client: no endpoint")
}

// retryableBeforeData: a member that could not start a snapshot because it
// has no leader or is unreachable; another may.
func retryableBeforeData(err error) bool {
	return classify(err, false).class == classRetry
}
