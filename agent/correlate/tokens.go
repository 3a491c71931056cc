package correlate

// Token classes: an id (holds a digit: order numbers, SKUs, "eu-1") counts
// fully, a word (letters only: "phone", "EUR") half; single characters are
// noise.
const (
	maxTokens = 48
)

// tokens splits an exchange's values into the tokens correlation compares:
// "item:123" and "/items/123" share "123". Separators are what joins a key's
// parts (':', '=', ',', '/', '&', '?', ' ', quotes); '-', '_' and '.' stay
// inside a token.
func tokens(values []string, into []string) []string {
	for _, v := range values {
		start := -1
		for i := 0; i <= len(v); i++ {
			sep := i == len(v)
			if !sep {
				switch v[i] {
				case ':', '=', ',', '/', '&', '?', ' ', '\'', '"', '(', ')', ';', '[', ']', '{', '}':
					sep = true
				}
			}
			if sep {
				if start >= 0 && i-start >= 2 {
					into = addToken(into, v[start:i])
				}
				start = -1
			} else if start < 0 {
				start = i
			}
		}
	}
	return into
}

func addToken(ts []string, t string) []string {
	if len(ts) >= maxTokens {
		return ts
	}
	for _, x := range ts {
		if x == t {
			return ts
		}
	}
	return append(ts, t)
}

// isID says whether a token looks like an identifier: it holds a digit.
func isID(t string) bool {
	for i := 0; i < len(t); i++ {
		if t[i] >= '0' && t[i] <= '9' {
			return true
		}
	}
	return false
}

// tokenWeight is how much sharing a token says: long ids most, short
// numbers (a limit, a quantity) and words less.
func tokenWeight(t string) float64 {
	if !isID(t) {
		return 0.5
	}
	switch {
	case len(t) >= 4:
		return 1
	case len(t) == 3:
		return 0.75
	}
	return 0.4
}

func hasToken(ts []string, t string) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}
