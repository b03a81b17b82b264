// Command argocd-health evaluates Argo CD health.lua scripts with Argo CD's own Lua VM
// (github.com/argoproj/argo-cd/v2/util/lua), so the project's scripts are checked by the
// interpreter, sandbox and result validation that an Argo CD controller applies to them,
// not by a stand-in.
//
// Usage:
//
//	argocd-health [-open-libs] <health.lua> <object.yaml|object.json|->
//	    prints {"status": ..., "message": ...} as one JSON line.
//	argocd-health [-open-libs] test <dir>
//	    runs <dir>/health_test.yaml (Argo CD's format) against <dir>/health.lua and exits 1
//	    on any mismatch.
//
// Scripts run without the Lua standard libraries by default, as Argo CD runs a health
// customization from argocd-cm unless it sets useOpenLibs; -open-libs turns them on.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/argoproj/argo-cd/v2/util/lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type healthTests struct {
	Tests []struct {
		InputPath    string `json:"inputPath"`
		HealthStatus result `json:"healthStatus"`
	} `json:"tests"`
}

func readObject(path string) (*unstructured.Unstructured, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	// YAML is a superset of JSON, so one path reads both. Kubernetes' JSON decoder keeps
	// whole numbers as int64, as in the objects an Argo CD controller hands to the script.
	asJSON, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	obj := map[string]interface{}{}
	if err := utiljson.Unmarshal(asJSON, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &unstructured.Unstructured{Object: obj}, nil
}

func evaluate(vm lua.VM, scriptPath, objPath string) (result, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return result{}, err
	}
	obj, err := readObject(objPath)
	if err != nil {
		return result{}, err
	}
	hs, err := vm.ExecuteHealthLua(obj, string(script))
	if err != nil {
		return result{}, fmt.Errorf("%s on %s: %w", scriptPath, objPath, err)
	}
	return result{Status: string(hs.Status), Message: hs.Message}, nil
}

func runTests(vm lua.VM, dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
	if err != nil {
		return err
	}
	var suite healthTests
	if err := yaml.UnmarshalStrict(data, &suite); err != nil {
		return fmt.Errorf("%s/health_test.yaml: %w", dir, err)
	}
	if len(suite.Tests) == 0 {
		return fmt.Errorf("%s/health_test.yaml has no tests", dir)
	}
	failed := 0
	for _, tc := range suite.Tests {
		got, err := evaluate(vm, filepath.Join(dir, "health.lua"), filepath.Join(dir, tc.InputPath))
		if err != nil {
			return err
		}
		if got != tc.HealthStatus {
			failed++
			fmt.Printf("FAIL %s: want %+v, got %+v\n", tc.InputPath, tc.HealthStatus, got)
		} else {
			fmt.Printf("ok   %s: %s %q\n", tc.InputPath, got.Status, got.Message)
		}
	}
	fmt.Printf("%s: %d passed, %d failed\n", dir, len(suite.Tests)-failed, failed)
	if failed > 0 {
		return errors.New("health tests failed")
	}
	return nil
}

func main() {
	openLibs := flag.Bool("open-libs", false, "load the Lua standard libraries (Argo CD's useOpenLibs)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: argocd-health [-open-libs] <health.lua> <object.yaml|json|->\n       argocd-health [-open-libs] test <dir>")
	}
	flag.Parse()
	args := flag.Args()
	vm := lua.VM{UseOpenLibs: *openLibs}
	if len(args) == 2 && args[0] == "test" {
		if err := runTests(vm, args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(args) != 2 {
		flag.Usage()
		os.Exit(2)
	}
	got, err := evaluate(vm, args[0], args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, _ := json.Marshal(got)
	fmt.Println(string(out))
}
