package gorun

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// getg returns the current goroutine's runtime.g (getg_amd64_test.s).
func getg() unsafe.Pointer

// stackGoid parses the goroutine id from the runtime's own stack header.
func stackGoid(t *testing.T) uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf)) // "goroutine 7 [running]:"
	id, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		t.Fatalf("parse %q: %v", buf, err)
	}
	return id
}

// TestInspectSelf reads this test's own binary, rebuilt with `go test -c`
// (`go test` links without DWARF), and checks the offsets against the
// running runtime: same toolchain, same runtime.g layout.
func TestInspectSelf(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("probe points are decoded for amd64 only")
	}
	if testing.Short() {
		t.Skip("builds a binary")
	}
	exe := filepath.Join(t.TempDir(), "gorun.test")
	if out, err := exec.Command("go", "test", "-c", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	b, err := Inspect(exe)
	if err != nil {
		t.Fatal(err)
	}
	if b.GoVersion != runtime.Version() {
		t.Errorf("GoVersion = %q, want %q", b.GoVersion, runtime.Version())
	}
	if !b.RegABI {
		t.Error("RegABI = false for an amd64 binary of", b.GoVersion)
	}
	if b.GoidOffset == 0 || b.ParentGoidOffset == 0 {
		t.Fatalf("offsets goid=%d parentGoid=%d, want both from DWARF", b.GoidOffset, b.ParentGoidOffset)
	}
	// The DWARF offset must find this very goroutine's id in its g, and
	// the parent offset the id of the goroutine that started it.
	parent := stackGoid(t)
	type ids struct{ want, got, parentGot uint64 }
	ch := make(chan ids)
	go func() {
		g := getg()
		ch <- ids{
			want:      stackGoid(t),
			got:       *(*uint64)(unsafe.Add(g, b.GoidOffset)),
			parentGot: *(*uint64)(unsafe.Add(g, b.ParentGoidOffset)),
		}
	}()
	r := <-ch
	if r.got != r.want {
		t.Errorf("goid at offset %d = %d, runtime.Stack says %d", b.GoidOffset, r.got, r.want)
	}
	if r.parentGot != parent {
		t.Errorf("parentGoid at offset %d = %d, want %d", b.ParentGoidOffset, r.parentGot, parent)
	}
	if len(b.Newproc1Rets) == 0 || b.Casgstatus == 0 {
		t.Errorf("probe points: newproc1 RETs %v, casgstatus %#x", b.Newproc1Rets, b.Casgstatus)
	}
	// Every RET offset must point at a RET opcode in the file.
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range b.Newproc1Rets {
		if data[off] != 0xc3 {
			t.Errorf("byte at RET offset %#x is %#x, want 0xc3", off, data[off])
		}
	}
}

// A stripped binary (-s -w) has no .symtab and no DWARF: probe points come
// from .gopclntab, offsets are unknown, and Inspect says so by zeros.
func TestInspectStripped(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("amd64 only")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	os.WriteFile(src, []byte("package main\nfunc main() { go func() {}() }\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module stripped\ngo 1.21\n"), 0o644)
	bin := filepath.Join(dir, "stripped")
	cmd := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if !IsGo(bin) {
		t.Fatal("IsGo(stripped) = false")
	}
	b, err := Inspect(bin)
	if err != nil {
		t.Fatal(err)
	}
	if b.GoidOffset != 0 {
		t.Errorf("GoidOffset = %d without DWARF, want 0", b.GoidOffset)
	}
	if len(b.Newproc1Rets) == 0 || b.Casgstatus == 0 {
		t.Errorf("probe points from .gopclntab: newproc1 RETs %v, casgstatus %#x", b.Newproc1Rets, b.Casgstatus)
	}
}

func TestNotGo(t *testing.T) {
	for _, p := range []string{"/bin/sh", "/usr/bin/env"} {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if IsGo(p) {
			t.Errorf("IsGo(%s) = true", p)
		}
		if _, err := Inspect(p); err == nil {
			t.Errorf("Inspect(%s) succeeded", p)
		}
	}
}

func TestVersionAtLeast(t *testing.T) {
	for _, c := range []struct {
		v    string
		want bool
	}{
		{"go1.26.8", true}, {"go1.17", true}, {"go1.16.15", false},
		{"go1.26rc1", true}, {"devel", false}, {"", false}, {"go2.0", true},
	} {
		if got := versionAtLeast(c.v, 1, 17); got != c.want {
			t.Errorf("versionAtLeast(%q, 1.17) = %v", c.v, got)
		}
	}
}
