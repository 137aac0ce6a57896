// k8scheck renders the kustomize overlays of deploy/kubernetes and decodes every document
// strictly into the upstream API types: an unknown, misspelt or duplicated field, a value of the
// wrong type or a kind nobody defines is an error. `go test` checks every overlay.
//
//	go run . check DIR...   # render each kustomization DIR and check it; one line per document
//	go run . render DIR     # the rendered documents as a JSON array (tests read it)
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"

	componentsv1alpha1 "github.com/dapr/dapr/pkg/apis/components/v1alpha1"
	configurationv1alpha1 "github.com/dapr/dapr/pkg/apis/configuration/v1alpha1"
	resiliencyv1alpha1 "github.com/dapr/dapr/pkg/apis/resiliency/v1alpha1"
	"github.com/dapr/dapr/pkg/injector/patcher"
	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	strictjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// kinds maps apiVersion/kind to a new value of its upstream Go type.
var kinds = map[string]func() any{
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"dapr.io/v1alpha1/Component":             func() any { return &componentsv1alpha1.Component{} },
	"dapr.io/v1alpha1/Resiliency":            func() any { return &resiliencyv1alpha1.Resiliency{} },
	"dapr.io/v1alpha1/Configuration":         func() any { return &configurationv1alpha1.Configuration{} },
	"keda.sh/v1alpha1/ScaledObject":          func() any { return &kedav1alpha1.ScaledObject{} },
	"keda.sh/v1alpha1/TriggerAuthentication": func() any { return &kedav1alpha1.TriggerAuthentication{} },
}

// Document is one rendered manifest, as YAML and as JSON.
type Document struct {
	Kind, Name string
	YAML, JSON []byte
}

// Render builds a kustomization directory as `kubectl kustomize DIR` does.
func Render(dir string) ([]Document, error) {
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	var documents []Document
	for _, res := range resources.Resources() {
		data, err := res.AsYAML()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", res.CurId(), err)
		}
		asJSON, err := yaml.YAMLToJSON(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", res.CurId(), err)
		}
		documents = append(documents, Document{Kind: res.GetKind(), Name: res.GetName(), YAML: data, JSON: asJSON})
	}
	return documents, nil
}

// Decode decodes a document strictly (case-sensitive field names, no unknown or duplicate
// fields, as the API server's strict field validation) into its upstream type.
func Decode(doc Document) (any, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(doc.JSON, &meta); err != nil {
		return nil, err
	}
	newObject, known := kinds[meta.APIVersion+"/"+meta.Kind]
	if !known {
		return nil, fmt.Errorf("%s/%s: no upstream type is checked for this kind", meta.APIVersion, meta.Kind)
	}
	object := newObject()
	strictErrors, err := strictjson.UnmarshalStrict(doc.JSON, object, strictjson.DisallowUnknownFields, strictjson.DisallowDuplicateFields)
	if err != nil {
		return nil, err
	}
	if len(strictErrors) > 0 {
		return nil, errors.Join(strictErrors...)
	}
	return object, validate(object)
}

// validate checks what decoding cannot: the Dapr annotations as the sidecar injector reads them,
// and KEDA's own checks of a ScaledObject.
func validate(object any) error {
	switch typed := object.(type) {
	case *appsv1.Deployment:
		return checkDaprAnnotations(typed.Spec.Template.Annotations)
	case *kedav1alpha1.ScaledObject:
		return errors.Join(
			kedav1alpha1.ValidateTriggers(typed.Spec.Triggers),
			kedav1alpha1.CheckReplicaCountBoundsAreValid(typed),
			kedav1alpha1.CheckFallbackValid(typed),
		)
	}
	return nil
}

// checkDaprAnnotations: every dapr.io/ annotation is one the injector's SidecarConfig reads (an
// unknown one is silently ignored by the injector), and its value parses as that field's type.
func checkDaprAnnotations(annotations map[string]string) error {
	fields := map[string]reflect.Type{}
	config := reflect.TypeOf(patcher.SidecarConfig{})
	for i := range config.NumField() {
		if key := config.Field(i).Tag.Get("annotation"); key != "" {
			fields[key] = config.Field(i).Type
		}
	}
	var problems []error
	for key, value := range annotations {
		if !strings.HasPrefix(key, "dapr.io/") {
			continue
		}
		kind, known := fields[key]
		if !known {
			problems = append(problems, fmt.Errorf("annotation %s: not one the Dapr sidecar injector reads", key))
			continue
		}
		if kind.Kind() == reflect.Pointer {
			kind = kind.Elem()
		}
		switch {
		case kind.Kind() == reflect.Bool:
			if value != "true" && value != "false" {
				problems = append(problems, fmt.Errorf("annotation %s: %q is not true or false", key, value))
			}
		case kind.Kind() >= reflect.Int && kind.Kind() <= reflect.Uint64:
			if _, err := strconv.ParseInt(value, 10, 64); err != nil {
				problems = append(problems, fmt.Errorf("annotation %s: %q is not an integer", key, value))
			}
		case strings.HasSuffix(key, "-request") || strings.HasSuffix(key, "-limit") || key == "dapr.io/max-body-size":
			if _, err := resource.ParseQuantity(value); err != nil {
				problems = append(problems, fmt.Errorf("annotation %s: %q is not a quantity", key, value))
			}
		}
	}
	return errors.Join(problems...)
}

// Check renders a kustomization and decodes each document: one line per document, or the errors.
func Check(dir string) ([]string, error) {
	documents, err := Render(dir)
	if err != nil {
		return nil, err
	}
	var lines []string
	var problems []error
	for _, doc := range documents {
		if _, err := Decode(doc); err != nil {
			problems = append(problems, fmt.Errorf("%s %s %s: %w", dir, doc.Kind, doc.Name, err))
			continue
		}
		lines = append(lines, fmt.Sprintf("%s: %s %s ok", dir, doc.Kind, doc.Name))
	}
	return lines, errors.Join(problems...)
}

func main() {
	if len(os.Args) < 3 || (os.Args[1] != "check" && os.Args[1] != "render") {
		fmt.Fprintln(os.Stderr, "usage: k8scheck check DIR... | k8scheck render DIR")
		os.Exit(2)
	}
	if os.Args[1] == "render" {
		documents, err := Render(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var out bytes.Buffer
		out.WriteString("[")
		for i, doc := range documents {
			if i > 0 {
				out.WriteString(",\n")
			}
			out.Write(doc.JSON)
		}
		out.WriteString("]\n")
		os.Stdout.Write(out.Bytes())
		return
	}
	failed := false
	for _, dir := range os.Args[2:] {
		lines, err := Check(dir)
		for _, line := range lines {
			fmt.Println(line)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
