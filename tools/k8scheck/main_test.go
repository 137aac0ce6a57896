package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// kubernetesDir is deploy/kubernetes, or K8SCHECK_DIR (tests point it at a broken copy).
func kubernetesDir() string {
	if dir := os.Getenv("K8SCHECK_DIR"); dir != "" {
		return dir
	}
	return filepath.Join("..", "..", "deploy", "kubernetes")
}

// Every kind each overlay must render, each checked against its upstream type.
var wantKinds = map[string][]string{
	"dev":  {"Component", "Component", "Component", "Configuration", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Resiliency"},
	"prod": {"Component", "Component", "Component", "Configuration", "Deployment", "PodDisruptionBudget", "Resiliency", "ScaledObject", "TriggerAuthentication"},
}

func TestOverlaysDecodeStrictly(t *testing.T) {
	for overlay, want := range wantKinds {
		t.Run(overlay, func(t *testing.T) {
			dir := filepath.Join(kubernetesDir(), "overlays", overlay)
			documents, err := Render(dir)
			if err != nil {
				t.Fatalf("kustomize %s: %v", dir, err)
			}
			var kinds []string
			for _, doc := range documents {
				kinds = append(kinds, doc.Kind)
				if _, err := Decode(doc); err != nil {
					t.Errorf("%s %s: %v", doc.Kind, doc.Name, err)
				}
			}
			sortStrings(kinds)
			if strings.Join(kinds, ",") != strings.Join(want, ",") {
				t.Errorf("kinds %v, want %v", kinds, want)
			}
		})
	}
}

func TestStrictness(t *testing.T) {
	cases := map[string]string{
		"misspelt Deployment field": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n",
		"wrong case":                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {Replicas: 2}\n",
		"misspelt Component field":  "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: x}\nspec: {type: state.redis, versoin: v1}\n",
		"misspelt KEDA field":       "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec: {scaleTargetRef: {name: x}, maxReplicas: 3, triggers: [{type: cpu, metadata: {value: '70'}}]}\n",
		"unknown kind":              "apiVersion: dapr.io/v1alpha1\nkind: Subscriptoin\nmetadata: {name: x}\n",
		"unknown Dapr annotation":   "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {metadata: {annotations: {dapr.io/app-prot: '50051'}}}}\n",
		"annotation not an integer": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {metadata: {annotations: {dapr.io/app-port: grpc}}}}\n",
		"quantity":                  "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: c, resources: {limits: {memory: 1Gb}}}]}}}\n",
	}
	for name, manifest := range cases {
		t.Run(name, func(t *testing.T) {
			asJSON, err := yamlToJSON(manifest)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Decode(Document{Kind: "?", Name: "x", JSON: asJSON})
			if err == nil {
				t.Fatalf("decoded without an error:\n%s", manifest)
			}
			t.Log(err)
		})
	}
}

// The files `dapr run -f .` and the real-daprd tests use are held to the same types.
func TestLocalComponentsDecodeStrictly(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "components", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no components/*.yaml: %v", err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		asJSON, err := yamlToJSON(string(data))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if _, err := Decode(Document{Kind: "?", Name: file, JSON: asJSON}); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}
