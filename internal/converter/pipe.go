package converter

import (
	"errors"
	"io"
	"sync"
)

// errReaderGone is what the writing side of a chunkPipe gets once the reading
// side stopped reading (end of the archive, or an error while applying).
var errReaderGone = errors.New("layer reader closed")

// chunkPipe hands decompressed layer bytes from the goroutine that reads,
// hashes and decompresses a blob to the one that writes the files, with room
// for a few chunks: unlike io.Pipe, neither side waits for the other on every
// read, so decompression and the file system calls run at the same time.
// Memory is bounded by the chunks made at the start.
type chunkPipe struct {
	full   chan []byte
	free   chan []byte
	closed chan struct{} // closed when the reader leaves
	once   sync.Once
	werr   error // why the writer stopped; read only after full is closed

	chunk []byte // the chunk being read, returned to free once used up
	cur   []byte // its unread part
}

func newChunkPipe(chunks, size int) *chunkPipe {
	p := &chunkPipe{full: make(chan []byte, chunks), free: make(chan []byte, chunks), closed: make(chan struct{})}
	for i := 0; i < chunks; i++ {
		p.free <- make([]byte, size)
	}
	return p
}

// fill copies r into the pipe until r ends (nil), r fails, or the reader
// leaves (errReaderGone).
func (p *chunkPipe) fill(r io.Reader) error {
	for {
		var b []byte
		select {
		case b = <-p.free:
		case <-p.closed:
			return errReaderGone
		}
		n, err := io.ReadFull(r, b[:cap(b)])
		if n > 0 {
			select {
			case p.full <- b[:n]:
			case <-p.closed:
				return errReaderGone
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// closeWrite ends the stream: the reader gets err after the chunks already
// sent, or io.EOF when err is nil. Called once, by the writer.
func (p *chunkPipe) closeWrite(err error) {
	p.werr = err
	close(p.full)
}

func (p *chunkPipe) Read(b []byte) (int, error) {
	for len(p.cur) == 0 {
		if p.chunk != nil {
			// Never blocks: free has room for every chunk.
			p.free <- p.chunk[:cap(p.chunk)]
			p.chunk = nil
		}
		c, ok := <-p.full
		if !ok {
			if p.werr != nil {
				return 0, p.werr
			}
			return 0, io.EOF
		}
		p.chunk, p.cur = c, c
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// closeRead tells the writer that nothing more will be read.
func (p *chunkPipe) closeRead() { p.once.Do(func() { close(p.closed) }) }
