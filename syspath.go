// This file owns the plugin's place on sys.path: its vendor/ directory and
// its own directory go first, once each, as absolute paths.

package fidius

import (
	"fmt"
	"path/filepath"

	cpy "go.nhat.io/cpy/v3"
)

// prependSysPath makes sys.path start [dir/vendor, dir, ...] unless those
// entries are already on it, and returns the entries it inserted. dir must
// be absolute and clean, so that a later chdir changes nothing. GIL held.
//
// A plugin may have replaced sys.path with something that is not a list;
// then it is replaced by a new, empty list rather than failing every load
// after.
func prependSysPath(dir string) ([]string, error) {
	path := cpy.PySys_GetObject("path") // borrowed
	if path == nil || !cpy.PyList_Check(path) {
		fresh := cpy.PyList_New(0)
		rc := cpy.PySys_SetObject("path", fresh)
		fresh.DecRef()
		if rc != 0 {
			return nil, fmt.Errorf("%w: replacing sys.path, which is not a list: %s", ErrImportFailed, clearError())
		}
		path = cpy.PySys_GetObject("path")
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
		rc := cpy.PyList_Insert(path, 0, s)
		s.DecRef()
		if rc != 0 {
			return inserted, fmt.Errorf("%w: inserting %s into sys.path: %s", ErrImportFailed, p, clearError())
		}
		inserted = append(inserted, p)
	}
	return inserted, nil
}

func onSysPath(path *cpy.PyObject, p string) bool {
	for i, n := 0, cpy.PyList_Size(path); i < n; i++ {
		item := cpy.PyList_GetItem(path, i) // borrowed
		if !cpy.PyUnicode_Check(item) {
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
