//go:build !linux

package main

import "time"

// keepSysmonAwake does nothing here: see wakeups_linux.go for what it does on Linux, where the
// benchmarks run.
func keepSysmonAwake() {}

// pacer sleeps until each due time (wakeups_linux.go says why Linux does otherwise).
type pacer struct{ start time.Time }

func newPacer() (*pacer, error) { return &pacer{start: time.Now()}, nil }

// waitUntil returns at start + offset, or at once when that has passed.
func (p *pacer) waitUntil(offset time.Duration) error {
	time.Sleep(time.Until(p.start.Add(offset)))
	return nil
}

func (p *pacer) close() {}
