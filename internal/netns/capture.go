package netns

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Capture records the TCP handshakes a host's eth0 sees: the initial
// sequence numbers of each connection, as the host itself observes them
// (after its own NAT on the way out, before it on the way in). A span's
// TCP positions are these plus the bytes that went before, which is what
// the agent reads from the kernel.
type Capture struct {
	fd   int
	mu   sync.Mutex
	isn  map[string][2]uint32 // client ip:port → client ISN, server ISN
	done chan struct{}
}

// Capture starts recording on the host's eth0; Close stops it.
func (h *Host) Capture() (*Capture, error) {
	c := &Capture{isn: map[string][2]uint32{}, done: make(chan struct{})}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		// ETH_P_ALL: outgoing packets reach only the taps for every
		// protocol, not those bound to one.
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to eth0: %w", err)
		}
		tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", h.Name, err)
	}
	go c.loop()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) loop() {
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.done:
			unix.Close(c.fd)
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil || n < 20 {
			continue
		}
		c.packet(buf[:n])
	}
}

// packet notes the ISN of a SYN (the client's) or a SYN-ACK (the
// server's), keyed by the client's address.
func (c *Capture) packet(p []byte) {
	if p[0]>>4 != 4 || p[0]&0x0f < 5 || p[9] != unix.IPPROTO_TCP {
		return
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl+20 {
		return
	}
	src, dst := net.IP(p[12:16]).String(), net.IP(p[16:20]).String()
	tcp := p[ihl:]
	sport, dport := binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4])
	seq := binary.BigEndian.Uint32(tcp[4:8])
	flags := tcp[13]
	const syn, ack = 0x02, 0x10
	if flags&syn == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if flags&ack == 0 {
		k := fmt.Sprintf("%s:%d", src, sport)
		v := c.isn[k]
		v[0] = seq
		c.isn[k] = v
	} else {
		k := fmt.Sprintf("%s:%d", dst, dport)
		v := c.isn[k]
		v[1] = seq
		c.isn[k] = v
	}
}

// ISN returns the initial sequence numbers of the connection whose client
// end is clientAddr ("ip:port"), waiting up to a second for the handshake
// to be seen.
func (c *Capture) ISN(clientAddr string) (client, server uint32, err error) {
	deadline := time.Now().Add(time.Second)
	for {
		c.mu.Lock()
		v, ok := c.isn[clientAddr]
		c.mu.Unlock()
		if ok && v[0] != 0 && v[1] != 0 {
			return v[0], v[1], nil
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("capture: no handshake seen for %s", clientAddr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Close stops the capture.
func (c *Capture) Close() { close(c.done) }
