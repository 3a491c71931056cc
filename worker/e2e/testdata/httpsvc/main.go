// Command httpsvc is a small traced service for the live end-to-end test:
// an HTTP server whose handler for GET /r/{id} calls, in order, an HTTP
// backend (GET {call}/r/{id}) and a Redis server (GET k{id}), each when
// configured, then answers "ok {id}". Tests copy the binary under the
// name of the service it plays, so the agent sees that name as its comm.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", "", "address to serve on")
	call := flag.String("call", "", "HTTP backend base URL (http://host:port)")
	redisAddr := flag.String("redis", "", "Redis server address")
	flag.Parse()

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	var pool chan *resp
	if *redisAddr != "" {
		pool = make(chan *resp, 8)
		for i := 0; i < cap(pool); i++ {
			pool <- &resp{addr: *redisAddr}
		}
	}
	http.HandleFunc("GET /r/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if ms, err := strconv.Atoi(r.URL.Query().Get("work")); err == nil && ms > 0 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		if *call != "" {
			res, err := client.Get(*call + "/r/" + id)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				http.Error(w, "backend: "+res.Status, http.StatusBadGateway)
				return
			}
		}
		if pool != nil {
			c := <-pool
			err := c.get("k" + id)
			pool <- c
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		fmt.Fprintf(w, "ok %s\n", id)
	})
	log.Printf("serving on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}

// resp is one lazily dialled Redis connection speaking bare RESP: no
// handshake, so every command on it is one the handler made.
type resp struct {
	addr string
	conn net.Conn
	r    *bufio.Reader
}

func (c *resp) get(key string) error {
	if c.conn == nil {
		conn, err := net.Dial("tcp", c.addr)
		if err != nil {
			return err
		}
		c.conn, c.r = conn, bufio.NewReader(conn)
	}
	if _, err := fmt.Fprintf(c.conn, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(key), key); err != nil {
		c.reset()
		return err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.reset()
		return err
	}
	switch {
	case strings.HasPrefix(line, "$-1"):
		return nil
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
		if err != nil {
			c.reset()
			return err
		}
		_, err = io.CopyN(io.Discard, c.r, int64(n+2))
		return err
	case strings.HasPrefix(line, "-"):
		return errors.New(strings.TrimSpace(line[1:]))
	}
	return nil
}

func (c *resp) reset() {
	c.conn.Close()
	c.conn = nil
}
