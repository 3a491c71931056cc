package schemas

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Kind is a family of time-sharded indices.
type Kind string

// The index families. Spans are sharded hourly, everything else daily.
const (
	KindSpans   Kind = "spans"
	KindTraces  Kind = "traces"
	KindMetrics Kind = "metrics"
	KindAudit   Kind = "audit"
)

// Kinds lists every index family.
var Kinds = []Kind{KindSpans, KindTraces, KindMetrics, KindAudit}

// DefaultPrefix is the index prefix when none is configured.
const DefaultPrefix = "deeptrace"

var prefixRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// Indices names the time-sharded indices under one prefix. The zero value
// uses DefaultPrefix.
type Indices struct {
	Prefix string
}

// ValidatePrefix checks that prefix can start an index name.
func ValidatePrefix(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("index prefix %q: want lowercase letters, digits, '_', '.', '-', at most 64, not starting with a symbol", prefix)
	}
	return nil
}

func (ix Indices) prefix() string {
	if ix.Prefix == "" {
		return DefaultPrefix
	}
	return ix.Prefix
}

// layout is the time layout of a kind's shard suffix.
func layout(k Kind) string {
	if k == KindSpans {
		return "2006.01.02.15"
	}
	return "2006.01.02"
}

// step is the time one shard of a kind covers.
func step(k Kind) time.Duration {
	if k == KindSpans {
		return time.Hour
	}
	return 24 * time.Hour
}

// Name is the index of kind k holding documents stamped t.
func (ix Indices) Name(k Kind, t time.Time) string {
	return ix.Base(k) + t.UTC().Format(layout(k))
}

// Base is the part of a kind's index names before the time suffix,
// e.g. "deeptrace-spans-".
func (ix Indices) Base(k Kind) string {
	return ix.prefix() + "-" + string(k) + "-"
}

// Pattern matches every index of kind k.
func (ix Indices) Pattern(k Kind) string { return ix.Base(k) + "*" }

// Template is the name of kind k's index template.
func (ix Indices) Template(k Kind) string { return ix.prefix() + "-" + string(k) }

// ForRange lists the indices of kind k that documents stamped in [from, to]
// live in, oldest first. An inverted range lists nothing.
func (ix Indices) ForRange(k Kind, from, to time.Time) []string {
	from, to = from.UTC(), to.UTC()
	if to.Before(from) {
		return nil
	}
	st := step(k)
	// Truncate counts from the zero time, which is midnight UTC, so it
	// aligns both hours and days.
	cur := from.Truncate(st)
	var out []string
	for !cur.After(to) {
		out = append(out, ix.Name(k, cur))
		cur = cur.Add(st)
	}
	return out
}

// ParseName returns the kind and shard start of an index name under this
// prefix, or ok=false when the name is not one of ours.
func (ix Indices) ParseName(name string) (k Kind, start time.Time, ok bool) {
	for _, kind := range Kinds {
		base := ix.Base(kind)
		if !strings.HasPrefix(name, base) {
			continue
		}
		t, err := time.Parse(layout(kind), name[len(base):])
		if err != nil {
			return "", time.Time{}, false
		}
		return kind, t, true
	}
	return "", time.Time{}, false
}

// Expired lists, of names, the indices of kind k whose whole shard ended
// before cutoff; retention deletes them. Names not ours are ignored.
func (ix Indices) Expired(names []string, k Kind, cutoff time.Time) []string {
	var out []string
	for _, n := range names {
		kind, start, ok := ix.ParseName(n)
		if !ok || kind != k {
			continue
		}
		if !start.Add(step(k)).After(cutoff) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
