package redis

import (
	"reflect"
	"strings"
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

func firstByte(flow protocol.Flow, b byte) bool {
	if flow == protocol.ToServer {
		return b == '*' || b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z'
	}
	return validType(b)
}

// Recorded with go-redis v9 (RESP3: HELLO 3 with AUTH, pipelines,
// MULTI/EXEC, DEBUG PROTOCOL replies of every RESP3 type, pub/sub on
// connection 3) and redis-cli (RESP2), against Debian's redis-server.
var want = map[string]map[int][]string{
	"goredis": {
		1: {
			`0 "HELLO" 0 err=false req=64@1 resp=145@2`,
			`1 "CLIENT" 0 err=true req=95@3 resp=65@4`,
			`2 "CLIENT" 0 err=true req=69@5 resp=53@6`,
			`3 "CLIENT" 0 err=true req=54@5 resp=53@6`,
			`4 "SET" 0 err=false req=51@7 resp=5@8`,
			`5 "GET" 0 err=false req=26@9 resp=9@10`,
			`6 "GET" 0 err=false req=32@11 resp=3@12`,
			`7 "HSET" 0 err=false req=63@13 resp=4@14`,
			`8 "HGETALL" 0 err=false req=30@15 resp=40@16`,
			`9 "SADD" 0 err=false req=40@17 resp=4@18`,
			`10 "SMEMBERS" 0 err=false req=30@19 resp=18@20`,
			`11 "SET" 0 err=false req=31@21 resp=5@22`,
			`12 "INCRBYFLOAT" 0 err=false req=37@23 resp=10@24`,
			`13 "SET" 0 err=false req=200034@25 resp=5@28`,
			`14 "GET" 0 err=false req=23@29 resp=200011@30`,
			`15 "INCR" 0 err=true req=27@33 resp=46@34`,
			`16 "DEBUG" 0 err=false req=41@43 resp=40@44`,
			`17 "DEBUG" 0 err=false req=43@45 resp=36@46`,
			`18 "DEBUG" 0 err=false req=41@47 resp=93@48`,
			`19 "DEBUG" 0 err=false req=41@49 resp=8@50`,
			`20 "DEBUG" 0 err=false req=39@51 resp=3@52`,
			`21 "PUBLISH" 0 err=false req=40@61 resp=4@63`,
			`22 "PUBLISH" 0 err=false req=40@64 resp=4@66`,
			`23 "PUBLISH" 0 err=false req=40@67 resp=4@68`,
			`24 "PING" 0 err=false req=14@70 resp=7@71`,
		},
		2: {
			`0 "HELLO" 0 err=false req=64@35 resp=145@36`,
			`1 "CLIENT" 0 err=true req=69@37 resp=53@38`,
			`2 "CLIENT" 0 err=true req=54@37 resp=53@38`,
			`3 "INCR" 0 err=false req=29@39 resp=4@40`,
			`4 "INCR" 0 err=false req=29@39 resp=4@40`,
			`5 "INCR" 0 err=false req=29@39 resp=4@40`,
			`6 "INCR" 0 err=false req=29@39 resp=4@40`,
			`7 "INCR" 0 err=false req=29@39 resp=4@40`,
			`8 "GET" 0 err=false req=26@39 resp=9@40`,
			`9 "MULTI" 0 err=false req=15@41 resp=5@42`,
			`10 "INCR" 0 err=false req=29@41 resp=9@42`,
			`11 "EXPIRE" 0 err=false req=41@41 resp=9@42`,
			`12 "EXEC" 0 err=false req=14@41 resp=12@42`,
		},
		3: {
			`0 "HELLO" 0 err=false req=64@53 resp=145@54`,
			`1 "CLIENT" 0 err=true req=95@55 resp=65@56`,
			`2 "CLIENT" 0 err=true req=69@57 resp=53@58`,
			`3 "CLIENT" 0 err=true req=54@57 resp=53@58`,
			`4 "SUBSCRIBE" 0 err=false req=29@59 resp=33@60`,
		},
	},
	"rediscli": {
		1: {
			`0 "COMMAND" 0 err=true req=27@1 resp=34@2`,
			`1 "COMMAND" 0 err=true req=17@3 resp=34@4`,
			`2 "AUTH" 0 err=false req=33@5 resp=5@6`,
			`3 "SET" 0 err=false req=41@7 resp=5@8`,
			`4 "GET" 0 err=false req=34@9 resp=7@10`,
			`5 "LPUSH" 0 err=false req=43@11 resp=4@12`,
			`6 "LRANGE" 0 err=false req=38@13 resp=25@14`,
			`7 "DEL" 0 err=false req=20@15 resp=4@16`,
			`8 "NOSUCHCMD" 0 err=true req=19@17 resp=62@18`,
			`9 "GET" 0 err=false req=26@19 resp=5@20`,
		},
	},
}

func TestRecorded(t *testing.T) {
	prototest.CheckRecorded(t, func() protocol.Parser { return New() }, []string{"goredis", "rediscli"}, want, firstByte)
}

func TestRecordedDetails(t *testing.T) {
	conns := prototest.Load(t, "testdata/goredis.jsonl")
	ex, err := prototest.Run(New(), conns[0].Chunks)
	if err != nil {
		t.Fatal(err)
	}
	if e := ex[0]; e.Tags["db.statement"] != "HELLO" || len(e.Values) != 0 {
		t.Errorf("HELLO with AUTH kept %q %q", e.Tags["db.statement"], e.Values)
	}
	e := ex[4]
	if e.Tags["db.statement"] != "SET user:42 ada ex 60" || !reflect.DeepEqual(e.Values, []string{"user:42", "42"}) {
		t.Errorf("SET: %q %q", e.Tags["db.statement"], e.Values)
	}
	if e := ex[15]; !e.Error || !strings.HasPrefix(e.StatusText, "ERR value is not an integer") {
		t.Errorf("INCR error: %+v", e)
	}
}

// Truncated capture: big bulk strings are counted through their lengths.
func TestTruncated(t *testing.T) {
	conns := prototest.Load(t, "testdata/goredis.jsonl")
	for _, c := range conns {
		ex, err := prototest.Run(New(), prototest.Truncate(c.Chunks, 256))
		if err != nil {
			t.Fatal(err)
		}
		if d := prototest.Diff(prototest.Summaries(ex), want["goredis"][c.ID]); d != "" {
			t.Errorf("conn %d:\n%s", c.ID, d)
		}
	}
}

func chunk(flow protocol.Flow, s string) protocol.Chunk {
	return protocol.Chunk{Flow: flow, Data: []byte(s), Size: int64(len(s)), StartNs: 1, EndNs: 2}
}

func TestCases(t *testing.T) {
	req, resp := protocol.ToServer, protocol.ToClient
	for _, tc := range []struct {
		name    string
		chunks  []protocol.Chunk
		want    []string
		wantErr bool
	}{
		{"resp3 types", []protocol.Chunk{
			chunk(req, "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n"),
			chunk(resp, "(3492890328409238509324850943850943825024385\r\n=15\r\ntxt:Some string\r\n"),
			chunk(resp, "|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n"),
			chunk(resp, "~2\r\n#t\r\n_\r\n!21\r\nSYNTAX invalid syntax\r\n"),
			chunk(resp, "$?\r\n;4\r\nHell\r\n;1\r\no\r\n;0\r\n*?\r\n:1\r\n.\r\n"),
		}, []string{
			`0 "PING" 0 err=false req=14@0 resp=46@0`,
			`1 "PING" 0 err=false req=14@0 resp=22@0`,
			`2 "PING" 0 err=false req=14@0 resp=81@0`,
			`3 "PING" 0 err=false req=14@0 resp=11@0`,
			`4 "PING" 0 err=true req=14@0 resp=28@0`,
			`5 "PING" 0 err=false req=14@0 resp=25@0`,
		}, false},
		{"resp2 pub/sub", []protocol.Chunk{
			chunk(req, "*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n"),
			chunk(resp, "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"),
			chunk(resp, "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n"),
			chunk(req, "PING\r\n"),
			chunk(resp, "*2\r\n$4\r\npong\r\n$0\r\n\r\n"),
		}, []string{
			`0 "SUBSCRIBE" 0 err=false req=33@0 resp=30@0`,
			`1 "PING" 0 err=false req=6@0 resp=20@0`,
		}, false},
		{"garbage request", []protocol.Chunk{chunk(req, "\x00\x01GET / HTTP/1.1")}, nil, true},
		{"garbage reply", []protocol.Chunk{chunk(req, "PING\r\n"), chunk(resp, "HTTP/1.1 200 OK\r\n")},
			nil, true},
		{"bad length", []protocol.Chunk{chunk(req, "*x\r\n")}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New()
			var got []protocol.Exchange
			var err error
			for _, c := range tc.chunks {
				var ex []protocol.Exchange
				ex, err = p.Feed(c)
				got = append(got, ex...)
				if err != nil {
					break
				}
			}
			if err == nil {
				got = append(got, p.Flush()...)
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if d := prototest.Diff(prototest.Summaries(got), tc.want); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestPendingBound(t *testing.T) {
	prototest.CheckPendingBound(t, New(), []byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), 3000)
}

func TestReplyValues(t *testing.T) {
	req, resp := protocol.ToServer, protocol.ToClient
	ex, err := prototest.Run(New(), []protocol.Chunk{
		chunk(req, "*2\r\n$3\r\nGET\r\n$13\r\nsession:abc12\r\n*2\r\n$8\r\nSMEMBERS\r\n$7\r\norder:7\r\n*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$11\r\nrequirepass\r\n"),
		chunk(resp, "$7\r\nuser-42\r\n*2\r\n$4\r\n1001\r\n:1002\r\n*2\r\n$11\r\nrequirepass\r\n$12\r\ns3cret-redis\r\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]string{{"session:abc12", "abc12", "user-42"}, {"order:7", "7", "1001", "1002"}, nil} {
		if !reflect.DeepEqual(ex[i].Values, want) {
			t.Errorf("%s: values %q, want %q", ex[i].Operation, ex[i].Values, want)
		}
	}
	if ex[2].Tags["db.statement"] != "CONFIG GET" {
		t.Errorf("CONFIG GET statement %q", ex[2].Tags["db.statement"])
	}
}
