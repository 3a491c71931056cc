// Package gorun reads what goroutine tracking needs from a Go executable:
// whether it is Go at all, the layout of runtime.g (the goid and parentGoid
// offsets, from DWARF), and where to probe the runtime (the RET
// instructions of runtime.newproc1, the entry of runtime.casgstatus).
//
// Nothing here is hard-coded per Go version: offsets come from the binary's
// own debug information, and a binary without it is reported as such.
package gorun

import (
	"debug/buildinfo"
	"debug/dwarf"
	"debug/elf"
	"debug/gosym"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Binary is what DeepTrace knows about one Go executable.
type Binary struct {
	Path      string
	GoVersion string // "go1.26.8"
	// GoidOffset and ParentGoidOffset are the byte offsets of the goid and
	// parentGoid fields in runtime.g; 0 when unknown (no DWARF, or a Go too
	// old to record the parent).
	GoidOffset       uint64
	ParentGoidOffset uint64
	// RegABI is true when the binary uses the register ABI on amd64
	// (Go >= 1.17): the current g is in R14 in Go code, arguments in
	// RAX, RBX, RCX, ...
	RegABI bool
	// Newproc1Rets are the file offsets of the RET instructions of
	// runtime.newproc1, where RAX holds the new g.
	Newproc1Rets []uint64
	// Casgstatus is the file offset of runtime.casgstatus.
	Casgstatus uint64
}

// ErrNotGo is returned by Inspect for an executable that is not Go.
var ErrNotGo = errors.New("not a Go executable")

// IsGo reports whether the executable at path was built by the Go toolchain
// (it carries Go build information or a .gopclntab section).
func IsGo(path string) bool {
	if _, err := buildinfo.ReadFile(path); err == nil {
		return true
	}
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Section(".gopclntab") != nil
}

// Inspect reads a Go executable. It returns ErrNotGo for other executables,
// and a Binary with zero offsets (and no error) when the Go binary lacks
// the DWARF or symbols that a part needs.
func Inspect(path string) (*Binary, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gorun: open %s: %w", path, err)
	}
	defer f.Close()
	b := &Binary{Path: path}
	if bi, err := buildinfo.ReadFile(path); err == nil {
		b.GoVersion = bi.GoVersion
	} else if f.Section(".gopclntab") == nil {
		return nil, fmt.Errorf("gorun: %s: %w", path, ErrNotGo)
	}
	b.RegABI = f.Machine == elf.EM_X86_64 && versionAtLeast(b.GoVersion, 1, 17)

	if d, err := f.DWARF(); err == nil {
		b.GoidOffset, b.ParentGoidOffset = gOffsets(d)
	}

	syms, err := funcSymbols(f)
	if err != nil {
		return b, nil // offsets may still serve; no probe points
	}
	if s, ok := syms["runtime.newproc1"]; ok && f.Machine == elf.EM_X86_64 {
		b.Newproc1Rets, _ = retOffsets(f, s)
	}
	if s, ok := syms["runtime.casgstatus"]; ok {
		b.Casgstatus, _ = fileOffset(f, s.addr)
	}
	return b, nil
}

// gOffsets finds runtime.g's goid and parentGoid members in DWARF.
func gOffsets(d *dwarf.Data) (goid, parent uint64) {
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil || e == nil {
			return goid, parent
		}
		if e.Tag != dwarf.TagStructType || e.Val(dwarf.AttrName) != "runtime.g" {
			if e.Tag == dwarf.TagSubprogram {
				r.SkipChildren() // locals: the bulk of DWARF, no types
			}
			continue
		}
		if !e.Children {
			continue
		}
		for {
			m, err := r.Next()
			if err != nil || m == nil || m.Tag == 0 {
				return goid, parent
			}
			if m.Tag != dwarf.TagMember {
				r.SkipChildren()
				continue
			}
			off, ok := m.Val(dwarf.AttrDataMemberLoc).(int64)
			if !ok {
				continue
			}
			switch m.Val(dwarf.AttrName) {
			case "goid":
				goid = uint64(off)
			case "parentGoid":
				parent = uint64(off)
			}
		}
	}
}

type funcSym struct {
	addr, size uint64
}

// funcSymbols returns runtime functions from .symtab, or from .gopclntab
// when the binary is stripped.
func funcSymbols(f *elf.File) (map[string]funcSym, error) {
	want := map[string]bool{"runtime.newproc1": true, "runtime.casgstatus": true}
	out := map[string]funcSym{}
	if syms, err := f.Symbols(); err == nil {
		for _, s := range syms {
			if want[s.Name] && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
				out[s.Name] = funcSym{s.Value, s.Size}
			}
		}
		if len(out) == len(want) {
			return out, nil
		}
	}
	pcln := f.Section(".gopclntab")
	text := f.Section(".text")
	if pcln == nil || text == nil {
		return out, fmt.Errorf("no symbols and no .gopclntab")
	}
	data, err := pcln.Data()
	if err != nil {
		return out, err
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return out, err
	}
	for name := range want {
		if fn := tab.LookupFunc(name); fn != nil {
			out[name] = funcSym{fn.Entry, fn.End - fn.Entry}
		}
	}
	return out, nil
}

// retOffsets decodes a function and returns the file offsets of its RET
// instructions.
func retOffsets(f *elf.File, s funcSym) ([]uint64, error) {
	sec := sectionOf(f, s.addr)
	if sec == nil || s.size == 0 {
		return nil, fmt.Errorf("function at %#x: no section", s.addr)
	}
	code := make([]byte, s.size)
	if _, err := sec.ReadAt(code, int64(s.addr-sec.Addr)); err != nil {
		return nil, err
	}
	var rets []uint64
	for pc := 0; pc < len(code); {
		inst, err := x86asm.Decode(code[pc:], 64)
		if err != nil || inst.Len == 0 {
			pc++ // padding or data: resynchronise byte by byte
			continue
		}
		if inst.Op == x86asm.RET {
			rets = append(rets, s.addr-sec.Addr+sec.Offset+uint64(pc))
		}
		pc += inst.Len
	}
	return rets, nil
}

func sectionOf(f *elf.File, addr uint64) *elf.Section {
	for _, sec := range f.Sections {
		if sec.Flags&elf.SHF_EXECINSTR != 0 && addr >= sec.Addr && addr < sec.Addr+sec.Size {
			return sec
		}
	}
	return nil
}

func fileOffset(f *elf.File, addr uint64) (uint64, error) {
	sec := sectionOf(f, addr)
	if sec == nil {
		return 0, fmt.Errorf("address %#x in no executable section", addr)
	}
	return addr - sec.Addr + sec.Offset, nil
}

// versionAtLeast compares a "go1.N[.P]" version with 1.minor.
func versionAtLeast(v string, major, minor int) bool {
	v = strings.TrimPrefix(v, "go")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	digits := parts[1]
	if i := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = digits[:i] // "26rc1"
	}
	mi, err2 := strconv.Atoi(digits)
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}
