// Package logging builds the slog loggers every mergen program uses, from a
// level (debug|info|warn|error) and a format:
//
//   - console: coloured, one line per record, "[LEVEL] TIMESTAMP MESSAGE key=value…"
//   - json:    one JSON object per line (for log shippers)
//   - text:    slog's logfmt-style key=value lines
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/lmittmann/tint"
)

// Levels and Formats list the accepted values, for validation messages.
var (
	Levels  = []string{"debug", "info", "warn", "error"}
	Formats = []string{"console", "json", "text"}
)

// ParseLevel maps a level name to its slog level.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want one of %s)", s, strings.Join(Levels, "|"))
}

// New returns a logger writing to w. color applies to the console format only.
func New(w io.Writer, level, format string, color bool) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	var h slog.Handler
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "console", "":
		h = tint.NewHandler(w, &tint.Options{
			Level:       lvl,
			TimeFormat:  time.RFC3339,
			NoColor:     !color,
			ReplaceAttr: consoleLevel(color),
		})
	case "json":
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl})
	case "text":
		h = slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl})
	default:
		return nil, fmt.Errorf("unknown log format %q (want one of %s)", format, strings.Join(Formats, "|"))
	}
	return slog.New(h), nil
}

// ANSI colours per level: INFO blue, WARN yellow, ERROR red, DEBUG cyan.
var levelColor = map[slog.Level]string{
	slog.LevelDebug: "\x1b[36m",
	slog.LevelInfo:  "\x1b[34m",
	slog.LevelWarn:  "\x1b[33m",
	slog.LevelError: "\x1b[31m",
}

// consoleLevel renders the level as "[LEVEL]" ahead of the timestamp. tint
// prints time, level, message in that order, so the time attribute is dropped
// and the level attribute carries both, in the documented order.
func consoleLevel(color bool) func([]string, slog.Attr) slog.Attr {
	return func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) != 0 {
			return a
		}
		switch a.Key {
		case slog.TimeKey:
			return slog.Attr{}
		case slog.LevelKey:
			lvl, ok := a.Value.Any().(slog.Level)
			if !ok {
				return a
			}
			text := "[" + lvl.String() + "] " + time.Now().Format(time.RFC3339)
			if color {
				c := levelColor[lvl]
				if c == "" {
					c = levelColor[slog.LevelError]
				}
				text = c + "[" + lvl.String() + "]\x1b[0m " + time.Now().Format(time.RFC3339)
			}
			return slog.String(slog.LevelKey, text)
		}
		return a
	}
}
