// This file owns the plugin's place on sys.path: its vendor/ directory and
// its own directory go first, once each, as absolute paths.

package fidius

/*
#include "fidius.h"
*/
import "C"

import (
	"fmt"
	"path/filepath"
)

// prependSysPath makes sys.path start [dir/vendor, dir, ...] unless those
// entries are already on it, and returns the entries it inserted. dir must
// be absolute and clean, so that a later chdir changes nothing. GIL held.
//
// A plugin may have replaced sys.path with something that is not a list;
// then it is replaced by a new, empty list rather than failing every load
// after.
func prependSysPath(dir string) ([]string, error) {
	path := sysGet("path") // borrowed
	if path == nil || !path.isList() {
		fresh := fromC(C.PyList_New(0))
		ok := fresh != nil && sysSet("path", fresh)
		fresh.decRef()
		if !ok {
			return nil, fmt.Errorf("%w: replacing sys.path, which is not a list: %s", ErrImportFailed, clearError())
		}
		path = sysGet("path")
	}
	var inserted []string
	// Inserting at 0 in reverse order leaves vendor/ first.
	for _, p := range []string{dir, filepath.Join(dir, "vendor")} {
		if onSysPath(path, p) {
			continue
		}
		s := pyPath(p)
		if s == nil {
			return inserted, fmt.Errorf("%w: inserting %s into sys.path: %s", ErrImportFailed, p, clearError())
		}
		rc := C.PyList_Insert(toC(path), 0, toC(s))
		s.decRef()
		if rc != 0 {
			return inserted, fmt.Errorf("%w: inserting %s into sys.path: %s", ErrImportFailed, p, clearError())
		}
		inserted = append(inserted, p)
	}
	return inserted, nil
}

func onSysPath(path *pyObject, p string) bool {
	for i, n := 0, path.listLen(); i < n; i++ {
		item := path.listItem(i) // borrowed
		if !item.isStr() {
			continue
		}
		// Compared as the paths they name: an entry may hold bytes
		// that are not UTF-8 (surrogate-escaped), as may dir.
		if s, ok := goPath(item); ok && s == p {
			return true
		}
	}
	return false
}
