package values

import (
	"encoding/binary"
)

// MaxBody is how many bytes of a body the parsers keep to look for
// identifiers in.
const MaxBody = 1024

// AppendBody appends to buf what fits of b within MaxBody.
func AppendBody(buf, b []byte) []byte {
	if room := MaxBody - len(buf); room > 0 {
		if len(b) > room {
			b = b[:room]
		}
		buf = append(buf, b...)
	}
	return buf
}

// FromJSON adds the string and number values of a JSON document (or its
// prefix: capture may cut it) that look like ids. Keys are not values.
func FromJSON(vs []string, b []byte) []string {
	for i := 0; i < len(b) && len(vs) < maxValues(); i++ {
		c := b[i]
		switch {
		case c == '"':
			j := i + 1
			for j < len(b) && b[j] != '"' {
				if b[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(b) {
				return vs
			}
			s := b[i+1 : j]
			// A key is followed by ':'.
			k := j + 1
			for k < len(b) && (b[k] == ' ' || b[k] == '\n' || b[k] == '\r' || b[k] == '\t') {
				k++
			}
			if (k >= len(b) || b[k] != ':') && LooksLikeID(string(s)) {
				vs = Add(vs, string(s))
			}
			i = j
		case c == '-' || c >= '0' && c <= '9':
			j := i + 1
			for j < len(b) && (b[j] >= '0' && b[j] <= '9' || b[j] == '.' || b[j] == 'e' || b[j] == 'E' || b[j] == '+' || b[j] == '-') {
				j++
			}
			if j < len(b) && isIntID(b[i:j]) {
				vs = Add(vs, string(b[i:j]))
			}
			i = j - 1
		}
	}
	return vs
}

// isIntID reports whether a number is an integer worth matching: not a
// small count or flag.
func isIntID(b []byte) bool {
	if len(b) == 0 || b[0] == '-' {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) >= 2
}

// FromProtobuf adds the string fields that look like ids and the varint
// fields of two digits or more of a protobuf message, recursing into
// nested messages, as far as b goes.
func FromProtobuf(vs []string, b []byte) []string {
	return fromProtobuf(vs, b, 0)
}

func fromProtobuf(vs []string, b []byte, depth int) []string {
	for len(b) > 0 && len(vs) < maxValues() {
		key, n := binary.Uvarint(b)
		if n <= 0 || key>>3 == 0 {
			return vs
		}
		b = b[n:]
		switch key & 7 {
		case 0:
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return vs
			}
			if v >= 10 {
				vs = Add(vs, uitoa(v))
			}
			b = b[n:]
		case 1:
			if len(b) < 8 {
				return vs
			}
			b = b[8:]
		case 5:
			if len(b) < 4 {
				return vs
			}
			b = b[4:]
		case 2:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return vs
			}
			field := b[n : n+int(l)]
			b = b[n+int(l):]
			if printable(field) {
				if LooksLikeID(string(field)) {
					vs = Add(vs, string(field))
				}
			} else if depth < 8 {
				vs = fromProtobuf(vs, field, depth+1)
			}
		default:
			return vs
		}
	}
	return vs
}

func printable(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

func uitoa(v uint64) string {
	var buf [20]byte
	i := len(buf)
	for v >= 10 {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	i--
	buf[i] = byte('0' + v)
	return string(buf[i:])
}
