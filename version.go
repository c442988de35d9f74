// This file owns what the host can ask about the embedded Python itself:
// its version, and adding a virtual environment's packages to it.

package fidius

/*
#include "fidius.h"
*/
import "C"

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// PythonVersion returns the version of the CPython this program is linked
// with and runs, such as "3.12.1": the one plugins see as sys.version. It
// does not start the interpreter.
func PythonVersion() string {
	v, _, _ := strings.Cut(C.GoString(C.Py_GetVersion()), " ")
	return v
}

// pythonMinor is "3.12" for PythonVersion "3.12.1".
func pythonMinor() string {
	parts := strings.SplitN(PythonVersion(), ".", 3)
	if len(parts) < 2 {
		return PythonVersion()
	}
	return parts[0] + "." + parts[1]
}

// UseVirtualEnv adds the site-packages directory of the virtual
// environment venvDir (made with python -m venv) to the embedded
// interpreter's sys.path, after every plugin's own directories, and
// processes its .pth files, so plugins can import what is installed there.
// sys.executable becomes the environment's python. The environment must
// be one of the Python this program runs (the same minor version, see
// PythonVersion): compiled extension modules of another version do not
// load. It affects every plugin: those in the shared interpreter at once,
// and isolated ones loaded afterwards (WithIsolation).
//
// A directory without pyvenv.cfg, or of another Python version, matches
// ErrVirtualEnv; one that does not exist also matches fs.ErrNotExist.
func UseVirtualEnv(venvDir string) error {
	dir, err := filepath.Abs(venvDir)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrVirtualEnv, venvDir, err)
	}
	version, err := venvVersion(dir)
	if err != nil {
		return err
	}
	if minor := pythonMinor(); version != minor && !strings.HasPrefix(version, minor+".") {
		return fmt.Errorf("%w: %s is for Python %s; this program runs Python %s", ErrVirtualEnv, dir, version, PythonVersion())
	}
	site := filepath.Join(dir, "lib", "python"+pythonMinor(), "site-packages")
	if st, err := os.Stat(site); err != nil || !st.IsDir() {
		return fmt.Errorf("%w: %s has no %s", ErrVirtualEnv, dir, site)
	}
	exe := filepath.Join(dir, "bin", "python")
	if _, err := os.Stat(exe); err != nil {
		exe = ""
	}
	if err := ensureInterpreter(); err != nil {
		return err
	}
	shared.withGIL(func() { err = shared.addVirtualEnv(site, exe) })
	if err == nil {
		venvs.Lock()
		venvs.list = append(venvs.list, [2]string{site, exe})
		venvs.Unlock()
	}
	return err
}

// venvs are the virtual environments added so far, for the isolated
// interpreters made from now on: site-packages and executable.
var venvs struct {
	sync.Mutex
	list [][2]string
}

// addVirtualEnv adds a virtual environment to the interpreter. GIL held.
func (in *interp) addVirtualEnv(site, exe string) error {
	s, e := pyPath(site), pyPath(exe)
	defer s.decRef()
	defer e.decRef()
	if s == nil || e == nil {
		return fmt.Errorf("%w: adding %s: %s", ErrVirtualEnv, site, clearError())
	}
	if res := in.useVirtualEnv.call(s, e); res != nil {
		res.decRef()
		return nil
	}
	return fmt.Errorf("%w: adding %s: %s", ErrVirtualEnv, site, clearError())
}

// replayVirtualEnvs adds the virtual environments added so far to a new
// isolated interpreter. GIL held.
func (in *interp) replayVirtualEnvs() error {
	venvs.Lock()
	list := append([][2]string(nil), venvs.list...)
	venvs.Unlock()
	for _, v := range list {
		if err := in.addVirtualEnv(v[0], v[1]); err != nil {
			return err
		}
	}
	return nil
}

// venvVersion reads the Python version a virtual environment was made
// with from its pyvenv.cfg ("version" or "version_info").
func venvVersion(dir string) (string, error) {
	f, err := os.Open(filepath.Join(dir, "pyvenv.cfg"))
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrVirtualEnv, dir, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if k = strings.TrimSpace(k); ok && (k == "version" || k == "version_info") {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%w: %s: pyvenv.cfg names no version", ErrVirtualEnv, dir)
}
