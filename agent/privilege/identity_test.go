package privilege

import (
	"os/user"
	"strconv"
	"strings"
	"testing"
)

func TestLookupIdentity(t *testing.T) {
	if u, err := user.Lookup("nobody"); err == nil {
		id, err := LookupIdentity("nobody")
		if err != nil || id.Name != "nobody" || id.UID == 0 || u.Uid != strconv.Itoa(id.UID) {
			t.Fatalf("nobody: %+v %v (the database says uid %s)", id, err, u.Uid)
		}
		byID, err := LookupIdentity(u.Uid)
		if err != nil || byID != id {
			t.Fatalf("uid %s: %+v %v, want %+v", u.Uid, byID, err, id)
		}
	}
	// A uid no database knows, as in a bare container image.
	if id, err := LookupIdentity("4242424"); err != nil || id.UID != 4242424 || id.GID != 4242424 {
		t.Fatalf("unknown uid: %+v %v", id, err)
	}
	for _, bad := range []string{"root", "0", "no-such-user-here", "-5"} {
		if _, err := LookupIdentity(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("LookupIdentity(%q) = %v, want an error naming it", bad, err)
		}
	}
}
