package sqltext

import (
	"reflect"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct{ q, op string }{
		{"SELECT id FROM users WHERE id = 1", "SELECT users"},
		{"select * from `shop`.`orders` o join users u on o.u = u.id", "SELECT shop.orders"},
		{"  /* hint */ SELECT 1", "SELECT"},
		{"SELECT (SELECT max(id) FROM a) FROM b", "SELECT b"},
		{"INSERT INTO \"Users\" (id) VALUES ($1)", "INSERT Users"},
		{"UPDATE users SET name = ? WHERE id = ?", "UPDATE users"},
		{"DELETE FROM sessions WHERE t < now()", "DELETE sessions"},
		{"CREATE TABLE IF NOT EXISTS users (id int)", "CREATE users"},
		{"DROP TABLE IF EXISTS users", "DROP users"},
		{"TRUNCATE TABLE logs", "TRUNCATE logs"},
		{"WITH x AS (SELECT 1) SELECT * FROM x JOIN items ON true", "WITH x"},
		{"-- comment\nBEGIN", "BEGIN"},
		{"(SELECT 1 FROM t) UNION (SELECT 2 FROM u)", "SELECT t"},
		{"", ""},
		{";", ""},
	} {
		if got := Summarize(tc.q).Operation(); got != tc.op {
			t.Errorf("%q: %q, want %q", tc.q, got, tc.op)
		}
	}
}

func TestLiterals(t *testing.T) {
	got := Literals(nil, `SELECT * FROM t WHERE a = 'it''s' AND b = 42 AND c = "col" AND d = 'x\'y' AND e = 1.5`)
	if want := []string{"it's", "42", "x'y", "1.5"}; !reflect.DeepEqual(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
}

func TestTruncate(t *testing.T) {
	q := strings.Repeat("é", MaxStatement)
	if got := Truncate(q); len(got) > MaxStatement || !strings.HasPrefix(q, got) || strings.ToValidUTF8(got, "?") != got {
		t.Errorf("cut %d bytes, not on a rune boundary", len(got))
	}
}

func FuzzSummarize(f *testing.F) {
	f.Add("SELECT a FROM b WHERE c = 'd'")
	f.Add("/* x */ INSERT INTO `t` VALUES (1, 'a''b')")
	f.Fuzz(func(t *testing.T, q string) {
		Summarize(q)
		if vs := Literals(nil, q); len(vs) > 16 {
			t.Fatal(len(vs))
		}
	})
}
