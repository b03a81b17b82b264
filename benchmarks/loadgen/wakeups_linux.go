//go:build linux

// Fewer wake-ups. On the benchmark's virtual machine a thread waking from idle costs ~0.1 ms of
// CPU, several times the work of a request, so the generator's cost is its number of wake-ups:
// the floor is two per request (its due time, its answer). Measured at 200 req/s for 10 s
// against a trivial server: net/http's Transport, a goroutine per request and time.Sleep made
// 15-18 wake-ups per request (0.8 ms of CPU, as much as the aiohttp generator); one P, a pool
// of workers (main.go) and the two measures below make 2.5 (0.26 ms).

package main

import (
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	clockMonotonic  = 1 // CLOCK_MONOTONIC: the clock of time.Now's monotonic reading
	tfdTimerAbstime = 1 // TFD_TIMER_ABSTIME
	// Any period turns the setting on; this one prints a line once at start and then hourly.
	schedtraceSetting = "schedtrace=3600000"
)

// keepSysmonAwake re-executes the program once with GODEBUG=schedtrace set. Without it the
// runtime's monitor thread sleeps whenever the process is idle, and every system call after an
// idle spell wakes it (so that it could take the P back from a blocking call): two or three
// extra wake-ups per request, 30% more CPU. With schedtrace it never sleeps that way and polls
// every 10 ms instead. No other setting does this, and schedtrace has no //go:debug form.
// Returns only if the re-execution could not be done; the program then runs as it is.
func keepSysmonAwake() {
	godebug := os.Getenv("GODEBUG")
	if strings.Contains(godebug, "schedtrace=") {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "GODEBUG=")
	})
	if godebug != "" {
		godebug += ","
	}
	env = append(env, "GODEBUG="+godebug+schedtraceSetting)
	_ = syscall.Exec(exe, os.Args, env)
}

// pacer wakes the sender at each due time by reading a timerfd through the runtime's poller:
// one wake-up, at the due time. time.Sleep is woken by the poller's millisecond timeout,
// which truncates: it wakes short of the due time and needs a second wake-up to reach it.
type pacer struct {
	start time.Time
	mono  int64   // start on CLOCK_MONOTONIC
	fd    uintptr // settime goes to the raw fd: file.Fd() would make the file's reads blocking
	file  *os.File
	buf   [8]byte
}

type itimerspec struct{ interval, value syscall.Timespec }

func newPacer() (*pacer, error) {
	fd, _, errno := syscall.RawSyscall(syscall.SYS_TIMERFD_CREATE, clockMonotonic,
		syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errno != 0 {
		return nil, os.NewSyscallError("timerfd_create", errno)
	}
	p := &pacer{fd: fd, file: os.NewFile(fd, "timerfd")}
	var ts syscall.Timespec
	_, _, errno = syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic,
		uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		p.file.Close()
		return nil, os.NewSyscallError("clock_gettime", errno)
	}
	p.start, p.mono = time.Now(), ts.Nano()
	return p, nil
}

// waitUntil returns at start + offset, or at once when that has passed.
func (p *pacer) waitUntil(offset time.Duration) error {
	if time.Since(p.start) >= offset {
		return nil
	}
	spec := itimerspec{value: syscall.NsecToTimespec(p.mono + int64(offset))}
	_, _, errno := syscall.RawSyscall6(syscall.SYS_TIMERFD_SETTIME, p.fd, tfdTimerAbstime,
		uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
	if errno != 0 {
		return os.NewSyscallError("timerfd_settime", errno)
	}
	_, err := p.file.Read(p.buf[:])
	return err
}

func (p *pacer) close() { p.file.Close() }
