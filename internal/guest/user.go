package guest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Cred is who the payload runs as.
type Cred struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups from the image's /etc/group
	Home     string
}

// LookupUser resolves an image's `user[:group]` (names or numeric ids)
// against the image's own /etc/passwd and /etc/group under root, the way
// container runtimes do: a name must exist; a numeric uid without a passwd
// entry runs with gid 0 unless a group is given.
func LookupUser(root, spec string) (Cred, error) {
	if spec == "" {
		spec = "0"
	}
	user, group, hasGroup := strings.Cut(spec, ":")
	if user == "" {
		return Cred{}, fmt.Errorf("user %q: empty user name", spec)
	}
	passwd, perr := readColonFile(filepath.Join(root, "etc/passwd"), 7)
	groups, gerr := readColonFile(filepath.Join(root, "etc/group"), 4)

	c := Cred{Home: "/"}
	name := ""
	uid, numeric := parseID(user)
	for _, e := range passwd {
		if (numeric && e[2] == user) || (!numeric && e[0] == user) {
			u, ok1 := parseID(e[2])
			g, ok2 := parseID(e[3])
			if !ok1 || !ok2 {
				return Cred{}, fmt.Errorf("user %q: malformed /etc/passwd entry", user)
			}
			c.UID, c.GID, c.Home, name = u, g, e[5], e[0]
			break
		}
	}
	switch {
	case name != "":
	case numeric:
		c.UID = uid
	case perr != nil:
		return Cred{}, fmt.Errorf("user %q: the image has no readable /etc/passwd: %w", user, perr)
	default:
		return Cred{}, fmt.Errorf("user %q does not exist in the image's /etc/passwd", user)
	}

	if hasGroup {
		gid, gnum := parseID(group)
		found := false
		for _, e := range groups {
			if (gnum && e[2] == group) || (!gnum && e[0] == group) {
				g, ok := parseID(e[2])
				if !ok {
					return Cred{}, fmt.Errorf("group %q: malformed /etc/group entry", group)
				}
				c.GID, found = g, true
				break
			}
		}
		switch {
		case found:
		case gnum:
			c.GID = gid
		case gerr != nil:
			return Cred{}, fmt.Errorf("group %q: the image has no readable /etc/group: %w", group, gerr)
		default:
			return Cred{}, fmt.Errorf("group %q does not exist in the image's /etc/group", group)
		}
		return c, nil
	}
	// Supplementary groups: those listing the user by name, as initgroups does.
	if name != "" {
		for _, e := range groups {
			for _, m := range strings.Split(e[3], ",") {
				if m == name {
					if g, ok := parseID(e[2]); ok && g != c.GID {
						c.Groups = append(c.Groups, g)
					}
				}
			}
		}
	}
	return c, nil
}

func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

// readColonFile reads /etc/passwd-style lines that have at least min fields.
func readColonFile(path string, min int) ([][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if p := strings.Split(line, ":"); len(p) >= min {
			out = append(out, p)
		}
	}
	return out, sc.Err()
}
