package main

import (
	"sort"

	"sigs.k8s.io/yaml"
)

func yamlToJSON(text string) ([]byte, error) { return yaml.YAMLToJSON([]byte(text)) }

func sortStrings(values []string) { sort.Strings(values) }
