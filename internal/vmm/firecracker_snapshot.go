package vmm

import (
	"context"
	"fmt"
	"net"
)

// Firecracker snapshots: being written; until then every call says so.

func (f *firecracker) Snapshot(ctx context.Context, s Spec, dir string) ([]string, error) {
	return nil, fmt.Errorf("vm %s: %w: firecracker snapshots are not supported yet", s.ID, ErrUnavailable)
}

func (f *firecracker) Restored(ctx context.Context, s Spec) error {
	return fmt.Errorf("vm %s: %w: firecracker snapshots are not supported yet", s.ID, ErrUnavailable)
}

func (f *firecracker) Agent(ctx context.Context, s Spec) (net.Conn, error) {
	return nil, fmt.Errorf("vm %s: %w: the firecracker agent channel is not supported yet", s.ID, ErrUnavailable)
}

func (f *firecracker) Version(ctx context.Context) (string, error) {
	return "", fmt.Errorf("%w: firecracker version: not supported yet", ErrUnavailable)
}

func (f *firecracker) Shape(s Spec) (string, error) {
	return "", fmt.Errorf("vm %s: %w: firecracker snapshots are not supported yet", s.ID, ErrUnavailable)
}
