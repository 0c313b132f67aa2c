// Package agentproto is the protocol between the host and mergen-init's
// agent in the guest (placeholder until the guest side lands).
package agentproto

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

const VsockPort = 1024
const SerialName = "org.mergen.agent"

type Request struct {
	Op       string    `json:"op"`
	Identity *Identity `json:"identity,omitempty"`
}

type Identity struct {
	Hostname string            `json:"hostname"`
	Device   string            `json:"device"`
	Addr     string            `json:"addr"`
	Gateway  string            `json:"gateway,omitempty"`
	MAC      string            `json:"mac,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	UnixNano int64             `json:"unixNano"`
	Entropy  []byte            `json:"entropy"`
}

type Response struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func Call(ctx context.Context, conn net.Conn, req Request) (Response, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Time{})
	}
	b, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return Response{}, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return Response{}, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	var r Response
	if err := json.Unmarshal(line, &r); err != nil {
		return Response{}, fmt.Errorf("agent %s: %w", req.Op, err)
	}
	return r, nil
}
