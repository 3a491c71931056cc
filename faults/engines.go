package faults

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// Engines are an OpenSearch node and a Redis of the suite's own, started
// with scripts/engines.sh under a private state folder and free ports.
type Engines struct {
	State     string
	ESPort    int
	RedisPort int
	script    string
}

// repoRoot is the module root (this file's parent folder).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// NewEngines picks free ports and a state folder under dir.
func NewEngines(dir string) (*Engines, error) {
	es, err := freePort()
	if err != nil {
		return nil, err
	}
	rd, err := freePort()
	if err != nil {
		return nil, err
	}
	return &Engines{State: dir, ESPort: es, RedisPort: rd, script: filepath.Join(repoRoot(), "scripts", "engines.sh")}, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// ESURL and RedisAddr are where the engines listen.
func (e *Engines) ESURL() string     { return "http://127.0.0.1:" + strconv.Itoa(e.ESPort) }
func (e *Engines) RedisAddr() string { return "127.0.0.1:" + strconv.Itoa(e.RedisPort) }

// Up starts which ("opensearch", "redis" or "" for both).
func (e *Engines) Up(which string) error { return e.run("up", which) }

// Down stops which.
func (e *Engines) Down(which string) error { return e.run("down", which) }

func (e *Engines) run(verb, which string) error {
	args := []string{verb}
	if which != "" {
		args = append(args, which)
	}
	cmd := exec.Command(e.script, args...)
	m2 := os.Getenv("DEEPTRACE_M2_REPO")
	if m2 == "" {
		// The shared Maven cache: the private node needs no download.
		m2 = filepath.Join(repoRoot(), ".state", "m2")
	}
	cmd.Env = append(os.Environ(),
		"DEEPTRACE_STATE="+e.State, "DEEPTRACE_ES_PORT="+strconv.Itoa(e.ESPort),
		"DEEPTRACE_REDIS_PORT="+strconv.Itoa(e.RedisPort), "DEEPTRACE_M2_REPO="+m2,
		"DEEPTRACE_ES_HEAP="+envOr("DEEPTRACE_FAULTS_ES_HEAP", "512m"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("engines.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
