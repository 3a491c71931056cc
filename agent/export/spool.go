package export

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

// spool is a bounded FIFO of spans on disk, kept while the engine is slow
// or down and replayed oldest first when it returns. It is a directory of
// segment files; each append is one gzip member of JSON lines added to the
// open (tail) segment, which is sealed when it grows past segmentBytes or
// when replay reaches it. A sealed segment's name carries its span count,
// so a restart knows the spool's content without reading it:
//
//	<seq hex>.open          the tail, being appended to
//	<seq hex>-<spans>.seg   sealed, waiting for replay
//
// When the spool is full the oldest sealed segments not being replayed are
// evicted to make room: recent spans are worth more than old ones. What is
// evicted, or refused when nothing can be, is reported to the caller to
// count and log.
type spool struct {
	dir          string
	maxBytes     int64
	segmentBytes int64
	syncAppends  bool

	mu       sync.Mutex
	sealed   []*segment // oldest first
	tail     *segment   // nil when no tail is open
	tailFile *os.File
	nextSeq  uint64
	bytes    int64 // on disk, sealed + tail
	spans    int64
	inflight *segment // the sealed segment replay holds
}

// segment is one spool file.
type segment struct {
	seq   uint64
	path  string
	bytes int64
	spans int64
	// replayed counts the leading spans replay has written, so a replay
	// interrupted mid-segment resumes where it stopped.
	replayed int64
	// minStart is the earliest span start (unix ns) in the segment. For a
	// segment an earlier run left it is not known without reading the
	// segment; its file's time less recoveredAge stands for it.
	minStart int64
}

// errSpoolFull is returned when an append cannot fit even after eviction.
var errSpoolFull = errors.New("spool full")

// openSpool opens (creating) the spool directory and recovers what an
// earlier run left: sealed segments as they are, an open tail counted and
// sealed.
func openSpool(dir string, maxBytes, segmentBytes int64, syncAppends bool) (*spool, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool dir %s: %w", dir, err)
	}
	sp := &spool{dir: dir, maxBytes: maxBytes, segmentBytes: segmentBytes, syncAppends: syncAppends}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool dir %s: %w", dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		info, err := e.Info()
		if err != nil {
			continue
		}
		switch {
		case strings.HasSuffix(name, ".seg"):
			base := strings.TrimSuffix(name, ".seg")
			seqHex, countStr, ok := strings.Cut(base, "-")
			seq, err1 := strconv.ParseUint(seqHex, 16, 64)
			count, err2 := strconv.ParseInt(countStr, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				continue // not ours
			}
			sp.sealed = append(sp.sealed, &segment{seq: seq, path: path, bytes: info.Size(), spans: count, minStart: recoveredStart(info)})
		case strings.HasSuffix(name, ".open"):
			seq, err := strconv.ParseUint(strings.TrimSuffix(name, ".open"), 16, 64)
			if err != nil {
				continue
			}
			// A tail left by a crash: count what can be read and seal it.
			n, _ := countSpans(path)
			seg := &segment{seq: seq, path: path, bytes: info.Size(), spans: n, minStart: recoveredStart(info)}
			if err := sp.rename(seg); err != nil {
				return nil, err
			}
			sp.sealed = append(sp.sealed, seg)
		}
	}
	sort.Slice(sp.sealed, func(i, j int) bool { return sp.sealed[i].seq < sp.sealed[j].seq })
	for _, s := range sp.sealed {
		sp.bytes += s.bytes
		sp.spans += s.spans
		if s.seq >= sp.nextSeq {
			sp.nextSeq = s.seq + 1
		}
	}
	return sp, nil
}

// recoveredAge bounds how long before its file was last written a
// recovered segment's spans may have started: a segment fills in seconds to
// minutes, and spans that started earlier than this were held that long
// by the pipeline, which does not happen.
const recoveredAge = time.Hour

func recoveredStart(info os.FileInfo) int64 {
	return info.ModTime().Add(-recoveredAge).UnixNano()
}

// rename seals seg under its final name.
func (sp *spool) rename(seg *segment) error {
	final := filepath.Join(sp.dir, fmt.Sprintf("%016x-%d.seg", seg.seq, seg.spans))
	if err := os.Rename(seg.path, final); err != nil {
		return fmt.Errorf("seal spool segment %s: %w", seg.path, err)
	}
	seg.path = final
	return nil
}

// encodeBatch renders spans as one gzip member of JSON lines.
func encodeBatch(spans []schemas.Span) ([]byte, error) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	enc := json.NewEncoder(zw)
	for i := range spans {
		if err := enc.Encode(&spans[i]); err != nil {
			return nil, fmt.Errorf("spool encode span %s: %w", spans[i].SpanID, err)
		}
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// appendResult says what an append did besides storing the batch.
type appendResult struct {
	// EvictedSpans were dropped from old segments to make room.
	EvictedSpans int64
	// EvictedSegments is how many segments those were.
	EvictedSegments int
}

// Append stores spans at the tail. When the spool would exceed its limit
// it evicts the oldest sealed segments that replay does not hold; when
// that is not enough it refuses the batch with errSpoolFull.
func (sp *spool) Append(spans []schemas.Span) (appendResult, error) {
	var res appendResult
	if len(spans) == 0 {
		return res, nil
	}
	member, err := encodeBatch(spans)
	if err != nil {
		return res, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	need := int64(len(member))
	for sp.bytes+need > sp.maxBytes {
		victim := -1
		for i, s := range sp.sealed {
			if s != sp.inflight {
				victim = i
				break
			}
		}
		if victim < 0 {
			return res, errSpoolFull
		}
		s := sp.sealed[victim]
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("evict spool segment %s: %w", s.path, err)
		}
		sp.sealed = append(sp.sealed[:victim], sp.sealed[victim+1:]...)
		sp.bytes -= s.bytes
		sp.spans -= s.spans
		res.EvictedSpans += s.spans
		res.EvictedSegments++
	}
	if sp.tail == nil {
		seq := sp.nextSeq
		sp.nextSeq++
		path := filepath.Join(sp.dir, fmt.Sprintf("%016x.open", seq))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_EXCL, 0o640)
		if err != nil {
			return res, fmt.Errorf("spool segment %s: %w", path, err)
		}
		sp.tail, sp.tailFile = &segment{seq: seq, path: path}, f
	}
	if _, err := sp.tailFile.Write(member); err != nil {
		// A partial member is skipped at replay (gzip reports it); the
		// batch is reported as not stored.
		return res, fmt.Errorf("spool append %s: %w", sp.tail.path, err)
	}
	if sp.syncAppends {
		if err := sp.tailFile.Sync(); err != nil {
			return res, fmt.Errorf("spool sync %s: %w", sp.tail.path, err)
		}
	}
	sp.tail.bytes += need
	sp.tail.spans += int64(len(spans))
	for i := range spans {
		if st := spans[i].StartNs; sp.tail.minStart == 0 || st < sp.tail.minStart {
			sp.tail.minStart = st
		}
	}
	sp.bytes += need
	sp.spans += int64(len(spans))
	if sp.tail.bytes >= sp.segmentBytes {
		if err := sp.sealTail(); err != nil {
			return res, err
		}
	}
	return res, nil
}

// sealTail closes the tail and queues it for replay. Callers hold mu.
func (sp *spool) sealTail() error {
	if sp.tail == nil {
		return nil
	}
	seg, f := sp.tail, sp.tailFile
	sp.tail, sp.tailFile = nil, nil
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("spool sync %s: %w", seg.path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("spool close %s: %w", seg.path, err)
	}
	if err := sp.rename(seg); err != nil {
		return err
	}
	sp.sealed = append(sp.sealed, seg)
	return nil
}

// Next hands the oldest segment to replay, sealing the tail when it is all
// there is. It returns nil when the spool is empty.
func (sp *spool) Next() (*segment, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.inflight != nil {
		return sp.inflight, nil
	}
	if len(sp.sealed) == 0 {
		if sp.tail == nil || sp.tail.spans == 0 {
			return nil, nil
		}
		if err := sp.sealTail(); err != nil {
			return nil, err
		}
	}
	sp.inflight = sp.sealed[0]
	return sp.inflight, nil
}

// Done removes a replayed segment.
func (sp *spool) Done(seg *segment) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.inflight == seg {
		sp.inflight = nil
	}
	for i, s := range sp.sealed {
		if s == seg {
			sp.sealed = append(sp.sealed[:i], sp.sealed[i+1:]...)
			sp.bytes -= s.bytes
			sp.spans -= s.spans
			break
		}
	}
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove replayed spool segment %s: %w", seg.path, err)
	}
	return nil
}

// Empty reports whether nothing waits in the spool (nothing sealed, no
// tail with spans, no segment being replayed).
func (sp *spool) Empty() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.spans == 0 && sp.inflight == nil
}

// MinStart returns the earliest span start (unix ns) the spool holds; ok
// is false when it is empty.
func (sp *spool) MinStart() (ns int64, ok bool) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	segs := sp.sealed
	if sp.tail != nil {
		segs = append(segs[:len(segs):len(segs)], sp.tail)
	}
	for _, s := range segs {
		if s.spans > 0 && (!ok || s.minStart < ns) {
			ns, ok = s.minStart, true
		}
	}
	return ns, ok
}

// Size returns the bytes on disk, the spans held and the segment count.
func (sp *spool) Size() (bytes, spans int64, segments int) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	segments = len(sp.sealed)
	if sp.tail != nil {
		segments++
	}
	return sp.bytes, sp.spans, segments
}

// Close seals the tail so the next start finds every segment sealed.
func (sp *spool) Close() error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.sealTail()
}

// segmentReader streams a segment's spans back.
type segmentReader struct {
	f   *os.File
	zr  *gzip.Reader
	sc  *bufio.Scanner
	err error
}

func openSegment(path string) (*segmentReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open spool segment: %w", err)
	}
	zr, err := gzip.NewReader(bufio.NewReaderSize(f, 256<<10))
	if err != nil {
		f.Close()
		if errors.Is(err, io.EOF) {
			return &segmentReader{err: io.EOF}, nil
		}
		return nil, fmt.Errorf("spool segment %s: %w", path, err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	return &segmentReader{f: f, zr: zr, sc: sc}, nil
}

// Next returns up to n spans; io.EOF once the segment is exhausted. A
// truncated tail (the process died mid-append) ends the segment early with
// the spans read so far; the error says so.
func (r *segmentReader) Next(n int) ([]schemas.Span, error) {
	if r.err != nil {
		return nil, r.err
	}
	out := make([]schemas.Span, 0, n)
	for len(out) < n {
		if !r.sc.Scan() {
			r.err = r.sc.Err()
			if r.err == nil {
				r.err = io.EOF
			} else if errors.Is(r.err, io.ErrUnexpectedEOF) || errors.Is(r.err, gzip.ErrChecksum) || errors.Is(r.err, gzip.ErrHeader) {
				r.err = fmt.Errorf("truncated spool segment: %w", r.err)
			}
			if len(out) > 0 {
				return out, nil
			}
			return nil, r.err
		}
		var s schemas.Span
		if err := json.Unmarshal(r.sc.Bytes(), &s); err != nil {
			// A torn line at a crash point; skip it.
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

func (r *segmentReader) Close() error {
	if r.f == nil {
		return nil
	}
	r.zr.Close()
	return r.f.Close()
}

// countSpans counts the readable spans of a segment file.
func countSpans(path string) (int64, error) {
	r, err := openSegment(path)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	var n int64
	for {
		b, err := r.Next(4096)
		n += int64(len(b))
		if err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
	}
}
