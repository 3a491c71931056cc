// Command dtcapture runs DeepTrace's capture by hand and prints what it
// sees, one line per event: a way to check the eBPF side on a machine
// without the rest of the agent.
//
//	sudo dtcapture -pid 1234 -payload 64
//	sudo dtcapture -comm nginx -port 8080
//	sudo dtcapture -all -netns /run/netns/b -go
//
// It exits non-zero, saying which privilege is missing, when eBPF cannot
// load.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/deeptrace/deeptrace/agent/capture"
	"github.com/deeptrace/deeptrace/agent/event"
)

func main() {
	var (
		pids     = flag.String("pid", "", "comma-separated pids to trace")
		comms    = flag.String("comm", "", "comma-separated process names to trace")
		cgroups  = flag.String("cgroup", "", "comma-separated cgroup v2 directories to trace")
		all      = flag.Bool("all", false, "trace every process")
		ports    = flag.String("port", "", "comma-separated ports (local or remote) to keep")
		netns    = flag.String("netns", "", "comma-separated netns files (/run/netns/x, /proc/PID/ns/net) to keep")
		payload  = flag.Int("payload", 32, "payload bytes to print per event")
		goEvents = flag.Bool("go", false, "print goroutine creation events too")
		sched    = flag.Bool("gosched", false, "also probe goroutine switches (costly)")
		statsInt = flag.Duration("stats", 10*time.Second, "print counters this often (0: never)")
	)
	flag.Parse()
	cfg := capture.Config{All: *all, GoScheduling: *sched}
	for _, f := range split(*pids) {
		p, err := strconv.Atoi(f)
		if err != nil {
			fatal(fmt.Errorf("-pid %q: %v", f, err))
		}
		cfg.PIDs = append(cfg.PIDs, p)
	}
	cfg.Comms = split(*comms)
	for _, d := range split(*cgroups) {
		id, err := capture.CgroupID(d)
		if err != nil {
			fatal(err)
		}
		cfg.Cgroups = append(cfg.Cgroups, id)
	}
	for _, f := range split(*ports) {
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil {
			fatal(fmt.Errorf("-port %q: %v", f, err))
		}
		cfg.Ports = append(cfg.Ports, uint16(p))
	}
	for _, f := range split(*netns) {
		ino, err := capture.NetNSInode(f)
		if err != nil {
			fatal(err)
		}
		cfg.NetNS = append(cfg.NetNS, ino)
	}
	if !cfg.All && len(cfg.PIDs)+len(cfg.Comms)+len(cfg.Cgroups) == 0 {
		fatal(fmt.Errorf("nothing selected: give -pid, -comm, -cgroup or -all"))
	}

	tr, err := capture.Open(cfg)
	if err != nil {
		fatal(err)
	}
	defer tr.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := make(chan event.Event, 1024)
	var goOut chan event.GoEvent
	if *goEvents || *sched {
		goOut = make(chan event.GoEvent, 1024)
	}
	errc := make(chan error, 1)
	go func() { errc <- tr.Run(ctx, out, goOut) }()
	clock := tr.Clock()
	var tick <-chan time.Time
	if *statsInt > 0 {
		t := time.NewTicker(*statsInt)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case e := <-out:
			p := e.Payload
			if len(p) > *payload {
				p = p[:*payload]
			}
			fmt.Printf("%s %-7s %-7s %-7s pid=%d tid=%d go=%d comm=%s fd=%d sock=%d netns=%d %s -> %s size=%d off=%d seq=%d dur=%dns %q\n",
				clock.Wall(e.ExitNs).Format("15:04:05.000000"), e.Kind, e.Dir, e.Role, e.PID, e.TID, e.GoID, e.Comm, e.FD,
				e.SockID, e.NetNS, e.Local, e.Remote, e.Size, e.Offset, e.TCPSeq, e.ExitNs-e.EnterNs, p)
		case g := <-goOut:
			fmt.Printf("%s go-%d pid=%d tid=%d go=%d parent=%d\n", clock.Wall(g.Ns).Format("15:04:05.000000"), g.Kind, g.PID, g.TID, g.GoID, g.ParentGoID)
		case <-tick:
			st, err := tr.Stats()
			if err == nil {
				fmt.Fprintf(os.Stderr, "stats: %+v\n", st)
			}
		case err := <-errc:
			if err != nil {
				fatal(err)
			}
			return
		}
	}
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "dtcapture:", err)
	os.Exit(1)
}
