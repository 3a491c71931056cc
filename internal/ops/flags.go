package ops

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/spf13/pflag"
)

// Flag names every command shares.
const (
	FlagLogFormat = "log-format"
	FlagLogLevel  = "log-level"
	FlagListen    = "ops-listen"
)

// Flags are the operations settings of a long-running command. Fields set
// before Register become the flags' defaults; zero fields default to json,
// info and ListenDefault.
type Flags struct {
	LogFormat string
	LogLevel  string
	// Listen is the operations endpoint's address; empty disables it.
	Listen string
}

// Register adds --log-format, --log-level and --ops-listen to fs.
func (f *Flags) Register(fs *pflag.FlagSet) {
	if f.LogFormat == "" {
		f.LogFormat = FormatJSON
	}
	if f.LogLevel == "" {
		f.LogLevel = "info"
	}
	if f.Listen == "" {
		f.Listen = ListenDefault
	}
	fs.StringVar(&f.LogFormat, FlagLogFormat, f.LogFormat, "log format: json or text")
	fs.StringVar(&f.LogLevel, FlagLogLevel, f.LogLevel, "log level: debug, info, warn or error")
	fs.StringVar(&f.Listen, FlagListen, f.Listen, "address of the operations endpoint serving "+PathMetrics+", "+PathHealthz+" and "+PathReadyz+" (empty: off)")
}

// Validate checks the settings; the error names the bad one.
func (f *Flags) Validate() error {
	if err := checkFormat(f.LogFormat); err != nil {
		return err
	}
	if _, err := ParseLevel(f.LogLevel); err != nil {
		return err
	}
	if f.Listen == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(f.Listen)
	if err != nil {
		return fmt.Errorf("%s %q: %w", FlagListen, f.Listen, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%s %q: port %q is not a number in 0..65535", FlagListen, f.Listen, port)
	}
	return nil
}

// Logger validates the settings and returns the logger they describe. It
// also makes it slog's default, so library code that logs through slog
// follows the same format.
func (f *Flags) Logger() (*slog.Logger, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	l, err := Logger(f.LogFormat, f.LogLevel)
	if err != nil {
		return nil, err
	}
	slog.SetDefault(l)
	return l, nil
}
