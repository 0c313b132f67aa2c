package manager

// SetNewID replaces how m makes VM ids, so tests can make them collide.
func SetNewID(m *Manager, f func() string) { m.newID = f }

// KeptDoc is where document i's kept bytes lie, so that a test can tell a
// kept document from one encoded again.
func (e EncodedVMs) KeptDoc(i int) *byte { return &e.docs[i].json[0] }
