package api

import "time"

// SetEventsWriteTimeout shortens how long an events watcher may stall, for
// a test; the returned func restores it.
func SetEventsWriteTimeout(d time.Duration) func() {
	old := eventsWriteTimeout
	eventsWriteTimeout = d
	return func() { eventsWriteTimeout = old }
}
