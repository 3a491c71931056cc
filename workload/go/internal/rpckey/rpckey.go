// Package rpckey renders a protobuf message as a canonical one-line text,
// "field=value" pairs in field-number order. Client and server both log it as
// the "key" of a gRPC call in the truth logs, so that calls multiplexed on
// one HTTP/2 connection can be told apart by what they carry on the wire.
package rpckey

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Key returns the canonical text of m ("" for nil or non-proto values).
func Key(v any) string {
	m, ok := v.(proto.Message)
	if !ok || m == nil {
		return ""
	}
	r := m.ProtoReflect()
	fields := r.Descriptor().Fields()
	var b strings.Builder
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(string(fd.Name()))
		b.WriteByte('=')
		val := r.Get(fd)
		switch fd.Kind() {
		case protoreflect.StringKind:
			b.WriteString(fmt.Sprintf("%q", val.String()))
		default:
			b.WriteString(val.String())
		}
	}
	return b.String()
}
