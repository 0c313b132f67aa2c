package vmm

import (
	"context"
	"fmt"
	"net"
)

func (q *qemu) Snapshot(ctx context.Context, s Spec, dir string) ([]string, error) {
	return nil, fmt.Errorf("vm %s: qemu snapshot: TODO", s.ID)
}

func (q *qemu) Restored(ctx context.Context, s Spec) error {
	return fmt.Errorf("vm %s: TODO", s.ID)
}

func (q *qemu) Agent(ctx context.Context, s Spec) (net.Conn, error) {
	return nil, fmt.Errorf("vm %s: TODO", s.ID)
}

func (q *qemu) Version(ctx context.Context) (string, error) {
	return "", fmt.Errorf("TODO")
}

func (q *qemu) Shape(s Spec) (string, error) {
	return "", fmt.Errorf("vm %s: TODO", s.ID)
}
