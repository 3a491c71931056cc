package netns_test

import (
	"bufio"
	"fmt"
	"net"
	"testing"

	"github.com/deeptrace/deeptrace/internal/netns"
)

// A client on host A reaches a server on host B through a Service VIP
// that A's own NAT translates (as kube-proxy does): the two ends see
// different tuples but the same TCP sequence numbers.
func TestDNATKeepsSequenceNumbers(t *testing.T) {
	n := netns.New(t, "a", "b")
	a, b := n.Hosts[0], n.Hosts[1]
	a.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.96.0.10/32", "-p", "tcp", "--dport", "80",
		"-j", "DNAT", "--to-destination", b.IP+":8080")
	ln, err := b.Listen(b.IP + ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	capA, err := a.Capture()
	if err != nil {
		t.Fatal(err)
	}
	defer capA.Close()
	capB, err := b.Capture()
	if err != nil {
		t.Fatal(err)
	}
	defer capB.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := a.Dial("10.96.0.10:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-accepted
	defer s.Close()
	fmt.Fprintf(c, "ping\n")
	if line, _ := bufio.NewReader(s).ReadString('\n'); line != "ping\n" {
		t.Fatalf("server read %q", line)
	}
	if c.RemoteAddr().String() != "10.96.0.10:80" || s.LocalAddr().String() != b.IP+":8080" || s.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatalf("tuples: client %s->%s, server %s<-%s", c.LocalAddr(), c.RemoteAddr(), s.LocalAddr(), s.RemoteAddr())
	}
	ca, sa, err := capA.ISN(c.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	cb, sb, err := capB.ISN(s.RemoteAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	if ca != cb || sa != sb {
		t.Fatalf("ISNs differ across the NAT: A saw %d/%d, B saw %d/%d", ca, sa, cb, sb)
	}
}
