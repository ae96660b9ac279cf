// Command kstatus prints the status that sigs.k8s.io/cli-utils' kstatus library computes (the one
// kubectl wait's --for=jsonpath gate, Flux, and cli-utils based appliers share) for each object read
// from stdin: a JSON object, or a List of them. One JSON line per object: name, status, message.
// The control-plane tier checks the DsrService's conditions with it (tests/controlplane).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: reading stdin:", err)
		os.Exit(2)
	}
	var doc map[string]interface{}
	if err := utiljson.Unmarshal(data, &doc); err != nil { // integers as int64, as unstructured expects
		fmt.Fprintln(os.Stderr, "kstatus: stdin is not a JSON object:", err)
		os.Exit(2)
	}
	items := []interface{}{doc}
	if list, ok := doc["items"].([]interface{}); ok {
		items = list
	}
	out := json.NewEncoder(os.Stdout)
	for _, item := range items {
		object, ok := item.(map[string]interface{})
		if !ok {
			fmt.Fprintln(os.Stderr, "kstatus: an item is not an object")
			os.Exit(2)
		}
		u := &unstructured.Unstructured{Object: object}
		result, err := status.Compute(u)
		v := verdict{Name: u.GetName()}
		if err != nil {
			v.Error = err.Error()
		} else {
			v.Status, v.Message = result.Status.String(), result.Message
		}
		if err := out.Encode(v); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
	}
}
