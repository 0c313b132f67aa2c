package guest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// ext4 superblock: 1024 bytes in; magic 0xEF53 at +0x38, volume name
// (16 bytes, NUL-padded) at +0x78.
const (
	sbOffset   = 1024
	sbMagicOff = 0x38
	sbLabelOff = 0x78
	ext4Magic  = 0xEF53
)

// Ext4Label reads the volume label of an ext2/3/4 file system; ok is false
// when r holds no such file system.
func Ext4Label(r io.ReaderAt) (label string, ok bool, err error) {
	buf := make([]byte, sbLabelOff+16)
	if _, err := r.ReadAt(buf, sbOffset); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return "", false, nil
		}
		return "", false, err
	}
	if binary.LittleEndian.Uint16(buf[sbMagicOff:]) != ext4Magic {
		return "", false, nil
	}
	l := buf[sbLabelOff : sbLabelOff+16]
	if i := bytes.IndexByte(l, 0); i >= 0 {
		l = l[:i]
	}
	return string(l), true, nil
}

// DisksByLabel maps ext4 labels to device nodes by scanning the block
// devices the kernel lists in sysBlock (/sys/class/block) and reading each
// one's superblock through devDir (/dev). Disks are never identified by
// their order.
func DisksByLabel(sysBlock, devDir string) (map[string]string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("find disks: %w", err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	out := map[string]string{}
	for _, n := range names {
		dev := filepath.Join(devDir, n)
		f, err := os.Open(dev)
		if err != nil {
			continue // loop/ram devices without media, or no node yet
		}
		label, ok, _ := Ext4Label(f)
		f.Close()
		if ok && label != "" {
			if _, dup := out[label]; !dup {
				out[label] = dev
			}
		}
	}
	return out, nil
}
