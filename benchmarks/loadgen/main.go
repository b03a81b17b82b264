// Command loadgen sends HTTP GETs open loop at a fixed rate and prints one JSON line per request.
//
// It exists so that benchmarks/serving_bench.py can load the gateway without spending the CPU
// it measures: a Python (aiohttp) generator costs ~0.8 ms of CPU per request, a sizeable share
// of a 2-core machine at a few hundred requests per second.
//
// Open loop: request i is due at t0 + i/rate whether or not earlier requests have answered, and
// its latency runs from that due time to the last byte of the response, so a slow server (or a
// late sender, or a request waiting for a free connection) shows up in the latency instead of
// silently lowering the offered load (no coordinated omission). The send lag (actual send - due)
// is reported too: a busy machine wakes the sender late.
//
// The users come from a file (the i-th request uses the i-th line) so that the caller decides
// them and runs are reproducible. Output goes to stdout in request order after the run, so that
// writing it never competes with sending. Standard library only; HTTP/1.1 over plain TCP.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const userPlaceholder = "{user}"

type config struct {
	urlTemplate string
	usersPath   string
	rate        float64
	duration    float64
	timeout     time.Duration
	maxConns    int
}

// requests is how many requests a run sends: every due time inside [0, duration).
func (c config) requests() int { return int(math.Floor(c.rate * c.duration)) }

// result is one output line; field names are what benchmarks/loadgen.py parses.
type result struct {
	I         int                `json:"i"`
	Status    int                `json:"status"`
	LatencyMs float64            `json:"latency_ms"`
	LagMs     float64            `json:"lag_ms"`
	Fallback  bool               `json:"fallback"`
	Timings   map[string]float64 `json:"timings"`
	Error     string             `json:"error,omitempty"`
}

// gatewayBody holds the only fields read from a 200 response; the rest of the body is skipped.
type gatewayBody struct {
	Fallback  any                `json:"fallback"`
	TimingsMs map[string]float64 `json:"timingsMs"`
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.urlTemplate, "url-template", "",
		"URL of each request, with "+userPlaceholder+" where the user id goes")
	fs.StringVar(&c.usersPath, "users", "", "file with one user id per line; request i uses line i")
	fs.Float64Var(&c.rate, "rate", 0, "requests per second")
	fs.Float64Var(&c.duration, "duration", 0, "seconds of load; floor(rate*duration) requests")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Second, "per request, connecting to last byte")
	fs.IntVar(&c.maxConns, "max-conns", 1024, "most connections open at once (kept alive)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected arguments %q: every setting is a flag", fs.Args())
	case !strings.Contains(c.urlTemplate, userPlaceholder):
		return c, fmt.Errorf("-url-template %q has no %s placeholder: add it where the user id goes",
			c.urlTemplate, userPlaceholder)
	case c.usersPath == "":
		return c, errors.New("-users is required: a file with one user id per line")
	case !(c.rate > 0) || math.IsInf(c.rate, 0):
		return c, fmt.Errorf("-rate must be a positive number of requests per second, got %v", c.rate)
	case !(c.duration > 0) || math.IsInf(c.duration, 0):
		return c, fmt.Errorf("-duration must be a positive number of seconds, got %v", c.duration)
	case c.requests() < 1:
		return c, fmt.Errorf("-rate %v times -duration %v is less than one request", c.rate, c.duration)
	case c.timeout <= 0:
		return c, fmt.Errorf("-timeout must be positive, got %v", c.timeout)
	case c.maxConns < 1:
		return c, fmt.Errorf("-max-conns must be at least 1, got %d", c.maxConns)
	}
	return c, nil
}

// readUsers reads the first n lines of path, one user id each.
func readUsers(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("-users: %w", err)
	}
	defer f.Close()
	users := make([]string, 0, n)
	sc := bufio.NewScanner(f)
	for len(users) < n && sc.Scan() {
		u := strings.TrimSpace(sc.Text())
		if u == "" || strings.ContainsAny(u, " \t/?#&%") {
			return nil, fmt.Errorf("-users %s line %d: %q is not a user id (one id per line, "+
				"no spaces or URL delimiters)", path, len(users)+1, u)
		}
		users = append(users, u)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("-users %s: %w", path, err)
	}
	if len(users) < n {
		return nil, fmt.Errorf("-users %s has %d lines but the run sends %d requests "+
			"(floor of -rate times -duration): give one user per request", path, len(users), n)
	}
	return users, nil
}

// buildRequests writes every request's bytes before the run, so that a bad URL fails before any
// load is sent and nothing is formatted between due times. Every request goes to one address.
func buildRequests(template string, users []string) (string, [][]byte, error) {
	var addr string
	wire := make([][]byte, len(users))
	for i, user := range users {
		u, err := url.Parse(strings.ReplaceAll(template, userPlaceholder, user))
		if err != nil {
			return "", nil, fmt.Errorf("-url-template with user %q (request %d): %w", user, i, err)
		}
		if u.Scheme != "http" || u.Host == "" {
			return "", nil, fmt.Errorf("-url-template %q: only http://host[:port]/... URLs are "+
				"supported", template)
		}
		port := u.Port()
		if port == "" {
			port = "80"
		}
		hostport := net.JoinHostPort(u.Hostname(), port)
		if i == 0 {
			addr = hostport
		} else if hostport != addr {
			return "", nil, fmt.Errorf("-url-template %q: %s must not be in the host (request %d "+
				"goes to %s, request 0 to %s)", template, userPlaceholder, i, hostport, addr)
		}
		wire[i] = []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
			"\r\nUser-Agent: recsys-loadgen\r\nAccept: application/json\r\n\r\n")
	}
	return addr, wire, nil
}

func millis(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

type job struct {
	i   int
	due time.Time
}

// generator sends requests from a pool of workers, one kept-alive connection each, rather than
// through net/http's Transport (a goroutine per request, and a reader and a writer goroutine per
// connection): fewer hand-offs between goroutines, fewer wake-ups (wakeups_linux.go says why
// they are what costs). A worker is added whenever a request is due and none is free, so sends
// are never late for want of one, up to -max-conns; past that a request waits for a free worker,
// and the wait is in its latency.
type generator struct {
	addr     string
	wire     [][]byte
	timeout  time.Duration
	maxConns int
	results  []result
	jobs     chan job
	free     atomic.Int64 // workers waiting for a job and not yet promised one
	workers  int
	wg       sync.WaitGroup
}

func newGenerator(cfg config, addr string, wire [][]byte) *generator {
	return &generator{
		addr:     addr,
		wire:     wire,
		timeout:  cfg.timeout,
		maxConns: cfg.maxConns,
		results:  make([]result, len(wire)),
		jobs:     make(chan job, len(wire)),
	}
}

// run sends request i at start + i/rate and returns the results in request order.
func (g *generator) run(rate float64) ([]result, error) {
	pace, err := newPacer()
	if err != nil {
		return nil, err
	}
	defer pace.close()
	for i := range g.wire {
		offset := time.Duration(float64(i) / rate * float64(time.Second))
		if err := pace.waitUntil(offset); err != nil {
			return nil, fmt.Errorf("waiting for request %d's due time: %w", i, err)
		}
		if g.free.Load() > 0 {
			g.free.Add(-1)
		} else if g.workers < g.maxConns {
			g.workers++
			g.wg.Go(g.work)
		}
		g.jobs <- job{i, pace.start.Add(offset)}
	}
	close(g.jobs)
	g.wg.Wait()
	return g.results, nil
}

func (g *generator) work() {
	c := &client{addr: g.addr, timeout: g.timeout}
	defer c.close()
	for j := range g.jobs {
		g.results[j.i] = c.send(g.wire[j.i], j)
		g.free.Add(1)
	}
}

// client is one worker's connection, reused while the server keeps it open.
type client struct {
	addr    string
	timeout time.Duration
	conn    net.Conn
	br      *bufio.Reader
	body    bytes.Buffer
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// send makes one request due at j.due and reads its answer to the last byte.
func (c *client) send(wire []byte, j job) result {
	sent := time.Now()
	r := result{I: j.i, LagMs: millis(sent.Sub(j.due)), Timings: map[string]float64{}}
	status, err := c.exchange(wire, sent.Add(c.timeout))
	r.LatencyMs = millis(time.Since(j.due))
	if err != nil {
		if isTimeout(err) {
			err = fmt.Errorf("timed out after %v (-timeout): %w", c.timeout, err)
		}
		r.Error = err.Error()
		return r
	}
	r.Status = status
	if status != http.StatusOK {
		return r
	}
	var body gatewayBody
	switch err := json.Unmarshal(c.body.Bytes(), &body); {
	case err != nil:
		r.Error = fmt.Sprintf("200 response body is not JSON: %v", err)
	case body.TimingsMs == nil:
		r.Error = "200 response body has no timingsMs object"
	default:
		r.Fallback = body.Fallback != nil
		r.Timings = body.TimingsMs
	}
	return r
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// exchange writes the request and reads the response into c.body, on the kept-alive connection
// or a new one. A kept-alive connection that the server has closed meanwhile fails without an
// answer: then the request is sent once more on a new connection, as net/http does.
func (c *client) exchange(wire []byte, deadline time.Time) (int, error) {
	for attempt := 0; ; attempt++ {
		reused := c.conn != nil
		if !reused {
			conn, err := (&net.Dialer{Deadline: deadline}).Dial("tcp", c.addr)
			if err != nil {
				return 0, err
			}
			c.conn = conn
			if c.br == nil {
				c.br = bufio.NewReaderSize(conn, 16<<10)
			} else {
				c.br.Reset(conn)
			}
		}
		status, answered, err := c.roundTrip(wire, deadline)
		if err == nil {
			return status, nil
		}
		c.close()
		if !reused || attempt > 0 || answered || isTimeout(err) {
			return 0, err
		}
	}
}

// roundTrip says whether any of an answer came, with the status once all of it has.
func (c *client) roundTrip(wire []byte, deadline time.Time) (int, bool, error) {
	if err := c.conn.SetDeadline(deadline); err != nil {
		return 0, false, err
	}
	if _, err := c.conn.Write(wire); err != nil {
		return 0, false, err
	}
	if _, err := c.br.Peek(1); err != nil {
		return 0, false, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, true, fmt.Errorf("reading a response: %w", err)
	}
	c.body.Reset()
	_, err = c.body.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, true, fmt.Errorf("reading the body of a %d response: %w", resp.StatusCode, err)
	}
	if resp.Close { // the server ends the connection after this answer
		c.close()
	}
	return resp.StatusCode, true, nil
}

func writeResults(w io.Writer, results []result) error {
	out := bufio.NewWriterSize(w, 1<<16)
	enc := json.NewEncoder(out)
	for i := range results {
		if err := enc.Encode(&results[i]); err != nil {
			return err
		}
	}
	return out.Flush()
}

// prepare reads the users and builds the requests: everything that can fail on bad input.
func prepare(cfg config) (*generator, error) {
	users, err := readUsers(cfg.usersPath, cfg.requests())
	if err != nil {
		return nil, err
	}
	addr, wire, err := buildRequests(cfg.urlTemplate, users)
	if err != nil {
		return nil, err
	}
	return newGenerator(cfg, addr, wire), nil
}

// run is main without the exit: 0 after a run (failed requests are results, not failures),
// 2 on bad flags or input, 1 when the results cannot be written.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var gen *generator
	if err == nil {
		gen, err = prepare(cfg)
	}
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 2
	}
	results, err := gen.run(cfg.rate)
	if err == nil {
		err = writeResults(stdout, results)
	}
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	return 0
}

func main() {
	keepSysmonAwake()
	// One P: the sender and the workers take turns on one thread, so no wake-up ever has to
	// cross to another thread (wakeups_linux.go says why that matters).
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
