package truth

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLogWritesOneLinePerRecord(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenDir(dir, "svc")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				id := l.NextReqID()
				l.WriteOut(Out{ParentReqID: id, Target: "x", Proto: "http", Op: "GET /", StartNs: Now(), EndNs: Now()})
				l.WriteIn(In{ReqID: id, Proto: "http", Method: "GET", Path: "/", StartNs: Now(), EndNs: Now(), Status: 200, OK: true})
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "svc.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ids := map[string]bool{}
	calls := map[string]bool{}
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		if m["service"] != "svc" || m["pid"] == nil {
			t.Fatalf("line %d lacks service/pid: %s", n, sc.Text())
		}
		switch m["kind"] {
		case "in":
			id := m["req_id"].(string)
			if ids[id] || !strings.Contains(id, "-") {
				t.Fatalf("bad or duplicate req_id %q", id)
			}
			ids[id] = true
		case "out":
			c := m["call_id"].(string)
			if calls[c] {
				t.Fatalf("duplicate call_id %q", c)
			}
			calls[c] = true
		default:
			t.Fatalf("line %d: kind %v", n, m["kind"])
		}
	}
	if n != 8000 {
		t.Fatalf("got %d lines, want 8000", n)
	}
}

func TestNilAndDisabledLogs(t *testing.T) {
	var l *Log
	l.WriteIn(In{})
	l.WriteOut(Out{})
	l.Flush()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir("", "svc")
	if err != nil {
		t.Fatal(err)
	}
	d.WriteIn(In{})
	if d.NextReqID() == d.NextReqID() {
		t.Fatal("ids repeat")
	}
}
