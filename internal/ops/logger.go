package ops

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Log formats.
const (
	FormatJSON = "json"
	FormatText = "text"
)

// Logger returns a structured logger writing to stderr in format (json or
// text) at level (debug, info, warn or error). The error names the bad
// setting (log-format, log-level).
func Logger(format, level string) (*slog.Logger, error) {
	return LoggerTo(os.Stderr, format, level)
}

// LoggerTo is Logger writing to w.
func LoggerTo(w io.Writer, format, level string) (*slog.Logger, error) {
	lv, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	if err := checkFormat(format); err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lv}
	if strings.EqualFold(format, FormatText) {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

func checkFormat(format string) error {
	switch strings.ToLower(format) {
	case FormatJSON, FormatText:
		return nil
	}
	return fmt.Errorf("log-format %q: want %s or %s", format, FormatJSON, FormatText)
}

// ParseLevel parses a log level (debug, info, warn, error, in any case).
func ParseLevel(level string) (slog.Level, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug", "info", "warn", "error":
		if err := lv.UnmarshalText([]byte(level)); err != nil {
			return 0, fmt.Errorf("log-level %q: %w", level, err)
		}
		return lv, nil
	}
	return 0, fmt.Errorf("log-level %q: want debug, info, warn or error", level)
}
