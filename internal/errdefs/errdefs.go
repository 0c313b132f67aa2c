// Package errdefs classifies errors once, where they arise, so that the API
// can map them to HTTP status codes in one place. Wrap with fmt.Errorf("…: %w")
// as usual: the class survives wrapping.
package errdefs

import (
	"errors"
	"fmt"
)

// The error classes.
var (
	ErrNotFound    = errors.New("not found")
	ErrConflict    = errors.New("conflict")
	ErrInvalid     = errors.New("invalid")
	ErrUnavailable = errors.New("unavailable")
	// ErrNoSpace: the host's disk is full (HTTP 507).
	ErrNoSpace = errors.New("no space left")
	// ErrGone: what was asked for existed once and is no longer kept
	// (HTTP 410), e.g. an event position older than the journal.
	ErrGone = errors.New("gone")
)

type classed struct {
	class error
	msg   string
}

func (e *classed) Error() string        { return e.msg }
func (e *classed) Is(target error) bool { return target == e.class }

// NotFound, Conflict, Invalid and Unavailable build a classified error whose
// message is exactly the formatted text (the class is not repeated in it).
func NotFound(format string, a ...any) error    { return newf(ErrNotFound, format, a...) }
func Conflict(format string, a ...any) error    { return newf(ErrConflict, format, a...) }
func Invalid(format string, a ...any) error     { return newf(ErrInvalid, format, a...) }
func Unavailable(format string, a ...any) error { return newf(ErrUnavailable, format, a...) }
func NoSpace(format string, a ...any) error     { return newf(ErrNoSpace, format, a...) }
func Gone(format string, a ...any) error        { return newf(ErrGone, format, a...) }

func newf(class error, format string, a ...any) error {
	// Keep %w working so the cause stays inspectable.
	wrapped := fmt.Errorf(format, a...)
	return &classedWrap{classed{class, wrapped.Error()}, errors.Unwrap(wrapped)}
}

type classedWrap struct {
	classed
	cause error
}

func (e *classedWrap) Unwrap() error { return e.cause }

// IsNotFound and friends report the class of err.
func IsNotFound(err error) bool    { return errors.Is(err, ErrNotFound) }
func IsConflict(err error) bool    { return errors.Is(err, ErrConflict) }
func IsInvalid(err error) bool     { return errors.Is(err, ErrInvalid) }
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }
func IsNoSpace(err error) bool     { return errors.Is(err, ErrNoSpace) }
