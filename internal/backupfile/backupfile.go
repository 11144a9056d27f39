// Package backupfile reads and writes kvd backup files: what
// `kvctl snapshot save` writes and `kvd restore` seeds a new cluster from.
//
// A file is, in order:
//
//	magic      "KVDBACKUP1\n" (11 bytes)
//	info       uvarint length, then a kvpb.SnapshotInfo (index, log time,
//	           fsm format version)
//	data       the fsm snapshot, as fsm.Snapshot.Encode writes it
//	trailer    "KVDEND\n\x00", data length (8 bytes, big-endian), SHA-256
//	           of the data (32 bytes)
//
// Open refuses a file whose magic, lengths or checksum do not hold: a torn
// copy, a truncated download or a flipped byte never reaches a restore. The
// SHA-256 of the data is also the state hash a member reports for that
// state (Cluster.Status), so a restored cluster can be compared with its
// source.
package backupfile

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	"github.com/kvdproject/kvd/proto/kvpb"
)

const (
	magic      = "KVDBACKUP1\n"
	endMagic   = "KVDEND\n\x00"
	trailerLen = len(endMagic) + 8 + sha256.Size
	maxInfoLen = 1 << 16
)

// ErrCorrupt is the error of a file that is not a whole, unaltered backup.
var ErrCorrupt = errors.New("backup file is torn or altered")

// Writer writes a backup to path+".part" and moves it to path only when
// Finish has checked and synced it.
type Writer struct {
	path string
	f    *os.File
	w    *bufio.Writer
	h    hash.Hash
	size uint64
}

// Create starts a backup file at path. An existing file at path is left
// alone until Finish replaces it.
func Create(path string, info *kvpb.SnapshotInfo) (*Writer, error) {
	f, err := os.OpenFile(path+".part", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	b, err := proto.Marshal(info)
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &Writer{path: path, f: f, w: bufio.NewWriterSize(f, 1<<20), h: sha256.New()}
	w.w.WriteString(magic)
	w.w.Write(binary.AppendUvarint(nil, uint64(len(b))))
	w.w.Write(b)
	return w, nil
}

// Write appends snapshot data.
func (w *Writer) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.size += uint64(len(p))
	return w.w.Write(p)
}

// Finish checks the data against the sender's checksum and size, writes
// the trailer, syncs, and renames the file into place.
func (w *Writer) Finish(sum []byte, size uint64) error {
	got := w.h.Sum(nil)
	if !bytes.Equal(got, sum) || size != w.size {
		w.Abort()
		return fmt.Errorf("%w: received %d bytes with SHA-256 %x; the server sent %d bytes with %x", ErrCorrupt, w.size, got, size, sum)
	}
	w.w.WriteString(endMagic)
	w.w.Write(binary.BigEndian.AppendUint64(nil, w.size))
	w.w.Write(got)
	err := w.w.Flush()
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(w.path+".part", w.path)
	}
	if err != nil {
		os.Remove(w.path + ".part")
		return err
	}
	if d, err := os.Open(filepath.Dir(w.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Abort removes the partial file.
func (w *Writer) Abort() {
	w.f.Close()
	os.Remove(w.path + ".part")
}

// File is a verified backup.
type File struct {
	Info   *kvpb.SnapshotInfo
	SHA256 []byte
	Size   uint64
	f      *os.File
	off    int64
}

// Open reads and verifies the file at path (the whole data is read once to
// check its SHA-256).
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	bf, err := verify(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return bf, nil
}

func verify(f *os.File) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	r := bufio.NewReader(f)
	head := make([]byte, len(magic))
	if _, err := io.ReadFull(r, head); err != nil || string(head) != magic {
		return nil, fmt.Errorf("%w: not a kvd backup (no %q at the start)", ErrCorrupt, magic[:len(magic)-1])
	}
	n, err := binary.ReadUvarint(r)
	if err != nil || n > maxInfoLen {
		return nil, fmt.Errorf("%w: bad header length", ErrCorrupt)
	}
	ib := make([]byte, n)
	if _, err := io.ReadFull(r, ib); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	info := &kvpb.SnapshotInfo{}
	if err := proto.Unmarshal(ib, info); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	off := int64(len(magic)) + int64(len(binary.AppendUvarint(nil, n))) + int64(n)
	dataLen := st.Size() - off - int64(trailerLen)
	if dataLen < 0 {
		return nil, fmt.Errorf("%w: %d bytes is too short for a backup", ErrCorrupt, st.Size())
	}
	tr := make([]byte, trailerLen)
	if _, err := f.ReadAt(tr, off+dataLen); err != nil {
		return nil, fmt.Errorf("%w: trailer: %v", ErrCorrupt, err)
	}
	if string(tr[:len(endMagic)]) != endMagic {
		return nil, fmt.Errorf("%w: no trailer at the end (a truncated copy?)", ErrCorrupt)
	}
	size := binary.BigEndian.Uint64(tr[len(endMagic):])
	sum := tr[len(endMagic)+8:]
	if size != uint64(dataLen) {
		return nil, fmt.Errorf("%w: the trailer says %d bytes of data, the file holds %d", ErrCorrupt, size, dataLen)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, dataLen)); err != nil {
		return nil, err
	}
	if got := h.Sum(nil); !bytes.Equal(got, sum) {
		return nil, fmt.Errorf("%w: data SHA-256 is %x, the trailer says %x", ErrCorrupt, got, sum)
	}
	return &File{Info: info, SHA256: sum, Size: size, f: f, off: off}, nil
}

// Data returns a reader of the verified snapshot data.
func (b *File) Data() io.Reader { return io.NewSectionReader(b.f, b.off, int64(b.Size)) }

// Close closes the file.
func (b *File) Close() error { return b.f.Close() }
