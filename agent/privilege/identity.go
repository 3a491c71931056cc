package privilege

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
)

// Identity is the user and group the agent runs as once its programs are
// attached (the --user flag).
type Identity struct {
	Name     string
	UID, GID int
}

// LookupIdentity resolves a user name or a numeric uid to the user and its
// primary group, from the system's user database. A uid the database does
// not know (a container image without one) is taken as is, with the group
// of the same number.
func LookupIdentity(s string) (Identity, error) {
	var (
		u   *user.User
		err error
	)
	n, nerr := strconv.Atoi(s)
	if nerr == nil {
		u, err = user.LookupId(s)
		var unknown user.UnknownUserIdError
		if errors.As(err, &unknown) && n > 0 {
			return Identity{Name: s, UID: n, GID: n}, nil
		}
	} else {
		u, err = user.Lookup(s)
	}
	if err != nil {
		return Identity{}, fmt.Errorf("privilege: user %q: %w", s, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return Identity{}, fmt.Errorf("privilege: user %q has uid %q and gid %q, not numbers", s, u.Uid, u.Gid)
	}
	if uid == 0 {
		return Identity{}, fmt.Errorf("privilege: user %q is root (uid 0): name a user without privileges, or leave --user empty", s)
	}
	return Identity{Name: u.Username, UID: uid, GID: gid}, nil
}
