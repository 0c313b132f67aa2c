package manager

// SetNewID replaces how m makes VM ids, so tests can make them collide.
func SetNewID(m *Manager, f func() string) { m.newID = f }
