package schemas

import (
	"reflect"
	"testing"
)

func TestTraceSummarize(t *testing.T) {
	root := Span{SpanID: "r", Service: "gw", Operation: "GET /a", StartNs: 100, EndNs: 500, Host: "h1"}
	child := Span{SpanID: "c", Service: "db", Operation: "SELECT t", StartNs: 90, EndNs: 600, Error: true, Host: "h2", Tags: map[string]string{"db.system": "postgres"}}
	child.Finish()
	tr := Trace{Spans: []TraceSpan{{Span: root}, {Span: child, TraceParentID: "r", Depth: 1}}}
	tr.Summarize(&root)
	if tr.TraceID != TraceID("r") || tr.SpanCount != 2 || !tr.Error {
		t.Fatalf("summary %+v", tr)
	}
	if tr.StartNs != 90 || tr.EndNs != 600 || tr.DurationNs != 510 {
		t.Fatalf("bounds %d..%d (%d)", tr.StartNs, tr.EndNs, tr.DurationNs)
	}
	if !reflect.DeepEqual(tr.Services, []string{"db", "gw"}) || !reflect.DeepEqual(tr.Hosts, []string{"h1", "h2"}) {
		t.Fatalf("services %v hosts %v", tr.Services, tr.Hosts)
	}
	if !reflect.DeepEqual(tr.TagKV, []string{"db.system=postgres"}) {
		t.Fatalf("tags %v", tr.TagKV)
	}
}
